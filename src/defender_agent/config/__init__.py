"""Configuration: typed sections from one table, read from a TOML file, the environment and flags.

Precedence: command-line options > ``DEFENDER_AGENT_*`` environment variables > the
TOML file (``--config FILE``, else ``$DEFENDER_AGENT_CONFIG``, else
``/etc/defender-agent/config.toml`` when it exists) > defaults. Each setting is a field
of a frozen section dataclass (:mod:`.sections`) whose default is the default; its TOML
key is the field name inside the section, and its environment variable is
``DEFENDER_AGENT_`` + its flat name in upper case::

    [mqtt]
    endpoint = "abc123-ats.iot.eu-west-1.amazonaws.com"   # DEFENDER_AGENT_ENDPOINT
    [agent]
    interval = 300                                          # DEFENDER_AGENT_INTERVAL
    [logging]
    level = "info"                                          # DEFENDER_AGENT_LOG_LEVEL
    [service]
    broker = "localhost"                                    # DEFENDER_AGENT_SERVICE_BROKER

Unknown keys and bad values are rejected with a :class:`~defender_agent.errors.ConfigError`
that names the key and where it came from. ``examples/agent.toml`` and
``examples/service.toml`` show every setting with its default.

>>> config = load_config({"dry_run": True}, environ={})
>>> config.agent.interval, config.collector.list_size, config.service.min_delay
(300, 100, 300.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from defender_agent.config.load import (
    DEFAULT_CONFIG_FILE,
    MIN_INTERVAL_S,
    Config,
    check_plaintext,
    config_file_path,
    custom_metrics_table,
    is_loopback,
    load_config,
    plaintext_warning,
    read_toml,
)
from defender_agent.config.sections import (
    DEFAULT_LIST_SIZE,
    ENV_PREFIX,
    AgentSection,
    CollectorConfig,
    LoggingSection,
    MqttSection,
    Setting,
)
from defender_agent.config.table import all_settings, setting_named
from defender_agent.rules import validate_thing_name

if TYPE_CHECKING:
    from defender_agent.config.extra_sections import (
        DetectSection,
        HttpSection,
        SandboxSection,
        ServiceSection,
    )

    SETTINGS: tuple[Setting, ...]

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_LIST_SIZE",
    "ENV_PREFIX",
    "MIN_INTERVAL_S",
    "SETTINGS",
    "AgentSection",
    "CollectorConfig",
    "Config",
    "DetectSection",
    "HttpSection",
    "LoggingSection",
    "MqttSection",
    "SandboxSection",
    "ServiceSection",
    "Setting",
    "all_settings",
    "check_plaintext",
    "config_file_path",
    "custom_metrics_table",
    "is_loopback",
    "load_config",
    "plaintext_warning",
    "read_toml",
    "setting_named",
    "validate_thing_name",
]


def __getattr__(name: str) -> object:
    """``SETTINGS`` (every setting) and the service's and sandbox's sections, on first use."""
    if name == "SETTINGS":
        return all_settings()
    if name in ("ServiceSection", "SandboxSection", "HttpSection", "DetectSection"):
        from defender_agent.config import extra_sections  # noqa: PLC0415

        return getattr(extra_sections, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
