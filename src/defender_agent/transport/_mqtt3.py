"""The MQTT 3.1.1 link: one ``awscrt.mqtt.Connection``.

awscrt does not retry a failed first connect (the caller backs off); after one
success it reconnects by itself between ``reconnect_min_s`` and
``reconnect_max_s`` (whole seconds for MQTT 3.1.1) and reports
``on_connection_interrupted`` / ``on_connection_resumed``.

awscrt's MQTT 3.1.1 client never resets that backoff: against a broker that
restarts every 15 s its delay doubled up to the maximum and the link missed
whole up-times. So when a connection that held ``RESET_AFTER_S`` drops, the link
stops awscrt's reconnecting and reconnects itself (one attempt at once, then
``backoff_delay`` from the minimum, with jitter), after which awscrt takes over
again with its delay back at the minimum (``connect`` sets it).

The session is persistent (``clean_session=False``, as the AWS SDK builders
do): with a clean session awscrt fails every QoS 1 publish still waiting for
its PUBACK when the link drops (``AWS_ERROR_MQTT_CANCELLED_FOR_CLEAN_SESSION``);
with a persistent one it sends them again after the reconnect. When the broker
kept no session (``session_present`` False) the transport subscribes again.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from concurrent.futures import Future
from typing import Any, Optional

from awscrt import io, mqtt

from defender_agent.errors import ConnectError, PublishError, TransportError
from defender_agent.schedule import RESET_AFTER_S, backoff_delay
from defender_agent.transport._link import (
    CLOSE_TIMEOUT_S,
    LinkEvents,
    LinkSetup,
    crt_reason,
    settle,
    wait_error,
)
from defender_agent.transport.base import MqttSettings

__all__ = ["Mqtt3Link", "ping_timeout_ms"]

log = logging.getLogger(__name__)


def ping_timeout_ms(keep_alive_s: int) -> int:
    """How long to wait for a PINGRESP: 3 s, or half the keep-alive when that is shorter.

    >>> ping_timeout_ms(1200), ping_timeout_ms(2)
    (3000, 1000)
    """
    return max(1, min(3000, keep_alive_s * 500))


class Mqtt3Link:
    """An MQTT 3.1.1 connection, see :class:`~._link.Link`.

    Args:
        settings: where and how to connect.
        setup: the TLS context, socket and proxy options, WebSocket signer.
        events: where link changes and messages go.
    """

    def __init__(self, settings: MqttSettings, setup: LinkSetup, events: LinkEvents) -> None:
        self._events = events
        self._wake = threading.Event()
        self._closing = False
        self._up_since: Optional[float] = None  # monotonic time the connection came up
        self._stopped = threading.Event()  # close() was called
        # held while the link stops awscrt's reconnecting: an operation made while the
        # connection is "disconnecting" fails, one made once it is disconnected waits
        # in awscrt's queue for the next connection
        self._pause = threading.Lock()
        self._settings = settings
        reconnect_min = max(1, math.ceil(settings.reconnect_min_s))
        client = mqtt.Client(io.ClientBootstrap.get_or_create_static_default(), setup.tls_ctx)
        self._conn = mqtt.Connection(
            client=client,
            host_name=settings.endpoint,
            port=settings.port,
            client_id=settings.client_id,
            clean_session=False,  # in-flight QoS 1 publishes survive a reconnect
            on_connection_interrupted=self._on_interrupted,
            on_connection_resumed=self._on_resumed,
            on_connection_failure=self._on_failure,
            reconnect_min_timeout_secs=reconnect_min,
            reconnect_max_timeout_secs=max(reconnect_min, math.ceil(settings.reconnect_max_s)),
            keep_alive_secs=settings.keep_alive_s,
            ping_timeout_ms=ping_timeout_ms(settings.keep_alive_s),
            protocol_operation_timeout_ms=0,  # QoS 1 publishes wait across reconnects
            username=None,  # no SDK metrics string in the username
            password=None,
            socket_options=setup.socket_options,
            use_websockets=setup.ws_transform is not None,
            websocket_handshake_transform=setup.ws_transform,
            proxy_options=setup.proxy,
            disable_metrics=True,
        )

    # -- awscrt callbacks (CRT threads) -------------------------------------------------------

    def _on_interrupted(
        self, connection: mqtt.Connection, error: BaseException, **_kwargs: object
    ) -> None:
        if self._closing:
            return
        up_since, self._up_since = self._up_since, None
        self._events.link_down(self, crt_reason(error))
        if up_since is not None and time.monotonic() - up_since >= RESET_AFTER_S:
            threading.Thread(
                target=self._reconnect_afresh, name="mqtt3-reconnect", daemon=True
            ).start()

    def _reconnect_afresh(self) -> None:
        """Stop awscrt's reconnecting (its delay only grows) and reconnect from the minimum."""
        with self._pause:
            wait_error(self._conn.disconnect(), CLOSE_TIMEOUT_S)
        rng = random.Random()  # noqa: S311 - jitter, not cryptography
        attempt = 0
        while not self._stopped.is_set():
            future = self._conn.connect()
            done, error = wait_error(future, self._settings.connect_timeout_s)
            if self._stopped.is_set():  # close() ran meanwhile (and disconnects)
                return
            if done and error is None:
                self._up_since = time.monotonic()
                session = bool(future.result().get("session_present", False))
                reason = "reconnected" + (" (session resumed)" if session else "")
                self._events.link_up(self, session, reason)
                return
            if not done:
                wait_error(self._conn.disconnect(), CLOSE_TIMEOUT_S)
            log.debug(
                "MQTT reconnect attempt failed: %s", crt_reason(error) if error else "timeout"
            )
            delay = backoff_delay(
                attempt,
                base=self._settings.reconnect_min_s,
                cap=self._settings.reconnect_max_s,
                rng=rng,
            )
            attempt += 1
            if self._stopped.wait(delay):
                return

    def _on_resumed(
        self,
        connection: mqtt.Connection,
        return_code: mqtt.ConnectReturnCode,
        session_present: bool,
        **_kwargs: object,
    ) -> None:
        if not self._closing:
            self._up_since = time.monotonic()
            reason = "reconnected" + (" (session resumed)" if session_present else "")
            self._events.link_up(self, bool(session_present), reason)

    def _on_failure(
        self,
        connection: mqtt.Connection,
        callback_data: mqtt.OnConnectionFailureData,
        **_kwargs: object,
    ) -> None:
        log.debug("MQTT connection attempt failed: %s", crt_reason(callback_data.error))

    # -- Link ---------------------------------------------------------------------------------

    def connect(self, timeout_s: float) -> bool:
        """See :meth:`~._link.Link.connect`."""
        future = self._conn.connect()
        future.add_done_callback(lambda _done: self._wake.set())
        self._wake.wait(timeout_s)
        if not future.done():
            # Stop this attempt, and drop a connection that still comes up later.
            future.add_done_callback(self._drop_late_success)
            self._conn.disconnect()
            if self._closing:
                raise ConnectError("disconnect() was called while connecting")
            raise ConnectError(f"no connection within {timeout_s:g} s")
        error = future.exception()
        if error is None:
            self._up_since = time.monotonic()
            return bool(future.result().get("session_present", False))
        # A CONNACK refusal comes as a bare Exception(ConnectReturnCode), the rest as AwsCrtError.
        code = error.args[0] if error.args else None
        if isinstance(code, mqtt.ConnectReturnCode):
            raise ConnectError(f"the broker refused the connection: CONNACK {code.name}")
        raise ConnectError(crt_reason(error))

    def _drop_late_success(self, attempt: Future[Any]) -> None:
        if attempt.exception() is None:
            log.debug("an abandoned connection attempt succeeded late; disconnecting it")
            self._conn.disconnect()

    def subscribe(self, topic_filter: str) -> Future[None]:
        """See :meth:`~._link.Link.subscribe`."""
        result: Future[None] = Future()

        def on_message(topic: str, payload: bytes, **_kwargs: object) -> None:
            self._events.message(topic_filter, topic, bytes(payload))

        def on_suback(done: Future[Any]) -> None:
            error = done.exception()
            if error is None:
                settle(result, None)
            elif isinstance(error, mqtt.SubscribeError):
                refused = f"the broker refused the subscription {topic_filter}"
                settle(result, TransportError(refused))
            else:
                settle(result, TransportError(f"subscribe {topic_filter}: {crt_reason(error)}"))

        try:
            with self._pause:
                suback, _packet_id = self._conn.subscribe(
                    topic_filter, mqtt.QoS.AT_LEAST_ONCE, on_message
                )
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
                error = PublishError(f"publish to {topic}: {crt_reason(error)}")
            settle(result, error)

        try:
            with self._pause:
                puback, _packet_id = self._conn.publish(topic, payload, mqtt.QoS.AT_LEAST_ONCE)
        except Exception as exc:  # awscrt raises at once for some errors (a closed connection)
            raise PublishError(f"publish to {topic}: {crt_reason(exc)}") from exc
        puback.add_done_callback(on_puback)
        return result

    def close(self, timeout_s: float) -> bool:
        """See :meth:`~._link.Link.close`."""
        self._closing = True
        self._stopped.set()
        self._wake.set()
        done, _error = wait_error(self._conn.disconnect(), timeout_s)
        return done
