"""``defender-agent collect``: the public sample's standalone collector, same options.

Prints complete reports (pretty JSON, or CBOR to a file or a pipe). The first
sample only takes the baseline that deltas need; each report follows one
sample period later, on a fixed cadence.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    directory,
    positive,
    seconds,
)
from defender_agent.cycle import DEFAULT_LIST_SIZE, Collector, CollectorConfig
from defender_agent.errors import AgentError
from defender_agent.procfs import default_proc_root
from defender_agent.report.fit import encode_fitted
from defender_agent.report.validate import validate_document
from defender_agent.state import default_state_dir

__all__ = ["add_parser", "command"]

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add this subcommand to the command line."""
    p = sub.add_parser(
        "collect",
        help=COMMANDS["collect"][1],
        description="Collect Device Defender metrics from this machine and print complete "
        "reports. The first sample only takes the baseline that deltas need; each report "
        "follows one sample period later.",
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
        help="seconds between samples (default: 1)",
    )
    p.add_argument(
        "-l",
        "--list-size",
        "--list_size",
        type=positive,
        default=DEFAULT_LIST_SIZE,
        metavar="N",
        help="the most entries per port or connection list; 'total' "
        f"keeps the true count (default: {DEFAULT_LIST_SIZE})",
    )
    p.add_argument(
        "--short-names",
        "--short_tags",
        action="store_true",
        help="use the short field names (hed, met, rid, ...)",
    )
    p.add_argument(
        "--format",
        "-f",
        choices=("json", "cbor"),
        default="json",
        help="report encoding (default: json, printed indented)",
    )
    p.add_argument(
        "--include-custom-metrics",
        "--custom-metrics",
        action="store_true",
        help="add the cpu_usage custom metric",
    )
    p.add_argument(
        "--include-loopback-connections",
        action="store_true",
        help="also report connections to 127.0.0.0/8 and ::1",
    )
    p.add_argument(
        "--interfaces-include",
        action="append",
        metavar="GLOB",
        help="interfaces counted in network_stats (repeatable; default: all)",
    )
    p.add_argument(
        "--interfaces-exclude",
        action="append",
        metavar="GLOB",
        help="interfaces left out of network_stats (repeatable; default: lo)",
    )
    p.add_argument(
        "--wildcard-interface",
        metavar="NAME",
        default=None,
        help="interface name for ports bound to 0.0.0.0 or :: (default: leave the interface out)",
    )
    p.add_argument(
        "--socket-source",
        choices=("auto", "proc", "netlink", "psutil"),
        default="auto",
        help="read sockets from /proc files, netlink sock_diag or psutil (default: auto = "
        "netlink for the live /proc, files for another proc root, psutil where there is no /proc)",
    )
    p.add_argument(
        "--proc-root",
        type=directory,
        default=None,
        metavar="DIR",
        help="the proc filesystem to read (default: $PROCFS_PATH or /proc)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the last report id is kept (default: $DEFENDER_AGENT_STATE_DIR, "
        "/var/lib/defender-agent as root, else ~/.local/state/defender-agent)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default=None,
        help="write reports to FILE ('-' = stdout; required for CBOR on a terminal)",
    )
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
    if args.number_samples is None:
        args.number_samples = 0 if args.sample_rate is not None else 1
    period = 1.0 if args.sample_rate is None else args.sample_rate
    config = CollectorConfig(
        proc_root=args.proc_root or default_proc_root(),
        list_size=args.list_size,
        include_custom_metrics=args.include_custom_metrics,
        include_loopback_connections=args.include_loopback_connections,
        interfaces_include=tuple(args.interfaces_include or ("*",)),
        interfaces_exclude=tuple(args.interfaces_exclude or ("lo",)),
        wildcard_interface=args.wildcard_interface,
        socket_source=args.socket_source,
    )
    output = _open_output(args.output, args.format == "cbor")
    stream = output or sys.stdout.buffer
    collector = Collector(config, state_dir=args.state_dir or default_state_dir())
    invalid = False
    try:
        collector.cycle()  # baseline
        deadline = time.monotonic()
        printed = 0
        while args.number_samples == 0 or printed < args.number_samples:
            deadline += period
            time.sleep(max(0.0, deadline - time.monotonic()))
            report = collector.cycle()
            if report is None:  # pragma: no cover - only the first cycle returns None
                continue
            encoded = encode_fitted(report, args.format, short_names=args.short_names)
            for problem in validate_document(encoded.document):
                invalid = True
                log.error("built an invalid report: %s", problem)
            if args.format == "cbor":
                stream.write(encoded.payload)
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
