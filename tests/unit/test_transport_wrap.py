"""TransportWrapper forwards the whole Transport contract to the transport it wraps."""

from __future__ import annotations

from concurrent.futures import Future

from defender_agent.transport.base import Transport
from defender_agent.transport.memory import MemoryTransport
from defender_agent.transport.wrap import TransportWrapper


def test_every_operation_reaches_the_inner_transport() -> None:
    inner = MemoryTransport()
    wrapped: Transport = TransportWrapper(inner)  # mypy: a wrapper is a Transport
    assert wrapped.connected is False
    wrapped.connect()
    assert (wrapped.connected, inner.connect_attempts) == (True, 1)
    received: list[tuple[str, bytes]] = []
    wrapped.subscribe("a/+", lambda topic, payload: received.append((topic, payload)))
    assert list(inner.subscriptions) == ["a/+"]
    assert wrapped.publish("a/b", b"x").result(timeout=1) is None
    assert inner.published == received == [("a/b", b"x")]
    changes: list[tuple[bool, str]] = []
    wrapped.set_connection_listener(lambda up, why: changes.append((up, why)))
    inner.drop_link("gone")
    assert wrapped.connected is False
    inner.restore_link("back")
    assert changes == [(False, "gone"), (True, "back")]
    wrapped.disconnect()
    assert (wrapped.connected, inner.disconnects) == (False, 1)


class Tagging(TransportWrapper):
    """Overrides one operation; the others still forward."""

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        return super().publish(topic, b"tagged:" + payload)


def test_a_subclass_overrides_only_what_it_adds() -> None:
    inner = MemoryTransport()
    wrapped = Tagging(inner)
    wrapped.connect()
    wrapped.publish("t", b"x")
    assert inner.published == [("t", b"tagged:x")]
    assert wrapped.inner is inner
