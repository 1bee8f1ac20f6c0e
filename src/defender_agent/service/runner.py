"""The local Device Defender service: the responder on an MQTT broker, with storage.

:class:`DeviceDefenderService` is what ``defender-agent service`` runs. It connects one
MQTT client to a broker (mutual TLS or plain TCP), subscribes to every report topic
(``$aws/things/+/defender/metrics/+``, or a shared subscription of it), answers each
report the way AWS IoT Device Defender does (:class:`~defender_agent.service.responder.Responder`,
docs/protocol.md §4, §7) and stores the metric values of every ACCEPTED report
(:mod:`defender_agent.service.storage`).

Choices, each one a setting of :class:`ServiceConfig`:

* **Stored, then ACCEPTED.** An accepted report is committed before its ACCEPTED reply
  is published, so a device that got ACCEPTED knows its report is kept, even if the
  process is killed the next moment. The transport's callback only puts the accepted
  report (as the validator decoded it: the payload is never decoded twice) and its reply
  on a bounded queue (``queue_max``); one writer thread takes whatever arrived meanwhile
  (up to ``batch_max`` reports), commits it in one transaction (group commit) and then
  publishes those replies. REJECTED replies (invalid, Throttled) need no storage and go
  out at once. ``reply_before_store`` restores the old order (reply, then queue): faster
  replies, but a crash loses the reports acknowledged since the last commit, and a full
  queue drops reports that were answered ACCEPTED (``store_overflow``).
* **Back-pressure, not loss.** When the queue is full the callback waits for room, so
  the MQTT client stops taking messages and the broker holds the rest (QoS 1). The
  writer thread, not the callback's thread, publishes the ACCEPTED replies. (While the
  callback waits, awscrt's event-loop thread does nothing else either; an outage of the
  store longer than about 1.5 x ``keep_alive`` may therefore cost the connection, which
  the transport re-establishes. Not measured.)
* **A store that is down stops the acknowledgements, not the service.** A batch that
  fails because the database is unreachable or locked (the driver's
  ``OperationalError``/``InterfaceError``) is retried, with backoff, until it is stored
  (one log line when the store goes down, one when it is back); meanwhile no ACCEPTED
  reply goes out. A batch the database refuses for its content is retried one report at
  a time, so one bad report cannot cost its batch; a report that still fails is counted
  in ``store_errors`` and never acknowledged.
* **A clean stop acknowledges only what it stored.** :meth:`DeviceDefenderService.stop`
  stops answering, lets the writer store (and acknowledge) what is queued for at most
  ``drain_timeout_s``, waits (bounded) for the replies in flight, then disconnects; the
  reports still not stored are not acknowledged, and their count is one line at ERROR.
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

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Final, NamedTuple, Optional

from defender_agent.errors import ConfigError, StateError
from defender_agent.model import Report
from defender_agent.report.document import to_document
from defender_agent.report.names import NameStyle
from defender_agent.report.validate import PayloadFormat
from defender_agent.service.handoff import HandOff
from defender_agent.service.latency import Latency, LatencySnapshot
from defender_agent.service.metrics_map import metric_values
from defender_agent.service.responder import (
    DEFAULT_RESPONDER_POLICY,
    Outcome,
    Reply,
    Responder,
    ResponderPolicy,
    ThingCounts,
    parse_topic,
)
from defender_agent.service.responder_service import OutcomeHook, ResponderService, report_filter
from defender_agent.service.storage import Store, StoredReport, open_store
from defender_agent.transport.base import MqttSettings, Transport
from defender_agent.transport.wrap import TransportWrapper

__all__ = [
    "AfterStore",
    "DeviceDefenderService",
    "HandedOver",
    "RunnerStats",
    "ServiceConfig",
]

log = logging.getLogger(__name__)

_REPLY_WAIT_S: Final = 2.0  # how long stop() waits for replies in flight
_LOG_EVERY_S: Final = 5.0  # storage warnings: at most one line per this many seconds
_HANDOFF_BATCH_MAX: Final = 1000  # the most stored reports per after_store call (Detect)
_HANDOFF_LINGER_S: Final = 0.25  # how long a stored report may wait for its Detect batch to fill
_RETRY_FIRST_S: Final = 0.05  # a store that is down: first retry after this, then doubling
_RETRY_MAX_S: Final = 2.0  # ... up to this


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
        queue_max: The most accepted reports waiting for the writer; beyond, the MQTT
            callback waits for room (back-pressure), or, with ``reply_before_store``, the
            report is answered but not stored (``store_overflow``).
        drain_timeout_s: How long :meth:`~DeviceDefenderService.stop` lets the writer store
            what is queued.
        reply_before_store: Publish ACCEPTED before the report is stored (the old order):
            a crash, a full queue or a database that is down loses acknowledged reports.
    """

    broker: MqttSettings
    db_url: str
    policy: ResponderPolicy = DEFAULT_RESPONDER_POLICY
    shared_group: Optional[str] = None
    topic_prefix: str = ""
    batch_max: int = 500
    queue_max: int = 20_000
    drain_timeout_s: float = 10.0
    reply_before_store: bool = False

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
        store_errors: Accepted reports the store refused (never acknowledged, unless
            ``reply_before_store``).
        store_overflow: Accepted reports not queued for storage: the queue was full
            (``reply_before_store`` only) or the service was stopping.
        queue_depth: Accepted reports waiting for the writer now.
        batches: Transactions committed.
        largest_batch: The most reports committed in one transaction.
        acknowledged: ACCEPTED replies published after their report was stored.
        backpressure_waits: Times the MQTT callback waited for room in the queue.
        store_down: Whether the store is failing now (no ACCEPTED replies meanwhile).
        after_store_errors: Batches the ``after_store`` hook (Detect) failed on.
        store_latency: How long each committed transaction took (``/metrics``).
        detect_latency: How long the ``after_store`` hook (Detect's evaluation) took per
            batch; None without the hook.
        things: Replies per thing name (accepted, rejected by code) for the names the
            responder tracks (``max_tracked_things``, most recent); this process only.
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
    acknowledged: int = 0
    backpressure_waits: int = 0
    store_down: bool = False
    after_store_errors: int = 0
    store_latency: Optional[LatencySnapshot] = None
    detect_latency: Optional[LatencySnapshot] = None
    things: Mapping[str, ThingCounts] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict[str, object]:
        """The counters as a JSON object (without the latency and the per-thing counts)."""
        skip = ("store_latency", "detect_latency", "things")
        doc = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in skip}
        doc["rejected"] = dict(self.rejected)
        return doc


class HandedOver(NamedTuple):
    """A committed report as the after_store hook (Detect) gets it.

    Attributes:
        thing: The thing name.
        received_at: When it arrived (epoch seconds).
        report: The typed report.
        document: The report as stored: JSON text with long names (what a hook in another
            process decodes, rather than a pickled :class:`Report`).
    """

    thing: str
    received_at: float
    report: Report
    document: str


#: Called with committed reports, after their ACCEPTED replies went out, in the order stored,
#: on the ``dd-service-detect`` thread (Detect).
AfterStore = Callable[[Sequence[HandedOver]], object]


@dataclass(frozen=True)
class _Accepted:
    """An accepted report waiting for the writer: mapped to values there, off the MQTT thread."""

    thing: str
    report_id: Optional[int]
    received_at: float
    fmt: PayloadFormat
    report: Report
    reply: Optional[Reply] = None  # published once stored (None: it went out already)


#: ``json.dumps(document, allow_nan=False)`` with one encoder (not one per call).
_ENCODE_JSON: Final = json.JSONEncoder(allow_nan=False).encode


def _replies(count: int) -> str:
    """``1 reply``, ``2 replies``."""
    return f"{count} {'reply' if count == 1 else 'replies'}"


def store_is_down(exc: BaseException) -> bool:
    """Whether a store error means the database is unreachable or busy, not the data.

    A driver's ``OperationalError`` or ``InterfaceError`` (sqlite3 and psycopg alike:
    connection lost, server shutting down, ``database is locked``, a deadlock) says
    "retry later"; anything else (``ValueError``, an ``IntegrityError``, a ``DataError``)
    is about the reports themselves.

    >>> import sqlite3
    >>> from defender_agent.errors import StateError
    >>> def wrapped(cause: Exception) -> StateError:
    ...     try:
    ...         raise StateError("service database x") from cause
    ...     except StateError as exc:
    ...         return exc
    >>> store_is_down(wrapped(sqlite3.OperationalError("database is locked")))
    True
    >>> store_is_down(wrapped(sqlite3.IntegrityError("NOT NULL constraint failed")))
    False
    >>> store_is_down(ValueError("bad time"))
    False
    """
    cause = exc.__cause__ if isinstance(exc, StateError) else exc
    if cause is None:  # a StateError of the store itself (closed): not the data either
        return isinstance(exc, StateError)
    return any(k.__name__ in ("OperationalError", "InterfaceError") for k in type(cause).__mro__)


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
    """The storage thread: a bounded queue of accepted reports, committed in batches.

    With ``publish``, each report's ACCEPTED reply is handed to it after its batch was
    committed, and :meth:`offer` waits while the queue is full; without, the replies went
    out already and a full queue refuses the report.
    """

    def __init__(
        self,
        store: Store,
        batch_max: int,
        queue_max: int,
        publish: Optional[Callable[[Reply], None]] = None,
        after_store: Optional[AfterStore] = None,
    ) -> None:
        self._store = store
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._publish = publish
        self.after_store_errors = 0  # batches the after_store hook failed on
        self.after_store_latency = Latency()  # of each batch the hook took (Detect's time)
        # the hook runs on a thread of its own: the next batch commits meanwhile
        self._handoff: Optional[HandOff[HandedOver]] = None
        if after_store is not None:
            self._handoff = HandOff(
                after_store,
                on_error=self._hook_failed,
                batch_max=_HANDOFF_BATCH_MAX,
                queue_max=max(queue_max, batch_max),
                latency=self.after_store_latency,
                linger_s=_HANDOFF_LINGER_S,
                name="dd-service-detect",
            )
        self._queue: deque[_Accepted] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandon = False
        self._in_batch = 0
        self._thread = threading.Thread(target=self._run, name="dd-service-writer", daemon=True)
        self._warn = _Throttled()
        self._down_since: Optional[float] = None
        self.down_reason: Optional[str] = None  # the store's last "down" error
        self._call_since: Optional[float] = None  # monotonic start of the store call running
        self.stored = 0
        self.errors = 0
        self.overflow = 0
        self.batches = 0
        self.largest = 0
        self.acknowledged = 0
        self.waits = 0
        self.refused = 0  # offered while closing: not queued, not stored
        self.latency = Latency()  # of each record_many call that committed

    def start(self) -> None:
        if self._handoff is not None:
            self._handoff.start()
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def busy_for(self) -> float:
        """How long the store call in progress has been running (0 when none is).

        A call that never returns (a lock held forever) is what the watchdog looks for.
        """
        since = self._call_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def _record(self, reports: Sequence[StoredReport]) -> None:
        self._call_since = time.monotonic()
        try:
            self._store.record_many(reports)
        finally:
            self._call_since = None

    def offer(self, item: _Accepted) -> bool:
        """Queue a report; False (and counted) when it was refused: full or closing.

        With ``publish`` (store first) a full queue makes the caller wait for room.
        """
        with self._cond:
            if self._publish is not None and len(self._queue) >= self._queue_max:
                self.waits += 1
                while len(self._queue) >= self._queue_max and not self._closing:
                    self._cond.wait()
            if len(self._queue) >= self._queue_max or self._closing:
                self.overflow += 1
                if self._closing:
                    self.refused += 1
                full = not self._closing
            else:
                self._queue.append(item)
                self._cond.notify_all()
                return True
        if full:
            self._warn.log(
                logging.WARNING,
                "storage queue full (%d reports): an accepted report of %s was not stored",
                self._queue_max,
                item.thing,
            )
        return False

    def close(self, timeout: float) -> int:
        """Store what is queued (at most ``timeout`` s) and stop; returns how many were not.

        The count includes the reports offered while closing (refused).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if not self.started:
            return len(self._queue) + self.refused
        self._thread.join(timeout)
        with self._cond:
            self._abandon = True  # after the attempt in progress, if any, take no more
            left = len(self._queue) + self._in_batch + self.refused
            self._cond.notify_all()
        if self._handoff is not None:  # what was stored gets judged in the time left
            unjudged = self._handoff.close(deadline - time.monotonic())
            if unjudged:
                log.warning(
                    "%d stored reports were not evaluated by Detect: the stop's %g s ran out",
                    unjudged,
                    timeout,
                )
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
                self._cond.notify_all()  # room for a waiting callback
            try:
                self._write(batch)
            except Exception:  # the writer's top level: a bug must not end storage
                with self._cond:
                    self.errors += self._in_batch
                log.exception("storing a batch of %d reports failed", len(batch))
            with self._cond:
                self._in_batch = 0

    def _prepare(self, batch: Sequence[_Accepted]) -> list[tuple[_Accepted, StoredReport]]:
        pairs = []
        for item in batch:
            try:
                values = metric_values(item.report)
            except Exception as exc:  # validated before: a bug, but only this report's
                with self._cond:
                    self.errors += 1
                    self._in_batch -= 1
                self._warn.log(
                    logging.ERROR, "cannot map the report of %s to values: %s", item.thing, exc
                )
                continue
            document = _ENCODE_JSON(to_document(item.report, NameStyle.LONG))
            stored = StoredReport(
                item.thing, item.report_id, item.received_at, item.fmt.value, values, document
            )
            pairs.append((item, stored))
        return pairs

    def _write(self, batch: Sequence[_Accepted]) -> None:
        """Store the batch (retrying while the store is down), acknowledging what was stored."""
        pending = self._prepare(batch)
        delay = _RETRY_FIRST_S
        while pending:
            began = time.monotonic()
            try:
                self._record([stored for _item, stored in pending])
            except Exception as exc:  # StateError, or a value the database refuses
                if store_is_down(exc):
                    self._went_down(exc)
                    with self._cond:
                        if self._cond.wait_for(lambda: self._abandon, delay):
                            return  # stopping: the rest is counted by close()
                    delay = min(delay * 2, _RETRY_MAX_S)
                    continue
                self._warn.log(
                    logging.WARNING,
                    "storing a batch of %d reports failed (%s); storing them one by one",
                    len(pending),
                    exc,
                )
                done, pending = self._one_by_one(pending)
            else:
                self.latency.observe(time.monotonic() - began)
                done, pending = pending, []
                with self._cond:
                    self.batches += 1
                    self.largest = max(self.largest, len(done))
            if done:
                self._came_back(len(done))
                self._acknowledge(done)
                self._hand_over(done)

    def _hand_over(self, done: Sequence[tuple[_Accepted, StoredReport]]) -> None:
        """Queue the stored (and acknowledged) reports for the after_store hook (Detect).

        The hook runs on its own thread (:mod:`.handoff`); this waits only while its queue
        is full. Its failure is one log line (rate-limited) and a count: the replies went
        out already.
        """
        if self._handoff is not None:
            self._handoff.offer(
                [
                    HandedOver(item.thing, item.received_at, item.report, stored.document or "")
                    for item, stored in done
                ]
            )

    def _hook_failed(self, count: int, exc: BaseException) -> None:
        with self._cond:
            self.after_store_errors += 1
        self._warn.log(
            logging.ERROR, "evaluating a batch of %d stored reports failed: %s", count, exc
        )

    def _one_by_one(
        self, pairs: list[tuple[_Accepted, StoredReport]]
    ) -> tuple[list[tuple[_Accepted, StoredReport]], list[tuple[_Accepted, StoredReport]]]:
        """Store each report alone: (stored, still to store if the store went down)."""
        done: list[tuple[_Accepted, StoredReport]] = []
        for index, (item, stored) in enumerate(pairs):
            try:
                self._record([stored])
            except Exception as exc:
                if store_is_down(exc):
                    return done, pairs[index:]
                with self._cond:
                    self.errors += 1
                    self._in_batch -= 1
                self._warn.log(
                    logging.ERROR,
                    "an accepted report of %s (report id %s) was not stored%s: %s",
                    stored.thing,
                    stored.report_id,
                    "" if self._publish is None else " (not acknowledged)",
                    exc,
                )
            else:
                done.append((item, stored))
                with self._cond:
                    self.batches += 1
                    self.largest = max(self.largest, 1)
        return done, []

    def _acknowledge(self, done: Sequence[tuple[_Accepted, StoredReport]]) -> None:
        with self._cond:
            self.stored += len(done)
            self._in_batch -= len(done)
            abandoned = self._abandon
        if self._publish is None or abandoned:  # stopped: the connection may be gone
            return
        for item, _stored in done:
            if item.reply is not None:
                self._publish(item.reply)
        with self._cond:
            self.acknowledged += len(done)

    def _went_down(self, exc: BaseException) -> None:
        self.down_reason = " ".join(str(exc).split())[:200]
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        log.error(
            "service database %s is down (%s): %s until it is back; retrying",
            self._store.name,
            " ".join(str(exc).split()),
            "no report is acknowledged" if self._publish is not None else "reports wait",
        )

    def _came_back(self, count: int) -> None:
        if self._down_since is None:
            return
        down_for = time.monotonic() - self._down_since
        self._down_since = None
        log.warning(
            "service database %s is back after %.1f s: %d reports stored",
            self._store.name,
            down_for,
            count,
        )


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
            fired (an ACCEPTED one: queued, to be published once stored), on the MQTT
            client's thread (keep it quick; its exceptions are logged).
        transport: The MQTT connection; an :class:`~defender_agent.transport.mqtt.MqttTransport`
            for ``config.broker`` if None.
        store: The store; :func:`~.storage.open_store` of ``config.db_url`` if None
            (opened by :meth:`start`).
        clock: Epoch seconds, for the replies, the throttle and the stored values' time.
        after_store: Called with the committed reports after their ACCEPTED replies were
            published, in the order stored, on a thread of its own (``dd-service-detect``,
            :mod:`.handoff`: the writer commits the next batch meanwhile; a call takes what
            queued, up to 1 000 reports or until the oldest waited 0.25 s); an exception is
            one log line and ``after_store_errors``, never a lost reply. :meth:`stop` gives
            it what is stored within ``drain_timeout_s``.
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        on_outcome: Optional[OutcomeHook] = None,
        transport: Optional[Transport] = None,
        store: Optional[Store] = None,
        clock: Callable[[], float] = time.time,
        after_store: Optional[AfterStore] = None,
    ) -> None:
        self.config = config
        self._on_outcome = on_outcome
        self._after_store = after_store
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
            on_accepted=None if config.reply_before_store else self._take,
        )

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """Publish a message on the service's MQTT connection (QoS 1; Detect's alerts)."""
        return self._transport.publish(topic, payload)

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
                self._writer = _Writer(
                    self._store,
                    self.config.batch_max,
                    self.config.queue_max,
                    None if self.config.reply_before_store else self._service.publish,
                    self._after_store,
                )
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
        lost = 0
        if self._writer is not None:  # store (and acknowledge) what is queued, bounded
            lost = self._writer.close(self.config.drain_timeout_s)
            if lost:
                log.error(
                    "%d accepted reports were not stored%s: the writer did not finish within %g s",
                    lost,
                    "" if self.config.reply_before_store else " and not acknowledged",
                    self.config.drain_timeout_s,
                )
        if self._connected:
            if (left := self._transport.wait_idle(_REPLY_WAIT_S)) > 0:
                log.warning("%s still unacknowledged at stop", _replies(left))
            self._transport.disconnect()  # (ends the MQTT session if broker.discard_session)
        if self._store is not None and not lost:
            self._store.close()  # (with a writer still busy, the store is left to the exit)
        stats = self.stats()
        # never opened its database (that error follows): no "service stopped" line before it
        log.log(
            logging.INFO if self._store is not None else logging.DEBUG,
            "service stopped: %d messages, %d accepted, %d rejected, %d stored, "
            "%d acknowledged once stored, %d store errors, %d not queued, "
            "%d waits for room in the queue, %d ignored while stopping",
            stats.messages,
            stats.accepted,
            sum(stats.rejected.values()),
            stats.stored,
            stats.acknowledged,
            stats.store_errors,
            stats.store_overflow,
            stats.backpressure_waits,
            stats.ignored,
        )

    def health(self) -> dict[str, object]:
        """What ``status --check --service`` and the watchdog look at (plain data).

        ``connected``: the broker link is up; ``store_down``/``store_error``: writes fail
        and are being retried; ``queue_depth``/``queue_max``: accepted reports waiting for
        the store; ``store_busy_s``: how long the store call in progress has run.
        """
        writer = self._writer
        return {
            "connected": self._connected and self._transport.connected,
            "store": self._store.name if self._store is not None else None,
            "store_down": writer.down if writer else False,
            "store_error": writer.down_reason if writer and writer.down else None,
            "queue_depth": writer.depth if writer else 0,
            "queue_max": self.config.queue_max,
            "store_busy_s": round(writer.busy_for(), 3) if writer else 0.0,
        }

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
            acknowledged=writer.acknowledged if writer else 0,
            backpressure_waits=writer.waits if writer else 0,
            store_down=writer.down if writer else False,
            after_store_errors=writer.after_store_errors if writer else 0,
            store_latency=writer.latency.snapshot() if writer else None,
            detect_latency=writer.after_store_latency.snapshot()
            if writer and self._after_store is not None
            else None,
            things=responder.things,
        )

    def _queue(self, topic: str, outcome: Outcome, *, with_reply: bool) -> None:
        """Queue an accepted report for the writer (waits for room when storing first)."""
        reply, report, writer = outcome.reply, outcome.report, self._writer
        if reply is None or report is None or writer is None:
            return
        parsed = parse_topic(topic)
        if parsed is None:  # never: the responder accepted it
            return
        at = self._clock()
        item = _Accepted(
            reply.thing_name, reply.report_id, at, parsed[1], report, reply if with_reply else None
        )
        writer.offer(item)

    def _take(self, topic: str, outcome: Outcome) -> None:
        """An ACCEPTED outcome, reply not yet published: the writer publishes it once stored."""
        self._queue(topic, outcome, with_reply=True)

    def _after_reply(self, topic: str, outcome: Outcome) -> None:
        """After the reply was fired: queue an accepted report (reply first), then the hook."""
        if self.config.reply_before_store:
            self._queue(topic, outcome, with_reply=False)
        if self._on_outcome is not None:
            try:
                self._on_outcome(topic, outcome)
            except Exception:  # the caller's bug must not cost the next reports
                log.exception("the on_outcome callback failed")
