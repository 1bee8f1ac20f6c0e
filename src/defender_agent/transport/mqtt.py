"""The MQTT transport on awsiotsdk/awscrt: AWS IoT Core or any compatible broker.

:class:`MqttTransport` implements :class:`~defender_agent.transport.base.Transport`:

* MQTT 3.1.1 (``awscrt.mqtt.Connection``) by default, MQTT 5 (``awscrt.mqtt5.Client``)
  with ``mqtt5=True``; QoS 1 both ways. QoS 1 publishes made while the link is
  down, or still unacknowledged when it dropped, are sent after the reconnect.
* Mutual TLS with the certificate and key files (port 8883, or 443 with ALPN
  ``x-amzn-mqtt-ca``, or ALPN on any port with ``alpn=True``), MQTT over WebSocket
  signed with SigV4 from the standard AWS credential chain, or plain TCP for a
  local broker; each optionally through an HTTP CONNECT proxy. TLS 1.2 at least,
  and the server certificate is always verified.
* No SDK metrics string in the MQTT username.

:meth:`~MqttTransport.connect` is one attempt bounded by ``connect_timeout_s``
(the caller backs off between attempts). Once connected, the client reconnects
by itself, and the transport subscribes again when the broker kept no
session. The connection listener hears about those automatic changes:
``(False, reason)`` when the link drops, ``(True, reason)`` when it is back and
the subscriptions are restored — not about :meth:`~MqttTransport.connect` and
:meth:`~MqttTransport.disconnect`, whose callers know already.

Example:
    >>> from defender_agent.transport.base import MqttSettings
    >>> MqttTransport(MqttSettings(endpoint="localhost", client_id="thing1")).connected
    False
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional

from awscrt import auth, io, mqtt

from defender_agent.errors import ConfigError, ConnectError, PublishError, TransportError
from defender_agent.transport._awscrt_tls import (
    alpn_protocols,
    build_proxy_options,
    build_socket_options,
    build_tls_context,
    signing_region,
    sigv4_handshake_transform,
)
from defender_agent.transport._link import (
    CLOSE_TIMEOUT_S,
    Link,
    LinkSetup,
    crt_reason,
    settle,
    topic_matches,
    wait_error,
)
from defender_agent.transport._mqtt3 import Mqtt3Link, ping_timeout_ms
from defender_agent.transport._mqtt5 import Mqtt5Link
from defender_agent.transport.base import ConnectionListener, MessageHandler, MqttSettings
from defender_agent.transport.diagnose import diagnose, looks_like_tls_failure
from defender_agent.transport.tls import check_tls_files

__all__ = ["MqttTransport"]

log = logging.getLogger(__name__)


def _validate(settings: MqttSettings) -> None:
    """Refuse settings awscrt would reject later with a less helpful message."""
    problems = []
    if not settings.endpoint:
        problems.append("endpoint is empty")
    if not settings.client_id:
        problems.append("client_id is empty")
    if not 0 < settings.port < 65536:
        problems.append(f"port {settings.port} is not 1-65535")
    if settings.proxy_host and not 0 < settings.proxy_port < 65536:
        problems.append(f"proxy_port {settings.proxy_port} is not 1-65535")
    if settings.keep_alive_s < 1 or settings.keep_alive_s > 65535:
        problems.append(f"keep_alive_s {settings.keep_alive_s} is not 1-65535")
    if settings.connect_timeout_s <= 0:
        problems.append("connect_timeout_s must be positive")
    if settings.reconnect_min_s <= 0 or settings.reconnect_max_s < settings.reconnect_min_s:
        problems.append("need 0 < reconnect_min_s <= reconnect_max_s")
    if problems:
        raise ConfigError("MQTT settings: " + "; ".join(problems))


def _describe(settings: MqttSettings) -> str:
    """``mTLS+ALPN x-amzn-mqtt-ca, MQTT 3.1.1, via proxy p:3128`` (never a secret)."""
    if not settings.use_tls:
        mode = "plain TCP (no TLS)"
    elif settings.websocket:
        mode = "WebSocket/SigV4"
    else:
        alpn = alpn_protocols(settings)
        mode = "mTLS" + (f"+ALPN {alpn[0]}" if alpn else "")
    mode += ", MQTT 5" if settings.mqtt5 else ", MQTT 3.1.1"
    if settings.proxy_host:
        auth_note = " (basic auth)" if settings.proxy_username is not None else ""
        mode += f", via proxy {settings.proxy_host}:{settings.proxy_port}{auth_note}"
    return mode


class MqttTransport:
    """An MQTT connection to AWS IoT Core or a compatible broker, on awscrt.

    Thread-safe; callbacks (messages, the connection listener) arrive on
    awscrt's threads and must be quick.

    Args:
        settings: where and how to connect.

    Raises:
        ConfigError: a setting is out of range (empty endpoint, bad port, ...).
    """

    def __init__(self, settings: MqttSettings) -> None:
        _validate(settings)
        self._settings = settings
        self._lock = threading.Lock()
        self._link: Optional[Link] = None
        self._connected = False
        self._listener: Optional[ConnectionListener] = None
        self._subscriptions: dict[str, MessageHandler] = {}
        self._pending: set[Future[None]] = set()
        self._warned: set[str] = set()
        self._diagnosed: dict[str, Optional[str]] = {}  # awscrt's TLS failure -> its cause

    # -- Transport ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the link is up now."""
        with self._lock:
            return self._connected

    def set_connection_listener(self, listener: Optional[ConnectionListener]) -> None:
        """Be told ``(connected, reason)`` when the link drops and when it is back."""
        with self._lock:
            self._listener = listener

    def connect(self) -> None:
        """Make one connection attempt, waiting at most ``connect_timeout_s``.

        Does nothing when already connected. Subscriptions made earlier (before
        a :meth:`disconnect`) are restored.

        Raises:
            ConnectError: this attempt failed; the message is one line with the cause.
            TlsSetupError: the TLS files or the WebSocket signing setup are unusable (fatal).
        """
        settings = self._settings
        with self._lock:
            if self._link is not None and self._connected:
                return
            stale, self._link = self._link, None
        if stale is not None:
            stale.close(CLOSE_TIMEOUT_S)
        setup = self._prepare()
        link: Link = (Mqtt5Link if settings.mqtt5 else Mqtt3Link)(settings, setup, self)
        with self._lock:
            self._link = link
        log.info(
            "connecting to %s:%s as %s (%s)",
            settings.endpoint,
            settings.port,
            settings.client_id,
            _describe(settings),
        )
        started = time.monotonic()
        try:
            link.connect(settings.connect_timeout_s)  # (a kept session does not matter: below)
        except ConnectError as exc:  # the link has stopped its attempt already
            with self._lock:
                if self._link is link:
                    self._link = None
            # debug: the caller logs the failed attempt, with its retry delay, in one line
            log.debug("connection to %s:%s failed: %s", settings.endpoint, settings.port, exc)
            cause = self._tls_cause(str(exc))
            if cause is not None:
                raise ConnectError(f"{exc}: {cause}") from exc
            raise
        with self._lock:
            superseded = self._link is not link  # disconnect() ran meanwhile
            if not superseded:
                self._connected = True
        if superseded:
            link.close(CLOSE_TIMEOUT_S)
            raise ConnectError("disconnect() was called while connecting")
        log.info("connected in %.0f ms", (time.monotonic() - started) * 1000)
        # A new link knows no subscriptions (awscrt routes messages per subscription), even
        # when the broker kept the session: subscribe again, and wait for the SUBACKs.
        # (Within what is left of connect_timeout_s; a late SUBACK is still handled.)
        deadline = started + settings.connect_timeout_s
        for future in self._restore_subscriptions(link, session_present=False, on_done=None):
            wait_error(future, max(0.0, deadline - time.monotonic()))

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK; survives reconnects.

        Raises:
            TransportError: not connected, refused, or no SUBACK within ``connect_timeout_s``
                (a subscription that timed out is kept and retried after a reconnect).
        """
        with self._lock:
            link = self._link
            if link is None:
                raise TransportError(f"cannot subscribe to {topic_filter}: not connected")
            self._subscriptions[topic_filter] = handler
        timeout = self._settings.connect_timeout_s
        done, error = wait_error(link.subscribe(topic_filter), timeout)
        if not done:
            raise TransportError(f"no SUBACK for {topic_filter} within {timeout:g} s")
        if error is not None:
            with self._lock:
                if self._subscriptions.get(topic_filter) is handler:
                    del self._subscriptions[topic_filter]
            raise error if isinstance(error, TransportError) else TransportError(str(error))
        log.debug("subscribed to %s", topic_filter)

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """Publish at QoS 1; the future completes on PUBACK or fails with PublishError.

        While the link is down (after a first connect), the publish waits in the
        client's queue and is sent after the reconnect, so the future may stay
        pending for as long as the outage lasts: bound the wait on it.
        :meth:`disconnect` fails the publishes still waiting for their PUBACK.
        """
        with self._lock:
            link = self._link
            if link is None:
                failed: Future[None] = Future()
                failed.set_exception(PublishError(f"cannot publish to {topic}: not connected"))
                return failed
            future = link.publish(topic, bytes(payload))
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def disconnect(self) -> None:
        """Disconnect cleanly; idempotent, waits at most a few seconds even for a dead broker.

        With ``discard_session`` (MQTT 3.1.1), then connect once more with a clean session,
        which ends the broker's session of this client id, and disconnect again.
        """
        with self._lock:
            link, self._link = self._link, None
            self._connected = False
            pending, self._pending = list(self._pending), set()
        if link is None:
            return
        if not link.close(CLOSE_TIMEOUT_S):
            log.warning("the MQTT client did not close within %g s; abandoned", CLOSE_TIMEOUT_S)
        for future in pending:
            settle(future, PublishError("disconnected before the PUBACK arrived"))
        log.info("disconnected from %s:%s", self._settings.endpoint, self._settings.port)
        if self._settings.discard_session and not self._settings.mqtt5:
            self._end_session()

    def _end_session(self) -> bool:
        """Connect once with a clean session and disconnect: the broker drops the old one.

        Returns:
            Whether it worked; a failure only leaves the session behind (logged at WARNING).
        """
        settings = self._settings
        timeout = min(settings.connect_timeout_s, 5.0)
        try:
            setup = self._prepare()
            connection = mqtt.Connection(
                client=mqtt.Client(
                    io.ClientBootstrap.get_or_create_static_default(), setup.tls_ctx
                ),
                host_name=settings.endpoint,
                port=settings.port,
                client_id=settings.client_id,
                clean_session=True,
                keep_alive_secs=max(1, min(settings.keep_alive_s, 60)),
                ping_timeout_ms=ping_timeout_ms(min(settings.keep_alive_s, 60)),
                socket_options=setup.socket_options,
                use_websockets=setup.ws_transform is not None,
                websocket_handshake_transform=setup.ws_transform,
                proxy_options=setup.proxy,
                disable_metrics=True,
            )
            connection.connect().result(timeout)
            connection.disconnect().result(timeout)
        except Exception as exc:  # any failure here only leaves the session behind
            reason = crt_reason(exc)
            log.warning("could not end the MQTT session of %s: %s", settings.client_id, reason)
            return False
        log.info("ended the MQTT session of %s at the broker", settings.client_id)
        return True

    # -- internals ----------------------------------------------------------------------------

    def _prepare(self) -> LinkSetup:
        """Check the TLS files and build the awscrt objects (TlsSetupError on failure)."""
        settings = self._settings
        for warning in check_tls_files(settings):
            if warning not in self._warned:
                self._warned.add(warning)
                log.warning("%s", warning)
        transform = None
        if settings.websocket:
            region = signing_region(settings)
            credentials = auth.AwsCredentialsProvider.new_default_chain()
            transform = sigv4_handshake_transform(region, credentials)
        return LinkSetup(
            tls_ctx=build_tls_context(settings),
            socket_options=build_socket_options(settings),
            proxy=build_proxy_options(settings),
            ws_transform=transform,
        )

    def _tls_cause(self, reason: str) -> Optional[str]:
        """Why awscrt's TLS handshake failed, from one diagnostic handshake per distinct failure.

        awscrt says only "TLS (SSL) negotiation failed"; the cause (the CA, the server's
        name, our client certificate) is logged once, and remembered for the next attempts.
        """
        if not looks_like_tls_failure(reason):
            return None
        if reason not in self._diagnosed:
            cause = diagnose(self._settings)
            self._diagnosed[reason] = cause
            if cause is not None:
                log.error(
                    "TLS handshake with %s:%s failed: %s",
                    self._settings.endpoint,
                    self._settings.port,
                    cause,
                )
        return self._diagnosed[reason]

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _restore_subscriptions(
        self, link: Link, session_present: bool, on_done: Optional[Callable[[], None]]
    ) -> list[Future[None]]:
        """Subscribe again (without a session), then call ``on_done`` once every SUBACK is in.

        Returns:
            The SUBACK futures (failures are logged, not raised).
        """
        with self._lock:
            filters = [] if session_present else list(self._subscriptions)
        if not filters:
            if on_done is not None:
                on_done()
            return []
        remaining = [len(filters)]
        count_lock = threading.Lock()

        def one_done(topic_filter: str, future: Future[None]) -> None:
            error = future.exception()
            if error is not None:
                log.warning("could not subscribe again to %s: %s", topic_filter, error)
            with count_lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last and on_done is not None:
                on_done()

        log.info("subscribing again to %d topic filter(s)", len(filters))
        futures = []
        for topic_filter in filters:
            future = link.subscribe(topic_filter)
            future.add_done_callback(functools.partial(one_done, topic_filter))
            futures.append(future)
        return futures

    def _notify(self, connected: bool, reason: str) -> None:
        with self._lock:
            listener = self._listener
        if listener is None:
            return
        try:
            listener(connected, reason)
        except Exception:  # a listener's bug must not unwind into awscrt's thread
            log.exception("the connection listener failed")

    # -- LinkEvents (awscrt threads) ----------------------------------------------------------

    def link_up(self, link: Link, session_present: bool, reason: str) -> None:
        """The link reconnected by itself: restore subscriptions, then tell the listener."""
        with self._lock:
            if link is not self._link:
                return
            self._connected = True
        log.info("MQTT link is up again: %s", reason)
        self._restore_subscriptions(
            link, session_present, on_done=lambda: self._notify(True, reason)
        )

    def link_down(self, link: Link, reason: str) -> None:
        """The link dropped; the client reconnects by itself."""
        with self._lock:
            if link is not self._link:
                return
            self._connected = False
        log.warning("MQTT link is down (%s); reconnecting automatically", reason)
        self._notify(False, reason)

    def message(self, topic_filter: Optional[str], topic: str, payload: bytes) -> None:
        """Hand a received message to the handler(s) of the matching subscription(s)."""
        with self._lock:
            if topic_filter is not None:
                handler = self._subscriptions.get(topic_filter)
                handlers = [handler] if handler is not None else []
            else:
                handlers = [h for f, h in self._subscriptions.items() if topic_matches(f, topic)]
        for handler in handlers:
            try:
                handler(topic, payload)
            except Exception:  # a handler's bug must not unwind into awscrt's thread
                log.exception("the message handler for %s failed", topic)
