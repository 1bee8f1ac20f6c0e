"""The MQTT 5 link: one ``awscrt.mqtt5.Client``.

``Client.start()`` keeps trying to connect forever, the first time included.
To behave like MQTT 3.1.1 (one bounded attempt, the caller backs off),
:meth:`Mqtt5Link.connect` waits for the first ``connection_success`` or
``connection_failure`` lifecycle event, at most the timeout, and stops the
client otherwise. After a first success the client reconnects by itself.
A PUBACK with reason 0 or 16 (no matching subscribers) is a success.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any, Optional

from awscrt import io, mqtt5

from defender_agent.errors import ConnectError, PublishError, TransportError
from defender_agent.schedule import RESET_AFTER_S
from defender_agent.transport._link import (
    LinkEvents,
    LinkSetup,
    crt_reason,
    settle,
)
from defender_agent.transport._mqtt3 import ping_timeout_ms
from defender_agent.transport.base import MqttSettings

__all__ = ["Mqtt5Link"]

log = logging.getLogger(__name__)

#: PUBACK reason codes that mean the broker took the message.
PUBACK_OK = frozenset({0, 16})  # success, no matching subscribers
_USER_STOP = "AWS_ERROR_MQTT5_USER_REQUESTED_STOP"


def _reason_code(code: int) -> str:
    """``NOT_AUTHORIZED (135)`` for an awscrt reason-code enum member (or a bare int)."""
    name = getattr(code, "name", None)
    return f"{name} ({int(code)})" if name else str(int(code))


class Mqtt5Link:
    """An MQTT 5 client, see :class:`~._link.Link`.

    Args:
        settings: where and how to connect.
        setup: the TLS context, socket and proxy options, WebSocket signer.
        events: where link changes and messages go.
    """

    def __init__(self, settings: MqttSettings, setup: LinkSetup, events: LinkEvents) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._started = False
        self._closing = False
        self._connected_once = False
        self._first_error: Optional[str] = None
        self._session_present = False
        options = mqtt5.ClientOptions(
            host_name=settings.endpoint,
            port=settings.port,
            bootstrap=io.ClientBootstrap.get_or_create_static_default(),
            socket_options=setup.socket_options,
            tls_ctx=setup.tls_ctx,
            http_proxy_options=setup.proxy,
            websocket_handshake_transform=setup.ws_transform,
            connect_options=mqtt5.ConnectPacket(
                keep_alive_interval_sec=settings.keep_alive_s,
                client_id=settings.client_id,
                username=None,  # no SDK metrics string in the username
            ),
            session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
            min_reconnect_delay_ms=max(1, int(settings.reconnect_min_s * 1000)),
            max_reconnect_delay_ms=max(1, int(settings.reconnect_max_s * 1000)),
            # a connection that held RESET_AFTER_S starts the next backoff from the minimum
            min_connected_time_to_reset_reconnect_delay_ms=int(RESET_AFTER_S * 1000),
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
            ping_timeout_ms=ping_timeout_ms(settings.keep_alive_s),
            connack_timeout_ms=max(1, int(settings.connect_timeout_s * 1000)),
            on_publish_callback_fn=self._on_publish,
            on_lifecycle_event_stopped_fn=self._on_stopped,
            on_lifecycle_event_connection_success_fn=self._on_success,
            on_lifecycle_event_connection_failure_fn=self._on_failure,
            on_lifecycle_event_disconnection_fn=self._on_disconnection,
            disable_metrics=True,
        )
        self._client = mqtt5.Client(options)

    # -- awscrt callbacks (CRT threads) -------------------------------------------------------

    def _on_publish(self, data: mqtt5.PublishReceivedData) -> None:
        packet = data.publish_packet
        payload = packet.payload
        if isinstance(payload, str):
            payload = payload.encode()
        self._events.message(None, packet.topic, bytes(payload or b""))

    def _on_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        session = bool(getattr(data.negotiated_settings, "rejoined_session", False))
        with self._lock:
            first = not self._connected_once
            self._connected_once = True
            self._session_present = session
        if first:
            self._wake.set()
        elif not self._closing:
            self._events.link_up(self, session, "reconnected")

    def _on_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        reason = crt_reason(data.exception) if data.exception else "connection failed"
        connack = data.connack_packet
        if connack is not None and connack.reason_code is not None and int(connack.reason_code):
            code = _reason_code(connack.reason_code)
            reason = f"the broker refused the connection: CONNACK {code}"
        with self._lock:
            first = not self._connected_once and self._first_error is None
            if first:
                self._first_error = reason
        if first:
            self._wake.set()
        else:
            log.debug("MQTT5 connection attempt failed: %s", reason)

    def _on_disconnection(self, data: mqtt5.LifecycleDisconnectData) -> None:
        reason = crt_reason(data.exception) if data.exception else "disconnected"
        if self._closing or reason.startswith(_USER_STOP) or not self._connected_once:
            return
        self._events.link_down(self, reason)

    def _on_stopped(self, _data: mqtt5.LifecycleStoppedData) -> None:
        self._stopped.set()
        self._wake.set()

    # -- Link ---------------------------------------------------------------------------------

    def connect(self, timeout_s: float) -> bool:
        """See :meth:`~._link.Link.connect`."""
        self._started = True
        self._client.start()
        self._wake.wait(timeout_s)
        with self._lock:
            if self._connected_once and not self._closing:
                return self._session_present
            interrupted = self._closing
            error = self._first_error
        self._request_stop()  # start() would go on retrying forever; no wait (s2n may delay it)
        if interrupted:
            raise ConnectError("disconnect() was called while connecting")
        if error is not None:
            raise ConnectError(error)
        raise ConnectError(f"no connection within {timeout_s:g} s")

    def subscribe(self, topic_filter: str) -> Future[None]:
        """See :meth:`~._link.Link.subscribe`."""
        result: Future[None] = Future()

        def on_suback(done: Future[Any]) -> None:
            error = done.exception()
            if error is not None:
                settle(result, TransportError(f"subscribe {topic_filter}: {crt_reason(error)}"))
                return
            codes = list(getattr(done.result(), "reason_codes", None) or [])
            if codes and int(codes[0]) >= 128:
                settle(
                    result,
                    TransportError(
                        f"the broker refused the subscription {topic_filter}: "
                        f"SUBACK {_reason_code(codes[0])}"
                    ),
                )
            else:
                settle(result, None)

        packet = mqtt5.SubscribePacket(
            subscriptions=[
                mqtt5.Subscription(topic_filter=topic_filter, qos=mqtt5.QoS.AT_LEAST_ONCE)
            ]
        )
        try:
            suback = self._client.subscribe(packet)
        except Exception as exc:  # awscrt raises at once for some errors
            raise TransportError(f"subscribe {topic_filter}: {crt_reason(exc)}") from exc
        suback.add_done_callback(on_suback)
        return result

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """See :meth:`~._link.Link.publish`.

        Raises:
            PublishError: awscrt refused the publish at once.
        """
        result: Future[None] = Future()

        def on_puback(done: Future[Any]) -> None:
            error = done.exception()
            if error is not None:
                settle(result, PublishError(f"publish to {topic}: {crt_reason(error)}"))
                return
            puback = getattr(done.result(), "puback", None)
            code = getattr(puback, "reason_code", 0)
            if int(code) in PUBACK_OK:
                settle(result, None)
                return
            detail = getattr(puback, "reason_string", None)
            message = f"publish to {topic} refused: PUBACK {_reason_code(code)}"
            settle(result, PublishError(message + (f" ({detail})" if detail else "")))

        packet = mqtt5.PublishPacket(payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE, topic=topic)
        try:
            puback = self._client.publish(packet)
        except Exception as exc:  # awscrt raises at once for some errors (a stopped client)
            raise PublishError(f"publish to {topic}: {crt_reason(exc)}") from exc
        puback.add_done_callback(on_puback)
        return result

    def close(self, timeout_s: float) -> bool:
        """See :meth:`~._link.Link.close`."""
        self._request_stop()
        return not self._started or self._stopped.wait(timeout_s)

    def _request_stop(self) -> None:
        with self._lock:
            already = self._closing
            self._closing = True
        self._wake.set()
        if self._started and not already:
            self._client.stop()
