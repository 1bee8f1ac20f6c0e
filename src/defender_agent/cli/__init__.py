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

import logging
import sys
from collections.abc import Sequence
from typing import Optional

from defender_agent import __version__
from defender_agent.cli import (
    aws_setup,
    collect,
    run,
    service,
    service_data,
    status,
    validate,
)
from defender_agent.cli._common import EXIT_OK, EXIT_SOFTWARE, EXIT_USAGE, Parser, setup_logging
from defender_agent.errors import AgentError

__all__ = ["build_parser", "main"]

log = logging.getLogger("defender_agent")


def build_parser() -> Parser:
    """Build the argument parser (exposed for documentation and tests)."""
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
    for module in (run, status, collect, validate, service, service_data, aws_setup):
        module.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
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
