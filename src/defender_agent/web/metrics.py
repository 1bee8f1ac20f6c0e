"""``/metrics``: the service in the Prometheus exposition format (``prometheus_client``).

One custom collector reads, at each scrape, the running service's counters
(:class:`~defender_agent.service.runner.RunnerStats`), the things table and Detect's active
violations; nothing is kept between scrapes, and the service's own code does not depend on
Prometheus. Labels are bounded: rejection codes (the responder keeps at most 16 names),
profile and behavior names (the registry's), thing states (three). Per-thing series
(``defender_agent_thing_*``) only with ``per_thing=True`` (``[http] metrics_per_thing``),
for small fleets.

The names, all prefixed ``defender_agent_``, are listed in :data:`METRIC_NAMES` (the Grafana
dashboard's test checks its queries against it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Callable, Final, Optional

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from defender_agent.detect.contract import Violations
from defender_agent.service.latency import LatencySnapshot
from defender_agent.service.runner import RunnerStats
from defender_agent.service.storage import Store
from defender_agent.web.data import active_violations, state_counts

__all__ = ["METRIC_NAMES", "ServiceCollector", "registry_for"]

_P: Final = "defender_agent_"

#: Every metric family the collector exports (without the ``_total``/``_bucket`` suffixes).
METRIC_NAMES: Final = tuple(
    _P + name
    for name in (
        "reports_received",
        "reports_accepted",
        "reports_rejected",
        "reports_stored",
        "reports_acknowledged",
        "store_errors",
        "store_queue_depth",
        "store_down",
        "store_seconds",
        "detect_evaluation_seconds",
        "detect_errors",
        "violations_active",
        "things",
        "thing_last_report_timestamp_seconds",
        "thing_reports",
    )
)


def _histogram(name: str, doc: str, snap: Optional[LatencySnapshot]) -> HistogramMetricFamily:
    snap = snap or LatencySnapshot(((float("inf"), 0),), 0, 0.0)
    buckets = [("+Inf" if b == float("inf") else repr(b), c) for b, c in snap.buckets]
    return HistogramMetricFamily(_P + name, doc, buckets=buckets, sum_value=snap.total)


class ServiceCollector(Collector):
    """Collects the service's metrics at each scrape.

    Args:
        stats: The running service's counters.
        store: The dashboard's store (for the things table).
        violations: Detect's violations, or None.
        per_thing: Also export a series per thing (small fleets only).
        clock: Epoch seconds (for reporting / late / silent).
    """

    def __init__(
        self,
        stats: Callable[[], RunnerStats],
        store: Store,
        violations: Optional[Violations],
        *,
        per_thing: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stats = stats
        self._store = store
        self._violations = violations
        self._per_thing = per_thing
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        """Nothing: registering must not run a scrape."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """The metrics now."""
        stats = self._stats()
        yield CounterMetricFamily(
            _P + "reports_received", "Report messages received", value=stats.messages
        )
        yield CounterMetricFamily(
            _P + "reports_accepted", "Reports answered ACCEPTED", value=stats.accepted
        )
        rejected = CounterMetricFamily(
            _P + "reports_rejected", "Reports answered REJECTED, by ErrorCode", labels=["code"]
        )
        for code, count in sorted(stats.rejected.items()):
            rejected.add_metric([code], count)
        yield rejected
        yield CounterMetricFamily(
            _P + "reports_stored", "Accepted reports committed to the store", value=stats.stored
        )
        yield CounterMetricFamily(
            _P + "reports_acknowledged",
            "ACCEPTED replies published once their report was stored",
            value=stats.acknowledged,
        )
        yield CounterMetricFamily(
            _P + "store_errors", "Accepted reports the store refused", value=stats.store_errors
        )
        yield GaugeMetricFamily(
            _P + "store_queue_depth",
            "Accepted reports waiting for the writer",
            value=stats.queue_depth,
        )
        yield GaugeMetricFamily(
            _P + "store_down", "1 while the store is failing", value=int(stats.store_down)
        )
        yield _histogram(
            "store_seconds", "Time of each committed store transaction", stats.store_latency
        )
        yield _histogram(
            "detect_evaluation_seconds",
            "Time Detect took to evaluate each stored batch of reports",
            stats.detect_latency,
        )
        yield CounterMetricFamily(
            _P + "detect_errors",
            "Stored batches Detect failed to evaluate (an engine error, a worker that died)",
            value=stats.after_store_errors,
        )
        yield from self._violation_metrics()
        yield from self._thing_metrics()

    def _violation_metrics(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            _P + "violations_active",
            "Active Detect violations, by security profile and behavior",
            labels=["profile", "behavior"],
        )
        counts: dict[tuple[str, str], int] = {}
        for item in active_violations(self._violations):
            behavior = item.get("behavior") or {}
            key = (str(item.get("securityProfileName", "")), str(behavior.get("name", "")))
            counts[key] = counts.get(key, 0) + 1
        for (profile, behavior), count in sorted(counts.items()):
            family.add_metric([profile, behavior], count)
        yield family

    def _thing_metrics(self) -> Iterator[Metric]:
        now = self._clock()
        family = GaugeMetricFamily(
            _P + "things",
            "Things that have reported, by state (late and silent: relative to their interval)",
            labels=["state"],
        )
        for state, count in state_counts(self._store, now).items():
            family.add_metric([state], count)
        yield family
        if not self._per_thing:
            return
        last = GaugeMetricFamily(
            _P + "thing_last_report_timestamp_seconds",
            "When each thing's last report was stored (per_thing only)",
            labels=["thing"],
        )
        reports = CounterMetricFamily(
            _P + "thing_reports", "Stored reports per thing (per_thing only)", labels=["thing"]
        )
        for name, last_seen, count in self._store.query(
            "SELECT name, last_seen, reports FROM things"
        ):
            last.add_metric([str(name)], float(last_seen))
            reports.add_metric([str(name)], int(count))
        yield last
        yield reports


def registry_for(collector: ServiceCollector) -> CollectorRegistry:
    """A registry of its own holding only the collector (no process-wide default metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
