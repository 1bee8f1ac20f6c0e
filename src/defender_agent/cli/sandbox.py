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

from defender_agent.cli._common import COMMANDS, Parser, setup_logging, stop_on_signals
from defender_agent.cli._settings import SettingOptions, load_for

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
        "'defender-agent data'; remove the state directory to start afresh. Settings also "
        "come from the [sandbox], [agent] and [logging] tables of the config file and "
        "DEFENDER_AGENT_* variables, as for 'run'.",
    )
    o = SettingOptions(p)
    o.common()
    o.add("sandbox_broker", "--broker", metavar="URL")
    o.add("sandbox_interval", "-i", "--interval", metavar="SECONDS")
    o.add("sandbox_reports", "--reports", metavar="N")
    o.add("sandbox_state_dir", "--state-dir", metavar="DIR")
    o.add("format", "-f", "--format", choices=("json", "cbor"))
    o.switch("short_names", "-s", "--short-names")
    o.switch("include_custom_metrics", "-cm", "--include-custom-metrics", "--custom-metrics")
    o.add(
        "thing_name",
        "-t",
        "--thing-name",
        metavar="NAME",
        help="the thing to report for (default: the host name)",
    )
    o.finish()
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Run the sandbox until Ctrl-C/SIGTERM or ``--reports`` replies."""
    from defender_agent.sandbox.app import (  # noqa: PLC0415 - keeps 'defender-agent -h' fast
        Sandbox,
        SandboxConfig,
        default_sandbox_dir,
        parse_broker_url,
    )

    config = load_for(args, "sandbox")
    level = config.effective_log_level("sandbox")
    setup_logging(level, config.logging.format, timestamps=True)
    box = config.sandbox
    sandbox = Sandbox(
        SandboxConfig(
            state_dir=box.state_dir if box.state_dir is not None else default_sandbox_dir(),
            interval=box.interval,
            broker=parse_broker_url(box.broker) if box.broker else None,
            format=config.agent.format,
            short_names=config.agent.short_names,
            include_custom_metrics=config.collector.include_custom_metrics,
            reports=box.reports,
            thing_name=config.agent.thing_name,
            log_level=level,
        )
    )

    stop_on_signals(sandbox.request_stop)
    return sandbox.run()
