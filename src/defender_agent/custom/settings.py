"""The ``[custom_metrics]`` settings: the built-in names, the TOML table, its parsed form.

Kept apart from the metrics themselves so that reading a configuration does
not import them: checks, commands and plugins are imported only for a table
that uses them, and the metrics only when a collector has some to collect.

The ``[custom_metrics]`` table of the agent's TOML file::

    [custom_metrics]
    enabled = ["cpu_usage", "memory_usage", "disk_usage", "listening_processes"]
    disk_usage_path = "/data"          # the file system disk_usage measures (default "/")
    utmp_path = "/var/run/utmp"        # where logged_in_users reads (default)

    [[custom_metrics.exec]]
    name = "queue_depth"
    command = ["/usr/local/bin/queue-depth", "--spool", "/var/spool/app"]
    type = "number"
    timeout = 5                        # seconds (default 5, at most 120)

``enabled`` lists built-in metrics (:data:`BUILTIN_NAMES`) and installed
plugins (:mod:`.plugins`) by name; each ``exec`` table is a command whose
output is the value (:mod:`.exec_metric`). In a report, built-ins and plugins
come in the order of ``enabled``, then the exec metrics in theirs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Optional

from defender_agent._record import replace
from defender_agent.errors import ConfigError
from defender_agent.model import CustomMetricType

if TYPE_CHECKING:
    from dataclasses import dataclass as record

    from defender_agent.custom.exec_metric import ExecSpec
else:
    from defender_agent._record import record

__all__ = [
    "BUILTINS",
    "BUILTIN_NAMES",
    "MAX_EXEC_TIMEOUT_S",
    "BuiltinInfo",
    "CustomMetricsConfig",
    "needs_plugins",
    "parse_custom_metrics_table",
]

_N = CustomMetricType.NUMBER
_NL = CustomMetricType.NUMBER_LIST
_SL = CustomMetricType.STRING_LIST
_IPL = CustomMetricType.IP_ADDRESS_LIST


class BuiltinInfo:
    """A built-in metric: its name (also its report name), type and display name."""

    __slots__ = ("display_name", "name", "type")

    def __init__(self, name: str, metric_type: CustomMetricType, display_name: str) -> None:
        self.name = name
        self.type = metric_type
        self.display_name = display_name

    def __repr__(self) -> str:
        return f"BuiltinInfo({self.name!r}, {self.type.value!r}, {self.display_name!r})"


BUILTINS: Final[dict[str, BuiltinInfo]] = {
    info.name: info
    for info in (
        BuiltinInfo("cpu_usage", _N, "CPU usage (%)"),
        BuiltinInfo("memory_usage", _N, "Memory usage (%)"),
        BuiltinInfo("disk_usage", _N, "Disk usage (%)"),
        BuiltinInfo("process_count", _N, "Number of processes"),
        BuiltinInfo("uptime", _N, "Uptime (s)"),
        BuiltinInfo("load_average", _NL, "Load average (1, 5, 15 min)"),
        BuiltinInfo("logged_in_users", _SL, "Logged-in users"),
        BuiltinInfo("listening_processes", _SL, "Processes with listening sockets"),
        BuiltinInfo("interface_addresses", _IPL, "Interface addresses"),
        BuiltinInfo("remote_ips", _IPL, "Remote IPs of established TCP connections"),
    )
}


BUILTIN_NAMES: Final[tuple[str, ...]] = tuple(BUILTINS)

#: The longest an exec metric may run (seconds).
MAX_EXEC_TIMEOUT_S: Final = 120.0

_TABLE_KEYS: Final = ("enabled", "disk_usage_path", "utmp_path", "exec")
_EXEC_KEYS: Final = ("name", "command", "type", "timeout")


@record(frozen=True)
class CustomMetricsConfig:
    """Which custom metrics to collect, and how.

    Attributes:
        enabled: built-in and plugin metric names, in report order.
        disk_usage_path: the file system ``disk_usage`` measures.
        utmp_path: the utmp file ``logged_in_users`` reads.
        exec_metrics: the command metrics, in report order.
        list_size: the most entries a list value keeps (the collector's list size).
    """

    enabled: tuple[str, ...] = ()
    disk_usage_path: Path = Path("/")
    utmp_path: Path = Path("/var/run/utmp")
    exec_metrics: tuple[ExecSpec, ...] = ()
    list_size: int = 100

    @property
    def empty(self) -> bool:
        """Whether no metric is configured at all."""
        return not self.enabled and not self.exec_metrics

    def enable(self, *names: str) -> CustomMetricsConfig:
        """A copy with ``names`` enabled too (``--include-custom-metrics`` is ``enable("cpu_usage")``).

        >>> CustomMetricsConfig(enabled=("uptime",)).enable("cpu_usage", "uptime").enabled
        ('uptime', 'cpu_usage')
        """  # noqa: E501 - the summary line names the flag
        extra = tuple(n for n in dict.fromkeys(names) if n not in self.enabled)
        return replace(self, enabled=self.enabled + extra)


# --------------------------------------------------------------------------- the TOML table
def _hint(key: str, choices: Sequence[str]) -> str:
    import difflib  # noqa: PLC0415 - only for a message

    close = difflib.get_close_matches(key, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_keys(table: Mapping[str, object], allowed: Sequence[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}{_hint(str(key), allowed)}")


def _path(value: object, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    return Path(value.strip()).expanduser()


def _enabled(value: object, where: str, plugin_names: Collection[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of metric names, got {value!r}")
    names: list[str] = []
    known = (*BUILTIN_NAMES, *sorted(plugin_names))
    for index, name in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(name, str):
            raise ConfigError(f"{at}: expected a metric name, got {name!r}")
        if name not in BUILTINS and name not in plugin_names:
            plugins = ", ".join(sorted(plugin_names)) or "none"
            raise ConfigError(
                f"{at}: unknown metric {name!r}{_hint(name, known)} "
                f"(built-ins: {', '.join(BUILTIN_NAMES)}; installed plugins: {plugins})"
            )
        if name in names:
            raise ConfigError(f"{at}: {name!r} is listed twice")
        names.append(name)
    return tuple(names)


def _command(value: object, where: str) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(arg, str) for arg in value)
        or not value[0]
    ):
        raise ConfigError(
            f"{where}: expected the program and its arguments as a list of strings, such as "
            f'["/usr/bin/df", "--output=pcent", "/"] (no shell), got {value!r}'
        )
    return tuple(value)


def _timeout(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number of seconds, got {value!r}")
    if not math.isfinite(value) or not 0 < value <= MAX_EXEC_TIMEOUT_S:
        raise ConfigError(
            f"{where}: expected more than 0 and at most {MAX_EXEC_TIMEOUT_S:g} s, got {value!r}"
        )
    return float(value)


def _exec_spec(item: object, where: str) -> ExecSpec:
    from defender_agent.custom.checks import check_name, parse_type  # noqa: PLC0415
    from defender_agent.custom.exec_metric import ExecSpec  # noqa: PLC0415

    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a table with name, command and type, got {item!r}")
    _check_keys(item, _EXEC_KEYS, where)
    for key in ("name", "command", "type"):
        if key not in item:
            raise ConfigError(f"{where}: missing {key!r}")
    name = item["name"]
    why = check_name(name)
    if why is not None:
        raise ConfigError(f"{where}.name: {why}")
    assert isinstance(name, str)  # narrowing: check_name accepted it
    if name in BUILTINS:
        raise ConfigError(f"{where}.name: {name!r} is the name of a built-in metric")
    try:
        metric_type = parse_type(item["type"])
    except ValueError as exc:
        raise ConfigError(f"{where}.type: {exc}") from None
    timeout = _timeout(item["timeout"], f"{where}.timeout") if "timeout" in item else 5.0
    return ExecSpec(name, _command(item["command"], f"{where}.command"), metric_type, timeout)


def parse_custom_metrics_table(
    table: Mapping[str, object],
    where: str,
    *,
    plugin_names: Optional[Collection[str]] = None,
) -> CustomMetricsConfig:
    """Parse the ``[custom_metrics]`` table of a TOML configuration file.

    Args:
        table: the table, as ``tomllib`` decoded it.
        where: where it comes from, for messages (the file name).
        plugin_names: the plugin names ``enabled`` may list; ``None`` looks
            up the installed plugins (their metadata only, nothing is imported).

    Raises:
        ConfigError: an unknown key or metric name, or a bad value, named like
            ``<where>: custom_metrics.exec[2].type: expected one of ...``.

    >>> parse_custom_metrics_table({"enabled": ["uptime"]}, "agent.toml").enabled
    ('uptime',)
    >>> parse_custom_metrics_table({"enabled": ["uptme"]}, "agent.toml", plugin_names=())
    Traceback (most recent call last):
    ...
    defender_agent.errors.ConfigError: agent.toml: custom_metrics.enabled[0]: unknown metric 'uptme'; did you mean 'uptime'? (built-ins: cpu_usage, memory_usage, disk_usage, process_count, uptime, load_average, logged_in_users, listening_processes, interface_addresses, remote_ips; installed plugins: none)
    """  # noqa: E501 - a doctest output line
    prefix = f"{where}: custom_metrics"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{prefix}: expected a table, got {table!r}")
    _check_keys(table, _TABLE_KEYS, prefix)
    config = CustomMetricsConfig()
    if "enabled" in table:
        names = plugin_names
        if names is None:
            names = set()
            if needs_plugins(table["enabled"]):
                from defender_agent.custom.plugins import discover_plugins  # noqa: PLC0415

                names = set(discover_plugins())
        config = replace(config, enabled=_enabled(table["enabled"], f"{prefix}.enabled", names))
    if "disk_usage_path" in table:
        path = _path(table["disk_usage_path"], f"{prefix}.disk_usage_path")
        config = replace(config, disk_usage_path=path)
    if "utmp_path" in table:
        path = _path(table["utmp_path"], f"{prefix}.utmp_path")
        config = replace(config, utmp_path=path)
    if "exec" in table:
        items = table["exec"]
        if not isinstance(items, list):
            raise ConfigError(
                f"{prefix}.exec: expected an array of tables ([[custom_metrics.exec]])"
            )
        specs = tuple(_exec_spec(item, f"{prefix}.exec[{i}]") for i, item in enumerate(items))
        taken = set(config.enabled)
        for index, spec in enumerate(specs):
            if spec.name in taken:
                raise ConfigError(f"{prefix}.exec[{index}].name: {spec.name!r} is used twice")
            taken.add(spec.name)
        config = replace(config, exec_metrics=specs)
    return config


def needs_plugins(enabled: object) -> bool:
    """Whether an ``enabled`` list names anything but built-ins (so plugins must be looked up)."""
    return isinstance(enabled, list) and any(n not in BUILTINS for n in enabled)
