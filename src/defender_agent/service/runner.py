"""The local Device Defender service: the responder on an MQTT broker, with storage.

:class:`DeviceDefenderService` is what ``defender-agent service`` runs. It connects one
MQTT client to a broker (mutual TLS or plain TCP), subscribes to every report topic
(``$aws/things/+/defender/metrics/+``, or a shared subscription of it), answers each
report the way AWS IoT Device Defender does (:class:`~defender_agent.service.responder.Responder`,
docs/protocol.md §4, §7) and stores the metric values of every ACCEPTED report
(:mod:`defender_agent.service.storage`).

Choices, each one a setting of :class:`ServiceConfig`:

* **Reply first, store after.** The reply is handed to the MQTT client before the report
  is queued for storage, so a slow database never delays a reply. The price: a report can
  be ACCEPTED and then not stored (the database failed, or the process died before the
  batch was committed). The service is a test double and a metrics sink, not a ledger, so
  latency wins; ``stats().store_errors`` and the logs say when it happened.
* **Storage never stalls MQTT.** The transport's callback only puts the accepted report
  (as the validator decoded it: the payload is never decoded twice) on a bounded queue
  (``queue_max``). One writer thread maps it to metric values and commits whole batches
  (up to ``batch_max`` reports, one transaction per batch: group commit). When the queue
  is full the report is still answered but not stored, and counted in ``store_overflow``:
  blocking the callback would stall every device's replies behind the database.
* **A storage failure is logged and counted, never fatal.** A batch that fails is retried
  one report at a time, so one bad report cannot lose its batch; each report that still
  fails is counted in ``store_errors``. Log lines about storage are rate-limited.
* **A clean stop loses no accepted report.** :meth:`DeviceDefenderService.stop` stops
  answering, waits (bounded) for the replies in flight, disconnects, then lets the writer
  drain the queue for at most ``drain_timeout_s``; whatever is still queued after that is
  logged at ERROR with its count.
* **Several processes** (issue #4): ``shared_group`` subscribes to
  ``$share/<group>/…``; the broker gives each report to one process, and every process
  writes to the same PostgreSQL database (batches take the thing rows in name order, so
  two writers never deadlock). The throttle and the strict report-id check stay per
  process: with N processes a thing that reports too often may be throttled by one and
  accepted by another. mosquitto 2.0 never matches a ``$`` topic against a shared
  subscription; there a loopback bridge republishes reports under ``topic_prefix``
  (see the README).
* **The MQTT session.** The MQTT 3.1.1 client keeps a persistent session. A session that
  nobody resumes goes on collecting reports at the broker, and in a shared group it takes
  its share of them, unanswered. With the broker settings' ``discard_session`` (the CLI's
  default when the client id is the generated one, which no later process reuses) the
  transport ends it when :meth:`~DeviceDefenderService.stop` disconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Final, Optional

from defender_agent.errors import ConfigError
from defender_agent.model import Report
from defender_agent.report.validate import PayloadFormat
from defender_agent.service.metrics_map import metric_values
from defender_agent.service.responder import (
    DEFAULT_RESPONDER_POLICY,
    Outcome,
    Responder,
    ResponderPolicy,
    parse_topic,
)
from defender_agent.service.responder_service import OutcomeHook, ResponderService, report_filter
from defender_agent.service.storage import Store, StoredReport, open_store
from defender_agent.transport.base import MqttSettings, Transport
from defender_agent.transport.wrap import TransportWrapper

__all__ = [
    "DeviceDefenderService",
    "RunnerStats",
    "ServiceConfig",
]

log = logging.getLogger(__name__)

_REPLY_WAIT_S: Final = 2.0  # how long stop() waits for replies in flight
_LOG_EVERY_S: Final = 5.0  # storage warnings: at most one line per this many seconds


@dataclass(frozen=True)
class ServiceConfig:
    """What :class:`DeviceDefenderService` connects to, decides and stores.

    Attributes:
        broker: The MQTT broker and client (``use_tls=False`` for a plain listener).
        db_url: The store: a path or ``sqlite:///PATH`` (SQLite) or
            ``postgresql://USER@HOST:PORT/DB`` (see :func:`~.storage.open_store`).
        policy: The responder's choices (throttle window, messages, validation, …).
        shared_group: Subscribe as a member of this MQTT shared-subscription group, so that
            several processes split the reports; None: a plain subscription.
        topic_prefix: The prefix a broker bridge puts before ``$aws/...`` (mosquitto 2.0
            with a shared group); "" when reports arrive on their own topics.
        batch_max: The most reports committed in one transaction.
        queue_max: The most accepted reports waiting for the writer; more are answered but
            not stored (``store_overflow``).
        drain_timeout_s: How long :meth:`~DeviceDefenderService.stop` lets the writer store
            what is queued.
    """

    broker: MqttSettings
    db_url: str
    policy: ResponderPolicy = DEFAULT_RESPONDER_POLICY
    shared_group: Optional[str] = None
    topic_prefix: str = ""
    batch_max: int = 500
    queue_max: int = 20_000
    drain_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        report_filter(self.shared_group, self.topic_prefix)  # raises ConfigError
        if self.batch_max < 1 or self.queue_max < 1:
            raise ConfigError("batch_max and queue_max must be at least 1")
        if not self.drain_timeout_s >= 0:
            raise ConfigError(f"drain_timeout_s: expected >= 0, got {self.drain_timeout_s}")

    @property
    def topic_filter(self) -> str:
        """The subscription filter (``$share/<group>/`` and the prefix, if any)."""
        return report_filter(self.shared_group, self.topic_prefix)


@dataclass(frozen=True)
class RunnerStats:
    """A snapshot of the service's counters.

    Attributes:
        messages: Messages received while running.
        replies: Replies handed to the MQTT client.
        accepted: ACCEPTED replies.
        rejected: REJECTED replies by ``ErrorCode``.
        dropped: Messages that got no reply (not a report topic, over a broker limit).
        ignored: Messages that arrived while stopping (not answered).
        publish_failures: Replies the MQTT client failed to publish.
        handler_errors: Messages whose handling raised (a bug; logged with the traceback).
        stored: Accepted reports committed to the store.
        store_errors: Accepted reports the store failed to keep.
        store_overflow: Accepted reports not queued for storage: the queue was full.
        queue_depth: Accepted reports waiting for the writer now.
        batches: Transactions committed.
        largest_batch: The most reports committed in one transaction.
    """

    messages: int
    replies: int
    accepted: int
    rejected: Mapping[str, int]
    dropped: int
    ignored: int
    publish_failures: int
    handler_errors: int
    stored: int
    store_errors: int
    store_overflow: int
    queue_depth: int
    batches: int
    largest_batch: int

    def to_json(self) -> dict[str, object]:
        """The counters as a JSON object."""
        doc = {name: getattr(self, name) for name in self.__dataclass_fields__}
        doc["rejected"] = dict(self.rejected)
        return doc


@dataclass(frozen=True)
class _Accepted:
    """An accepted report waiting for the writer: mapped to values there, off the MQTT thread."""

    thing: str
    report_id: Optional[int]
    received_at: float
    fmt: PayloadFormat
    report: Report


def _replies(count: int) -> str:
    """``1 reply``, ``2 replies``."""
    return f"{count} {'reply' if count == 1 else 'replies'}"


class _Throttled:
    """Log lines rate-limited per message: one every ``every`` seconds, the rest counted."""

    def __init__(self, every: float = _LOG_EVERY_S) -> None:
        self._every = every
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, level: int, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last.get(message, -self._every) < self._every:
                self._skipped[message] = self._skipped.get(message, 0) + 1
                return
            self._last[message] = now
            skipped = self._skipped.pop(message, 0)
        if skipped:
            log.log(level, "%s (%d similar message(s) suppressed)", message % args, skipped)
        else:
            log.log(level, message, *args)


class _Writer:
    """The storage thread: a bounded queue of accepted reports, committed in batches."""

    def __init__(self, store: Store, batch_max: int, queue_max: int) -> None:
        self._store = store
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._queue: deque[_Accepted] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandon = False
        self._in_batch = 0
        self._thread = threading.Thread(target=self._run, name="dd-service-writer", daemon=True)
        self._warn = _Throttled()
        self.stored = 0
        self.errors = 0
        self.overflow = 0
        self.batches = 0
        self.largest = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def offer(self, item: _Accepted) -> bool:
        """Queue a report; False (and counted) when the queue is full or closed."""
        with self._cond:
            if len(self._queue) >= self._queue_max or self._closing:
                self.overflow += 1
                full = True
            else:
                self._queue.append(item)
                self._cond.notify()
                full = False
        if full:
            self._warn.log(
                logging.WARNING,
                "storage queue full (%d reports): an accepted report of %s was not stored",
                self._queue_max,
                item.thing,
            )
        return not full

    def close(self, timeout: float) -> int:
        """Store what is queued (at most ``timeout`` s) and stop; returns how many were not."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if not self.started:
            return len(self._queue)
        self._thread.join(timeout)
        with self._cond:
            self._abandon = True  # after the batch in progress, if any, take no more
            left = len(self._queue) + self._in_batch
            self._cond.notify_all()
        return left

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or self._abandon:
                    return
                count = min(len(self._queue), self._batch_max)
                batch = [self._queue.popleft() for _ in range(count)]
                self._in_batch = count
            try:
                self._write(batch)
            except Exception:  # the writer's top level: a bug must not end storage
                with self._cond:
                    self.errors += len(batch)
                log.exception("storing a batch of %d reports failed", len(batch))
            with self._cond:
                self._in_batch = 0

    def _prepare(self, batch: Sequence[_Accepted]) -> list[StoredReport]:
        reports = []
        for item in batch:
            try:
                values = metric_values(item.report)
            except Exception as exc:  # validated before: a bug, but only this report's
                with self._cond:
                    self.errors += 1
                self._warn.log(
                    logging.ERROR, "cannot map the report of %s to values: %s", item.thing, exc
                )
                continue
            reports.append(
                StoredReport(item.thing, item.report_id, item.received_at, item.fmt.value, values)
            )
        return reports

    def _write(self, batch: Sequence[_Accepted]) -> None:
        reports = self._prepare(batch)
        try:
            self._store.record_many(reports)
        except Exception as exc:  # StateError, or a value the database refuses
            self._warn.log(
                logging.WARNING,
                "storing a batch of %d reports failed (%s); storing them one by one",
                len(reports),
                exc,
            )
        else:
            with self._cond:
                self.stored += len(reports)
                self.batches += 1
                self.largest = max(self.largest, len(reports))
            return
        failures = 0
        for report in reports:
            if failures >= 2:  # the database is down: do not wait on it once per report
                with self._cond:
                    self.errors += 1
                continue
            try:
                self._store.record_many([report])
            except Exception as exc:
                failures += 1
                with self._cond:
                    self.errors += 1
                self._warn.log(
                    logging.ERROR,
                    "an accepted report of %s (report id %s) was not stored: %s",
                    report.thing,
                    report.report_id,
                    exc,
                )
            else:
                failures = 0
                with self._cond:
                    self.stored += 1
                    self.batches += 1
                    self.largest = max(self.largest, 1)


class _TrackedTransport(TransportWrapper):
    """A transport that counts the publishes still waiting for their PUBACK."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self._cond = threading.Condition()
        self._pending = 0

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        future = self.inner.publish(topic, payload)
        with self._cond:
            self._pending += 1
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[None]) -> None:
        with self._cond:
            self._pending -= 1
            if self._pending <= 0:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> int:
        """Wait until no publish is pending, at most ``timeout`` s; returns how many are."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending > 0 and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._pending


class DeviceDefenderService:
    """The local Device Defender service: answer every report, store the accepted ones.

    Use :meth:`start` (which may be called again after a failed connection attempt),
    then :meth:`stop`. The service owns the transport and the store it is given.

    Args:
        config: Broker, database, policy, scaling and batching settings.
        on_outcome: Called with ``(topic, outcome)`` for every message after its reply was
            fired, on the MQTT client's thread (keep it quick; its exceptions are logged).
        transport: The MQTT connection; an :class:`~defender_agent.transport.mqtt.MqttTransport`
            for ``config.broker`` if None.
        store: The store; :func:`~.storage.open_store` of ``config.db_url`` if None
            (opened by :meth:`start`).
        clock: Epoch seconds, for the replies, the throttle and the stored values' time.
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        on_outcome: Optional[OutcomeHook] = None,
        transport: Optional[Transport] = None,
        store: Optional[Store] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._on_outcome = on_outcome
        self._clock = clock
        if transport is None:
            from defender_agent.transport.mqtt import MqttTransport  # noqa: PLC0415 - awscrt

            transport = MqttTransport(config.broker)
        self._transport = _TrackedTransport(transport)
        self._store = store
        self._writer: Optional[_Writer] = None
        self._lock = threading.Lock()
        self._stopped = False
        self._connected = False
        self._responder = Responder(config.policy, clock=clock)
        self._service = ResponderService(
            self._transport,
            self._responder,
            topic_filter=config.topic_filter,
            topic_prefix=config.topic_prefix,
            on_outcome=self._after_reply,
        )

    @property
    def responder(self) -> Responder:
        """The responder (its per-thing counters: ``responder.snapshot()``)."""
        return self._responder

    @property
    def running(self) -> bool:
        """Whether reports are being answered."""
        return self._service.running

    def start(self) -> None:
        """Open the store, start the writer, connect and subscribe.

        Raises:
            StateError: The database cannot be opened.
            ConnectError: This connection attempt failed; call :meth:`start` again later.
            TlsSetupError: The TLS files are unusable.
            TransportError: The subscription was refused.
            RuntimeError: The service was stopped.
        """
        with self._lock:
            if self._stopped:
                raise RuntimeError("the service was stopped; make a new one")
            if self._store is None:
                self._store = open_store(self.config.db_url)
                log.info("storing accepted reports in %s", self._store.name)
            if self._writer is None:
                self._writer = _Writer(self._store, self.config.batch_max, self.config.queue_max)
                self._writer.start()
        if not self._connected:
            self._transport.connect()
            self._connected = True
        self._service.start()
        log.info("service answering reports on %s", self.config.topic_filter)

    def stop(self) -> None:
        """Stop answering, disconnect, store what is queued (bounded) and close; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._service.stop()
        if self._connected:
            if (left := self._transport.wait_idle(_REPLY_WAIT_S)) > 0:
                log.warning("%s still unacknowledged at stop", _replies(left))
            self._transport.disconnect()  # (ends the MQTT session if broker.discard_session)
        lost = 0
        if self._writer is not None:
            lost = self._writer.close(self.config.drain_timeout_s)
            if lost:
                log.error(
                    "%d accepted reports were not stored: the writer did not finish within %g s",
                    lost,
                    self.config.drain_timeout_s,
                )
        if self._store is not None and not lost:
            self._store.close()  # (with a writer still busy, the store is left to the exit)
        stats = self.stats()
        log.info(
            "service stopped: %d messages, %d accepted, %d rejected, %d stored, "
            "%d store errors, %d not queued (full), %d ignored while stopping",
            stats.messages,
            stats.accepted,
            sum(stats.rejected.values()),
            stats.stored,
            stats.store_errors,
            stats.store_overflow,
            stats.ignored,
        )

    def stats(self) -> RunnerStats:
        """A snapshot of the counters (MQTT, replies, storage)."""
        service = self._service.stats()
        responder = self._responder.snapshot()
        writer = self._writer
        return RunnerStats(
            messages=service.messages,
            replies=service.replies,
            accepted=responder.accepted,
            rejected=MappingProxyType(dict(responder.rejected)),
            dropped=responder.dropped,
            ignored=service.ignored,
            publish_failures=service.publish_failures,
            handler_errors=service.handler_errors,
            stored=writer.stored if writer else 0,
            store_errors=writer.errors if writer else 0,
            store_overflow=writer.overflow if writer else 0,
            queue_depth=writer.depth if writer else 0,
            batches=writer.batches if writer else 0,
            largest_batch=writer.largest if writer else 0,
        )

    def _after_reply(self, topic: str, outcome: Outcome) -> None:
        """After the reply was fired: queue an accepted report, then tell the callback."""
        reply, report, writer = outcome.reply, outcome.report, self._writer
        if reply is not None and report is not None and writer is not None:
            parsed = parse_topic(topic)
            if parsed is not None:  # always: the responder accepted it
                at = self._clock()
                writer.offer(_Accepted(reply.thing_name, reply.report_id, at, parsed[1], report))
        if self._on_outcome is not None:
            try:
                self._on_outcome(topic, outcome)
            except Exception:  # the caller's bug must not cost the next reports
                log.exception("the on_outcome callback failed")
