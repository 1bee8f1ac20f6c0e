"""``defender-agent sandbox``: the agent, the local service and a broker on this machine.

Makes a throwaway PKI in the state directory, starts the strict embedded MQTT broker
on 127.0.0.1 (or uses ``--broker URL``), the local Device Defender service and the
agent collecting from this machine every ``--interval`` seconds, and prints each
report and its reply until Ctrl-C (or ``--reports N`` replies). No root, no network,
no AWS account. See :mod:`defender_agent.sandbox.app`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from defender_agent.cli._common import (
    COMMANDS,
    Parser,
    count,
    positive,
    setup_logging,
    stop_on_signals,
)

__all__ = ["add_parser", "command"]

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``sandbox`` to the command line."""
    p = sub.add_parser(
        "sandbox",
        help=COMMANDS["sandbox"][1],
        description="Make a throwaway PKI in the state directory, start an embedded MQTT "
        "broker on 127.0.0.1 (client certificates required), the local Device Defender "
        "service and the agent collecting from this machine, and print each report and its "
        "reply until Ctrl-C. Needs no root, no network and no AWS account. The service "
        "stores the accepted reports in <state dir>/service.sqlite3 for "
        "'defender-agent data'.",
    )
    p.add_argument(
        "--broker",
        metavar="URL",
        help="use an existing broker instead of the embedded one: mqtt://HOST:PORT (plain) "
        "or mqtts://HOST:PORT (mutual TLS with the sandbox's PKI)",
    )
    p.add_argument(
        "-i",
        "--interval",
        type=positive,
        default=None,
        metavar="SECONDS",
        help="seconds between reports (default 10)",
    )
    p.add_argument(
        "--reports",
        type=count,
        default=0,
        metavar="N",
        help="stop after N replies (exit 1 if one was a rejection); default: until Ctrl-C",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where the PKI, the agent's state and the service's database go "
        "(default: 'sandbox' in the default state directory)",
    )
    p.add_argument(
        "-f", "--format", choices=("json", "cbor"), default="json", help="report encoding"
    )
    p.add_argument("-s", "--short-names", action="store_true", help="short field names")
    p.add_argument(
        "-cm",
        "--include-custom-metrics",
        "--custom-metrics",
        action="store_true",
        help="add the cpu_usage custom metric",
    )
    p.add_argument(
        "-t",
        "--thing-name",
        metavar="NAME",
        help="the thing to report for (default: the host name)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="log verbosity on stderr (default: warning)",
    )
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Run the sandbox until Ctrl-C/SIGTERM or ``--reports`` replies."""
    from defender_agent.sandbox.app import (  # noqa: PLC0415 - keeps 'defender-agent -h' fast
        DEFAULT_INTERVAL_S,
        Sandbox,
        SandboxConfig,
        default_sandbox_dir,
        parse_broker_url,
    )

    setup_logging(args.log_level, timestamps=True)
    broker = parse_broker_url(args.broker) if args.broker else None
    config = SandboxConfig(
        state_dir=args.state_dir if args.state_dir is not None else default_sandbox_dir(),
        interval=args.interval if args.interval is not None else DEFAULT_INTERVAL_S,
        broker=broker,
        format=args.format,
        short_names=args.short_names,
        include_custom_metrics=args.include_custom_metrics,
        reports=args.reports,
        thing_name=args.thing_name,
        log_level=args.log_level,
    )
    sandbox = Sandbox(config)

    stop_on_signals(sandbox.request_stop)
    return sandbox.run()
