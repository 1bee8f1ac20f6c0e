"""``defender-agent run``: the agent — report every interval to Device Defender and track replies.

Accepts the public sample's flags (``-e -r -c -k -id -t -f -i -s -d -cm -w -se -ph -pp``)
and reads the rest from the configuration (``--config``, ``DEFENDER_AGENT_*``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from defender_agent.agent import Agent
from defender_agent.cli._common import COMMANDS, Parser, setup_logging, stop_on_signals
from defender_agent.cli._settings import SettingOptions, load_for
from defender_agent.config import MIN_INTERVAL_S, plaintext_warning
from defender_agent.cycle import Collector
from defender_agent.state import StateDir, default_state_dir

__all__ = ["add_options", "add_parser", "command"]

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``run`` to the command line."""
    p = sub.add_parser(
        "run",
        help=COMMANDS["run"][1],
        description="Collect metrics and publish a Device Defender report every interval over "
        "MQTT (mutual TLS on 8883, 443 with ALPN, or WebSocket with SigV4, optionally through "
        "an HTTP proxy), match the service's accepted/rejected replies and keep counters in "
        "the state directory (see 'defender-agent status'). Options override "
        "DEFENDER_AGENT_* variables, which override the config file; every setting is shown "
        "in examples/agent.toml.",
        fromfile_prefix_chars="@",
    )
    add_options(p)
    p.set_defaults(func=command)


def add_options(
    p: argparse.ArgumentParser, format_flags: tuple[str, ...] = ("-f", "--format")
) -> None:
    """The options of ``run`` (``doctor`` takes the same ones, to check the same setup).

    Args:
        p: the subcommand's parser.
        format_flags: the spellings of the report format option (``doctor`` has a
            ``--format`` of its own, for its output).
    """
    o = SettingOptions(p)
    o.common()
    # the sample's spellings first
    o.add("endpoint", "-e", "--endpoint", metavar="HOST")
    o.add("ca_file", "-r", "--rootCA", "--root-ca", "--ca-file", metavar="FILE")
    o.add("cert_file", "-c", "--cert", "--cert-file", metavar="FILE")
    o.add("key_file", "-k", "--key", "--key-file", metavar="FILE")
    o.add("client_id", "-id", "--client_id", "--client-id", metavar="ID")
    o.add("thing_name", "-t", "--thing_name", "--thing-name", metavar="NAME")
    o.add("format", *format_flags, choices=("json", "cbor"))
    o.add("interval", "-i", "--interval", metavar="SECONDS")
    o.switch("short_names", "-s", "--short_tags", "--short-names")
    o.switch("dry_run", "-d", "--dryrun", "--dry-run")
    o.switch("include_custom_metrics", "-cm", "--include-custom-metrics", "--custom-metrics")
    o.add(
        "websocket",
        "-w",
        "--use-websocket",
        "--websocket",
        nargs="?",
        const="true",
        metavar="BOOL",
    )
    o.add("signing_region", "-se", "--signing-region", "--signing_region", metavar="REGION")
    o.add("proxy_host", "-ph", "--proxy-host", "--proxy_host", metavar="HOST")
    o.add("proxy_port", "-pp", "--proxy-port", "--proxy_port", metavar="PORT")
    o.add("proxy_username", "--proxy-username", metavar="USER")
    o.add("proxy_password", "--proxy-password", metavar="PASSWORD")
    o.add("port", "--port", metavar="PORT")
    o.switch("insecure_plaintext", "--insecure-plaintext")
    o.switch("mqtt5", "--mqtt5")
    o.add("keep_alive", "--keep-alive", metavar="SECONDS")
    o.switch("allow_short_interval", "--allow-short-interval")
    o.add("splay", "--splay", metavar="SECONDS")
    o.add("state_dir", "--state-dir", metavar="DIR")
    o.add("resume_window", "--resume-window", metavar="SECONDS")
    o.add("proc_root", "--proc-root", metavar="DIR")
    o.add("list_size", "-l", "--list-size", metavar="N")
    o.switch("include_loopback_connections", "--include-loopback-connections")
    o.add("socket_source", "--socket-source", choices=("auto", "proc", "netlink", "psutil"))
    o.finish()


def command(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT."""
    config = load_for(args, "run")
    setup_logging(config.effective_log_level("run"), config.logging.format, timestamps=True)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("configuration: %s", config.describe())
    state = StateDir(config.agent.state_dir or default_state_dir())
    transport = None
    if not config.agent.dry_run:
        from defender_agent.transport.mqtt import MqttTransport  # noqa: PLC0415 - awscrt
        from defender_agent.transport.tls import check_tls_files  # noqa: PLC0415

        settings = config.mqtt_settings()
        if not settings.use_tls:  # only to a loopback endpoint, the loader checked
            log.warning(plaintext_warning(settings.endpoint, settings.port))
        # unusable TLS files fail here, before the agent starts (TlsSetupError, one line);
        # the warnings (a key others can read) are the transport's to log, once
        check_tls_files(settings)
        transport = MqttTransport(settings)
    if config.agent.interval < MIN_INTERVAL_S:
        log.warning(
            "interval %d s is under Device Defender's %d s: reports will be throttled",
            config.agent.interval,
            MIN_INTERVAL_S,
        )
    collector = Collector(config.collector, state_dir=state.path)
    agent = Agent(config, collector, transport, state)

    stop_on_signals(agent.stop)
    code = agent.run()
    if agent.fatal:
        print(f"defender-agent: error: {agent.fatal}", file=sys.stderr)
    return code
