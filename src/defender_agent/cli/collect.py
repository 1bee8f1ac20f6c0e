"""``defender-agent collect``: the public sample's standalone collector, same options.

Prints complete reports. The first sample only takes the baseline that deltas need;
each report follows one sample period later, on a fixed cadence. Reads the same
configuration as ``run`` (``--config``, ``DEFENDER_AGENT_*``): the ``[collector]`` and
``[custom_metrics]`` tables, and the report settings of ``[agent]``.

Output: on a terminal or a pipe without ``-o``, JSON reports are indented, one after
the other (for people). With ``-o FILE`` (or ``-o -``) reports are a stream: JSON lines
(one compact document per line) or a CBOR sequence (RFC 8742: the items one after the
other), which ``defender-agent validate`` checks report by report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import BinaryIO, Optional

from defender_agent.cli._common import (
    COMMANDS,
    EXIT_INVALID,
    EXIT_OK,
    Parser,
    count,
    seconds,
    setup_logging,
)
from defender_agent.cli._settings import SettingOptions, load_for
from defender_agent.cycle import Collector
from defender_agent.errors import AgentError
from defender_agent.logs import get_logger
from defender_agent.report.fit import encode_fitted
from defender_agent.report.validate import validate_document
from defender_agent.state import default_state_dir

__all__ = ["add_parser", "command"]

log = get_logger(__name__)

#: The sample's sample rate when -s is not given.
DEFAULT_SAMPLE_RATE_S = 1.0


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add this subcommand to the command line."""
    p = sub.add_parser(
        "collect",
        help=COMMANDS["collect"][1],
        description="Collect Device Defender metrics from this machine and print complete "
        "reports. The first sample only takes the baseline that deltas need; each report "
        "follows one sample period later. Settings come from the options, DEFENDER_AGENT_* "
        "variables and the config file, as for 'run' ([collector], [custom_metrics]). "
        "Without -o, JSON reports are printed indented; with -o FILE or -o -, reports are "
        "written as a stream: JSON lines (one compact report per line) or a CBOR sequence "
        "(RFC 8742), which 'defender-agent validate' checks report by report.",
    )
    p.add_argument(
        "-n",
        "--number-samples",
        "--number_samples",
        type=count,
        default=None,
        metavar="N",
        help="reports to print; 0 = until interrupted "
        "(default: 1, or 0 when --sample-rate is given, as in the sample)",
    )
    p.add_argument(
        "-s",
        "--sample-rate",
        "--sample_rate",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help=f"seconds between samples (default: {DEFAULT_SAMPLE_RATE_S:g})",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default=None,
        help="write the reports to FILE as a stream: JSON lines, or a CBOR sequence "
        "('-' = stdout; needed for CBOR on a terminal)",
    )
    o = SettingOptions(p)
    o.common()
    o.add("list_size", "-l", "--list-size", "--list_size", metavar="N")
    o.switch("short_names", "--short-names", "--short_tags")
    o.add("format", "-f", "--format", choices=("json", "cbor"))
    o.switch("include_custom_metrics", "-cm", "--include-custom-metrics", "--custom-metrics")
    o.switch("include_loopback_connections", "--include-loopback-connections")
    o.add("interfaces_include", "--interfaces-include", action="append", metavar="GLOB")
    o.add("interfaces_exclude", "--interfaces-exclude", action="append", metavar="GLOB")
    o.add("wildcard_interface", "--wildcard-interface", metavar="NAME")
    o.add("socket_source", "--socket-source", choices=("auto", "proc", "netlink", "psutil"))
    o.add("proc_root", "--proc-root", metavar="DIR")
    o.add(
        "state_dir",
        "--state-dir",
        metavar="DIR",
        help="where the last report id is kept (default: $DEFENDER_AGENT_STATE_DIR, "
        "/var/lib/defender-agent as root, else ~/.local/state/defender-agent)",
    )
    o.finish()
    p.set_defaults(func=command)


def _open_output(target: Optional[str], binary: bool) -> Optional[BinaryIO]:
    if target is None:
        if binary and sys.stdout.isatty():
            raise AgentError("refusing to write CBOR to a terminal; use -o FILE or -o -")
        return None
    if target == "-":
        return None
    try:
        return Path(target).open("wb")
    except OSError as exc:
        raise AgentError(f"cannot write {target}: {exc.strerror or exc}") from exc


def command(args: argparse.Namespace) -> int:
    """Run this subcommand; returns the exit status."""
    config = load_for(args, "collect")
    collecting = config.collector
    custom = collecting.include_custom_metrics or not collecting.custom_metrics.empty
    # logging is imported at the first record, unless custom metrics (plugins) may log
    setup_logging(config.effective_log_level("collect"), config.logging.format, defer=not custom)
    samples = args.number_samples
    if samples is None:
        samples = 0 if args.sample_rate is not None else 1
    period = DEFAULT_SAMPLE_RATE_S if args.sample_rate is None else args.sample_rate
    fmt, short_names = config.agent.format, config.agent.short_names
    lines = args.output is not None  # a stream: JSON lines / a CBOR sequence
    output = _open_output(args.output, fmt == "cbor")
    stream = output or sys.stdout.buffer
    collector = Collector(config.collector, state_dir=config.agent.state_dir or default_state_dir())
    invalid = False
    try:
        collector.cycle()  # baseline
        deadline = time.monotonic()
        printed = 0
        while samples == 0 or printed < samples:
            deadline += period
            time.sleep(max(0.0, deadline - time.monotonic()))
            report = collector.cycle()
            if report is None:  # pragma: no cover - only the first cycle returns None
                continue
            encoded = encode_fitted(report, fmt, short_names=short_names)
            for problem in validate_document(encoded.document):
                invalid = True
                log.error("built an invalid report: %s", problem)
            if fmt == "cbor":
                stream.write(encoded.payload)
            elif lines:
                stream.write(json.dumps(encoded.document, separators=(",", ":")).encode() + b"\n")
            else:
                stream.write(json.dumps(encoded.document, indent=2).encode() + b"\n")
            stream.flush()
            printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        if output is not None:
            output.close()
    return EXIT_INVALID if invalid else EXIT_OK
