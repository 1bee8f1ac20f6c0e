"""``defender-agent greengrass``: the agent as a Greengrass v2 component, over the nucleus's IPC.

Started by the component recipe's ``run`` step (``packaging/greengrass/``). The
settings come from the component configuration (the TOML file's sections and
keys, plus ``SampleIntervalSeconds``), updated live; options and
``DEFENDER_AGENT_*`` variables override them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from defender_agent.cli._common import COMMANDS, Parser, setup_logging, stop_on_signals
from defender_agent.cli._settings import SettingOptions

__all__ = ["add_parser", "command"]

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``greengrass`` to the command line."""
    p = sub.add_parser(
        "greengrass",
        help=COMMANDS["greengrass"][1],
        description="Run as a Greengrass v2 component (Java nucleus or nucleus lite): publish "
        "Device Defender reports through the nucleus's IPC (PublishToIoTCore at least once, "
        "replies by SubscribeToIoTCore), with the settings of the component configuration, "
        "applied live when a deployment changes them. Needs the variables the nucleus sets "
        "(AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT, SVCUID, AWS_IOT_THING_NAME). "
        "See docs/greengrass.md.",
    )
    o = SettingOptions(p)
    o.common()
    o.add("state_dir", "--state-dir", metavar="DIR")
    o.add("proc_root", "--proc-root", metavar="DIR")
    o.switch("allow_short_interval", "--allow-short-interval")
    o.finish()
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Run the component until SIGTERM/SIGINT."""
    from defender_agent.greengrass.component import Component  # noqa: PLC0415
    from defender_agent.transport.greengrass import GreengrassTransport  # noqa: PLC0415

    level = args.log_level or os.environ.get("DEFENDER_AGENT_LOG_LEVEL") or "info"
    setup_logging(level, args.log_format or "text", timestamps=True)
    labels: dict[str, str] = args.setting_labels
    flags = {name: getattr(args, name, None) for name in labels}
    flags.pop("log_level", None)  # taken above, from the option or the variable
    component = Component(
        GreengrassTransport(), flags=flags, config_file=args.config, labels=labels
    )
    stop_on_signals(component.stop)
    code = component.run()
    if component.agent is not None and component.agent.fatal:
        print(f"defender-agent: error: {component.agent.fatal}", file=sys.stderr)
    return code
