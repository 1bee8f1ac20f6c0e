"""The Device Defender responder on an MQTT connection.

:class:`ResponderService` subscribes to every report topic
(``$aws/things/+/defender/metrics/+``, QoS 1), hands each message to a
:class:`~defender_agent.service.responder.Responder` and publishes its reply on the
format's ``accepted``/``rejected`` topic (docs/protocol.md §1.1, §4, §7). The filter
has exactly one level after ``metrics``, so it never matches the reply topics and
the service never answers its own replies.

Scaling out (issue #4): ``topic_filter`` may be a shared subscription,
``$share/<group>/$aws/things/+/defender/metrics/+`` (:func:`report_filter`), so that
several service processes split the reports; the broker hands each message to one
member of the group, with its real topic. ``topic_prefix`` serves brokers that route
reports under a prefix (mosquitto 2.0 never matches a ``$`` topic against a shared
subscription, so a bridge there republishes ``$aws/...`` as ``<prefix>$aws/...``): the
prefix is taken off each received topic before the responder sees it, and replies go
to the real ``$aws/...`` reply topics.

The caller owns the transport: it connects it before :meth:`~ResponderService.start`
and disconnects it after :meth:`~ResponderService.stop`. Messages arrive on the
transport's callback thread; the service never raises into it and never blocks on
a publish: every reply is fired and its failure, if any, is logged at WARNING when
the transport reports it. An exception while handling a message is logged with its
traceback and counted, and the next message is handled as usual.

An optional ``on_outcome(topic, outcome)`` hook runs after the reply was handed to
the transport (the storage of the local service, a caller's printout); it gets the
topic as the responder saw it, and the outcome carries the decoded report of an
ACCEPTED one. Its exceptions are logged and counted like the handler's.

An optional ``on_accepted(topic, outcome)`` hook takes over the ACCEPTED replies: the
service hands it each accepted outcome instead of publishing its reply, and the hook's
owner publishes the reply later with :meth:`~ResponderService.publish` (the local service
does so once the report is committed: "ACCEPTED" means stored). That hook may block
the transport's callback thread (back-pressure: the broker holds the next messages);
it must then never wait for something only that thread can do. REJECTED replies are
published at once.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Final, Optional

from defender_agent.errors import ConfigError
from defender_agent.logs import shown as _shown
from defender_agent.service.responder import Outcome, Reply, Responder
from defender_agent.transport.base import Transport

__all__ = [
    "REPORT_TOPIC_FILTER",
    "AcceptedHook",
    "OutcomeHook",
    "ResponderService",
    "ServiceStats",
    "report_filter",
]

#: Every report topic, JSON and CBOR, of every thing (§1.1); not the reply topics.
REPORT_TOPIC_FILTER: Final = "$aws/things/+/defender/metrics/+"

#: ``hook(topic, outcome)``: called after each handled message's reply was fired (or after
#: a drop); ``outcome.report`` is the decoded report of an ACCEPTED one.
OutcomeHook = Callable[[str, Outcome], None]

#: ``hook(topic, outcome)``: given each ACCEPTED outcome (with its decoded report) instead of
#: publishing its reply; the hook's owner publishes it with :meth:`ResponderService.publish`.
AcceptedHook = Callable[[str, Outcome], None]


def report_filter(shared_group: Optional[str] = None, topic_prefix: str = "") -> str:
    """The subscription filter for the report topics, shared by a group or not.

    >>> report_filter()
    '$aws/things/+/defender/metrics/+'
    >>> report_filter("dd", "bridged/")
    '$share/dd/bridged/$aws/things/+/defender/metrics/+'

    Args:
        shared_group: An MQTT shared-subscription group name (``$share/<group>/``): the
            broker gives each report to one subscriber of the group. None: every report
            to this subscriber.
        topic_prefix: A prefix the broker puts before ``$aws/...`` (see the module notes).

    Raises:
        ConfigError: The group is empty or has ``/``, ``+`` or ``#``; the prefix has a
            wildcard.
    """
    if shared_group is not None and (not shared_group or any(c in shared_group for c in "/+#")):
        raise ConfigError(
            f"shared group {shared_group!r}: expected a non-empty name without '/', '+' or '#'"
        )
    if any(c in topic_prefix for c in "+#\x00"):
        raise ConfigError(f"topic prefix {topic_prefix!r}: wildcards are not allowed")
    share = f"$share/{shared_group}/" if shared_group is not None else ""
    return f"{share}{topic_prefix}{REPORT_TOPIC_FILTER}"


_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceStats:
    """A read-only snapshot of the service's own counters.

    The responder's counters (accepted, rejected by code, per thing) are in
    :meth:`Responder.snapshot`.

    Attributes:
        messages: Messages received while running.
        replies: Replies handed to the transport.
        publish_failures: Replies the transport failed to publish.
        handler_errors: Messages whose handling raised (logged with the traceback).
        ignored: Messages received while stopped.
    """

    messages: int
    replies: int
    publish_failures: int
    handler_errors: int
    ignored: int


class ResponderService:
    """Answers Device Defender reports that arrive on a transport.

    Args:
        transport: A connected transport (or one about to connect); the caller owns it.
        responder: The decisions; a new :class:`Responder` with the default policy
            (docs/protocol.md §7) if None.
        topic_filter: What to subscribe to: :data:`REPORT_TOPIC_FILTER`, or a shared or
            prefixed form of it from :func:`report_filter`.
        topic_prefix: Taken off the front of each received topic that has it, before the
            responder sees the topic (the prefix :func:`report_filter` was given).
        on_outcome: Called with ``(topic, outcome)`` after each reply was fired
            (or after a drop); ``topic`` without ``topic_prefix``. It runs on the
            transport's thread: it must be quick and must not block.
        on_accepted: Called with ``(topic, outcome)`` for each ACCEPTED outcome instead of
            publishing its reply (see the module notes); None: publish at once.
    """

    def __init__(
        self,
        transport: Transport,
        responder: Optional[Responder] = None,
        *,
        topic_filter: str = REPORT_TOPIC_FILTER,
        topic_prefix: str = "",
        on_outcome: Optional[OutcomeHook] = None,
        on_accepted: Optional[AcceptedHook] = None,
    ) -> None:
        self._transport = transport
        self._on_accepted = on_accepted
        self._responder = responder if responder is not None else Responder()
        self._filter = topic_filter
        self._prefix = topic_prefix
        self._on_outcome = on_outcome
        self._lock = threading.Lock()
        self._running = False
        self._subscribed = False
        self._messages = 0
        self._replies = 0
        self._publish_failures = 0
        self._handler_errors = 0
        self._ignored = 0

    @property
    def responder(self) -> Responder:
        """The responder that decides the replies (its counters: ``snapshot()``)."""
        return self._responder

    @property
    def topic_filter(self) -> str:
        """The subscription filter."""
        return self._filter

    @property
    def running(self) -> bool:
        """Whether messages are being answered."""
        return self._running

    def start(self) -> None:
        """Subscribe to the report topics (QoS 1) and answer from now on; idempotent.

        Raises:
            TransportError: The subscription was refused or not acknowledged; the
                service stays stopped.
        """
        with self._lock:
            if self._running:
                return
            self._running = True  # before the SUBACK: a report may follow right away
        if self._subscribed:  # the transport keeps a subscription across reconnects
            _log.info("responder answering reports on %s again", self._filter)
            return
        try:
            self._transport.subscribe(self._filter, self._on_message)
        except BaseException:
            with self._lock:
                self._running = False
            raise
        self._subscribed = True
        _log.info("responder subscribed to %s", self._filter)

    def stop(self) -> None:
        """Stop answering; later messages are counted as ignored. Idempotent.

        The transport has no unsubscribe: the subscription stays until the caller
        disconnects the transport, and :meth:`start` resumes without subscribing again.
        """
        with self._lock:
            was_running, self._running = self._running, False
        if was_running:
            _log.info("responder stopped")

    def stats(self) -> ServiceStats:
        """A consistent, read-only copy of the service's counters."""
        with self._lock:
            return ServiceStats(
                messages=self._messages,
                replies=self._replies,
                publish_failures=self._publish_failures,
                handler_errors=self._handler_errors,
                ignored=self._ignored,
            )

    def _on_message(self, topic: str, payload: bytes) -> None:
        """The transport's message callback: answer, never raise (waits only in on_accepted)."""
        with self._lock:
            if not self._running:
                self._ignored += 1
                return
            self._messages += 1
        try:
            if self._prefix and topic.startswith(self._prefix):
                topic = topic[len(self._prefix) :]
            payload = bytes(payload)
            outcome = self._responder.handle(topic, payload)
            self._log_outcome(topic, outcome)
            reply = outcome.reply
            if reply is not None:
                if reply.accepted and outcome.report is not None and self._on_accepted:
                    self._on_accepted(topic, outcome)  # it publishes the reply, or not
                else:
                    self.publish(reply)
            if self._on_outcome is not None:
                self._on_outcome(topic, outcome)
        except Exception:
            with self._lock:
                self._handler_errors += 1
            _log.exception("responder failed on a message on topic %s", _shown(topic))

    @staticmethod
    def _log_outcome(topic: str, outcome: Outcome) -> None:
        reply = outcome.reply
        if reply is None:
            level = logging.DEBUG if outcome.quiet else logging.INFO  # a flood's (issue #9)
            _log.log(level, "report topic=%s status=DROPPED: %s", _shown(topic), outcome.reason)
            return
        _log.log(
            logging.DEBUG if outcome.quiet else logging.INFO,  # a flood's repeats (issue #9)
            "report thing=%s report_id=%s status=%s code=%s: %s",
            _shown(reply.thing_name),
            reply.report_id,
            "ACCEPTED" if reply.accepted else "REJECTED",
            reply.error_code or "-",
            outcome.reason,
        )

    def publish(self, reply: Reply) -> None:
        """Fire the publish of a reply; a failure now or later is logged at WARNING and counted.

        Thread-safe; never raises and never waits for the PUBACK.
        """
        try:
            future = self._transport.publish(reply.topic, reply.payload)
        except Exception as exc:
            self._publish_failed(reply, exc)
            return
        with self._lock:
            self._replies += 1
        future.add_done_callback(lambda done: self._published(reply, done))

    def _published(self, reply: Reply, done: Future[None]) -> None:
        if done.cancelled():
            self._publish_failed(reply, "cancelled")
        elif (exc := done.exception()) is not None:
            self._publish_failed(reply, exc)

    def _publish_failed(self, reply: Reply, why: object) -> None:
        with self._lock:
            self._publish_failures += 1
        _log.warning("responder could not publish the reply on %s: %s", _shown(reply.topic), why)
