"""A strict embedded MQTT broker for the sandbox: amqtt 0.12.1 made to behave like AWS IoT.

Stock amqtt is wrong for Device Defender in two ways: client
certificates are optional, and every PUBLISH to a ``$`` topic is PUBACKed and then
dropped, with the client's message loop stopped and its socket left open.
:class:`StrictBroker` overrides exactly these (amqtt private
methods, so ``amqtt==0.12.1`` is pinned):

* ``_create_ssl_context``: the listener requires a client certificate from the
  sandbox CA (``CERT_REQUIRED``) and TLS 1.2 or later.
* ``_handle_message_delivery``: a publish to ``$aws/...`` (or to a topic without a
  leading ``$``) takes amqtt 0.12.1's own steps minus the leading-``$`` refusal:
  ``MESSAGE_RECEIVED``, refuse ``#``/``+`` in the topic name, topic filtering
  (``Action.PUBLISH``), ``MESSAGE_BROADCAST`` and the broadcast, the retained message.
  Other ``$`` topics (``$SYS``) and empty ones go to amqtt unchanged. Where amqtt would
  stop serving the client and leave its socket open (a wildcard in a topic name), or
  drop a refused publish silently, the client is disconnected instead, as AWS IoT
  does on a policy violation.
* ``_initialize_client_session``: amqtt 0.12.1 deletes (clean session) or takes
  over (kept session) the existing session of the client id a CONNECT names
  *before* it authenticates the connection, so a refused login (another thing's
  certificate claiming this client id) used to end the real client's session and
  subscriptions. The override authenticates the new connection first (its own TLS
  details) and answers a refused one with CONNACK "not authorized" without touching
  any session; only then does it take amqtt's steps (delete or resume). A resumed
  session object gets the current connection's TLS details, so the identity below
  is always this connection's certificate.

Two plugins, and nothing else (naming plugins replaces amqtt's defaults, so there
is no anonymous login and no ``$SYS`` tree):

* :class:`CertIdentityAuth`: accepts only a connection with a verified client
  certificate, sets the session's username to the certificate's CN (whatever
  username the client sent), and by default requires ``client_id == CN`` (what the
  usual AWS IoT policy ``iot:Connect`` on ``client/${iot:Connection.Thing.ThingName}``
  enforces).
* :class:`DeviceDefenderAcl`: an AWS IoT policy for Device Defender. A thing may
  publish only to ``$aws/things/<CN>/defender/metrics/{json,cbor}``, subscribe only
  to (filters within) ``.../{json,cbor}/{accepted,rejected}`` of its own thing, and
  receive only those; the service identities (``defender-service``) may do anything
  under ``$aws/#``. A forbidden SUBSCRIBE gets the failure code 0x80 in its SUBACK;
  a forbidden PUBLISH is dropped and the client disconnected.

:class:`EmbeddedBroker` runs the broker with exactly one listener, TLS on 127.0.0.1
(a free port by default), on its own asyncio loop in a daemon thread; ``start`` and
``stop`` are called from the caller's thread.

"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Optional

from defender_agent.errors import TransportError
from defender_agent.logs import shown as _shown

if TYPE_CHECKING:
    from amqtt.contexts import ListenerConfig
    from amqtt.session import Session

try:
    from amqtt.broker import Broker
    from amqtt.contexts import Action
    from amqtt.errors import MQTTError
    from amqtt.events import BrokerEvents
    from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
    from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
except ImportError as exc:  # no 'sandbox' extra (Python 3.9: amqtt 0.12.1 needs 3.10)
    # The module still imports (documentation, doctest collection); EmbeddedBroker says why
    # it cannot run.
    _MISSING: Optional[ImportError] = exc
    Broker = BaseAuthPlugin = BaseTopicPlugin = object
else:
    _MISSING = None

__all__ = [
    "SERVICE_NAME",
    "BrokerSettings",
    "CertIdentityAuth",
    "DeviceDefenderAcl",
    "EmbeddedBroker",
    "StrictBroker",
]

log = logging.getLogger(__name__)

SERVICE_NAME: Final = "defender-service"  # as defender_agent.sandbox.pki.SERVICE_NAME
_LISTENER: Final = "default"
_HOST: Final = "127.0.0.1"
_FORMATS: Final = ("json", "cbor")
_REPLIES: Final = ("accepted", "rejected")


# --------------------------------------------------------------------------- identity
def _peer_common_name(session: Session) -> Optional[str]:
    """The CN of the verified client certificate of the session's connection."""
    ssl_object = getattr(session, "ssl_object", None)
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    names = [
        value
        for rdn in cert.get("subject", ())
        for key, value in rdn
        if key == "commonName" and isinstance(value, str)
    ]
    return names[0] if len(names) == 1 and names[0] else None


class CertIdentityAuth(BaseAuthPlugin):  # type: ignore[misc]
    """Authenticates by client certificate: the username becomes the certificate's CN."""

    @dataclass
    class Config:
        """The plugin's options.

        Attributes:
            require_client_id_match: Refuse a client whose client id is not its CN.
        """

        require_client_id_match: bool = True

    async def authenticate(self, *, session: Session) -> bool:
        """Accept a connection with a verified certificate; its CN becomes the username.

        Args:
            session: The connecting client's session.

        Returns:
            Whether the client may connect.
        """
        common_name = _peer_common_name(session)
        where = f"{session.remote_address}:{session.remote_port}"
        if common_name is None:
            log.warning("refused %s (client id %s): no client certificate CN", where,
                        _shown(session.client_id))  # fmt: skip
            return False
        if self.config.require_client_id_match and session.client_id != common_name:
            log.warning(
                "refused %s: client id %s is not the certificate's CN %s",
                where,
                _shown(session.client_id),
                _shown(common_name),
            )
            return False
        session.username = common_name
        log.info("client %s connected from %s", _shown(common_name), where)
        return True


# --------------------------------------------------------------------------- topic policy
#: A pattern level: a literal, or None for a single-level wildcard.
_Pattern = tuple[Optional[str], ...]


def _covers(pattern: _Pattern, multi: bool, requested: str) -> bool:
    """Whether every topic ``requested`` (a name or a filter) can match is inside ``pattern``.

    ``pattern`` levels are literals (a thing name is one literal level, whatever it
    contains) or None for ``+``; ``multi`` appends ``#``.
    """
    levels = requested.split("/")
    for index, level in enumerate(levels):
        if index >= len(pattern):
            return multi
        allowed = pattern[index]
        if level == "#":
            return False  # the request reaches deeper than this level allows
        if allowed is None:
            continue
        if level == "+" or level != allowed:
            return False
    return len(levels) == len(pattern) or (multi and len(levels) > len(pattern))


class DeviceDefenderAcl(BaseTopicPlugin):  # type: ignore[misc]
    """An AWS IoT policy for Device Defender: each thing its own topics, the service ``$aws/#``."""

    @dataclass
    class Config:
        """The plugin's options.

        Attributes:
            service_identities: Certificate CNs that may publish, subscribe and receive
                anywhere under ``$aws/``.
        """

        service_identities: list[str] = field(default_factory=lambda: [SERVICE_NAME])

    async def topic_filtering(
        self,
        *,
        session: Optional[Session] = None,
        topic: Optional[str] = None,
        action: Optional[Action] = None,
    ) -> bool:
        """Whether the session's identity may do ``action`` on ``topic``.

        Args:
            session: The client's session (its username is the certificate's CN).
            topic: The topic name (publish, receive) or filter (subscribe).
            action: What the client does.

        Returns:
            Whether it is allowed.
        """
        identity = session.username if session is not None else None
        if not identity or not topic or action is None:
            return False
        if identity in self.config.service_identities:
            return _covers(("$aws",), True, topic)
        base = ("$aws", "things", identity, "defender", "metrics")
        if action == Action.PUBLISH:
            allowed = any(_covers((*base, fmt), False, topic) for fmt in _FORMATS)
        else:  # SUBSCRIBE (a filter within the replies) or RECEIVE (a reply topic)
            allowed = any(
                _covers((*base, fmt, status), False, topic)
                for fmt in _FORMATS
                for status in _REPLIES
            )
        if not allowed and action == Action.SUBSCRIBE:  # (the broker logs a refused publish)
            log.warning("%s may not %s %s", _shown(identity), action.value, _shown(topic))
        return allowed


# --------------------------------------------------------------------------- the broker
class StrictBroker(Broker):  # type: ignore[misc]
    """amqtt 0.12.1 with client certificates required and ``$aws/`` publishes delivered.

    Args:
        config: The amqtt broker configuration (a dict or ``amqtt.contexts.BrokerConfig``).
        disconnect_on_denied: Disconnect a client whose publish the topic policy
            refuses (as AWS IoT does) instead of dropping the message silently.
        **kwargs: Passed to ``amqtt.broker.Broker`` (``loop``, ``plugin_namespace``).
    """

    def __init__(
        self,
        config: Any,  # noqa: ANN401 - amqtt's BrokerConfig or its dict
        *,
        disconnect_on_denied: bool = True,
        **kwargs: Any,  # noqa: ANN401
    ) -> None:
        super().__init__(config, **kwargs)
        self.disconnect_on_denied = disconnect_on_denied

    @staticmethod
    def _create_ssl_context(listener: ListenerConfig) -> ssl.SSLContext:
        context: ssl.SSLContext = Broker._create_ssl_context(listener)
        context.verify_mode = ssl.CERT_REQUIRED
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def _initialize_client_session(
        self,
        reader: Any,  # noqa: ANN401 - amqtt's ReaderAdapter
        writer: Any,  # noqa: ANN401 - amqtt's WriterAdapter
        remote_address: str,
        remote_port: int,
    ) -> tuple[Any, Session]:
        # amqtt 0.12.1's steps, with the authentication moved before any session is touched
        try:
            handler, incoming = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except MQTTError:
            await writer.close()
            raise
        if not await self._authenticate(incoming, None):
            connack = ConnackPacket.build(0, NOT_AUTHORIZED)
            await connack.to_stream(writer)
            await writer.close()
            raise MQTTError(
                f"refused {remote_address}:{remote_port} (client id {_shown(incoming.client_id)});"
                " existing sessions untouched"
            )
        session: Session = incoming
        if incoming.clean_session:
            if incoming.client_id:
                await self._delete_session(incoming.client_id)
            else:  # pragma: no cover - amqtt gives every client an id
                raise MQTTError("a client without a client id")
            session.parent = 0
        elif incoming.client_id in self._sessions:
            session = self._sessions[incoming.client_id][0]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive"):
                setattr(session, name, getattr(incoming, name))
            session.username, session.password = incoming.username, incoming.password
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        # a resumed session is the old object: give it this connection's TLS details
        session.ssl_object = writer.get_ssl_info()
        session.remote_address, session.remote_port = remote_address, remote_port
        session.authenticated_here = True  # read (once) by _authenticate below
        return handler, session

    async def _authenticate(self, session: Session, listener: Any) -> bool:  # noqa: ANN401
        if getattr(session, "authenticated_here", False):
            session.authenticated_here = False  # checked in _initialize_client_session
            return True
        result: bool = await super()._authenticate(session, listener)
        return result

    async def _handle_message_delivery(
        self,
        client_session: Session,
        handler: Any,  # noqa: ANN401 - amqtt's BrokerProtocolHandler
        wait_deliver: asyncio.Future[Any],
    ) -> bool:
        app_message = wait_deliver.result()
        topic = getattr(app_message, "topic", None)
        if (
            not isinstance(topic, str)
            or not topic
            or (topic.startswith("$") and not topic.startswith("$aws/"))
        ):
            delivered: bool = await super()._handle_message_delivery(
                client_session, handler, wait_deliver
            )
            return delivered
        # amqtt 0.12.1's steps, without "[MQTT-4.7.2-1] cannot use a topic with a leading $"
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_RECEIVED,
            client_id=client_session.client_id,
            message=app_message,
        )
        if "#" in topic or "+" in topic:
            log.warning(
                "[MQTT-3.3.2-2] %s published to the topic filter %s: disconnected",
                _shown(client_session.client_id),
                _shown(topic),
            )
            await handler.handle_connection_closed()
            return True
        permitted = await self._topic_filtering(client_session, topic=topic, action=Action.PUBLISH)
        if not permitted:
            log.warning(
                "%s is not allowed to publish to %s: %s",
                _shown(client_session.client_id),
                _shown(topic),
                "disconnected" if self.disconnect_on_denied else "dropped",
            )
            if self.disconnect_on_denied:
                await handler.handle_connection_closed()
            return True
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_BROADCAST,
            client_id=client_session.client_id,
            message=app_message,
        )
        await self._broadcast_message(client_session, topic, app_message.data)
        if app_message.publish_packet and app_message.publish_packet.retain_flag:
            await self.retain_message(client_session, topic, app_message.data, app_message.qos)
        return True


@dataclass(frozen=True)
class BrokerSettings:
    """The embedded broker's listener and policy.

    Attributes:
        ca_file: The CA that signs client certificates (the sandbox CA).
        cert_file: The broker's certificate (localhost, 127.0.0.1).
        key_file: Its private key.
        port: The TLS port on 127.0.0.1; 0 picks a free one.
        acl: Apply :class:`DeviceDefenderAcl` (each thing only its own topics).
        require_client_id_match: Refuse a client whose client id is not its certificate's CN.
        service_identities: CNs allowed everything under ``$aws/`` (with ``acl``).
        disconnect_on_denied: Disconnect a client whose publish the policy refuses.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    port: int = 0
    acl: bool = True
    require_client_id_match: bool = True
    service_identities: Sequence[str] = (SERVICE_NAME,)
    disconnect_on_denied: bool = True

    def amqtt_config(self) -> dict[str, Any]:
        """The amqtt configuration: one TLS listener, only this module's plugins."""
        plugins: dict[str, Any] = {
            f"{__name__}.CertIdentityAuth": {
                "require_client_id_match": self.require_client_id_match
            },
        }
        if self.acl:
            plugins[f"{__name__}.DeviceDefenderAcl"] = {
                "service_identities": list(self.service_identities)
            }
        return {
            "listeners": {
                _LISTENER: {
                    "type": "tcp",
                    "bind": f"{_HOST}:{self.port}",
                    "ssl": True,
                    "cafile": str(self.ca_file),
                    "certfile": str(self.cert_file),
                    "keyfile": str(self.key_file),
                },
            },
            "plugins": plugins,
        }


class EmbeddedBroker:
    """The strict broker on its own asyncio loop in a daemon thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (from any one
    thread other than the broker's).

    Args:
        settings: The listener and policy.

    Raises:
        ImportError: amqtt is not installed (the ``sandbox`` extra).
    """

    def __init__(self, settings: BrokerSettings) -> None:
        if _MISSING is not None:
            raise ImportError(f"the embedded broker needs amqtt 0.12.1: {_MISSING}")
        self.settings = settings
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._broker: Optional[StrictBroker] = None
        self._port: Optional[int] = None
        self._bound: tuple[tuple[str, int], ...] = ()

    @property
    def bound(self) -> tuple[tuple[str, int], ...]:
        """Every ``(address, port)`` the broker listens on (one: 127.0.0.1); empty when stopped."""
        return self._bound

    @property
    def port(self) -> int:
        """The port the broker listens on (after :meth:`start`).

        Raises:
            TransportError: The broker is not running.
        """
        if self._port is None:
            raise TransportError("the embedded broker is not running")
        return self._port

    @property
    def host(self) -> str:
        """The address the broker listens on."""
        return _HOST

    @property
    def url(self) -> str:
        """``mqtts://127.0.0.1:<port>``."""
        return f"mqtts://{_HOST}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker is serving."""
        return self._port is not None

    def start(self, timeout: float = 10.0) -> None:
        """Start the loop thread and the broker; return once it listens.

        Args:
            timeout: The longest wait for the listener, in seconds.

        Raises:
            TransportError: The broker could not start (port taken, unusable TLS files).
        """
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name="sandbox-broker", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        ready.wait(timeout)
        future = asyncio.run_coroutine_threadsafe(self._start(), loop)
        try:
            self._bound = future.result(timeout)
            self._port = self._bound[0][1]
        except Exception as exc:
            future.cancel()
            self._halt_loop(timeout)
            cause = exc.__cause__ or exc
            detail = " ".join(str(cause).split()) or type(cause).__name__
            raise TransportError(f"the embedded broker did not start: {detail}") from exc
        log.info("embedded broker listening on %s", self.url)

    async def _start(self) -> tuple[tuple[str, int], ...]:
        broker = StrictBroker(
            self.settings.amqtt_config(),
            disconnect_on_denied=self.settings.disconnect_on_denied,
            loop=asyncio.get_running_loop(),
        )
        self._broker = broker
        await broker.start()
        server = broker._servers[_LISTENER].instance  # amqtt 0.12.1 (pinned)
        return tuple(
            (str(name[0]), int(name[1])) for name in (sock.getsockname() for sock in server.sockets)
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the broker down (clients are disconnected) and end its thread; idempotent.

        Args:
            timeout: The longest wait for the shutdown, in seconds.
        """
        loop, broker = self._loop, self._broker
        if loop is None:
            return
        if broker is not None and self._port is not None:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(broker), loop)
            try:
                future.result(timeout)
            except Exception as exc:  # a shutdown problem must not stop the caller's shutdown
                log.warning("embedded broker shutdown: %s", " ".join(str(exc).split()) or exc)
        self._halt_loop(timeout)
        log.info("embedded broker stopped")

    @staticmethod
    async def _shutdown(broker: StrictBroker) -> None:
        await broker.shutdown()
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def _halt_loop(self, timeout: float) -> None:
        loop, thread = self._loop, self._thread
        self._port = None
        self._bound = ()
        self._broker = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
        self._loop, self._thread = None, None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()
