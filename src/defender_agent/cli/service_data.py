"""``defender-agent data``: what the local Device Defender service stored, from its database.

* ``data things`` — the things that sent reports: first and last seen, how many reports.
* ``data list-metric-values --thing T --metric M [--since TIME] [--until TIME] [--limit N]``
  — one metric of one thing over time, oldest first (like ``aws iot list-metric-values``).
* ``data export [--since TIME] [--until TIME] [-o FILE]`` — every stored value, JSON lines.

TIME is ISO 8601 (``2024-05-01T12:00:00Z``; without a zone it is UTC), epoch seconds,
``now``, or a time ago: ``-30m``, ``-1h``, ``-2d`` (units s, m, h, d, w). Ranges include
``--since`` and exclude ``--until``. The database is ``--db URL`` — a path, ``sqlite:///PATH``
or ``postgresql://USER@HOST:PORT/DB`` — by default ``service.sqlite3`` in the state directory.
Tables are for people; ``--json`` prints one JSON object per line for machines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Final, Optional, TextIO

from defender_agent.cli._common import COMMANDS, EXIT_OK, Parser, positive
from defender_agent.errors import AgentError, ConfigError
from defender_agent.service.metrics_map import MetricValue
from defender_agent.service.storage import Store, default_url, open_store

__all__ = ["add_parser", "command", "parse_time"]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_AGO: Final = re.compile(r"-([0-9]+(?:\.[0-9]+)?)([smhdw])")
_EPOCH: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# argparse takes "-1h" for an option unless it looks like a negative number to the parser
_NEGATIVE: Final = re.compile(r"^-[0-9]+(?:\.[0-9]+)?[smhdw]?$|^-[0-9]*\.[0-9]+$")
_TIME_HELP: Final = "ISO 8601, epoch seconds, 'now' or a time ago such as -30m, -1h, -2d"


def parse_time(text: str, now: float) -> float:
    """A TIME option as epoch seconds.

    >>> parse_time("-1h", now=7200.0), parse_time("1970-01-01T01:00:00Z", 0), parse_time("60", 0)
    (3600.0, 3600.0, 60.0)

    Raises:
        argparse.ArgumentTypeError: ``text`` is none of the accepted forms.
    """
    value = text.strip()
    if value == "now":
        return now
    if match := _AGO.fullmatch(value):
        return now - float(match[1]) * _UNITS[match[2]]
    if _EPOCH.fullmatch(value):
        return float(value)
    iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {_TIME_HELP}; got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _time(text: str) -> float:
    return parse_time(text, time.time())


def _limit(text: str) -> Optional[int]:
    return positive(text) if text != "0" else None


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``data`` and its queries to the command line."""
    p = sub.add_parser(
        "data",
        help=COMMANDS["data"][1],
        description="Query what the local Device Defender service stored: the things, one "
        f"metric of a thing over time, or everything as JSON lines. TIME: {_TIME_HELP} "
        "(UTC when no zone is given).",
    )
    queries = p.add_subparsers(
        dest="data_command", required=True, metavar="QUERY", parser_class=Parser
    )
    db = Parser(add_help=False)
    db.add_argument(
        "--db",
        metavar="URL",
        help="the database: a file, sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        "(default: service.sqlite3 in the state directory)",
    )
    things = queries.add_parser(
        "things",
        parents=[db],
        help="list the things that sent reports",
        description="The things the service stored reports from: first and last report "
        "time and the number of reports.",
    )
    things.add_argument("--json", action="store_true", help="one JSON object per line")

    values = queries.add_parser(
        "list-metric-values",
        parents=[db],
        help="one metric of one thing over time",
        description="The values of one Device Defender metric (aws:all-bytes-out, "
        "aws:listening-tcp-ports, … or a custom metric name) of one thing, oldest first.",
    )
    values.add_argument(
        "--thing", "--thing-name", required=True, metavar="THING", help="the thing name"
    )
    values.add_argument(
        "--metric",
        "--metric-name",
        required=True,
        metavar="METRIC",
        help="the metric: aws:… or a custom metric name",
    )
    _add_range(values)
    values.add_argument(
        "--limit",
        type=_limit,
        default=1000,
        metavar="N",
        help="at most N values, the oldest in the range (default 1000; 0: all)",
    )
    values.add_argument("--json", action="store_true", help="one JSON object per line")

    export = queries.add_parser(
        "export",
        parents=[db],
        help="every stored value as JSON lines",
        description="Write every stored metric value in the range, oldest first, one JSON "
        "object per line: thing, metric, timestamp, report_id, value, format.",
    )
    _add_range(export)
    export.add_argument(
        "-o", "--output", default="-", metavar="FILE", help="write to FILE (default: stdout)"
    )
    for parser in (values, export):
        parser._negative_number_matcher = _NEGATIVE  # so that "--since -1h" is a value
    p.set_defaults(func=command)


def _add_range(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since", "--start-time", type=_time, metavar="TIME", help="from TIME (included)"
    )
    p.add_argument(
        "--until", "--end-time", type=_time, metavar="TIME", help="until TIME (excluded)"
    )


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [header, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


def _value_text(value: MetricValue) -> str:
    member = value.to_json()[value.kind]
    return f"{value.kind} {json.dumps(member, ensure_ascii=False)}"


def _things(store: Store, args: argparse.Namespace) -> int:
    things = store.things()
    if args.json:
        for thing in things:
            print(json.dumps(thing.to_json(), ensure_ascii=False))
    elif not things:
        print(f"no reports stored in {store.name}", file=sys.stderr)
    else:
        rows = [(t.name, _when(t.first_seen), _when(t.last_seen), str(t.reports)) for t in things]
        print(_table(("THING", "FIRST SEEN (UTC)", "LAST SEEN (UTC)", "REPORTS"), rows))
    return EXIT_OK


def _values(store: Store, args: argparse.Namespace) -> int:
    found = store.metric_values(args.thing, args.metric, args.since, args.until, args.limit)
    if args.json:
        for stored in found:
            print(json.dumps(stored.to_json(), ensure_ascii=False))
        return EXIT_OK
    if found:
        rows = [
            (
                _when(v.timestamp),
                "" if v.report_id is None else str(v.report_id),
                _value_text(v.value),
            )
            for v in found
        ]
        print(_table(("TIME (UTC)", "REPORT ID", "VALUE"), rows))
        if len(found) == args.limit:
            print(f"(the first {args.limit}; see --limit and --since)", file=sys.stderr)
    elif args.thing not in {t.name for t in store.things()}:
        print(f"no reports from thing {args.thing!r} in {store.name}", file=sys.stderr)
    elif args.metric not in (metrics := store.metrics(args.thing)):
        known = ", ".join(metrics) or "none"
        print(f"no metric {args.metric!r} for {args.thing} (it has: {known})", file=sys.stderr)
    else:
        print(f"no values of {args.metric} for {args.thing} in that range", file=sys.stderr)
    return EXIT_OK


def _write_lines(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    written = 0
    for record in store.export(args.since, args.until):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        written += 1
    return written


def _export(store: Store, args: argparse.Namespace) -> int:
    if args.output == "-":
        _write_lines(store, args, sys.stdout)
        return EXIT_OK
    target = Path(args.output)
    try:  # a temporary file renamed over FILE at the end: never a half-written export
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise AgentError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            written = _write_lines(store, args, out)
        Path(temp).replace(target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    print(f"exported {written} values to {args.output}", file=sys.stderr)
    return EXIT_OK


def command(args: argparse.Namespace) -> int:
    """Run one ``data`` query; returns the exit status.

    Raises:
        ConfigError: ``--since`` is not before ``--until``, or the URL is not supported.
        StateError: The database is missing, unreadable or of a newer schema.
    """
    since, until = getattr(args, "since", None), getattr(args, "until", None)
    if since is not None and until is not None and since >= until:
        raise ConfigError("--since must be before --until")
    with open_store(args.db or default_url(), create=False) as store:
        run = {"things": _things, "list-metric-values": _values, "export": _export}
        return run[args.data_command](store, args)
