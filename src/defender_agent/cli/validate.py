"""``defender-agent validate FILE``: check a report against the Device Defender rules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from defender_agent.cli._common import COMMANDS, EXIT_INVALID, EXIT_OK, Parser
from defender_agent.errors import AgentError
from defender_agent.report.validate import PayloadFormat, ValidationPolicy, validate_payload

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add this subcommand to the command line."""
    p = sub.add_parser(
        "validate",
        help=COMMANDS["validate"][1],
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
    p.set_defaults(func=command)


_MAX_VALIDATE_READ = 16 * 1024 * 1024


def command(args: argparse.Namespace) -> int:
    """Run this subcommand; returns the exit status."""
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
