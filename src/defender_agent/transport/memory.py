"""An in-memory :class:`~.base.Transport`: the agent and the service without a network.

:class:`MemoryTransport` keeps the contract of :class:`~.mqtt.MqttTransport`
(connect, subscribe, publish at QoS 1, disconnect, a connection listener)
without sockets, so code built on a transport can be tested, or embedded, in
one process. Several transports on one :class:`MemoryBroker` talk to each
other the way MQTT clients on one broker do: filters with ``+`` and ``#``,
shared subscriptions ``$share/<group>/<filter>`` (one member of a group gets
each message, in turn), and a client receives its own messages when it
subscribed to their topic.

It also lets a test make things go wrong and see what happened: the next
connect, subscribe or publish can fail, publishes can wait for their PUBACK,
the link can drop and come back, and :attr:`MemoryTransport.published` holds
what reached the broker.

Messages are delivered synchronously, on the thread that published them (or
called :meth:`MemoryBroker.publish`), after every lock is released; a real
client calls its handlers on its own threads, so code must not depend on
either. An exception raised by a handler is logged and kept in
:attr:`MemoryTransport.handler_errors`; it never reaches the publisher.

Example: an agent's transport and a service's transport on one broker::

    >>> broker = MemoryBroker()
    >>> device, service = MemoryTransport(broker), MemoryTransport(broker)
    >>> device.connect(); service.connect()
    >>> def answer(topic: str, payload: bytes) -> None:
    ...     service.publish(topic + "/accepted", b'{"status": "ACCEPTED"}')
    >>> service.subscribe("$share/svc/$aws/things/+/defender/metrics/+", answer)
    >>> replies = []
    >>> device.subscribe("$aws/things/t1/defender/metrics/json/+",
    ...                  lambda topic, payload: replies.append(topic))
    >>> device.publish("$aws/things/t1/defender/metrics/json", b"{}").result()
    >>> replies
    ['$aws/things/t1/defender/metrics/json/accepted']
    >>> device.published
    [('$aws/things/t1/defender/metrics/json', b'{}')]

A failure on demand::

    >>> lonely = MemoryTransport()
    >>> lonely.fail_next_connects(1)
    >>> lonely.connect()
    Traceback (most recent call last):
    ...
    defender_agent.errors.ConnectError: injected connect failure (attempt 1)
    >>> lonely.connect(); lonely.connected
    True
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Optional, Union

from defender_agent.errors import ConnectError, PublishError, TransportError
from defender_agent.transport.base import ConnectionListener, MessageHandler
from defender_agent.transport.topics import (
    filter_problem,
    shared_group,
    topic_matches,
    topic_problem,
)

__all__ = ["ErrorSpec", "MemoryBroker", "MemoryTransport"]

log = logging.getLogger(__name__)

#: An injected failure: an exception to raise, an exception class to instantiate with a
#: message saying it was injected, or ``None`` for the operation's usual error class.
ErrorSpec = Union[Exception, type[Exception], None]


def _make_error(spec: ErrorSpec, default: type[Exception], message: str) -> Exception:
    if spec is None:
        return default(message)
    if isinstance(spec, type):
        return spec(message)
    return spec


def _settle(future: Future[None], error: Optional[Exception]) -> None:
    """Complete a future unless it is done already (two threads may race to do it)."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class _Failures:
    """How many of the next operations of one kind fail, and with what."""

    def __init__(self) -> None:
        self.remaining = 0
        self.error: ErrorSpec = None

    def arm(self, count: int, error: ErrorSpec) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        self.remaining, self.error = count, error

    def take(self) -> tuple[bool, ErrorSpec]:
        """Whether this operation fails (and counts it), and the error to use."""
        if self.remaining <= 0:
            return False, None
        self.remaining -= 1
        return True, self.error


class MemoryBroker:
    """An in-process MQTT broker that routes messages between :class:`MemoryTransport` s.

    Only transports that are connected, with their link up, receive messages.
    Nothing is retained or queued for a client that is away.

    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: list[MemoryTransport] = []
        self._turns: dict[tuple[str, str], int] = {}

    def publish(self, topic: str, payload: bytes) -> int:
        """Deliver a message to every matching subscription, as if a client had published it.

        Args:
            topic: the topic name (no wildcards).
            payload: the message.

        Returns:
            How many handlers were called (a shared group counts once).

        Raises:
            ValueError: ``topic`` is not a valid topic name.
        """
        return self._route(topic, bytes(payload))

    @property
    def clients(self) -> list[MemoryTransport]:
        """The transports connected now, in the order they connected."""
        with self._lock:
            return list(self._clients)

    def _attach(self, client: MemoryTransport) -> None:
        with self._lock:
            if client not in self._clients:
                self._clients.append(client)

    def _detach(self, client: MemoryTransport) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)

    def _route(self, topic: str, payload: bytes) -> int:
        problem = topic_problem(topic)
        if problem is not None:
            raise ValueError(f"cannot publish to {topic!r}: {problem}")
        with self._lock:
            clients = list(self._clients)
        targets: list[tuple[MemoryTransport, str, MessageHandler]] = []
        groups: dict[tuple[str, str], list[tuple[MemoryTransport, str, MessageHandler]]] = {}
        for client in clients:
            for topic_filter, handler in client._receiving(topic):
                group, inner = shared_group(topic_filter)
                if group is None:
                    targets.append((client, topic_filter, handler))
                else:
                    groups.setdefault((group, inner), []).append((client, topic_filter, handler))
        with self._lock:
            for key, members in groups.items():
                turn = self._turns.get(key, 0)
                self._turns[key] = turn + 1
                targets.append(members[turn % len(members)])
        for client, topic_filter, handler in targets:
            client._call(topic_filter, handler, topic, payload)
        return len(targets)


class MemoryTransport:
    """A :class:`~.base.Transport` in memory, with failures on demand; thread-safe.

    Args:
        broker: the broker to meet other transports on; by default a private one
            (the transport then receives only its own messages and :meth:`deliver` s).
        client_id: a name for logs and :attr:`MemoryBroker.clients`.
        auto_ack: complete each publish's future at once (the broker's PUBACK); with
            ``False`` the futures stay pending until :meth:`ack_pending`.

    Attributes:
        client_id: as given.
        auto_ack: as given; may be changed at any time.
        broker: the broker this transport publishes to.
    """

    def __init__(
        self,
        broker: Optional[MemoryBroker] = None,
        *,
        client_id: str = "memory",
        auto_ack: bool = True,
    ) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self.client_id = client_id
        self.auto_ack = auto_ack
        self._lock = threading.Lock()
        self._session = False  # connect() succeeded and no disconnect() since
        self._link_up = False  # ... and the link is up (drop_link/restore_link)
        self._listener: Optional[ConnectionListener] = None
        self._subscriptions: dict[str, MessageHandler] = {}
        self._published: list[tuple[str, bytes]] = []
        self._unacked: list[Future[None]] = []
        self._queued: list[tuple[str, bytes, Future[None]]] = []  # sent while the link was down
        self._handler_errors: list[Exception] = []
        self._connect_failures = _Failures()
        self._subscribe_failures = _Failures()
        self._publish_failures = _Failures()
        self._raise_on_publish = False
        self._connect_attempts = 0
        self._disconnects = 0

    def __repr__(self) -> str:
        return f"MemoryTransport(client_id={self.client_id!r}, connected={self.connected})"

    # -- Transport ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the link is up now."""
        with self._lock:
            return self._link_up

    def set_connection_listener(self, listener: Optional[ConnectionListener]) -> None:
        """Be told ``(connected, reason)`` by :meth:`drop_link` and :meth:`restore_link`."""
        with self._lock:
            self._listener = listener

    def connect(self) -> None:
        """Connect to the broker (does nothing when connected); subscriptions are kept.

        Raises:
            ConnectError: (or the injected error) when :meth:`fail_next_connects` says so.
        """
        with self._lock:
            self._connect_attempts += 1
            attempt = self._connect_attempts
            fails, spec = self._connect_failures.take()
            if not fails:
                self._session = self._link_up = True
                queued, self._queued = self._queued, []
        if fails:
            raise _make_error(spec, ConnectError, f"injected connect failure (attempt {attempt})")
        self.broker._attach(self)
        self._send_queued(queued)

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Subscribe (at once: the SUBACK is immediate); replaces the filter's old handler.

        Raises:
            TransportError: not connected, a malformed filter, or an injected failure.
        """
        problem = filter_problem(topic_filter)
        with self._lock:
            fails, spec = self._subscribe_failures.take()
            session = self._session
            if not fails and session and problem is None:
                self._subscriptions[topic_filter] = handler
        if problem is not None:
            raise TransportError(f"cannot subscribe to {topic_filter!r}: {problem}")
        if not session:
            raise TransportError(f"cannot subscribe to {topic_filter}: not connected")
        if fails:
            raise _make_error(spec, TransportError, f"injected SUBACK failure for {topic_filter}")

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """Publish at QoS 1 and deliver to the matching subscriptions on the broker.

        Without a connection the future fails with :class:`PublishError`. While the link
        is down (:meth:`drop_link`) the message waits, and is sent when it is back, as
        a real client's queue would. The future completes at once (``auto_ack``) or
        when :meth:`ack_pending` is called; :meth:`disconnect` fails it.

        Raises:
            PublishError: (or the injected error) only for an injected synchronous failure.
        """
        future: Future[None] = Future()
        problem = topic_problem(topic)
        if problem is not None:  # a real broker would close the connection
            future.set_exception(PublishError(f"cannot publish to {topic!r}: {problem}"))
            return future
        data = bytes(payload)
        with self._lock:
            fails, spec = self._publish_failures.take()
            synchronous = fails and self._raise_on_publish
            session, link_up = self._session, self._link_up
            if not fails and session and not link_up:
                self._queued.append((topic, data, future))
                return future
        message = f"injected publish failure for {topic}"
        if synchronous:
            raise _make_error(spec, PublishError, message)
        if fails:
            future.set_exception(_make_error(spec, PublishError, message))
        elif not session:
            future.set_exception(PublishError(f"cannot publish to {topic}: not connected"))
        else:
            self._send(topic, data, future)
        return future

    def disconnect(self) -> None:
        """Disconnect (idempotent); publishes still waiting for their PUBACK fail."""
        with self._lock:
            self._disconnects += 1
            self._session = self._link_up = False
            waiting = self._unacked + [future for _, _, future in self._queued]
            self._unacked, self._queued = [], []
        self.broker._detach(self)
        for future in waiting:
            _settle(future, PublishError("disconnected before the PUBACK arrived"))

    # -- what a test or an embedding application drives ----------------------------------------

    def deliver(self, topic: str, payload: bytes) -> int:
        """A message arrives through the broker: every matching subscription gets it.

        Same as ``transport.broker.publish(topic, payload)``: other transports on the
        broker receive it too.

        Returns:
            How many handlers were called.
        """
        return self.broker.publish(topic, payload)

    def drop_link(self, reason: str = "link lost") -> None:
        """The link goes down (not a :meth:`disconnect`): the listener hears ``(False, reason)``."""
        with self._lock:
            was_up = self._link_up
            self._link_up = False
            listener = self._listener
        self.broker._detach(self)
        if was_up and listener is not None:
            listener(False, reason)

    def restore_link(self, reason: str = "link restored") -> None:
        """The link is back after :meth:`drop_link`: queued publishes go out, then the listener.

        Does nothing unless connected and the link is down.
        """
        with self._lock:
            if not self._session or self._link_up:
                return
            self._link_up = True
            queued, self._queued = self._queued, []
            listener = self._listener
        self.broker._attach(self)
        self._send_queued(queued)
        if listener is not None:
            listener(True, reason)

    def fail_next_connects(self, count: int = 1, error: ErrorSpec = None) -> None:
        """Make the next ``count`` :meth:`connect` calls raise ``error`` (default ConnectError)."""
        with self._lock:
            self._connect_failures.arm(count, error)

    def fail_next_subscribes(self, count: int = 1, error: ErrorSpec = None) -> None:
        """Make the next ``count`` :meth:`subscribe` calls raise ``error`` (TransportError)."""
        with self._lock:
            self._subscribe_failures.arm(count, error)

    def fail_next_publishes(
        self, count: int = 1, error: ErrorSpec = None, *, synchronous: bool = False
    ) -> None:
        """Make the next ``count`` publishes fail with ``error`` (default PublishError).

        Args:
            count: how many publishes fail (0 cancels an earlier call).
            error: the exception, or its class.
            synchronous: raise from :meth:`publish` itself instead of failing its future
                (what a client library does with a request it cannot even queue).
        """
        with self._lock:
            self._publish_failures.arm(count, error)
            self._raise_on_publish = synchronous

    def ack_pending(self, error: Optional[Exception] = None) -> int:
        """Complete the futures of the publishes waiting for their PUBACK (``auto_ack=False``).

        Args:
            error: fail them with this instead (e.g. a :class:`PublishError` for a lost PUBACK).

        Returns:
            How many futures were completed.
        """
        with self._lock:
            waiting, self._unacked = self._unacked, []
        for future in waiting:
            _settle(future, error)
        return len(waiting)

    # -- what happened ------------------------------------------------------------------------

    @property
    def published(self) -> list[tuple[str, bytes]]:
        """``(topic, payload)`` of every message that reached the broker, oldest first (a copy)."""
        with self._lock:
            return list(self._published)

    @property
    def subscriptions(self) -> dict[str, MessageHandler]:
        """The current subscriptions: topic filter -> handler (a copy)."""
        with self._lock:
            return dict(self._subscriptions)

    @property
    def connect_attempts(self) -> int:
        """How many times :meth:`connect` was called (failed attempts included)."""
        with self._lock:
            return self._connect_attempts

    @property
    def disconnects(self) -> int:
        """How many times :meth:`disconnect` was called."""
        with self._lock:
            return self._disconnects

    @property
    def pending(self) -> int:
        """How many publishes wait: for their PUBACK, or for the link to come back."""
        with self._lock:
            return len(self._unacked) + len(self._queued)

    @property
    def handler_errors(self) -> list[Exception]:
        """Exceptions raised by this transport's message handlers (a copy)."""
        with self._lock:
            return list(self._handler_errors)

    # -- internals ----------------------------------------------------------------------------

    def _send(self, topic: str, payload: bytes, future: Future[None]) -> None:
        with self._lock:
            self._published.append((topic, payload))
            ack = self.auto_ack
            if not ack:
                self._unacked.append(future)
        if ack:
            _settle(future, None)
        self.broker._route(topic, payload)

    def _send_queued(self, queued: list[tuple[str, bytes, Future[None]]]) -> None:
        for topic, payload, future in queued:
            self._send(topic, payload, future)

    def _receiving(self, topic: str) -> list[tuple[str, MessageHandler]]:
        """The subscriptions that get a message on ``topic`` now (none while the link is down)."""
        with self._lock:
            if not self._link_up:
                return []
            return [(f, h) for f, h in self._subscriptions.items() if topic_matches(f, topic)]

    def _call(self, topic_filter: str, handler: MessageHandler, topic: str, payload: bytes) -> None:
        try:
            handler(topic, payload)
        except Exception as exc:  # a real client's thread would log it and go on
            log.exception("%s: the handler of %s raised", self.client_id, topic_filter)
            with self._lock:
                self._handler_errors.append(exc)
