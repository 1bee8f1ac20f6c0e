"""The configuration sections: frozen typed dataclasses, and the settings table derived from them.

Each setting is a dataclass field whose default is THE default, and whose metadata
(:func:`setting`) carries its parser and help text. The settings table
(:func:`.table.all_settings`) is derived from the fields: the TOML keys, the
``DEFENDER_AGENT_*`` variables, the ``--help`` text and the checks of
``examples/*.toml`` all come from it. The sections of ``service`` and ``sandbox``
live in :mod:`.extra_sections`, imported when they are used.

The sections here are read by every start-up, so they are records
(:mod:`defender_agent._record`: dataclasses for the type checker and for
:mod:`dataclasses`' functions, without the cost of creating dataclasses at import);
:func:`setting` serves both records and the dataclasses of :mod:`.extra_sections`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, TypeVar

from defender_agent._record import MISSING, Field
from defender_agent.config import values
from defender_agent.custom.settings import CustomMetricsConfig
from defender_agent.procfs import default_proc_root

if TYPE_CHECKING:
    from dataclasses import dataclass as record
    from dataclasses import field

    from defender_agent.config.values import Converter
    from defender_agent.readers.sockets import SocketSource
    from defender_agent.report.serialize import ReportFormat
else:
    from defender_agent._record import field, record

__all__ = [
    "CORE_SETTINGS",
    "DEFAULT_LIST_SIZE",
    "ENV_PREFIX",
    "EXTRA_SECTIONS",
    "SECTIONS",
    "AgentSection",
    "CollectorConfig",
    "LoggingSection",
    "MqttSection",
    "Setting",
    "format_value",
    "setting",
    "table",
]

T = TypeVar("T")

ENV_PREFIX = "DEFENDER_AGENT_"
DEFAULT_LIST_SIZE = 100
_META = "defender_agent.setting"

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

_FORMATS: tuple[ReportFormat, ...] = ("json", "cbor")
_SOURCES: tuple[SocketSource, ...] = ("auto", "proc", "netlink", "psutil")
_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
_LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")


class _Meta:
    """A setting's parser and help, kept in its field's metadata."""

    __slots__ = ("convert", "help", "secret", "section", "shown")

    def __init__(
        self,
        convert: Converter[Any],
        help: str,
        section: str = "",  # the TOML section, when not the section the field belongs to
        shown: str = "",  # the default as shown, when it is computed or None
        secret: bool = False,
    ) -> None:
        self.convert = convert
        self.help = help
        self.section = section
        self.shown = shown
        self.secret = secret


def setting(
    default: T,
    convert: Converter[T],
    help: str,
    *,
    section: str = "",
    shown: str = "",
    secret: bool = False,
) -> T:
    """A section field: its default, its parser and its help (one line, no default in it).

    Args:
        default: the default value.
        convert: the parser of raw values (:mod:`defender_agent.config.values`).
        help: what the setting does; ``--help`` adds "(default: ...)".
        section: the TOML section when it is not the one of the dataclass (kept
            where earlier files had it).
        shown: the default as shown in help when it is computed at run time or None.
        secret: masked in :meth:`~defender_agent.config.Config.describe`.
    """
    meta = _Meta(convert, help, section, shown, secret)
    return Field(default, metadata={_META: meta})  # type: ignore[return-value]


def _setting_factory(
    factory: Callable[[], T], convert: Converter[T], help: str, *, shown: str
) -> T:
    meta = _Meta(convert, help, shown=shown)
    return Field(default_factory=factory, metadata={_META: meta})  # type: ignore[return-value]


# --------------------------------------------------------------------------- the sections
@record(frozen=True)
class MqttSection:
    """``[mqtt]``: how the agent reaches AWS IoT (or a compatible broker)."""

    endpoint: Optional[str] = setting(
        None, values.optional_text, "AWS IoT data endpoint (or broker host)"
    )
    port: Optional[int] = setting(
        None,
        values.integer(1, 65535),
        "broker port",
        shown="8883; 443 with websocket; 1883 with insecure_plaintext",
    )
    ca_file: Optional[Path] = setting(
        None,
        values.optional_path,
        "CA bundle that signs the server certificate",
        shown="the system store",
    )
    cert_file: Optional[Path] = setting(None, values.optional_path, "device certificate (PEM)")
    key_file: Optional[Path] = setting(None, values.optional_path, "device private key (PEM)")
    client_id: Optional[str] = setting(
        None, values.optional_text, "MQTT client id", shown="the host name"
    )
    websocket: bool = setting(False, values.boolean, "MQTT over WebSocket, signed with SigV4")
    signing_region: Optional[str] = setting(
        None, values.optional_text, "SigV4 region", shown="the endpoint's region"
    )
    alpn: Optional[bool] = setting(
        None,
        values.optional_boolean,
        "offer ALPN x-amzn-mqtt-ca with mutual TLS",
        shown="auto: on port 443",
    )
    tls: bool = setting(
        True,
        values.tls_required,
        "TLS, always on: false is refused (see insecure_plaintext for a broker on this host)",
    )
    insecure_plaintext: bool = setting(
        False,
        values.boolean,
        "plain TCP: no TLS, no server verification; only to a loopback endpoint "
        "(127.0.0.0/8, ::1, localhost), with a warning at every start",
    )
    mqtt5: bool = setting(False, values.boolean, "MQTT 5 instead of MQTT 3.1.1")
    keep_alive: int = setting(1200, values.integer(30, 1200), "MQTT keep-alive in seconds")
    proxy_host: Optional[str] = setting(None, values.optional_text, "HTTP proxy host (CONNECT)")
    proxy_port: int = setting(8080, values.integer(1, 65535), "HTTP proxy port")
    proxy_username: Optional[str] = setting(
        None, values.optional_text, "HTTP proxy basic-auth user"
    )
    proxy_password: Optional[str] = setting(
        None, values.optional_text, "HTTP proxy password", secret=True
    )


@record(frozen=True)
class AgentSection:
    """``[agent]``: what the agent reports, how often, and where it keeps its state."""

    thing_name: Optional[str] = setting(
        None, values.thing_name, "thing to report for", shown="the client id"
    )
    format: ReportFormat = setting("json", values.choice(_FORMATS), "report encoding")
    interval: int = setting(
        300,
        values.integer(1, 86400),
        "seconds between reports; Device Defender accepts one per thing every 300 s",
    )
    allow_short_interval: bool = setting(
        False, values.boolean, "allow intervals under 300 s (testing)"
    )
    splay: float = setting(
        30.0,
        values.seconds(0, 3600),
        "random delay before the first sample, up to this many seconds",
    )
    short_names: bool = setting(False, values.boolean, "short field names (hed, met, rid, ...)")
    dry_run: bool = setting(False, values.boolean, "collect and print reports, no network")
    state_dir: Optional[Path] = setting(
        None,
        values.optional_path,
        "state directory",
        shown="/var/lib/defender-agent as root, else ~/.local/state/defender-agent",
    )
    resume_window: float = setting(
        0.0,
        values.seconds(0, 86400),
        "reuse a saved baseline this recent (seconds) after a restart; 0: 1.5 x interval",
    )
    resubscribe_after: int = setting(
        3,
        values.integer(1, 1000),
        "after this many unanswered reports in a row, subscribe to the replies again;"
        " one more unanswered: reconnect",
    )


@record(frozen=True)
class CollectorConfig:
    """``[collector]``: what to collect and how to shape the report.

    Attributes:
        proc_root: the proc filesystem to read (``PROCFS_PATH`` or ``/proc`` by default).
        list_size: the most entries per list (ports, connections); the list's
            ``total`` still counts every entry.
        include_custom_metrics: add the ``cpu_usage`` custom metric (the sample's);
            ``include_custom_metrics`` of ``[agent]`` in the file.
        custom_metrics: the custom metrics to collect (built-ins, exec, plugins): the
            ``[custom_metrics]`` table.
        include_loopback_connections: report connections to 127.0.0.0/8 and ``::1``.
        interfaces_include: glob patterns of interfaces counted in ``network_stats``.
        interfaces_exclude: glob patterns of interfaces left out of ``network_stats``.
        wildcard_interface: the interface label for ports bound to ``0.0.0.0``/``::``;
            ``None`` leaves the key out.
        socket_source: ``auto`` (netlink for the live /proc, the files for
            another proc root, psutil where there is no /proc), ``proc``,
            ``netlink`` or ``psutil`` (the fallback, which also supplies the
            counters, interface addresses and CPU times).
    """

    proc_root: Path = _setting_factory(
        default_proc_root, values.directory, "proc filesystem", shown="$PROCFS_PATH or /proc"
    )
    list_size: int = setting(
        DEFAULT_LIST_SIZE,
        values.integer(1, 100_000),
        "the most entries in each port or connection list; its total still counts all",
    )
    include_custom_metrics: bool = setting(
        False, values.boolean, "add the cpu_usage custom metric", section="agent"
    )
    include_loopback_connections: bool = setting(
        False, values.boolean, "report connections to loopback (127.0.0.0/8, ::1)"
    )
    interfaces_include: tuple[str, ...] = setting(
        ("*",), values.patterns, "interfaces counted in network_stats (glob patterns)"
    )
    interfaces_exclude: tuple[str, ...] = setting(
        ("lo",), values.patterns, "interfaces left out of network_stats (glob patterns)"
    )
    wildcard_interface: Optional[str] = setting(
        None,
        values.optional_text,
        "interface label for ports bound to 0.0.0.0 or ::",
        shown="leave the interface out",
    )
    socket_source: SocketSource = setting(
        "auto",
        values.choice(_SOURCES),
        "where sockets are read (auto: netlink for the live /proc, files for another proc "
        "root, psutil where there is no /proc)",
    )
    custom_metrics: CustomMetricsConfig = field(default_factory=CustomMetricsConfig)


@record(frozen=True)
class LoggingSection:
    """``[logging]``: log lines on stderr."""

    level: Optional[LogLevel] = setting(
        None,
        values.choice(_LEVELS),
        "log verbosity",
        shown="info for run and service, warning for the other commands",
    )
    format: LogFormat = setting("text", values.choice(_LOG_FORMATS), "log line format")


# --------------------------------------------------------------------------- the table
#: (attribute of Config, section class, TOML section, prefix of the flat names)
if TYPE_CHECKING:
    SectionSpec = tuple[str, type[Any], str, str]
else:  # Python 3.8 (Greengrass v1 Lambdas) cannot subscript built-in types at run time
    SectionSpec = tuple

#: The sections every command reads. The service's and the sandbox's are in
#: :mod:`.extra_sections`, imported only when they are used (the collect and run
#: start-up does not pay for creating them).
SECTIONS: tuple[SectionSpec, ...] = (
    ("mqtt", MqttSection, "mqtt", ""),
    ("agent", AgentSection, "agent", ""),
    ("collector", CollectorConfig, "collector", ""),
    ("logging", LoggingSection, "logging", "log_"),
)

#: (section, prefix of the flat names) of the sections in :mod:`.extra_sections`.
EXTRA_SECTIONS: tuple[tuple[str, str], ...] = (
    ("service", "service_"),
    ("http", "http_"),
    ("detect", "detect_"),
    ("sandbox", "sandbox_"),
)


class Setting:
    """One setting as the file, the environment and the command line see it.

    Attributes:
        name: the flat name: ``DEFENDER_AGENT_`` + its upper case is the environment
            variable, and it is the ``dest`` of its command-line options.
        section: the TOML section.
        key: the key inside the TOML section.
        owner: the :class:`~defender_agent.config.Config` attribute holding the section.
        attribute: the field of that section.
        convert: the parser of raw values.
        default: the default value (``None`` when computed; see ``default_text``).
        help: one line, without the default.
        shown: the default as shown when computed or ``None``.
        secret: masked in descriptions.
    """

    __slots__ = (
        "attribute",
        "convert",
        "default",
        "help",
        "key",
        "name",
        "owner",
        "secret",
        "section",
        "shown",
    )

    def __init__(
        self,
        *,
        name: str,
        section: str,
        key: str,
        owner: str,
        attribute: str,
        convert: Converter[Any],
        default: Any,  # noqa: ANN401 - any setting's default
        help: str,
        shown: str = "",
        secret: bool = False,
    ) -> None:
        self.name = name
        self.section = section
        self.key = key
        self.owner = owner
        self.attribute = attribute
        self.convert = convert
        self.default = default
        self.help = help
        self.shown = shown
        self.secret = secret

    def __repr__(self) -> str:
        return f"Setting({self.name!r}, {self.where!r})"

    @property
    def env(self) -> str:
        """The environment variable."""
        return ENV_PREFIX + self.name.upper()

    @property
    def where(self) -> str:
        """``section.key`` in the TOML file."""
        return f"{self.section}.{self.key}"

    @property
    def default_text(self) -> str:
        """The default as ``--help`` and the example files show it ("" when there is none)."""
        if self.shown:
            return self.shown
        return format_value(self.default)

    @property
    def help_with_default(self) -> str:
        """The help line with "(default: ...)"; ``%`` escaped for argparse."""
        default = self.default_text
        line = f"{self.help} (default: {default})" if default else self.help
        return line.replace("%", "%%")


def format_value(value: object) -> str:
    """A value as the help text shows it.

    >>> format_value(30.0), format_value(("lo", "docker*")), format_value(False), format_value("")
    ('30', 'lo,docker*', 'false', '""')
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list, frozenset)):
        return ",".join(str(item) for item in value)
    if value == "":
        return '""'
    return str(value)


def _fields(cls: type[Any]) -> list[Field]:
    """The fields of a record section, or the :func:`setting` fields of a dataclass section."""
    if "__record_fields__" in vars(cls):
        return list(vars(cls)["__record_fields__"])
    return [value for value in vars(cls).values() if isinstance(value, Field)]


def table(sections: tuple[SectionSpec, ...]) -> tuple[Setting, ...]:
    """The settings of some sections, from their fields' metadata."""
    found: list[Setting] = []
    for owner, cls, section, prefix in sections:
        for f in _fields(cls):
            meta = f.metadata.get(_META)
            if not isinstance(meta, _Meta):
                continue
            default = None if f.default is MISSING else f.default
            found.append(
                Setting(
                    name=prefix + f.name,
                    section=meta.section or section,
                    key=f.name,
                    owner=owner,
                    attribute=f.name,
                    convert=meta.convert,
                    default=default,
                    help=meta.help,
                    shown=meta.shown,
                    secret=meta.secret,
                )
            )
    return tuple(found)


#: The settings of :data:`SECTIONS`.
CORE_SETTINGS: tuple[Setting, ...] = table(SECTIONS)
