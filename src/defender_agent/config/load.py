"""The loader: defaults < TOML file < ``DEFENDER_AGENT_*`` environment < command-line options.

Every command (``run``, ``collect``, ``service``, ``sandbox``, ``status``) reads its
configuration here, and gets a frozen, typed :class:`Config`. The file is ``--config
FILE``, else ``$DEFENDER_AGENT_CONFIG``, else ``/etc/defender-agent/config.toml`` when it
exists. Unknown keys and bad values are a one-line :class:`~defender_agent.errors.ConfigError`
naming the key and where it came from.

>>> config = load_config({"dry_run": True, "interval": "600"}, environ={})
>>> config.agent.interval, config.sources["interval"], config.sources["format"]
(600, 'option --interval', 'default')
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from defender_agent.config.sections import (
    CORE_SETTINGS,
    ENV_PREFIX,
    EXTRA_SECTIONS,
    SECTIONS,
    AgentSection,
    CollectorConfig,
    LoggingSection,
    LogLevel,
    MqttSection,
    Setting,
)
from defender_agent.config.table import all_settings
from defender_agent.custom.settings import CustomMetricsConfig
from defender_agent.errors import ConfigError
from defender_agent.rules import plain_ip, validate_thing_name

if TYPE_CHECKING:
    from dataclasses import dataclass as record
    from dataclasses import field

    from defender_agent.config.extra_sections import (
        DetectSection,
        HttpSection,
        SandboxSection,
        ServiceSection,
    )
    from defender_agent.transport.base import MqttSettings
else:
    from defender_agent._record import field, record

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "MIN_INTERVAL_S",
    "Config",
    "check_plaintext",
    "config_file_path",
    "custom_metrics_table",
    "is_loopback",
    "load_config",
    "plaintext_warning",
    "read_toml",
]

DEFAULT_CONFIG_FILE = Path("/etc/defender-agent/config.toml")
MIN_INTERVAL_S = 300
CONFIG_ENV = ENV_PREFIX + "CONFIG"

#: The log level of a command when none is configured.
_LOG_LEVELS: dict[str, LogLevel] = {"run": "info", "service": "info"}

_CORE_NAMES = {s.name: s for s in CORE_SETTINGS}
_CORE_WHERE = {(s.section, s.key): s for s in CORE_SETTINGS}
_CORE_ENV = {s.env: s for s in CORE_SETTINGS}
_EXTRA_NAMES = {section for section, _ in EXTRA_SECTIONS}
_FILE_SECTIONS = sorted({s.section for s in CORE_SETTINGS} | _EXTRA_NAMES | {"custom_metrics"})


def _all_by(key: str) -> dict[Any, Setting]:
    """Every setting (the service's and sandbox's sections imported) by name, where or env."""
    if key == "name":
        return {s.name: s for s in all_settings()}
    if key == "where":
        return {(s.section, s.key): s for s in all_settings()}
    return {s.env: s for s in all_settings()}


@record(frozen=True)
class Config:
    """The resolved configuration: one typed section per table, and where each value came from.

    Attributes:
        mqtt: how the agent reaches AWS IoT.
        agent: what the agent reports and how often.
        collector: what a collection cycle reads (with the ``[custom_metrics]`` table).
        logging: log lines.
        service: the local Device Defender service (built on first use).
        sandbox: the sandbox (built on first use).
        sources: flat setting name -> ``"default"``, ``"<file>: section.key"``,
            ``"environment VAR"`` or ``"option --flag"``; a setting of the service or
            the sandbox that is not listed has its default.
        extra: the values given for the service's and the sandbox's sections, parsed:
            section -> field -> value.
    """

    mqtt: MqttSection = field(default_factory=MqttSection)
    agent: AgentSection = field(default_factory=AgentSection)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    logging: LoggingSection = field(default_factory=LoggingSection)
    sources: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    @cached_property
    def service(self) -> ServiceSection:
        """``[service]``: the local Device Defender service."""
        from defender_agent.config.extra_sections import ServiceSection  # noqa: PLC0415

        return ServiceSection(**self.extra.get("service", {}))

    @cached_property
    def http(self) -> HttpSection:
        """``[http]``: the service's HTTP server."""
        from defender_agent.config.extra_sections import HttpSection  # noqa: PLC0415

        return HttpSection(**self.extra.get("http", {}))

    @cached_property
    def detect(self) -> DetectSection:
        """``[detect]``: Detect's evaluation, violations and alerts."""
        from defender_agent.config.extra_sections import DetectSection  # noqa: PLC0415

        return DetectSection(**self.extra.get("detect", {}))

    @cached_property
    def sandbox(self) -> SandboxSection:
        """``[sandbox]``: the sandbox."""
        from defender_agent.config.extra_sections import SandboxSection  # noqa: PLC0415

        return SandboxSection(**self.extra.get("sandbox", {}))

    @property
    def custom_metrics(self) -> CustomMetricsConfig:
        """The ``[custom_metrics]`` table (part of the collector's settings)."""
        return self.collector.custom_metrics

    def value(self, setting: Setting) -> Any:  # noqa: ANN401 - one value of the table
        """The value of one setting of the table."""
        return getattr(getattr(self, setting.owner), setting.attribute)

    def describe(self) -> dict[str, Any]:
        """Every setting by flat name, secrets masked (for ``--log-level debug``)."""
        from defender_agent.dburl import mask_db_url  # noqa: PLC0415 - not for start-up

        out: dict[str, Any] = {}
        for s in all_settings():
            value = self.value(s)
            out[s.name] = "***" if s.secret and value else value
            if s.name == "service_db" and value:  # a URL that may hold a password
                out[s.name] = mask_db_url(value)
        return out

    def effective_log_level(self, command: str) -> LogLevel:
        """The configured log level, else the command's: info for run and service, else warning.

        >>> Config().effective_log_level("run"), Config().effective_log_level("collect")
        ('info', 'warning')
        """
        return self.logging.level or _LOG_LEVELS.get(command, "warning")

    # derived values -----------------------------------------------------------------
    @property
    def effective_client_id(self) -> str:
        """The client id, defaulting to the host name."""
        return self.mqtt.client_id or socket.gethostname()

    @property
    def effective_thing_name(self) -> str:
        """The thing name, defaulting to the client id (as in the public sample)."""
        return self.agent.thing_name or self.effective_client_id

    @property
    def effective_port(self) -> int:
        """The port, defaulting to 443 for WebSocket, 1883 for plain TCP and 8883 otherwise."""
        if self.mqtt.port:
            return self.mqtt.port
        if self.mqtt.insecure_plaintext:
            return 1883
        return 443 if self.mqtt.websocket else 8883

    def mqtt_settings(self) -> MqttSettings:
        """The transport settings of the agent's connection."""
        from defender_agent.transport.base import MqttSettings  # noqa: PLC0415 - not for collect

        m = self.mqtt
        return MqttSettings(
            endpoint=m.endpoint or "",
            port=self.effective_port,
            client_id=self.effective_client_id,
            ca_file=m.ca_file,
            cert_file=m.cert_file,
            key_file=m.key_file,
            websocket=m.websocket,
            signing_region=m.signing_region,
            alpn=m.alpn,
            use_tls=not m.insecure_plaintext,
            proxy_host=m.proxy_host,
            proxy_port=m.proxy_port,
            proxy_username=m.proxy_username,
            proxy_password=m.proxy_password,
            mqtt5=m.mqtt5,
            keep_alive_s=m.keep_alive,
        )

    def collector_config(self) -> CollectorConfig:
        """The collector's settings (the same as :attr:`collector`)."""
        return self.collector


# --------------------------------------------------------------------------- plain TCP
def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine by its spelling: 127.0.0.0/8, ::1 or ``localhost``.

    No name is resolved (a resolver could be told anything): only these spellings count.

    >>> [is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "[::1]", "LOCALHOST.")]
    [True, True, True, True]
    >>> is_loopback("::ffff:127.0.0.1")
    True
    >>> [is_loopback(h) for h in ("10.0.0.1", "localhost.example.com", "0.0.0.0", "", "::")]
    [False, False, False, False, False]
    """
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return plain_ip(address).is_loopback


def check_plaintext(host: str, where: str) -> None:
    """Refuse plain TCP (no TLS) to anything but a loopback endpoint.

    Args:
        host: the broker's host, as configured.
        where: the setting that asked for plain TCP and its source, for the message.

    Raises:
        ConfigError: ``host`` is not 127.0.0.0/8, ::1 or localhost.

    >>> check_plaintext("127.0.0.1", "option --insecure-plaintext")
    >>> check_plaintext("iot.example.com", "option --insecure-plaintext")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    defender_agent.errors.ConfigError: option --insecure-plaintext: plain TCP (no TLS) to ...
    """
    if not is_loopback(host):
        raise ConfigError(
            f"{where}: plain TCP (no TLS) to {host!r} refused: only a loopback endpoint "
            "(127.0.0.0/8, ::1, localhost) may be reached without TLS"
        )


def plaintext_warning(host: str, port: int) -> str:
    """The warning logged at every start over plain TCP.

    >>> plaintext_warning("127.0.0.1", 1883)
    'plain TCP to 127.0.0.1:1883: no TLS, no server verification'
    """
    return f"plain TCP to {host}:{port}: no TLS, no server verification"


# --------------------------------------------------------------------------- sources
def _did_you_mean(where: str, key: str, choices: list[str]) -> ConfigError:
    import difflib  # noqa: PLC0415 - only on an error

    close = difflib.get_close_matches(key, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def config_file_path(
    config_file: Optional[Path] = None, environ: Optional[Mapping[str, str]] = None
) -> Optional[Path]:
    """The configuration file to read (``None``: no file).

    ``config_file`` when given, else ``$DEFENDER_AGENT_CONFIG``, else the default
    ``/etc/defender-agent/config.toml`` when it exists.

    >>> config_file_path(None, {"DEFENDER_AGENT_CONFIG": "/tmp/a.toml"})
    PosixPath('/tmp/a.toml')
    """
    env = os.environ if environ is None else environ
    if config_file is not None:
        return config_file
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a one-line :class:`ConfigError` when it cannot be read or parsed."""
    if sys.version_info >= (3, 11):
        import tomllib  # noqa: PLC0415 - only when there is a file
    else:  # pragma: no cover - Python 3.9/3.10
        import tomli as tomllib  # noqa: PLC0415

    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def custom_metrics_table(data: dict[str, Any], path: Path) -> CustomMetricsConfig:
    """Take the ``[custom_metrics]`` table out of a config document and parse it."""
    raw_custom = data.pop("custom_metrics", None)
    if raw_custom is None:
        return CustomMetricsConfig()
    if not isinstance(raw_custom, dict):
        raise ConfigError(f"{path}: [custom_metrics] must be a table")
    from defender_agent.custom import parse_custom_metrics_table  # noqa: PLC0415

    return parse_custom_metrics_table(raw_custom, str(path))


# a layer: flat name -> (the setting, the raw value, where it came from, whether as text)
if TYPE_CHECKING:
    _Layer = dict[str, tuple[Setting, object, str, bool]]
else:  # Python 3.8 (Greengrass v1 Lambdas) cannot subscript built-in types at run time
    _Layer = dict


def _read_file(path: Path) -> tuple[_Layer, CustomMetricsConfig]:
    return _read_document(read_toml(path), path)


def _read_document(data: dict[str, Any], path: Path) -> tuple[_Layer, CustomMetricsConfig]:
    """A TOML-shaped document (sections of typed values), ``path`` naming where it came from."""
    custom = custom_metrics_table(data, path)
    found: _Layer = {}
    for section, table in data.items():
        if section not in _FILE_SECTIONS:
            raise _did_you_mean(str(path), section, _FILE_SECTIONS)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        by_where = _all_by("where") if section in _EXTRA_NAMES else _CORE_WHERE
        for key, value in table.items():
            setting = by_where.get((section, key))
            if setting is None:
                keys = [f"{sec}.{k}" for (sec, k) in by_where if sec == section]
                raise _did_you_mean(str(path), f"{section}.{key}", keys)
            found[setting.name] = (setting, value, f"{path}: {section}.{key}", False)
    return found, custom


def _read_env(environ: Mapping[str, str]) -> _Layer:
    found: _Layer = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        setting = _CORE_ENV.get(var)
        if setting is None:
            known = _all_by("env")
            setting = known.get(var)
            if setting is None:
                raise _did_you_mean("environment", var, [*known, CONFIG_ENV])
        found[setting.name] = (setting, value, f"environment {var}", True)
    return found


def _read_flags(flags: Mapping[str, object], labels: Mapping[str, str]) -> _Layer:
    found: _Layer = {}
    for name, value in flags.items():
        setting = _CORE_NAMES.get(name) or _all_by("name").get(name)
        if setting is None:
            raise ValueError(f"no setting named {name!r}")  # a programming error
        if value is None:
            continue
        label = labels.get(name) or "--" + name.replace("_", "-")
        found[name] = (setting, value, f"option {label}", True)
    return found


def load_config(
    flags: Optional[Mapping[str, object]] = None,
    config_file: Optional[Path] = None,
    environ: Optional[Mapping[str, str]] = None,
    *,
    command: str = "run",
    labels: Optional[Mapping[str, str]] = None,
    document: Optional[tuple[str, Mapping[str, Any]]] = None,
) -> Config:
    """Resolve the configuration.

    Args:
        flags: values given on the command line, by flat setting name (``None`` = not
            given); strings are parsed as the environment's are.
        config_file: an explicit ``--config`` file (must exist); ``None`` reads
            ``$DEFENDER_AGENT_CONFIG`` or ``/etc/defender-agent/config.toml`` if present.
        environ: the environment (default ``os.environ``).
        command: whose consistency rules to check: ``run`` (endpoint, certificate,
            interval, thing name), ``service`` (certificate), or any other (none).
        labels: the option spelling of a flag, for messages (default ``--flat-name``).
        document: ``(name, sections)``: settings shaped like the TOML file from elsewhere
            (a Greengrass component's configuration), above the file and below the
            environment; ``name`` prefixes its messages; its ``custom_metrics`` table,
            when present, replaces the file's.

    Raises:
        ConfigError: an unknown key, a bad value or an inconsistent combination,
            in one line that names the key and its source.
    """
    env = os.environ if environ is None else environ
    layers: list[_Layer] = []
    path = config_file_path(config_file, env)
    custom = CustomMetricsConfig()
    if path is not None:
        found, custom = _read_file(path)
        layers.append(found)
    if document is not None:
        found, document_custom = _read_document(dict(document[1]), Path(document[0]))
        layers.append(found)
        if "custom_metrics" in document[1]:
            custom = document_custom
    layers.append(_read_env(env))
    layers.append(_read_flags(flags or {}, labels or {}))
    chosen: dict[str, dict[str, Any]] = {owner: {} for owner, *_ in SECTIONS}
    chosen.update({section: {} for section in _EXTRA_NAMES})
    sources = {s.name: "default" for s in CORE_SETTINGS}
    for layer in layers:
        for name, (setting, raw, where, text) in layer.items():
            try:
                value = setting.convert(raw, text=text)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{where}: {exc}") from None
            chosen[setting.owner][setting.attribute] = value
            sources[name] = where
    core = {owner: cls(**chosen[owner]) for owner, cls, *_ in SECTIONS}
    core["collector"] = CollectorConfig(**chosen["collector"], custom_metrics=custom)
    extra = {section: chosen[section] for section in _EXTRA_NAMES if chosen[section]}
    config = Config(**core, sources=sources, extra=extra)
    if command == "run":
        _check_agent(config)
    elif command == "service":
        _check_service(config)
    return config


def _check_agent(config: Config) -> None:
    agent, mqtt, src = config.agent, config.mqtt, config.sources
    if agent.interval < MIN_INTERVAL_S and not agent.allow_short_interval:
        raise ConfigError(
            f"{src['interval']}: interval {agent.interval} s is under the {MIN_INTERVAL_S} s "
            "Device Defender allows per thing; use --allow-short-interval for testing"
        )
    try:
        validate_thing_name(config.effective_thing_name)
    except ValueError as exc:
        origin = src["thing_name"] if agent.thing_name else f"thing name from {src['client_id']}"
        raise ConfigError(f"{origin}: invalid thing name: {exc}") from None
    if agent.dry_run:
        return
    if not mqtt.endpoint:
        raise ConfigError("no endpoint: give --endpoint, DEFENDER_AGENT_ENDPOINT or mqtt.endpoint")
    if mqtt.insecure_plaintext:
        _check_plaintext_agent(config)
    elif not mqtt.websocket:
        for name, flag in (("cert_file", "--cert"), ("key_file", "--key")):
            if getattr(mqtt, name) is None:
                raise ConfigError(f"no {name}: mutual TLS needs {flag} (or mqtt.{name})")
    if (mqtt.proxy_username is None) != (mqtt.proxy_password is None):
        raise ConfigError("proxy_username and proxy_password go together")


def _check_plaintext_agent(config: Config) -> None:
    mqtt, where = config.mqtt, config.sources["insecure_plaintext"]
    check_plaintext(mqtt.endpoint or "", where)
    if mqtt.websocket:
        raise ConfigError(f"{where}: WebSocket (SigV4) needs TLS; drop one of the two")
    for name in ("ca_file", "cert_file", "key_file"):
        if getattr(mqtt, name) is not None:
            raise ConfigError(
                f"{where}: {config.sources[name]} is not used over plain TCP (no TLS); "
                f"remove mqtt.{name} or insecure_plaintext"
            )


def _check_service(config: Config) -> None:
    service = config.service
    if not service.tls:
        check_plaintext(service.broker, config.sources.get("service_tls", "service.tls"))
    if service.tls and (service.cert_file is None or service.key_file is None):
        raise ConfigError(
            "mutual TLS needs --cert-file and --key-file (service.cert_file and "
            "service.key_file), or --no-tls"
        )
    if service.mqtt5 and service.shared_group is not None:
        raise ConfigError(
            "--shared-group is supported with MQTT 3.1.1 only (MQTT 5 shared "
            "subscriptions are not tested yet)"
        )
