"""The configured custom metrics, sampled and checked together every cycle.

:class:`CustomMetrics` takes a :class:`~.settings.CustomMetricsConfig` (the
``[custom_metrics]`` table, see :mod:`.settings`). In a report, built-ins and
plugins come in the order of ``enabled``, then the exec metrics in theirs.

Every cycle, :meth:`CustomMetrics.collect` samples each metric, checks its
value (:mod:`.checks`) and cuts lists to ``list_size``. A metric that fails
is left out of that report, never the report: a WARNING names the metric and
the reason the first time each kind of failure happens (later ones are DEBUG).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Callable, Optional, Union

from defender_agent.custom._base import CycleReadings, MetricError, Source, WarnOnce
from defender_agent.custom.builtins import CpuUsage, UsesReadings, create_builtin
from defender_agent.custom.checks import Invalid, check_value
from defender_agent.custom.exec_metric import CommandBatch, ExecSpec, parse_output
from defender_agent.custom.plugins import PluginSource, discover_plugins, load_plugin
from defender_agent.custom.settings import (
    BUILTIN_NAMES,
    BUILTINS,
    MAX_EXEC_TIMEOUT_S,
    CustomMetricsConfig,
    needs_plugins,
    parse_custom_metrics_table,
)
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
        discovered = discover_plugins() if plugins and needs_plugins(list(config.enabled)) else {}
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
