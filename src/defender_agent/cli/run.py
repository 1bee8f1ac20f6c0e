"""``defender-agent run``: the agent — report every interval to Device Defender and track replies.

Accepts the public sample's flags (``-e -r -c -k -id -t -f -i -s -d -cm -w -se -ph -pp``)
and reads the rest from the configuration (``--config``, ``DEFENDER_AGENT_*``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from defender_agent.agent import Agent
from defender_agent.cli._common import (
    COMMANDS,
    Parser,
    optional_bool,
    setup_logging,
    stop_on_signals,
)
from defender_agent.config import SETTINGS, load_config
from defender_agent.cycle import Collector
from defender_agent.state import StateDir, default_state_dir

__all__ = ["add_parser", "command"]

log = logging.getLogger(__name__)

# flag spellings -> setting name; the sample's spellings first
_FLAGS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("-e", "--endpoint"), "endpoint", {"metavar": "HOST"}),
    (("-r", "--rootCA", "--root-ca", "--ca-file"), "ca_file", {"metavar": "FILE"}),
    (("-c", "--cert", "--cert-file"), "cert_file", {"metavar": "FILE"}),
    (("-k", "--key", "--key-file"), "key_file", {"metavar": "FILE"}),
    (("-id", "--client_id", "--client-id"), "client_id", {"metavar": "ID"}),
    (("-t", "--thing_name", "--thing-name"), "thing_name", {"metavar": "NAME"}),
    (("-f", "--format"), "format", {"choices": ("json", "cbor")}),
    (("-i", "--interval"), "interval", {"metavar": "SECONDS"}),
    (("--port",), "port", {"metavar": "PORT"}),
    (("-se", "--signing-region", "--signing_region"), "signing_region", {"metavar": "REGION"}),
    (("-ph", "--proxy-host", "--proxy_host"), "proxy_host", {"metavar": "HOST"}),
    (("-pp", "--proxy-port", "--proxy_port"), "proxy_port", {"metavar": "PORT"}),
    (("--proxy-username",), "proxy_username", {"metavar": "USER"}),
    (("--proxy-password",), "proxy_password", {"metavar": "PASSWORD"}),
    (("--splay",), "splay", {"metavar": "SECONDS"}),
    (("--state-dir",), "state_dir", {"metavar": "DIR"}),
    (("--proc-root",), "proc_root", {"metavar": "DIR"}),
    (("-l", "--list-size"), "list_size", {"metavar": "N"}),
    (("--socket-source",), "socket_source", {"choices": ("auto", "proc", "netlink", "psutil")}),
    (("--log-level",), "log_level", {"choices": ("debug", "info", "warning", "error")}),
    (("--log-format",), "log_format", {"choices": ("text", "json")}),
]
_SWITCHES: list[tuple[tuple[str, ...], str]] = [
    (("-s", "--short_tags", "--short-names"), "short_names"),
    (("-d", "--dryrun", "--dry-run"), "dry_run"),
    (("-cm", "--include-custom-metrics", "--custom-metrics"), "include_custom_metrics"),
    (("--mqtt5",), "mqtt5"),
    (("--allow-short-interval",), "allow_short_interval"),
    (("--include-loopback-connections",), "include_loopback_connections"),
]


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``run`` to the command line."""
    helps = {s.name: s.help for s in SETTINGS}
    p = sub.add_parser(
        "run",
        help=COMMANDS["run"][1],
        description="Collect metrics and publish a Device Defender report every interval over "
        "MQTT (mutual TLS on 8883, 443 with ALPN, or WebSocket with SigV4, optionally through "
        "an HTTP proxy), match the service's accepted/rejected replies and keep counters in "
        "the state directory (see 'defender-agent status'). Options override "
        "DEFENDER_AGENT_* variables, which override the config file.",
        fromfile_prefix_chars="@",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config file (default: /etc/defender-agent/config.toml if present)",
    )
    for flags, name, extra in _FLAGS:
        p.add_argument(*flags, dest=name, default=None, help=helps[name], **extra)
    for flags, name in _SWITCHES:
        p.add_argument(
            *flags, dest=name, action="store_const", const=True, default=None, help=helps[name]
        )
    p.add_argument(
        "-w",
        "--use-websocket",
        "--websocket",
        dest="websocket",
        nargs="?",
        const="true",
        default=None,
        type=optional_bool,
        metavar="BOOL",
        help=helps["websocket"],
    )
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT."""
    names = [name for _, name, _ in _FLAGS] + [name for _, name in _SWITCHES] + ["websocket"]
    flags = {name: getattr(args, name) for name in names}
    config = load_config(flags, args.config)
    setup_logging(config.log_level, config.log_format, timestamps=True)
    log.debug("configuration: %s", config.describe())
    state = StateDir(config.state_dir or default_state_dir())
    transport = None
    if not config.dry_run:
        from defender_agent.transport.mqtt import MqttTransport  # noqa: PLC0415 - awscrt
        from defender_agent.transport.tls import check_tls_files  # noqa: PLC0415

        settings = config.mqtt_settings()
        for warning in check_tls_files(settings):
            log.warning("%s", warning)
        transport = MqttTransport(settings)
    if config.interval < 300:
        log.warning(
            "interval %d s is under Device Defender's 300 s: reports will be throttled",
            config.interval,
        )
    collector = Collector(config.collector_config(), state_dir=state.path)
    agent = Agent(config, collector, transport, state)

    stop_on_signals(agent.stop)
    code = agent.run()
    if agent.fatal:
        print(f"defender-agent: error: {agent.fatal}", file=sys.stderr)
    return code
