"""The transport contract and its settings.

A transport is an MQTT client connection with the four operations the agent
and the Device Defender responder need. Implementations:

* :mod:`.mqtt` — awsiotsdk/awscrt: mutual TLS (8883), port 443 with ALPN
  ``x-amzn-mqtt-ca``, MQTT over WebSocket signed with SigV4, through an HTTP
  proxy, MQTT 3.1.1 or MQTT 5, or plain TCP for a local broker.

Callbacks (messages, connection changes) arrive on the client's own threads;
receivers must be thread-safe and quick.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

__all__ = ["ConnectionListener", "MessageHandler", "MqttSettings", "Transport"]

#: ``handler(topic, payload)`` for a received message.
MessageHandler = Callable[[str, bytes], None]
#: ``listener(connected, reason)`` when the link goes up or down (after the first connect).
ConnectionListener = Callable[[bool, str], None]


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker. Secrets (proxy password) are never logged.

    Attributes:
        endpoint: the AWS IoT data endpoint (``xxxx-ats.iot.region.amazonaws.com``) or a host.
        port: 8883 (mutual TLS), 443 (ALPN ``x-amzn-mqtt-ca`` for mTLS; plain HTTPS
            port for WebSocket), or any other port of a compatible broker.
        client_id: the MQTT client id (AWS IoT: usually the thing name).
        ca_file: the CA bundle to verify the server with; ``None`` uses the system store.
        cert_file: the device certificate (PEM) for mutual TLS.
        key_file: its private key (PEM).
        websocket: MQTT over WebSocket, signed with SigV4 from the standard AWS
            credential chain (no certificate needed).
        signing_region: the SigV4 region (default: taken from the endpoint).
        alpn: offer ALPN ``x-amzn-mqtt-ca`` for mutual TLS; ``None`` = only on port 443.
        use_tls: ``False`` only for a plain local broker (tests, the sandbox).
        proxy_host: an HTTP proxy (CONNECT) for every kind of connection.
        proxy_port: its port.
        proxy_username: basic-auth user for the proxy.
        proxy_password: basic-auth password for the proxy.
        mqtt5: MQTT 5 instead of MQTT 3.1.1.
        keep_alive_s: MQTT keep-alive (AWS IoT allows 30-1200 s).
        connect_timeout_s: the longest one connection attempt may take.
        reconnect_min_s: the first delay of the client's automatic reconnects.
        reconnect_max_s: the longest delay between automatic reconnects.
        discard_session: at disconnect, end the broker's persistent session of this client
            id (MQTT 3.1.1 keeps one; this project's MQTT 5 sessions end with the
            connection): for client ids that nobody reuses, whose session would otherwise
            go on collecting messages at the broker (and, in a shared subscription group,
            take its share of them).
    """

    endpoint: str
    port: int = 8883
    client_id: str = ""
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    websocket: bool = False
    signing_region: Optional[str] = None
    alpn: Optional[bool] = None
    use_tls: bool = True
    proxy_host: Optional[str] = None
    proxy_port: int = 8080
    proxy_username: Optional[str] = None
    proxy_password: Optional[str] = None
    mqtt5: bool = False
    keep_alive_s: int = 1200
    connect_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    discard_session: bool = False

    def __repr__(self) -> str:  # never show the proxy password
        secret = "***" if self.proxy_password else None
        return (
            f"MqttSettings(endpoint={self.endpoint!r}, port={self.port}, "
            f"client_id={self.client_id!r}, websocket={self.websocket}, mqtt5={self.mqtt5}, "
            f"proxy={self.proxy_host!r}:{self.proxy_port}, proxy_password={secret})"
        )


class Transport(Protocol):
    """An MQTT connection: connect, subscribe, publish at QoS 1, disconnect."""

    def connect(self) -> None:
        """Make one connection attempt, waiting at most ``connect_timeout_s``.

        Raises:
            ConnectError: this attempt failed (the caller backs off and retries).
            TlsSetupError: the TLS files are unusable (fatal).
        """

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK; survives reconnects.

        Raises:
            TransportError: refused or not acknowledged in time.
        """

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """Publish at QoS 1; the future completes on PUBACK or fails with PublishError."""

    def disconnect(self) -> None:
        """Disconnect cleanly (idempotent); waits a bounded time."""

    @property
    def connected(self) -> bool:
        """Whether the link is up now."""

    def set_connection_listener(self, listener: Optional[ConnectionListener]) -> None:
        """Be told when the link drops and comes back."""
