"""The ``defender-agent`` command line: thin over the library, one module per subcommand.

* ``run`` — the agent: publish a report every interval, track the replies.
* ``status`` — the running agent's counters, from its state directory.
* ``collect`` — the public sample's standalone collector: print complete reports.
* ``validate FILE`` — check a report against the Device Defender rules.
* ``service`` — a local Device Defender service on an MQTT broker, storing accepted reports.
* ``aws-setup`` — the AWS calls that create the configured custom metrics and a security profile.
* ``data`` — query the local service's stored metric values (things, list-metric-values, export).

Errors are one line on stderr; bad options exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Collection, Sequence
from typing import Callable, Optional

from defender_agent import __version__
from defender_agent.cli._common import (
    COMMANDS,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    Parser,
    setup_logging,
)
from defender_agent.errors import AgentError

__all__ = ["build_parser", "main"]

log = logging.getLogger("defender_agent")


def build_parser(load: Optional[Collection[str]] = None) -> Parser:
    """Build the argument parser (exposed for documentation and tests).

    Args:
        load: the subcommands whose modules are imported and whose options are
            parsed; the others get a stub that only lists them in ``--help``.
            ``None`` loads all of them.
    """
    parser = Parser(
        prog="defender-agent",
        description="AWS IoT Device Defender agent: collects device-side metrics and "
        "builds, validates and publishes Device Defender reports.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        dest="global_log_level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="log verbosity on stderr for collect/validate (default: warning)",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for name, (module, summary) in COMMANDS.items():
        if load is None or name in load:
            try:
                importlib.import_module(module).add_parser(sub)
            except ImportError as exc:  # an optional extra is not installed
                log.debug("%s unavailable: %s", name, exc)
                stub = sub.add_parser(name, help=f"{summary} (unavailable: {exc.name} missing)")
                stub.set_defaults(func=_unavailable(name, exc))
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _unavailable(name: str, exc: ImportError) -> Callable[[argparse.Namespace], int]:
    def command(_args: argparse.Namespace) -> int:
        raise AgentError(
            f"'{name}' needs {exc.name}, which is not installed "
            f"(pip install 'defender-agent[{name}]' installs what it needs)"
        )

    return command


def _command_name(argv: Sequence[str]) -> Optional[str]:
    """The subcommand in ``argv`` (the first word that is not an option or its value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-level":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    words = sys.argv[1:] if argv is None else list(argv)
    name = _command_name(words)
    args = build_parser(None if name not in COMMANDS else {name}).parse_args(words)
    setup_logging(args.global_log_level)
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
