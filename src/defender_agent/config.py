"""Agent configuration: one table of settings, read from a TOML file, the environment and flags.

Precedence: command-line flags > ``DEFENDER_AGENT_*`` environment variables >
the TOML file (``--config FILE``, else ``/etc/defender-agent/config.toml`` when
it exists) > defaults. Every setting has one flat name, used as the
environment variable (``DEFENDER_AGENT_`` + upper case) and, inside its
section, as the TOML key::

    [mqtt]
    endpoint = "abc123-ats.iot.eu-west-1.amazonaws.com"   # DEFENDER_AGENT_ENDPOINT
    [agent]
    interval = 300                                          # DEFENDER_AGENT_INTERVAL
    [logging]
    level = "info"                                          # DEFENDER_AGENT_LOG_LEVEL

Unknown keys and bad values are rejected with a :class:`ConfigError` that
names the key and where it came from. ``examples/agent.toml`` documents every
setting.
"""

from __future__ import annotations

import difflib
import math
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from defender_agent.custom import CustomMetricsConfig, parse_custom_metrics_table
from defender_agent.cycle import CollectorConfig
from defender_agent.errors import ConfigError
from defender_agent.procfs import default_proc_root
from defender_agent.rules import validate_thing_name
from defender_agent.transport.base import MqttSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.9/3.10
    import tomli as tomllib

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "SETTINGS",
    "AgentConfig",
    "Setting",
    "config_file_path",
    "custom_metrics_table",
    "load_config",
    "read_toml",
    "validate_thing_name",
]

DEFAULT_CONFIG_FILE = Path("/etc/defender-agent/config.toml")
MIN_INTERVAL_S = 300
ENV_PREFIX = "DEFENDER_AGENT_"

Converter = Callable[[object], Any]


# --------------------------------------------------------------------------- value parsers
# The parsers raise ValueError for any bad value, type included: load_config turns it into a
# ConfigError naming the key and its source.
def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _optional_text(value: object) -> Optional[str]:
    text = _text(value).strip()
    return text or None


def _path(value: object) -> Optional[Path]:
    text = _optional_text(value)
    return Path(text).expanduser() if text else None


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    raise ValueError(f"expected true or false, got {value!r}")


def _optional_bool(value: object) -> Optional[bool]:
    if isinstance(value, str) and value.strip().lower() in ("", "auto"):
        return None
    return _bool(value)


def _int(low: int, high: int) -> Converter:
    def convert(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(f"expected a whole number, got {value!r}") from None
        if not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value}")
        return value

    return convert


def _seconds(low: float, high: float) -> Converter:
    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"expected a number of seconds, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {value!r}") from None
        if not math.isfinite(number) or not low <= number <= high:
            raise ValueError(f"expected {low:g} to {high:g} seconds, got {value!r}")
        return number

    return convert


def _choice(*options: str) -> Converter:
    def convert(value: object) -> str:
        text = _text(value).strip().lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return text

    return convert


def _patterns(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [_text(item).strip() for item in value]
    else:
        raise ValueError(f"expected a list of glob patterns, got {type(value).__name__}")
    return tuple(item for item in items if item)


def _thing(value: object) -> Optional[str]:
    text = _optional_text(value)
    if not text:
        return None
    try:
        return validate_thing_name(text)
    except ValueError as exc:
        raise ValueError(f"invalid thing name {text!r}: {exc}") from None


# --------------------------------------------------------------------------- the settings table
@dataclass(frozen=True)
class Setting:
    """One configuration setting: its flat name, TOML section, parser and default."""

    name: str
    section: str
    convert: Converter
    default: Any
    help: str
    key: str = ""  # the TOML key inside the section (default: the name)
    secret: bool = False

    @property
    def toml_key(self) -> str:
        """The key inside its TOML section."""
        return self.key or self.name

    @property
    def env(self) -> str:
        """The environment variable."""
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    # --- section mqtt
    Setting("endpoint", "mqtt", _optional_text, None, "AWS IoT data endpoint (or broker host)"),
    Setting("port", "mqtt", _int(1, 65535), None, "broker port (default 8883; 443 for WebSocket)"),
    Setting("ca_file", "mqtt", _path, None, "CA bundle that signs the server certificate"),
    Setting("cert_file", "mqtt", _path, None, "device certificate (PEM)"),
    Setting("key_file", "mqtt", _path, None, "device private key (PEM)"),
    Setting("client_id", "mqtt", _optional_text, None, "MQTT client id (default: host name)"),
    Setting("websocket", "mqtt", _bool, False, "MQTT over WebSocket, signed with SigV4"),
    Setting("signing_region", "mqtt", _optional_text, None, "SigV4 region (default: endpoint's)"),
    Setting("alpn", "mqtt", _optional_bool, None, "offer ALPN x-amzn-mqtt-ca (auto: port 443)"),
    Setting("tls", "mqtt", _bool, True, "TLS; false only for a local plain broker"),
    Setting("mqtt5", "mqtt", _bool, False, "MQTT 5 instead of MQTT 3.1.1"),
    Setting("keep_alive", "mqtt", _int(30, 1200), 1200, "MQTT keep-alive in seconds"),
    Setting("proxy_host", "mqtt", _optional_text, None, "HTTP proxy host (CONNECT)"),
    Setting("proxy_port", "mqtt", _int(1, 65535), 8080, "HTTP proxy port"),
    Setting("proxy_username", "mqtt", _optional_text, None, "HTTP proxy basic-auth user"),
    Setting("proxy_password", "mqtt", _optional_text, None, "HTTP proxy password", secret=True),
    # --- section agent
    Setting("thing_name", "agent", _thing, None, "thing to report for (default: client id)"),
    Setting("format", "agent", _choice("json", "cbor"), "json", "report encoding"),
    Setting("interval", "agent", _int(1, 86400), 300, "seconds between reports (>= 300)"),
    Setting("allow_short_interval", "agent", _bool, False, "allow intervals under 300 s"),
    Setting("splay", "agent", _seconds(0, 3600), 30.0, "random start delay, at most seconds"),
    Setting("short_names", "agent", _bool, False, "short field names"),
    Setting("dry_run", "agent", _bool, False, "collect and print, no network"),
    Setting("include_custom_metrics", "agent", _bool, False, "add the cpu_usage custom metric"),
    Setting("state_dir", "agent", _path, None, "state directory"),
    Setting(
        "resume_window",
        "agent",
        _seconds(0, 86400),
        0.0,
        "reuse a saved baseline this recent after a restart (0: 1.5 x interval)",
    ),
    # --- section collector
    Setting(
        "proc_root", "collector", _path, None, "proc filesystem (default $PROCFS_PATH or /proc)"
    ),
    Setting("list_size", "collector", _int(1, 100000), 100, "most entries per list"),
    Setting(
        "include_loopback_connections", "collector", _bool, False, "report connections to loopback"
    ),
    Setting("interfaces_include", "collector", _patterns, ("*",), "interfaces in network_stats"),
    Setting(
        "interfaces_exclude",
        "collector",
        _patterns,
        ("lo",),
        "interfaces left out of network_stats",
    ),
    Setting(
        "wildcard_interface",
        "collector",
        _optional_text,
        None,
        "interface label for wildcard binds",
    ),
    Setting(
        "socket_source",
        "collector",
        _choice("auto", "proc", "netlink", "psutil"),
        "auto",
        "where sockets are read",
    ),
    # --- section logging
    Setting(
        "log_level",
        "logging",
        _choice("debug", "info", "warning", "error"),
        "info",
        "log verbosity",
        key="level",
    ),
    Setting(
        "log_format", "logging", _choice("text", "json"), "text", "log line format", key="format"
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}
_BY_SECTION_KEY = {(s.section, s.toml_key): s for s in SETTINGS}
_SECTIONS = sorted({s.section for s in SETTINGS})


@dataclass(frozen=True)
class AgentConfig:
    """The resolved configuration (every setting, by flat name), plus where each came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)
    custom_metrics: CustomMetricsConfig = field(default_factory=CustomMetricsConfig)

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - values are typed by the table
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def describe(self) -> dict[str, Any]:
        """The values with secrets masked (for ``--log-level debug`` and ``status``)."""
        return {
            s.name: ("***" if s.secret and self.values.get(s.name) else self.values.get(s.name))
            for s in SETTINGS
        }

    # derived values -----------------------------------------------------------------
    @property
    def effective_client_id(self) -> str:
        """The client id, defaulting to the host name."""
        return str(self.values.get("client_id") or socket.gethostname())

    @property
    def effective_thing_name(self) -> str:
        """The thing name, defaulting to the client id (as in the public sample)."""
        return str(self.values.get("thing_name") or self.effective_client_id)

    def mqtt_settings(self) -> MqttSettings:
        """The transport settings this configuration describes."""
        v = self.values
        return MqttSettings(
            endpoint=str(v["endpoint"] or ""),
            port=self.effective_port,
            client_id=self.effective_client_id,
            ca_file=v["ca_file"],
            cert_file=v["cert_file"],
            key_file=v["key_file"],
            websocket=bool(v["websocket"]),
            signing_region=v["signing_region"],
            alpn=v["alpn"],
            use_tls=bool(v["tls"]),
            proxy_host=v["proxy_host"],
            proxy_port=int(v["proxy_port"]),
            proxy_username=v["proxy_username"],
            proxy_password=v["proxy_password"],
            mqtt5=bool(v["mqtt5"]),
            keep_alive_s=int(v["keep_alive"]),
        )

    def collector_config(self) -> CollectorConfig:
        """The collector settings this configuration describes."""
        v = self.values
        return CollectorConfig(
            proc_root=v["proc_root"] or default_proc_root(),
            list_size=int(v["list_size"]),
            include_custom_metrics=bool(v["include_custom_metrics"]),
            include_loopback_connections=bool(v["include_loopback_connections"]),
            interfaces_include=tuple(v["interfaces_include"]),
            interfaces_exclude=tuple(v["interfaces_exclude"]),
            wildcard_interface=v["wildcard_interface"],
            socket_source=v["socket_source"],
            custom_metrics=self.custom_metrics,
        )

    @property
    def effective_port(self) -> int:
        """The port, defaulting to 443 for WebSocket and 8883 otherwise."""
        port = self.values.get("port")
        if port:
            return int(port)
        return 443 if self.values.get("websocket") else 8883


def _unknown(where: str, key: str, choices: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def config_file_path(
    config_file: Optional[Path] = None, environ: Optional[Mapping[str, str]] = None
) -> Optional[Path]:
    """The configuration file to read (``None``: no file).

    ``config_file`` when given, else ``$DEFENDER_AGENT_CONFIG``, else the default
    ``/etc/defender-agent/config.toml`` when it exists.
    """
    env = os.environ if environ is None else environ
    if config_file is not None:
        return config_file
    if env.get(ENV_PREFIX + "CONFIG"):
        return Path(env[ENV_PREFIX + "CONFIG"])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; one-line :class:`ConfigError` when it cannot be read or parsed."""
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def custom_metrics_table(data: dict[str, Any], path: Path) -> CustomMetricsConfig:
    """Take the ``[custom_metrics]`` table out of a config document and parse it."""
    raw_custom = data.pop("custom_metrics", {})
    if not isinstance(raw_custom, dict):
        raise ConfigError(f"{path}: [custom_metrics] must be a table")
    return parse_custom_metrics_table(raw_custom, str(path))


def _read_file(path: Path) -> tuple[dict[str, tuple[Any, str]], CustomMetricsConfig]:
    data = read_toml(path)
    custom = custom_metrics_table(data, path)
    found: dict[str, tuple[Any, str]] = {}
    for section, table in data.items():
        if section not in _SECTIONS:
            raise _unknown(str(path), section, [*_SECTIONS, "custom_metrics"])
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, value in table.items():
            setting = _BY_SECTION_KEY.get((section, key))
            if setting is None:
                keys = [k for (sec, k) in _BY_SECTION_KEY if sec == section]
                raise _unknown(str(path), f"{section}.{key}", [f"{section}.{k}" for k in keys])
            found[setting.name] = (value, f"{path}: {section}.{key}")
    return found, custom


def _read_env(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    known = {s.env: s for s in SETTINGS}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "CONFIG":
            continue
        setting = known.get(var)
        if setting is None:
            raise _unknown("environment", var, list(known))
        found[setting.name] = (value, f"environment {var}")
    return found


def load_config(
    flags: Mapping[str, Any],
    config_file: Optional[Path] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> AgentConfig:
    """Resolve the configuration.

    Args:
        flags: values given on the command line, by flat name (``None`` = not given).
        config_file: an explicit ``--config`` file (must exist); ``None`` reads
            ``$DEFENDER_AGENT_CONFIG`` or ``/etc/defender-agent/config.toml`` if present.
        environ: the environment (default ``os.environ``).

    Raises:
        ConfigError: an unknown key, a bad value or an inconsistent combination,
            in one line that names the key and its source.
    """
    env = os.environ if environ is None else environ
    layers: list[dict[str, tuple[Any, str]]] = []
    path = config_file_path(config_file, env)
    custom = CustomMetricsConfig()
    if path is not None:
        found, custom = _read_file(path)
        layers.append(found)
    layers.append(_read_env(env))
    layers.append(
        {
            name: (value, f"option --{name.replace('_', '-')}")
            for name, value in flags.items()
            if value is not None
        }
    )
    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    sources: dict[str, str] = {s.name: "default" for s in SETTINGS}
    for layer in layers:
        for name, (raw, where) in layer.items():
            setting = _BY_NAME[name]
            try:
                values[name] = setting.convert(raw)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            sources[name] = where
    config = AgentConfig(values, sources, custom)
    _check(config)
    return config


def _check(config: AgentConfig) -> None:
    v, src = config.values, config.sources
    if v["interval"] < MIN_INTERVAL_S and not v["allow_short_interval"]:
        raise ConfigError(
            f"{src['interval']}: interval {v['interval']} s is under the {MIN_INTERVAL_S} s "
            "Device Defender allows per thing; use --allow-short-interval for testing"
        )
    try:
        validate_thing_name(config.effective_thing_name)
    except ValueError as exc:
        origin = src["thing_name"] if v["thing_name"] else f"thing name from {src['client_id']}"
        raise ConfigError(f"{origin}: invalid thing name: {exc}") from None
    if v["dry_run"]:
        return
    if not v["endpoint"]:
        raise ConfigError("no endpoint: give --endpoint, DEFENDER_AGENT_ENDPOINT or mqtt.endpoint")
    if v["tls"] and not v["websocket"]:
        for name in ("cert_file", "key_file"):
            if not v[name]:
                flag = {"cert_file": "--cert", "key_file": "--key"}[name]
                raise ConfigError(f"no {name}: mutual TLS needs {flag} (or mqtt.{name})")
    if (v["proxy_username"] is None) != (v["proxy_password"] is None):
        raise ConfigError("proxy_username and proxy_password go together")
