"""``defender-agent doctor``: check the agent's setup end to end, one line per check.

Reads the configuration as ``run`` does (the same options, ``DEFENDER_AGENT_*``, the
file; ``--report-format`` stands for run's ``-f/--format``), then runs
:func:`defender_agent.doctor.run_checks`. Exit 0 when every check passed (warnings
allowed), 1 when one failed, 2 for bad options. ``--format json`` prints one JSON
document for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from defender_agent.cli._common import COMMANDS, EXIT_INVALID, EXIT_OK, Parser
from defender_agent.cli._settings import load_for
from defender_agent.cli.run import add_options
from defender_agent.config import config_file_path
from defender_agent.doctor import Result, as_json, exit_code, render, run_checks
from defender_agent.errors import ConfigError

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``doctor`` to the command line."""
    p = sub.add_parser(
        "doctor",
        help=COMMANDS["doctor"][1],
        description="Check, in order, what the agent needs: configuration, CA/certificate/"
        "key (readable, matching, in date), key permissions, thing name, system clock, "
        "name resolution, TCP, the TLS handshake (ALPN on 443), MQTT CONNECT, SUBSCRIBE to "
        "the replies, the state directory, /proc and the socket source, the interval. One "
        "line per check, the fix in words for each failure. Takes run's options. Never "
        "publishes unless --publish-test. Exit 0 all passed, 1 a check failed.",
        fromfile_prefix_chars="@",
    )
    add_options(p, format_flags=("--report-format",))
    p.add_argument(
        "--format",
        dest="output_format",
        choices=("text", "json"),
        default="text",
        help="output: text (one line per check) or json (for scripts)",
    )
    p.add_argument(
        "--publish-test",
        action="store_true",
        help="publish one real report and wait for its reply (it counts against Device "
        "Defender's per-thing throttle)",
    )
    p.add_argument(
        "--account-id",
        metavar="ID",
        help="the AWS account id, for the policy statements printed (default: *)",
    )
    p.set_defaults(func=command)


def _ascii_only() -> bool:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return True
    return False


def command(args: argparse.Namespace) -> int:
    """Run the checks and print them; 0 when none failed, else 1."""
    started = time.monotonic()
    results: list[Result] = []
    try:
        config = load_for(args, "run")
        file = config_file_path(args.config)
        source = f"file {file}, environment, options" if file else "environment and options"
        results.append(Result("configuration", "ok", f"valid ({source})"))
    except ConfigError as exc:
        results.append(
            Result(
                "configuration",
                "fail",
                str(exc),
                fix="correct the setting named (see examples/agent.toml); "
                "'defender-agent run --help' lists the options",
            )
        )
        try:  # the checks that still make sense, on the configuration as read
            config = load_for(args, "doctor")
        except ConfigError:
            config = None
    if config is not None:
        results += run_checks(config, publish_test=args.publish_test, account=args.account_id)
    if args.output_format == "json":
        doc = as_json(results)
        doc["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(doc, indent=2))
    else:
        print(render(results, ascii_only=_ascii_only()))
    return EXIT_INVALID if exit_code(results) else EXIT_OK
