"""The ``defender-agent`` command line: thin over the library.

Subcommands:

* ``collect`` — the public sample's standalone collector, same options
  (``-n``, ``-s``, ``-l``, ``--short-names``, ``--format``,
  ``--include-custom-metrics``): prints complete reports.
* ``validate FILE`` — checks a report (JSON or CBOR, long or short names)
  against the protocol rules; exit 1 with the problems listed when invalid.

Errors are one line on stderr; bad options exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn, Optional

from defender_agent import __version__
from defender_agent.collect import DEFAULT_LIST_SIZE, Collector, CollectorConfig
from defender_agent.errors import AgentError
from defender_agent.procfs import default_proc_root
from defender_agent.report.fit import encode_fitted
from defender_agent.report.validate import (
    PayloadFormat,
    ValidationPolicy,
    validate_document,
    validate_payload,
)
from defender_agent.state import default_state_dir

__all__ = ["main"]

log = logging.getLogger("defender_agent")

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE: an internal error


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class _TerminalFormatter(logging.Formatter):
    """``defender-agent: warning: message`` — one line per record, as the errors are."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"defender-agent: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.levelno <= logging.DEBUG:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def _directory(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory")
    return path


def _add_collect(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "collect",
        help="collect metrics and print reports (the sample's standalone collector)",
        description="Collect Device Defender metrics from this machine and print complete "
        "reports. The first sample only takes the baseline that deltas need; each report "
        "follows one sample period later.",
    )
    p.add_argument(
        "-n",
        "--number-samples",
        "--number_samples",
        type=_count,
        default=None,
        metavar="N",
        help="reports to print; 0 = until interrupted "
        "(default: 1, or 0 when --sample-rate is given, as in the sample)",
    )
    p.add_argument(
        "-s",
        "--sample-rate",
        "--sample_rate",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds between samples (default: 1)",
    )
    p.add_argument(
        "-l",
        "--list-size",
        "--list_size",
        type=_positive,
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
        type=_directory,
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
    p.set_defaults(func=_cmd_collect)


def _add_validate(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "validate",
        help="check a report file against the Device Defender rules",
        description="Validate a metrics report (JSON or CBOR, long or short names). Exit 0 "
        "when valid (warnings are printed), 1 with every problem listed when invalid.",
    )
    p.add_argument("file", metavar="FILE", help="the report ('-' reads stdin)")
    p.add_argument(
        "--format",
        "-f",
        choices=("json", "cbor"),
        default=None,
        help="the encoding (default: detect)",
    )
    p.add_argument(
        "--allow-mixed-names", action="store_true", help="accept long and short names in one report"
    )
    p.set_defaults(func=_cmd_validate)


def build_parser() -> _Parser:
    """Build the argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog="defender-agent",
        description="AWS IoT Device Defender agent: collects device-side metrics and "
        "builds, validates and publishes Device Defender reports.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="log verbosity on stderr (default: warning)",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    _add_collect(sub)
    _add_validate(sub)
    return parser


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


def _cmd_collect(args: argparse.Namespace) -> int:
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


_MAX_VALIDATE_READ = 16 * 1024 * 1024


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read(_MAX_VALIDATE_READ + 1)
        else:
            with Path(args.file).open("rb") as handle:
                data = handle.read(_MAX_VALIDATE_READ + 1)
    except OSError as exc:
        raise AgentError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    fmt = PayloadFormat(args.format) if args.format else None
    result = validate_payload(data, fmt, ValidationPolicy(allow_mixed_names=args.allow_mixed_names))
    for problem in result.problems:
        print(f"{args.file}: {problem.severity.value}: {problem}", file=sys.stderr)
    if not result.ok:
        print(f"{args.file}: invalid ({len(result.errors)} error(s))")
        return EXIT_INVALID
    fmt_name = result.format.value if result.format else "?"
    names = result.name_style.value if result.name_style else "no standard"
    print(f"{args.file}: valid ({fmt_name}, {names} names)")
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TerminalFormatter())
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    try:
        return int(args.func(args))
    except AgentError as exc:
        print(f"defender-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug: one line for the user, the traceback at debug level
        log.debug("internal error", exc_info=True)
        print(
            f"defender-agent: internal error: {type(exc).__name__}: {exc} "
            "(run with --log-level debug for details)",
            file=sys.stderr,
        )
        return EXIT_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
