"""Transports: how reports reach AWS IoT Core (or a compatible broker) and how replies come back.

* :class:`Transport` — the contract: connect, subscribe, publish at QoS 1,
  disconnect, and a listener told when the link drops and comes back.
* :class:`MqttSettings` — where and how to connect (endpoint, TLS files,
  ALPN, WebSocket with SigV4, proxy, MQTT 5, timeouts).
* :class:`MqttTransport` — the real MQTT client, on awscrt.
* :class:`MemoryTransport` and :class:`MemoryBroker` — the same contract in
  memory, with failures on demand: for tests, and for running the agent and
  the service in one process.

Names are imported when first used (awscrt only when :class:`MqttTransport` is).

Example:
    >>> from defender_agent.transport import MemoryTransport, Transport
    >>> transport: Transport = MemoryTransport()
    >>> transport.connect()
    >>> transport.publish("$aws/things/t1/defender/metrics/json", b"{}").result()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from defender_agent._lazy import lazy_exports

if TYPE_CHECKING:
    from defender_agent.transport.base import (
        ConnectionListener,
        MessageHandler,
        MqttSettings,
        Transport,
    )
    from defender_agent.transport.memory import MemoryBroker, MemoryTransport
    from defender_agent.transport.mqtt import MqttTransport

#: Where each public name lives (imported on first use).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "defender_agent.transport.base": (
        "ConnectionListener",
        "MessageHandler",
        "MqttSettings",
        "Transport",
    ),
    "defender_agent.transport.memory": ("MemoryBroker", "MemoryTransport"),
    "defender_agent.transport.mqtt": ("MqttTransport",),
}

__all__ = [
    "ConnectionListener",
    "MemoryBroker",
    "MemoryTransport",
    "MessageHandler",
    "MqttSettings",
    "MqttTransport",
    "Transport",
]

if not TYPE_CHECKING:  # mypy sees the imports above; at run time names load on first use
    __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
