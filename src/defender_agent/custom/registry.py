"""Custom metrics as configured: built-ins, plugins and exec metrics, sampled and checked together.

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

Every cycle, :meth:`CustomMetrics.collect` samples each metric, checks its
value (:mod:`.checks`) and cuts lists to ``list_size``. A metric that fails
is left out of that report, never the report: a WARNING names the metric and
the reason the first time each kind of failure happens (later ones are DEBUG).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Final, Optional, Union

from defender_agent.custom._base import CycleReadings, MetricError, Source, WarnOnce
from defender_agent.custom.builtins import BUILTINS, CpuUsage, UsesReadings, create_builtin
from defender_agent.custom.checks import Invalid, check_name, check_value, parse_type
from defender_agent.custom.exec_metric import CommandBatch, ExecSpec, parse_output
from defender_agent.custom.plugins import PluginSource, discover_plugins, load_plugin
from defender_agent.errors import ConfigError
from defender_agent.model import CustomMetric, CustomMetricType
from defender_agent.procfs import ProcFS
from defender_agent.readers.cpu_usage import CpuTimes
from defender_agent.readers.health import SourceHealth
from defender_agent.readers.sockets import SocketSource

__all__ = [
    "BUILTIN_NAMES",
    "MAX_EXEC_TIMEOUT_S",
    "CustomMetrics",
    "CustomMetricsConfig",
    "ExecSpec",
    "parse_custom_metrics_table",
]

log = logging.getLogger(__name__)

#: The built-in metrics, in the order of the documentation.
BUILTIN_NAMES: Final[tuple[str, ...]] = tuple(BUILTINS)

#: The longest an exec metric may run (seconds).
MAX_EXEC_TIMEOUT_S: Final = 120.0

_TABLE_KEYS: Final = ("enabled", "disk_usage_path", "utmp_path", "exec")
_EXEC_KEYS: Final = ("name", "command", "type", "timeout")


@dataclass(frozen=True)
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
        return dataclasses.replace(self, enabled=self.enabled + extra)


# --------------------------------------------------------------------------- the TOML table
def _hint(key: str, choices: Sequence[str]) -> str:
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
            names = set(discover_plugins()) if _needs_plugins(table["enabled"]) else set()
        config = dataclasses.replace(
            config, enabled=_enabled(table["enabled"], f"{prefix}.enabled", names)
        )
    if "disk_usage_path" in table:
        path = _path(table["disk_usage_path"], f"{prefix}.disk_usage_path")
        config = dataclasses.replace(config, disk_usage_path=path)
    if "utmp_path" in table:
        path = _path(table["utmp_path"], f"{prefix}.utmp_path")
        config = dataclasses.replace(config, utmp_path=path)
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
        config = dataclasses.replace(config, exec_metrics=specs)
    return config


def _needs_plugins(enabled: object) -> bool:
    return isinstance(enabled, list) and any(n not in BUILTINS for n in enabled)


# --------------------------------------------------------------------------- collection
class CustomMetrics:
    """The configured custom metrics, ready to be collected every cycle.

    Plugins are imported here, once; nothing else runs until :meth:`collect`.

    Args:
        config: what to collect.
        procfs: the proc filesystem the built-ins read (the collector's).
        plugins: whether enabled names may refer to installed plugins.
        cpu_times: where ``cpu_usage`` gets CPU times instead of ``stat``
            (the psutil fallback where there is no /proc).
        socket_source: where the socket-based built-ins read when
            :meth:`collect` is given no cycle readings.
    """

    def __init__(
        self,
        config: CustomMetricsConfig,
        procfs: ProcFS,
        *,
        plugins: bool = True,
        cpu_times: Optional[Callable[[], CpuTimes]] = None,
        socket_source: SocketSource = "auto",
    ) -> None:
        self.config = config
        self._warn = WarnOnce()
        self._sources: list[Source] = []
        discovered = discover_plugins() if plugins and _needs_plugins(list(config.enabled)) else {}
        taken: set[str] = set()
        for name in config.enabled:
            source: Union[Source, MetricError]
            if name in BUILTINS:
                source = create_builtin(
                    name,
                    procfs,
                    warn=self._warn,
                    disk_usage_path=config.disk_usage_path,
                    utmp_path=config.utmp_path,
                    cpu_times=cpu_times,
                    socket_source=socket_source,
                )
            elif name in discovered:
                source = load_plugin(discovered[name])
            else:
                source = MetricError("load", "neither a built-in metric nor an installed plugin")
            if isinstance(source, MetricError):
                self._warn(name, source.kind, "left out of every report: %s", source.reason)
                continue
            if source.name in taken:
                self._warn(name, "load", "left out: the name %r is used twice", source.name)
                continue
            taken.add(source.name)
            self._sources.append(source)
        exec_metrics: list[ExecSpec] = []
        for spec in config.exec_metrics:
            if spec.name in taken:
                self._warn(spec.name, "load", "left out: the name %r is used twice", spec.name)
                continue
            taken.add(spec.name)
            exec_metrics.append(spec)
        self._exec = tuple(exec_metrics)
        self._health: dict[str, SourceHealth] = {}
        self._why: dict[str, str] = {}

    def health(self) -> dict[str, SourceHealth]:
        """Per metric, as of its last sample: why it had no value (``missing``) and how long it took.

        Exec metrics run side by side, so each one's ``duration_ms`` is the batch's.
        """  # noqa: E501 - the summary line
        return dict(self._health)

    def _record(self, name: str, started: float, missing: Optional[str]) -> None:
        health = self._health.get(name)
        if health is None:
            health = self._health[name] = SourceHealth()
        health.record(missing=missing, malformed=0, seconds=time.perf_counter() - started)

    @property
    def needs(self) -> frozenset[str]:
        """What the cycle's socket read should gather for these metrics.

        ``remote_peers`` and/or ``listeners``, for
        :func:`~defender_agent.readers.sockets.summarize_sockets`.
        """
        needs: frozenset[str] = frozenset()
        for source in self._sources:
            if isinstance(source, UsesReadings):
                needs |= source.needs
        return needs

    def names_and_types(self) -> list[tuple[str, CustomMetricType]]:
        """Every metric this collects, with its type, in report order (for ``aws-setup``)."""
        return [(s.name, s.type) for s in self._sources] + [(e.name, e.type) for e in self._exec]

    def baseline(self) -> None:
        """Take the first sample of the metrics that need two (``cpu_usage``), and nothing else.

        For the collector's first cycle, which reports nothing: the commands
        and the other metrics are not run for a value that would be dropped.
        """
        for source in self._sources:
            if isinstance(source, CpuUsage):
                self._sample(source)

    def collect(self, readings: Optional[CycleReadings] = None) -> list[CustomMetric]:
        """Sample, check and cap every metric; the ones that fail are left out with a warning.

        Args:
            readings: what the collection cycle read, for the built-ins
                computed from it; ``None`` lets them read for themselves.

        The first call yields nothing for the metrics that need two samples
        (``cpu_usage``). Never raises.
        """
        metrics: list[CustomMetric] = []
        for source in self._sources:  # first: the commands' processes would be in their view
            started = time.perf_counter()
            if isinstance(source, UsesReadings):
                source.readings = readings
                try:
                    raw = self._sample(source)
                finally:
                    source.readings = None
            else:
                raw = self._sample(source)
            why = None if raw is not None else self._why.pop(source.name, None)
            if raw is not None:
                why = self._add(metrics, source.name, source.type, raw)
            self._record(source.name, started, why)
        started = time.perf_counter()
        batch = self._start_commands()
        outputs = self._wait(batch)
        for spec, output in zip(self._exec, outputs):
            why = None
            if isinstance(output, MetricError):
                self._warn(spec.name, output.kind, "left out: %s", output.reason)
                why = output.reason
            else:
                try:
                    parsed = parse_output(spec.type, output)
                except MetricError as failure:
                    self._warn(spec.name, failure.kind, "left out: %s", failure.reason)
                    why = failure.reason
                else:
                    why = self._add(metrics, spec.name, spec.type, parsed)
            self._record(spec.name, started, why)
        return metrics

    def _start_commands(self) -> Optional[CommandBatch]:
        if not self._exec:
            return None
        try:
            return CommandBatch(self._exec)
        except Exception:  # a bug here leaves out the exec metrics, never the report
            log.exception("starting the exec metrics failed; leaving them out")
            return None

    def _wait(self, batch: Optional[CommandBatch]) -> list[Union[bytes, MetricError]]:
        if batch is None:
            return [MetricError("error", "not started") for _ in self._exec] if self._exec else []
        try:
            return batch.wait()
        except Exception:  # a bug here leaves out the exec metrics, never the report
            log.exception("running the exec metrics failed; leaving them out")
            return [MetricError("error", "the run failed") for _ in self._exec]

    def _sample(self, source: Source) -> Optional[object]:
        """The raw value, or ``None``; why there is none is left in ``self._why``."""
        try:
            return source.sample()
        except MetricError as failure:
            self._warn(source.name, failure.kind, "left out: %s", failure.reason)
            self._why[source.name] = failure.reason
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            self._warn(
                source.name, "read", "left out: cannot read%s (%s)", where, exc.strerror or exc
            )
            self._why[source.name] = f"cannot read{where} ({exc.strerror or exc})"
        except Exception as exc:  # a plugin's (or built-in's) bug leaves out that metric only
            log.debug("custom metric %s failed", source.name, exc_info=True)
            kind = "plugin" if isinstance(source, PluginSource) else "error"
            self._warn(source.name, kind, "left out: %s: %s", type(exc).__name__, exc)
            self._why[source.name] = f"{type(exc).__name__}: {exc}"
        return None

    def _add(
        self, metrics: list[CustomMetric], name: str, metric_type: CustomMetricType, raw: object
    ) -> Optional[str]:
        """Check and append a value; returns why it was left out, or ``None``."""
        value = check_value(metric_type, raw, list_size=self.config.list_size)
        if isinstance(value, Invalid):
            self._warn(name, "invalid", "left out: invalid %s: %s", metric_type.value, value.reason)
            return f"invalid {metric_type.value}: {value.reason}"
        metrics.append(CustomMetric(name, metric_type, value))
        return None

    # ------------------------------------------------------------------ restart-safe baseline
    def export_state(self) -> dict[str, object]:
        """What the stateful metrics need after a restart (``cpu_usage``'s last CPU times)."""
        for source in self._sources:
            if isinstance(source, CpuUsage) and source.previous is not None:
                return {"cpu_usage": list(source.previous)}
        return {}

    def import_state(self, data: object) -> bool:
        """Restore what :meth:`export_state` saved; a malformed state is ignored (``False``)."""
        if not isinstance(data, Mapping):
            return False
        raw = data.get("cpu_usage")
        if raw is None:
            return True
        try:
            total, idle = (int(x) for x in raw)
        except (TypeError, ValueError):
            return False
        if total < 0 or idle < 0:
            return False
        for source in self._sources:
            if isinstance(source, CpuUsage):
                source.previous = CpuTimes(total, idle)
        return True
