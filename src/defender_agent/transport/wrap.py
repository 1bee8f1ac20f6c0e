"""A base for transports that wrap another one and add a little to it.

:class:`TransportWrapper` forwards every operation of the
:class:`~defender_agent.transport.base.Transport` contract to the transport it wraps;
a subclass overrides only the operations it adds to (the service counts the publishes
awaiting their PUBACK, the sandbox shows each report and reply).

>>> from defender_agent.transport.memory import MemoryTransport
>>> class Counting(TransportWrapper):
...     published = 0
...     def publish(self, topic, payload):
...         self.published += 1
...         return super().publish(topic, payload)
>>> wrapped = Counting(MemoryTransport())
>>> wrapped.connect()
>>> wrapped.publish("t", b"x").result(), wrapped.published, wrapped.connected
(None, 1, True)
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Optional

from defender_agent.transport.base import ConnectionListener, MessageHandler, Transport

__all__ = ["TransportWrapper"]


class TransportWrapper:
    """A :class:`~defender_agent.transport.base.Transport` that forwards to ``inner``.

    Args:
        inner: The transport that does the work.
    """

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    def connect(self) -> None:
        """See :meth:`Transport.connect <defender_agent.transport.base.Transport.connect>`."""
        self.inner.connect()

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """See :meth:`Transport.subscribe <defender_agent.transport.base.Transport.subscribe>`."""
        self.inner.subscribe(topic_filter, handler)

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """See :meth:`Transport.publish <defender_agent.transport.base.Transport.publish>`."""
        return self.inner.publish(topic, payload)

    def disconnect(self) -> None:
        """See :meth:`Transport.disconnect <defender_agent.transport.base.Transport.disconnect>`."""
        self.inner.disconnect()

    @property
    def connected(self) -> bool:
        """Whether the wrapped transport's link is up now."""
        return self.inner.connected

    def set_connection_listener(self, listener: Optional[ConnectionListener]) -> None:
        """Be told when the wrapped transport's link drops and comes back."""
        self.inner.set_connection_listener(listener)
