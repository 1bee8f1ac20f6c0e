"""The Greengrass v2 transport: reports through the nucleus's IPC, no certificates or endpoint.

:class:`GreengrassTransport` implements :class:`~defender_agent.transport.base.Transport`
on ``awsiot.greengrasscoreipc.clientv2`` (awsiotsdk, imported when a transport is
made): ``PublishToIoTCore`` at ``AT_LEAST_ONCE`` and ``SubscribeToIoTCore`` streams,
over the Unix socket and token the nucleus gives its components
(``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT``, ``SVCUID``). The nucleus
holds the MQTT connection to AWS IoT Core; a ``PublishToIoTCoreResponse`` only
means the nucleus took the message, which is why the agent counts a report
delivered when its ``accepted`` reply arrives.

Failures:

* the nucleus not up (no socket, refused), or its token refused: :meth:`connect`
  raises :class:`~defender_agent.errors.ConnectError`, the caller backs off;
* the IPC connection closing (a nucleus restart): the transport reconnects by
  itself with :func:`~defender_agent.schedule.backoff_delay` (exponential, jittered,
  capped at 30 s) and opens its subscriptions again, telling the connection listener;
* ``UnauthorizedError`` (the component's ``accessControl`` lacks the topic): one
  ERROR line naming the policy and operation that are missing, and the publish or
  subscribe fails (the next report tries again);
* ``ServiceError`` and other operation errors: the operation fails with the
  nucleus's message in one line.

Example:
    >>> GreengrassTransport(socket_path="/nonexistent.sock", token="t").connected
    False
"""

from __future__ import annotations

import logging
import os
import random
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Optional

from defender_agent.errors import ConfigError, ConnectError, PublishError, TransportError
from defender_agent.logs import shown
from defender_agent.schedule import backoff_delay
from defender_agent.transport.base import ConnectionListener, MessageHandler

if TYPE_CHECKING:
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

__all__ = ["IPC_POLICY", "SOCKET_ENV", "TOKEN_ENV", "GreengrassTransport", "ipc_reason"]

log = logging.getLogger(__name__)

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_ENV = "SVCUID"  # noqa: S105 - the variable's name, not a secret
#: The IPC service whose policies grant PublishToIoTCore and SubscribeToIoTCore.
IPC_POLICY = "aws.greengrass.ipc.mqttproxy"
#: After this many ServiceErrors in a row, the IPC connection is made afresh.
SERVICE_ERRORS_RECONNECT = 3


def ipc_reason(exc: BaseException) -> str:
    r"""An IPC failure in one line: the nucleus's message, awscrt's error name, or the type.

    >>> class UnauthorizedError(Exception):
    ...     message = "Principal c is not\nauthorized"
    >>> ipc_reason(UnauthorizedError())
    'UnauthorizedError: Principal c is not authorized'
    >>> ipc_reason(RuntimeError("44 (AWS_ERROR_FILE_INVALID_PATH): Invalid file path."))
    'RuntimeError: 44 (AWS_ERROR_FILE_INVALID_PATH): Invalid file path.'
    """
    text = getattr(exc, "message", None) or str(exc)
    text = " ".join(str(text).split())
    name = getattr(exc, "name", None)  # AwsCrtError
    if isinstance(name, str) and name not in text:
        text = f"{name}: {text}" if text else name
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _connect_problem(exc: BaseException, socket_path: str) -> str:
    """Why connecting to the nucleus failed, for the one-line retry message."""
    reason = ipc_reason(exc)
    if type(exc).__name__ == "AccessDeniedError" or "SOCKET_CLOSED" in reason:
        return (
            f"the nucleus refused the IPC connection on {socket_path}: the {TOKEN_ENV} token "
            f"was not accepted (is this process started by the nucleus?) ({reason})"
        )
    if "FILE_INVALID_PATH" in reason or "CONNECTION_REFUSED" in reason or "ENOENT" in reason:
        return f"the nucleus is not up: no IPC socket at {socket_path} ({reason})"
    return f"IPC connection to {socket_path} failed: {reason}"


class GreengrassTransport:
    """Greengrass v2 IPC as a transport: publish and subscribe through the nucleus.

    Thread-safe; message handlers and the connection listener run on awscrt's
    event thread and must be quick.

    Args:
        socket_path: the nucleus's IPC socket (default: ``$AWS_GG_NUCLEUS_...``).
        token: the component's IPC token (default: ``$SVCUID``).
        connect_timeout_s: the longest one connection attempt or operation may take.
        rng: the random source of the reconnect jitter.

    Raises:
        ConfigError: the socket or token is neither given nor in the environment
            (the process was not started by a nucleus).
    """

    def __init__(
        self,
        socket_path: Optional[str] = None,
        token: Optional[str] = None,
        *,
        connect_timeout_s: float = 10.0,
        rng: Optional[random.Random] = None,
    ) -> None:
        socket_path = socket_path or os.environ.get(SOCKET_ENV)
        token = token or os.environ.get(TOKEN_ENV)
        if not socket_path or not token:
            missing = SOCKET_ENV if not socket_path else TOKEN_ENV
            raise ConfigError(
                f"{missing} is not set: the Greengrass mode runs as a component started by a "
                "Greengrass nucleus (deploy the component; see docs/greengrass.md)"
            )
        self._socket_path = socket_path
        self._token = token
        self._timeout = connect_timeout_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._lock = threading.Lock()
        self._client: Optional[GreengrassCoreIPCClientV2] = None
        self._generation = 0  # which connection the lifecycle callbacks belong to
        self._closing = False
        self._listener: Optional[ConnectionListener] = None
        self._subscriptions: dict[str, MessageHandler] = {}
        self._streams: dict[str, Any] = {}  # topic filter -> its open operation
        self._reconnector: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._unauthorized: set[str] = set()  # topics whose missing grant was logged
        self._service_errors = 0  # ServiceErrors in a row
        self._drop_reason: Optional[str] = None  # why we closed the connection to reconnect
        self._watcher: Optional[Callable[[], None]] = None  # told of configuration updates
        self._watch: Optional[Any] = None  # its open SubscribeToConfigurationUpdate

    # -- Transport ------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """What the transport connects to, for log lines."""
        return f"the Greengrass nucleus (IPC {self._socket_path})"

    @property
    def connected(self) -> bool:
        """Whether the IPC connection is up now."""
        with self._lock:
            return self._client is not None

    def set_connection_listener(self, listener: Optional[ConnectionListener]) -> None:
        """Be told ``(connected, reason)`` when the IPC connection drops and is back."""
        with self._lock:
            self._listener = listener

    def connect(self) -> None:
        """Connect to the nucleus (one attempt); open the subscriptions made earlier.

        Raises:
            ConnectError: the nucleus is not up, or refused the token; one line.
        """
        with self._lock:
            if self._client is not None:
                return
            self._closing = False
        self._stop.clear()
        self._open()
        self._restore()

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """``SubscribeToIoTCore`` at ``AT_LEAST_ONCE``; opened again after a reconnect.

        Raises:
            TransportError: not connected, not authorized, or refused by the nucleus.
        """
        with self._lock:
            client = self._client
            self._subscriptions[topic_filter] = handler
        if client is None:
            raise TransportError(f"cannot subscribe to {topic_filter}: not connected")
        self._subscribe(client, topic_filter)

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """``PublishToIoTCore`` at ``AT_LEAST_ONCE``; the future completes when the nucleus took it.

        The future fails with :class:`~defender_agent.errors.PublishError` when not
        connected, not authorized, or refused.
        """
        result: Future[None] = Future()
        with self._lock:
            client = self._client
        if client is None:
            result.set_exception(PublishError(f"cannot publish to {topic}: not connected"))
            return result
        from awsiot.greengrasscoreipc.model import QOS  # noqa: PLC0415 - awsiotsdk

        try:
            sent = client.publish_to_iot_core_async(
                topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=bytes(payload)
            )
        except Exception as exc:  # the connection went away under us
            result.set_exception(PublishError(f"publish to {topic}: {ipc_reason(exc)}"))
            return result

        def done(fut: Future[Any]) -> None:
            exc = fut.exception()
            if exc is None:
                self._unauthorized.discard(topic)
                with self._lock:
                    self._service_errors = 0
                result.set_result(None)
            else:
                result.set_exception(PublishError(self._failure("PublishToIoTCore", topic, exc)))
                if type(exc).__name__ == "ServiceError":
                    self._service_error(client)

        sent.add_done_callback(done)
        return result

    def get_configuration(self) -> dict[str, Any]:
        """The component's whole configuration (``GetConfiguration``).

        Raises:
            TransportError: not connected, or the nucleus refused; one line.
        """
        with self._lock:
            client = self._client
        if client is None:
            raise TransportError("cannot read the component configuration: not connected")
        try:
            response = client.get_configuration_async().result(self._timeout)
        except Exception as exc:
            raise TransportError(self._failure("GetConfiguration", "", exc)) from exc
        value = response.value
        return dict(value) if isinstance(value, dict) else {}

    def watch_configuration(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` when the component configuration changes, and after a reconnect.

        ``SubscribeToConfigurationUpdate``, opened again on every new connection
        (where ``changed()`` is called too: an update may have come meanwhile).

        Raises:
            TransportError: not connected, or the nucleus refused the subscription.
        """
        with self._lock:
            self._watcher = changed
            client = self._client
        if client is None:
            raise TransportError("cannot watch the component configuration: not connected")
        self._open_watch(client)

    def _open_watch(self, client: GreengrassCoreIPCClientV2) -> None:
        with self._lock:
            watcher = self._watcher
        if watcher is None:
            return

        def on_event(_event: Any) -> None:  # noqa: ANN401 - awsiotsdk's ConfigurationUpdateEvents
            try:
                watcher()
            except Exception:  # a watcher's bug must not unwind into awscrt's thread
                log.exception("the configuration watcher failed")

        def on_error(error: Exception) -> bool:
            log.warning("configuration updates: %s", ipc_reason(error))
            return False

        try:
            future, operation = client.subscribe_to_configuration_update_async(
                on_stream_event=on_event, on_stream_error=on_error
            )
            future.result(self._timeout)
        except Exception as exc:
            raise TransportError(self._failure("SubscribeToConfigurationUpdate", "", exc)) from exc
        with self._lock:
            old, self._watch = self._watch, operation
        if old is not None:
            _close_quietly(old)

    def disconnect(self) -> None:
        """Close the IPC connection and stop reconnecting (idempotent)."""
        self._stop.set()
        with self._lock:
            client, self._client = self._client, None
            self._closing = True
            self._generation += 1
            self._streams.clear()
            self._watch = None
            reconnector, self._reconnector = self._reconnector, None
        if client is not None:
            try:
                client.close(executor_wait=False).result(self._timeout)
            except Exception as exc:  # closing anyway
                log.debug("closing the IPC client: %s", ipc_reason(exc))
            log.info("disconnected from the Greengrass nucleus")
        if reconnector is not None and reconnector is not threading.current_thread():
            reconnector.join(self._timeout)

    # -- internals ------------------------------------------------------------------------------

    def _open(self) -> None:
        """One connection attempt; the client becomes current (ConnectError on failure)."""
        import awsiot.greengrasscoreipc as ipc  # noqa: PLC0415 - awsiotsdk, only when used
        from awsiot.eventstreamrpc import LifecycleHandler  # noqa: PLC0415
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2  # noqa: PLC0415

        with self._lock:
            self._generation += 1
            generation = self._generation
        transport = self

        class Lifecycle(LifecycleHandler):  # type: ignore[misc]  # awsiotsdk is untyped
            def on_disconnect(self, reason: Optional[Exception]) -> None:
                transport._lost(generation, reason)

            def on_error(self, error: Exception) -> bool:
                log.warning("IPC connection error: %s", ipc_reason(error))
                return True

        try:
            raw = ipc.connect(
                ipc_socket=self._socket_path,
                authtoken=self._token,
                lifecycle_handler=Lifecycle(),
                timeout=self._timeout,
            )
        except Exception as exc:  # awscrt's errors: not up, refused, bad token, timeout
            raise ConnectError(_connect_problem(exc, self._socket_path)) from exc
        client = GreengrassCoreIPCClientV2(client=raw, executor=None)
        with self._lock:
            if self._closing or generation != self._generation:
                stale = True
            else:
                stale = False
                self._client = client
        if stale:
            client.close(executor_wait=False)
            raise ConnectError("disconnect() was called while connecting")
        log.info("connected to the Greengrass nucleus on %s", self._socket_path)

    def _restore(self) -> None:
        """Open every subscription on the current connection (TransportError on failure)."""
        with self._lock:
            client = self._client
            filters = list(self._subscriptions)
        if client is None:
            raise TransportError("the IPC connection dropped while subscribing")
        for topic_filter in filters:
            self._subscribe(client, topic_filter)
        self._open_watch(client)

    def _subscribe(self, client: GreengrassCoreIPCClientV2, topic_filter: str) -> None:
        from awsiot.greengrasscoreipc.model import QOS  # noqa: PLC0415 - awsiotsdk

        def on_event(event: Any) -> None:  # noqa: ANN401 - awsiotsdk's IoTCoreMessage
            message = getattr(event, "message", None)
            if message is None:
                return
            with self._lock:
                handler = self._subscriptions.get(topic_filter)
            if handler is None:
                return
            try:
                handler(str(message.topic_name), bytes(message.payload or b""))
            except Exception:  # a handler's bug must not unwind into awscrt's thread
                log.exception("the message handler for %s failed", shown(topic_filter))

        def on_error(error: Exception) -> bool:
            log.warning("subscription to %s: %s", topic_filter, ipc_reason(error))
            return False  # keep the stream

        try:
            future, operation = client.subscribe_to_iot_core_async(
                topic_name=topic_filter,
                qos=QOS.AT_LEAST_ONCE,
                on_stream_event=on_event,
                on_stream_error=on_error,
            )
            future.result(self._timeout)
        except Exception as exc:
            raise TransportError(self._failure("SubscribeToIoTCore", topic_filter, exc)) from exc
        with self._lock:
            old = self._streams.get(topic_filter)
            self._streams[topic_filter] = operation
        if old is not None:
            _close_quietly(old)
        log.debug("subscribed to %s", topic_filter)

    def _failure(self, operation: str, topic: str, exc: BaseException) -> str:
        """One line for a failed operation; a missing grant is explained once at ERROR."""
        reason = ipc_reason(exc)
        where = f" on {topic}" if topic else ""
        if type(exc).__name__ == "UnauthorizedError" and not topic:
            log.error(
                "the nucleus refused %s: %s (the component's accessControl lacks it)",
                operation,
                reason,
            )
            return f"{operation}: not authorized"
        if type(exc).__name__ == "UnauthorizedError":
            if topic not in self._unauthorized:
                self._unauthorized.add(topic)
                log.error(
                    "the nucleus refused %s on %s: the component's accessControl needs a "
                    "policy of %s allowing aws.greengrass#%s on this topic (see "
                    "docs/greengrass.md); trying again at the next report",
                    operation,
                    topic,
                    IPC_POLICY,
                    operation,
                )
            return f"{operation} {topic}: not authorized ({IPC_POLICY} policy missing)"
        return f"{operation}{where}: {reason}"

    def _notify(self, connected: bool, reason: str) -> None:
        with self._lock:
            listener = self._listener
        if listener is None:
            return
        try:
            listener(connected, reason)
        except Exception:  # a listener's bug must not unwind into awscrt's thread
            log.exception("the connection listener failed")

    def _service_error(self, client: GreengrassCoreIPCClientV2) -> None:
        """A ServiceError: after a few in a row, close the connection (it is then reconnected)."""
        with self._lock:
            self._service_errors += 1
            if self._service_errors < SERVICE_ERRORS_RECONNECT or self._client is not client:
                return
            self._service_errors = 0
            self._drop_reason = f"{SERVICE_ERRORS_RECONNECT} ServiceErrors in a row"
        _close_quietly(client)  # its on_disconnect starts the reconnect

    def _lost(self, generation: int, reason: Optional[Exception]) -> None:
        """The IPC connection closed (lifecycle callback): reconnect unless we closed it."""
        with self._lock:
            if generation != self._generation or self._closing:
                return
            self._client = None
            self._streams.clear()
            self._watch = None
            if self._reconnector is not None and self._reconnector.is_alive():
                return
            thread = threading.Thread(
                target=self._reconnect, name="defender-agent-ipc-reconnect", daemon=True
            )
            self._reconnector = thread
            dropped, self._drop_reason = self._drop_reason, None
        why = dropped or ("closed by the nucleus" if reason is None else ipc_reason(reason))
        log.warning("the IPC connection to the nucleus is down (%s); reconnecting", why)
        self._notify(False, why)
        thread.start()

    def _reconnect(self) -> None:
        attempt = 0
        delay = backoff_delay(attempt, rng=self._rng)
        while not self._stop.wait(delay):
            attempt += 1
            try:
                self._open()
                self._restore()
            except (ConnectError, TransportError) as exc:
                with self._lock:
                    client, self._client = self._client, None
                if client is not None:  # connected, but a subscription failed: start over
                    _close_quietly(client)
                delay = backoff_delay(attempt, rng=self._rng)
                log.warning(
                    "reconnecting to the nucleus failed: %s; retrying in %.1f s", exc, delay
                )
                continue
            log.info("the IPC connection to the nucleus is back")
            self._notify(True, "reconnected")
            with self._lock:
                watcher = self._watcher
            if watcher is not None:
                watcher()  # an update may have come while the connection was down
            return


def _close_quietly(closable: Any) -> None:  # noqa: ANN401 - an awsiotsdk client or operation
    close: Callable[..., Any] = closable.close
    try:
        close()
    except Exception as exc:  # already closed
        log.debug("close: %s", exc)
