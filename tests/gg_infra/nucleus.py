"""A fake Greengrass nucleus: the IPC server a component talks to, on a Unix socket.

It speaks eventstream-RPC as the nucleus does (:mod:`.eventstream` framing,
``CONNECT``/``CONNECT_ACK`` with the component's ``SVCUID`` token, pings, one
stream per operation, ``APPLICATION_ERROR`` frames such as
``aws.greengrass#UnauthorizedError``) and implements the operations the
component uses:

* ``PublishToIoTCore`` and ``SubscribeToIoTCore`` — bridged to a real mosquitto
  (its plain listener), where the project's local Device Defender service
  answers, as the nucleus bridges them to AWS IoT Core;
* ``GetConfiguration`` and ``SubscribeToConfigurationUpdate`` — over a JSON
  document the test changes with :meth:`FakeNucleus.set_configuration`.

Access control: ``allow_publish``/``allow_subscribe`` are the topic names the
component's ``accessControl`` grants (``None``: everything); anything else is
answered with ``UnauthorizedError``, worded like the nucleus's; with
``publish_error`` set, every publish is answered with that error. Any other
operation gets ``ServiceError``. :meth:`stop` closes the socket and every
connection (a nucleus restart); :meth:`start` serves again on the same path.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Optional

from defender_agent.transport.base import MqttSettings
from defender_agent.transport.mqtt import MqttTransport
from tests.gg_infra import eventstream as es

__all__ = ["FakeNucleus"]

log = logging.getLogger(__name__)

_JSON = "application/json"


def _event(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value).encode()


class _Client:
    """One IPC connection: its socket, its open streams, a write lock."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.connected = False
        self.streams: dict[int, str] = {}  # stream id -> operation (open streams only)
        self.subscriptions: dict[int, str] = {}  # stream id -> IoT Core topic filter

    def send(self, headers: dict[str, es.HeaderValue], payload: bytes = b"") -> None:
        # an OSError: the connection is going away; its reader thread ends it
        with self.lock, contextlib.suppress(OSError):
            self.sock.sendall(es.encode(headers, payload))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class FakeNucleus:
    """A fake nucleus serving IPC on ``socket_path`` for one component.

    Args:
        socket_path: the Unix socket (``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT``).
        broker_port: mosquitto's plain listener on 127.0.0.1 (IoT Core's stand-in).
        token: the component's ``SVCUID``.
        thing: ``AWS_IOT_THING_NAME``.
        component: the component's name (``GetConfiguration`` answers for it).
        configuration: the component's configuration document.
    """

    def __init__(
        self,
        socket_path: Path,
        broker_port: int,
        *,
        token: str = "svcuid-test-token",
        thing: str = "thing1",
        component: str = "com.example.DefenderAgent",
        configuration: Optional[dict[str, Any]] = None,
    ) -> None:
        self.socket_path = socket_path
        self.broker_port = broker_port
        self.token = token
        self.thing = thing
        self.component = component
        self.configuration: dict[str, Any] = dict(configuration or {})
        self.allow_publish: Optional[Collection[str]] = None
        self.allow_subscribe: Optional[Collection[str]] = None
        #: an error model (``aws.greengrass#ServiceError``) every publish is answered with
        self.publish_error: Optional[str] = None
        self.published: list[tuple[str, str, bytes]] = []  # (topic, qos, payload)
        self.connects = 0
        self.rejected_tokens = 0
        self.operations: list[str] = []
        self._lock = threading.Lock()
        self._server: Optional[socket.socket] = None
        self._clients: list[_Client] = []
        self._threads: list[threading.Thread] = []
        self._mqtt: Optional[MqttTransport] = None

    # -- what a test sees --------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The variables the nucleus gives a component's processes."""
        return {
            "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": str(self.socket_path),
            "SVCUID": self.token,
            "AWS_IOT_THING_NAME": self.thing,
            "AWS_REGION": "eu-west-1",
        }

    def set_configuration(self, configuration: dict[str, Any], changed: list[str]) -> None:
        """Replace the configuration and tell subscribers ``changed`` (a key path) changed."""
        with self._lock:
            self.configuration = dict(configuration)
            targets = [
                (client, sid)
                for client in self._clients
                for sid, op in client.streams.items()
                if op == "aws.greengrass#SubscribeToConfigurationUpdate"
            ]
        event = {"configurationUpdateEvent": {"componentName": self.component, "keyPath": changed}}
        for client, sid in targets:
            client.send(
                self._headers(sid, "aws.greengrass#ConfigurationUpdateEvents"), _event(event)
            )

    def published_on(self, suffix: str) -> list[bytes]:
        """Payloads published on topics ending with ``suffix``."""
        with self._lock:
            return [p for t, _, p in self.published if t.endswith(suffix)]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Serve on the socket (again after :meth:`stop`); connect the IoT Core bridge."""
        if self._mqtt is None:
            self._mqtt = MqttTransport(
                MqttSettings(
                    endpoint="127.0.0.1",
                    port=self.broker_port,
                    client_id=f"nucleus-{self.thing}",  # not the thing: a device may share the broker
                    use_tls=False,
                    reconnect_min_s=1.0,
                    reconnect_max_s=2.0,
                )
            )
            self._mqtt.connect()
        self.socket_path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.socket_path))
        self.socket_path.chmod(0o600)
        server.listen(8)
        self._server = server
        thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, bridge: bool = False) -> None:
        """Close the socket and every connection (a nucleus restart); ``bridge``: MQTT too."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        for thread in self._threads:
            thread.join(5)
        self._threads = []
        self.socket_path.unlink(missing_ok=True)
        if bridge and self._mqtt is not None:
            self._mqtt.disconnect()
            self._mqtt = None

    def __enter__(self) -> FakeNucleus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(bridge=True)

    # -- the server ----------------------------------------------------------------------------

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                sock, _ = server.accept()
            except OSError:
                return
            client = _Client(sock)
            with self._lock:
                self._clients.append(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, client: _Client) -> None:
        buffer = b""
        try:
            while True:
                data = client.sock.recv(65536)
                if not data:
                    return
                buffer += data
                while True:
                    message = es.decode(buffer)
                    if message is None:
                        break
                    headers, payload, used = message
                    buffer = buffer[used:]
                    if not self._handle(client, headers, payload):
                        return
        except (OSError, es.FrameError) as exc:
            log.debug("fake nucleus: connection ends: %s", exc)
        finally:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
        client.close()

    def _handle(self, client: _Client, headers: dict[str, es.HeaderValue], payload: bytes) -> bool:
        """Answer one message; ``False`` ends the connection."""
        kind = headers.get(":message-type")
        if kind == es.CONNECT:
            token = json.loads(payload or b"{}").get("authToken")
            if token != self.token:
                self.rejected_tokens += 1
                client.send({":message-type": es.CONNECT_ACK, ":message-flags": 0, ":stream-id": 0})
                return False
            self.connects += 1
            client.connected = True
            client.send(
                {
                    ":message-type": es.CONNECT_ACK,
                    ":message-flags": es.CONNECTION_ACCEPTED,
                    ":stream-id": 0,
                }
            )
            return True
        if not client.connected:
            return False  # anything before CONNECT ends the connection, as the nucleus does
        if kind == es.PING:
            client.send(
                {":message-type": es.PING_RESPONSE, ":message-flags": 0, ":stream-id": 0}, payload
            )
            return True
        if kind != es.APPLICATION_MESSAGE:
            return True
        sid = int(headers.get(":stream-id", 0))
        flags = int(headers.get(":message-flags", 0))
        operation = headers.get("operation")
        if isinstance(operation, str) and sid not in client.streams:
            client.streams[sid] = operation
            with self._lock:
                self.operations.append(operation)
            self._operation(client, sid, operation, json.loads(payload or b"{}"))
        elif flags & es.TERMINATE_STREAM:  # the component closed a stream
            client.streams.pop(sid, None)
            client.subscriptions.pop(sid, None)
        return True

    @staticmethod
    def _headers(
        sid: int, model: str, flags: int = 0, kind: int = es.APPLICATION_MESSAGE
    ) -> dict[str, es.HeaderValue]:
        return {
            ":message-type": kind,
            ":message-flags": flags,
            ":stream-id": sid,
            ":content-type": _JSON,
            "service-model-type": model,
        }

    def _reply(self, client: _Client, sid: int, model: str, body: Mapping[str, Any]) -> None:
        client.send(self._headers(sid, model, es.TERMINATE_STREAM), _event(body))
        client.streams.pop(sid, None)

    def _error(self, client: _Client, sid: int, model: str, message: str) -> None:
        body = {"message": message, "_message": message, "_errorCode": model.split("#")[1]}
        client.send(
            self._headers(sid, model, es.TERMINATE_STREAM, es.APPLICATION_ERROR), _event(body)
        )
        client.streams.pop(sid, None)

    def _unauthorized(self, client: _Client, sid: int, operation: str, topic: str) -> None:
        self._error(
            client,
            sid,
            "aws.greengrass#UnauthorizedError",
            f"Principal {self.component} is not authorized to perform "
            f"aws.greengrass.ipc.mqttproxy:{operation} on resource {topic}",
        )

    def _operation(self, client: _Client, sid: int, operation: str, body: dict[str, Any]) -> None:
        name = operation.rsplit("#", maxsplit=1)[-1]
        if name == "PublishToIoTCore":
            self._publish(client, sid, operation, body)
        elif name == "SubscribeToIoTCore":
            self._subscribe(client, sid, operation, body)
        elif name == "GetConfiguration":
            self._get_configuration(client, sid, body)
        elif name == "SubscribeToConfigurationUpdate":
            client.send(self._headers(sid, operation + "Response"), _event({}))
        else:
            self._error(
                client, sid, "aws.greengrass#ServiceError", f"{operation} is not implemented"
            )

    def _publish(self, client: _Client, sid: int, operation: str, body: dict[str, Any]) -> None:
        topic = str(body.get("topicName", ""))
        if self.allow_publish is not None and topic not in self.allow_publish:
            self._unauthorized(client, sid, operation, topic)
            return
        if self.publish_error is not None:
            self._error(client, sid, self.publish_error, "the MQTT spooler is full")
            return
        payload = base64.b64decode(body.get("payload", ""))
        with self._lock:
            self.published.append((topic, str(body.get("qos")), payload))
        assert self._mqtt is not None
        try:
            self._mqtt.publish(topic, payload).result(10)
        except Exception as exc:  # IoT Core unreachable: what the nucleus says then
            self._error(client, sid, "aws.greengrass#ServiceError", f"publish failed: {exc}")
            return
        self._reply(client, sid, operation + "Response", {})

    def _subscribe(self, client: _Client, sid: int, operation: str, body: dict[str, Any]) -> None:
        topic = str(body.get("topicName", ""))
        if self.allow_subscribe is not None and topic not in self.allow_subscribe:
            self._unauthorized(client, sid, operation, topic)
            return
        client.subscriptions[sid] = topic

        def deliver(name: str, payload: bytes) -> None:
            if client.subscriptions.get(sid) != topic:
                return  # that stream was closed
            message = {"topicName": name, "payload": base64.b64encode(payload).decode()}
            client.send(
                self._headers(sid, "aws.greengrass#IoTCoreMessage"), _event({"message": message})
            )

        assert self._mqtt is not None
        self._mqtt.subscribe(topic, deliver)
        client.send(self._headers(sid, operation + "Response"), _event({}))

    def _get_configuration(self, client: _Client, sid: int, body: dict[str, Any]) -> None:
        name = body.get("componentName") or self.component
        if name != self.component:
            self._error(client, sid, "aws.greengrass#ResourceNotFoundError", f"no component {name}")
            return
        value: Any = self.configuration
        for key in body.get("keyPath") or []:
            if not isinstance(value, dict) or key not in value:
                self._error(client, sid, "aws.greengrass#ResourceNotFoundError", f"no key {key}")
                return
            value = value[key]
        response = {"componentName": self.component, "value": value}
        self._reply(client, sid, "aws.greengrass#GetConfigurationResponse", response)
