"""The Detect worker's own MQTT connection for its alerts (``[detect] alert_connection``).

With ``alert_connection = "own"`` (the default) Detect's worker process publishes its MQTT
alerts on a connection of its own to the service's broker, with the service's settings
(TLS files, MQTT version, keep-alive) and the client id ``SERVICE-CLIENT-ID-detect``, so an
alarm storm costs the service's replies nothing. ``"service"`` sends them back to the
service, which publishes them on its connection (one client id at the broker).

The connection is made on a thread of its own, retried with backoff while the broker is
unreachable; an alert published before the first connection fails (counted by the alerts
as failed, one line each); after it, a publish while the link is down waits in the MQTT
client's queue for the reconnect, as the service's replies do.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Final, Optional

from defender_agent.errors import ConnectError, TlsSetupError
from defender_agent.schedule import backoff_delay
from defender_agent.transport.base import MqttSettings

if TYPE_CHECKING:
    from concurrent.futures import Future

    from defender_agent.transport.mqtt import MqttTransport

__all__ = ["AlertLink", "alert_client_id"]

log = logging.getLogger(__name__)

_CAP_S: Final = 30.0
_FIRST_WAIT_S: Final = 5.0  # an alert waits this long for the first connection (its thread)


def alert_client_id(service_client_id: str) -> str:
    """The worker's client id: the service's with ``-detect``.

    >>> alert_client_id("defender-agent-service-gw1-812")
    'defender-agent-service-gw1-812-detect'
    """
    return f"{service_client_id}-detect"


class AlertLink:
    """A publish-only MQTT connection, connected in the background.

    Args:
        settings: The connection's settings (the service's, with the worker's client id).
        first_wait_s: How long a publish waits for the first connection.
    """

    def __init__(self, settings: MqttSettings, first_wait_s: float = _FIRST_WAIT_S) -> None:
        self.settings = settings
        self._first_wait_s = first_wait_s
        self._transport: Optional[MqttTransport] = None
        self._up = threading.Event()  # connected once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._connect, name="dd-detect-mqtt", daemon=True)

    def start(self) -> None:
        """Start connecting (returns at once)."""
        from defender_agent.transport.mqtt import MqttTransport  # noqa: PLC0415 - awscrt

        self._transport = MqttTransport(self.settings)
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """Whether it connected within ``timeout`` seconds."""
        return self._up.wait(timeout)

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """Publish at QoS 1 (waiting ``first_wait_s`` for a first connection: the alerts' thread).

        Raises:
            ConnectError: Not connected yet (the alerts count it as failed).
        """
        transport = self._transport
        if transport is None or not self._up.wait(self._first_wait_s):
            raise ConnectError(
                f"the detect worker has no connection to {self.settings.endpoint}:"
                f"{self.settings.port} yet"
            )
        return transport.publish(topic, payload)

    def stop(self) -> None:
        """Stop connecting, disconnect."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.settings.connect_timeout_s + 1)
        if self._transport is not None:
            self._transport.disconnect()

    def _connect(self) -> None:
        transport = self._transport
        assert transport is not None
        attempt = 0
        while not self._stop.is_set():
            try:
                transport.connect()
            except TlsSetupError as exc:  # the service connected with the same files
                log.error("detect worker: no MQTT connection for alerts: %s", exc)  # noqa: TRY400
                return
            except ConnectError as exc:
                delay = backoff_delay(attempt, base=1.0, cap=_CAP_S)
                attempt += 1
                log.warning(
                    "detect worker: cannot reach the broker for alerts (%s); retrying in %.1f s",
                    exc,
                    delay,
                )
                self._stop.wait(delay)
                continue
            self._up.set()
            return
