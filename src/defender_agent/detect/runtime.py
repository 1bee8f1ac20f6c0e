"""Detect in a service process: the registry, the store, the alerts and the engine, wired.

``defender-agent service`` and ``defender-agent sandbox`` make one :class:`DetectRuntime`
(unless ``[detect] enabled = false``) before the service starts, give
:meth:`DetectRuntime.after_store` to the runner (called on the runner's hand-off thread with
the committed reports, after their ACCEPTED replies, in the order stored) and
:attr:`DetectRuntime.store` to the HTTP API (it implements ``contract.Violations``), and
bind the service's MQTT publish for the alerts once the service exists
(:meth:`DetectRuntime.bind_publish`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable, Optional

from defender_agent.config.extra_sections import DetectSection
from defender_agent.detect.alerts import Alerts, AlertSettings
from defender_agent.detect.engine import DetectEngine, EngineSettings, Judged
from defender_agent.detect.registry import SqlRegistry, open_registry
from defender_agent.detect.store import DetectStore, EventRow
from defender_agent.model import Report
from defender_agent.service.storage import open_store

if TYPE_CHECKING:
    from defender_agent.service.runner import HandedOver

__all__ = ["DetectRuntime", "alert_settings", "engine_settings"]

log = logging.getLogger(__name__)


def alert_settings(d: DetectSection) -> AlertSettings:
    """The alerts' settings from ``[detect]``."""
    return AlertSettings(
        topic=d.alert_topic,
        webhooks=d.webhooks,
        timeout_s=d.webhook_timeout,
        retries=d.webhook_retries,
        queue_max=d.alert_queue_max,
        sns_targets=d.sns_targets,
    )


def engine_settings(d: DetectSection) -> EngineSettings:
    """The engine's settings from ``[detect]``."""
    return EngineSettings(
        invalidate_after_s=d.invalidate_after,
        statistics_every_s=d.statistics_every,
        last_violation_every_s=d.last_violation_every,
    )


class DetectRuntime:
    """Detect's parts for one service process.

    Opens the registry and Detect's tables in the service's database (migrating them).

    Args:
        db_url: The service's database.
        detect: The ``[detect]`` settings (None: the defaults).
        region: The region in the ARNs the registry makes (``[http] region``).
        account: The account id in them (``[http] account_id``).
        clock: POSIX seconds (the service's clock).
        on_event: Called with each violation event after it was committed.

    Attributes:
        registry: The control plane (profiles, custom metrics, groups).
        store: Violations, events and state (``contract.Violations`` for the API).
        alerts: The alerts' delivery.
        engine: The engine.

    Raises:
        StateError: The database cannot be opened or has a newer schema.
        ConfigError: PostgreSQL without psycopg, or a bad URL.
    """

    def __init__(
        self,
        db_url: str,
        detect: Optional[DetectSection] = None,
        *,
        region: str = "us-east-1",
        account: str = "123456789012",
        clock: Callable[[], float] = time.time,
        on_event: Optional[Callable[[EventRow], None]] = None,
    ) -> None:
        self._publish: Optional[Callable[[str, bytes], object]] = None
        self._lock = threading.Lock()
        service_store = open_store(db_url)  # the service's tables first (``things``)
        try:
            self.store = DetectStore.beside(service_store)
        finally:
            service_store.close()
        try:
            self.registry: SqlRegistry = open_registry(db_url, region=region, account=account)
        except BaseException:
            self.store.close()
            raise
        detect = detect or DetectSection()
        self.alerts = Alerts(alert_settings(detect), self._publish_alert)
        self.engine = DetectEngine(
            self.store,
            self.registry,
            alerts=self.alerts,
            settings=engine_settings(detect),
            clock=clock,
            on_event=on_event,
        )

    @property
    def alert_settings(self) -> AlertSettings:
        """Where alerts go."""
        return self.alerts.settings

    def bind_publish(self, publish: Callable[[str, bytes], object]) -> None:
        """Where MQTT alerts are published (the service's connection)."""
        with self._lock:
            self._publish = publish

    def _publish_alert(self, topic: str, payload: bytes) -> object:
        with self._lock:
            publish = self._publish
        if publish is None:
            raise RuntimeError("no MQTT connection yet")
        return publish(topic, payload)

    def start(self) -> None:
        """Start the alerts' thread and the engine (reconcile, ticker)."""
        self.alerts.start()
        self.engine.start()

    def after_store(self, items: Sequence[HandedOver]) -> None:
        """The runner's hook: judge a committed batch."""
        self.judge([item[:3] for item in items])

    def judge(self, items: Sequence[tuple[str, float, Report]]) -> None:
        """Judge ``(thing, received_at, report)`` of a committed batch (Detect's worker)."""
        self.engine.evaluate([Judged(thing, at, report) for thing, at, report in items])

    def stop(self) -> None:
        """Stop the engine and the alerts (bounded), close the database connections."""
        self.engine.stop()
        self.alerts.stop()
        counters = self.engine.counters()
        sent = self.alerts.counters()
        log.info(
            "detect stopped: %d reports judged (%.0f us each) in %d batches, %d violation events, "
            "%d errors; alerts: %d delivered, %d failed, %d dropped",
            counters["reports"],
            counters["us_per_report"],
            counters["batches"],
            counters["events"],
            counters["errors"],
            sent["delivered"],
            sent["failed"],
            sent["dropped"],
        )
        self.store.close()
        self.registry.close()
