"""What the MQTT 3.1.1 and MQTT 5 links share: their contract with the transport, and helpers.

A *link* is one awscrt client (an ``mqtt.Connection`` or an ``mqtt5.Client``)
from its first connection attempt until it is closed. :class:`~.mqtt.MqttTransport`
makes a new link for every :meth:`~.mqtt.MqttTransport.connect` and keeps the
subscriptions itself, so a link holds no state worth keeping.
"""

from __future__ import annotations

import concurrent.futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from awscrt import http, io
from awscrt.exceptions import AwsCrtError

from defender_agent.transport.topics import topic_matches  # re-exported for the links

__all__ = ["Link", "LinkEvents", "LinkSetup", "crt_reason", "settle", "topic_matches"]

#: How long closing a link may take before it is abandoned.
CLOSE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class LinkSetup:
    """The awscrt objects a link is built from (see :mod:`._awscrt_tls`)."""

    tls_ctx: Optional[io.ClientTlsContext]
    socket_options: io.SocketOptions
    proxy: Optional[http.HttpProxyOptions]
    ws_transform: Optional[Callable[..., None]]


class LinkEvents(Protocol):
    """What a link reports to its transport, from awscrt's threads."""

    def link_up(self, link: Link, session_present: bool, reason: str) -> None:
        """The link reconnected by itself (not called for the first connect)."""

    def link_down(self, link: Link, reason: str) -> None:
        """The link dropped unexpectedly; the client reconnects by itself."""

    def message(self, topic_filter: Optional[str], topic: str, payload: bytes) -> None:
        """A message arrived for ``topic_filter`` (``None``: for every matching filter)."""


class Link(Protocol):
    """One awscrt MQTT client, from its first connection attempt until it is closed."""

    def connect(self, timeout_s: float) -> bool:
        """Make one connection attempt; return whether the broker kept a session.

        Raises:
            ConnectError: the attempt failed or took longer than ``timeout_s``; the
                link has stopped trying (without waiting for that to finish).
        """

    def subscribe(self, topic_filter: str) -> Future[None]:
        """Subscribe at QoS 1; the future fails with TransportError when refused."""

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """Publish at QoS 1; the future fails with PublishError when not acknowledged."""

    def close(self, timeout_s: float) -> bool:
        """Disconnect and stop reconnecting; whether that finished within ``timeout_s``."""


def crt_reason(exc: BaseException) -> str:
    """One line for an awscrt error: ``AWS_IO_SOCKET_CONNECTION_REFUSED: socket ...``.

    >>> crt_reason(AwsCrtError(1047, "AWS_IO_SOCKET_CLOSED", "socket is closed."))
    'AWS_IO_SOCKET_CLOSED: socket is closed.'
    >>> crt_reason(ValueError())
    'ValueError'
    """
    if isinstance(exc, AwsCrtError):
        return f"{exc.name}: {exc.message}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def settle(future: Future[None], error: Optional[BaseException]) -> None:
    """Complete ``future`` with ``None`` or ``error``, unless it is already done or cancelled."""
    if future.done():
        return
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass  # completed by another thread (disconnect) in the meantime


def wait_error(future: Future[Any], timeout_s: float) -> tuple[bool, Optional[BaseException]]:
    """``(done, exception)`` of a future after waiting at most ``timeout_s``."""
    try:
        return True, future.exception(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        return False, None
    except concurrent.futures.CancelledError as exc:
        return True, exc
