"""``defender-agent validate FILE``: check a report, or each report of a stream, against the rules.

A file holds one report (indented JSON as ``collect`` prints it, compact JSON, or one CBOR
data item) or a stream of them (JSON lines or a CBOR sequence, as ``collect -o FILE``
writes them). Each report is checked as if it had arrived alone
(:func:`~defender_agent.report.validate.validate_payload`); the file is read a chunk at a
time (:mod:`defender_agent.report.stream`), so its size does not matter.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from defender_agent.cli._common import COMMANDS, EXIT_INVALID, EXIT_OK, Parser
from defender_agent.errors import AgentError
from defender_agent.report.stream import Piece, ReportStream
from defender_agent.report.validate import (
    PayloadFormat,
    Problem,
    Severity,
    ValidationPolicy,
    validate_payload,
)

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add this subcommand to the command line."""
    p = sub.add_parser(
        "validate",
        help=COMMANDS["validate"][1],
        description="Validate a metrics report (JSON or CBOR, long or short names), or each "
        "report of a stream: JSON lines or a CBOR sequence, as 'collect -o FILE' writes them. "
        "Exit 0 when every report is valid (warnings are printed), 1 with every problem "
        "listed when one is not.",
    )
    p.add_argument("file", metavar="FILE", help="the report or stream ('-' reads stdin)")
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


@dataclass(frozen=True)
class _Checked:
    """One report's findings."""

    index: int
    problems: tuple[Problem, ...]
    format: Optional[PayloadFormat] = None
    names: Optional[str] = None  # the name style, for a valid report

    @property
    def errors(self) -> int:
        return sum(problem.severity is Severity.ERROR for problem in self.problems)


def _check(piece: Piece, fmt: Optional[PayloadFormat], policy: ValidationPolicy) -> _Checked:
    extra = (Problem("$", piece.problem),) if piece.problem else ()
    if piece.payload is None:
        return _Checked(piece.index, extra)
    result = validate_payload(piece.payload, fmt, policy)
    names = result.name_style.value if result.name_style else None
    return _Checked(piece.index, result.problems + extra, result.format, names)


def _print_problems(name: str, checked: _Checked, prefix: str) -> None:
    for problem in checked.problems:
        print(f"{name}: {prefix}{problem.severity.value}: {problem}", file=sys.stderr)


def _single(name: str, checked: _Checked, oversized: bool, size: int, limit: int) -> int:
    """The outcome of a file that holds one report (or one thing that is not a report)."""
    if oversized:  # the whole file has been read: its size
        too_big = f"the file is {size} bytes, over the {limit}-byte IoT Core limit of one report"
        checked = _Checked(checked.index, (Problem("$", too_big),))
    _print_problems(name, checked, "")
    if checked.errors:
        print(f"{name}: invalid ({checked.errors} error(s))")
        return EXIT_INVALID
    fmt_name = checked.format.value if checked.format else "?"
    print(f"{name}: valid ({fmt_name}, {checked.names or 'no standard'} names)")
    return EXIT_OK


def _validate(handle: BinaryIO, name: str, args: argparse.Namespace) -> int:
    fmt = PayloadFormat(args.format) if args.format else None
    policy = ValidationPolicy(allow_mixed_names=args.allow_mixed_names)
    limit = policy.max_payload_bytes
    stream = ReportStream(handle, limit, fmt)
    pieces = iter(stream)
    first = next(pieces, None)
    if first is None:
        what = "only whitespace" if stream.bytes_read else "empty"
        print(f"{name}: error: $: no report: the input is {what}", file=sys.stderr)
        print(f"{name}: invalid (1 error(s))")
        return EXIT_INVALID
    second = next(pieces, None)
    if second is None:  # one report: its format is detected on its own, as before
        return _single(name, _check(first, fmt, policy), first.oversized, stream.bytes_read, limit)
    each = fmt or stream.format  # every report of a stream is in the stream's format
    count = invalid = errors = 0
    formats: set[str] = set()
    styles: set[str] = set()
    for piece in itertools.chain((first, second), pieces):
        current = _check(piece, each, policy)
        count += 1
        _print_problems(name, current, f"report {current.index}: ")
        if current.errors:
            invalid, errors = invalid + 1, errors + current.errors
        else:
            formats.add(current.format.value if current.format else "?")
            styles.add(current.names or "no standard")
    if invalid:
        print(f"{name}: {count} reports, {invalid} invalid ({errors} error(s))")
        return EXIT_INVALID
    names = styles.pop() if len(styles) == 1 else "mixed"
    print(f"{name}: {count} reports, all valid ({'/'.join(sorted(formats))}, {names} names)")
    return EXIT_OK


def command(args: argparse.Namespace) -> int:
    """Run this subcommand; returns the exit status."""
    try:
        if args.file == "-":
            return _validate(sys.stdin.buffer, args.file, args)
        with Path(args.file).open("rb") as handle:
            return _validate(handle, args.file, args)
    except OSError as exc:
        raise AgentError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
