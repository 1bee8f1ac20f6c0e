"""Test fronts on 127.0.0.1 that check one thing a client must do, then relay to mosquitto.

mosquitto cannot insist on ALPN, does not check SigV4, and is no proxy,
so these small servers sit in front of its TLS listener:

* :class:`AlpnFront` — a TLS server that requires a client certificate from
  the test CA and closes every connection that did not select ALPN
  ``x-amzn-mqtt-ca``;
* :class:`SigV4WebSocketFront` — a WebSocket (``mqtt`` subprotocol) server over
  TLS that answers 403 unless the handshake's query is presigned with SigV4 for
  ``iotdevicegateway`` with the expected key and region (checked by
  :func:`verify_sigv4_query`, written with hmac/hashlib only);
* :class:`ConnectProxy` — an HTTP CONNECT proxy, optionally with basic auth,
  that only tunnels to 127.0.0.1/localhost.

**Identity.** The two fronts open their own mutual-TLS connection to mosquitto
with a certificate of their own (``identity``, default ``thing1``). mosquitto,
and so its ACL, sees that identity, not the device's: a device that connects
through a front publishes as ``identity``. Pick the identity whose topics the
test uses.

Each runs its own asyncio loop in a daemon thread; use them as context
managers (or ``start()``/``stop()``), which also stops every relayed connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import hmac
import ssl
import threading
import warnings
from collections.abc import Coroutine, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any, ClassVar, Optional, TypeVar
from urllib.parse import quote, unquote

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.mqtt_infra.pki import Pki

__all__ = ["ALPN_MQTT", "AlpnFront", "ConnectProxy", "SigV4WebSocketFront", "verify_sigv4_query"]

ALPN_MQTT = "x-amzn-mqtt-ca"
T = TypeVar("T")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# -- plumbing ---------------------------------------------------------------------------------


class _LoopService:
    """An asyncio loop in a daemon thread, with a server started and stopped on it.

    Subclasses set ``self._server`` (an ``asyncio.Server`` or a websockets ``Server``)
    in ``_start`` and register every stream writer they open with ``_own``, so that
    ``stop`` can end every connection, even one stuck in a TLS handshake.
    """

    #: Let the server close its connections itself first (websockets' closing handshake).
    GRACEFUL_CLOSE = False

    def __init__(self) -> None:
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server: Any = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        """Start the loop thread and the server; ``port`` is set when this returns."""
        if self._loop is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        try:
            self._run(self._start())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server, every relayed connection, the loop and its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._run(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = None

    async def _shutdown(self) -> None:
        server = self._server
        if server is not None:
            server.close()  # no new connections
            if self.GRACEFUL_CLOSE:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), 5)
        # Whatever is left: relays, handshakes in progress (asyncio's accept tasks).
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.sleep(0.05)  # let the aborted transports release their sockets
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    def _own(self, writer: asyncio.StreamWriter) -> asyncio.StreamWriter:
        """Track a writer until it is closed, so stop() can abort it."""
        self._writers.add(writer)
        return writer

    async def _guard(self, connection: Coroutine[Any, Any, None]) -> None:
        """Run a connection handler so that stop() can cancel it quietly."""
        # stop() cancels live connections (and aborts their transports): end quietly.
        with contextlib.suppress(asyncio.CancelledError):
            await connection

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close a writer (abort it when the peer does not finish the TLS close in 1 s)."""
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            writer.transport.abort()
        finally:
            self._writers.discard(writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy bytes until EOF or an error, then close the writer."""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            await self._close(writer)

    async def _start(self) -> None:
        raise NotImplementedError

    def __enter__(self: T) -> T:
        self.start()  # type: ignore[attr-defined]
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


def _upstream_context(pki: Pki, identity: str) -> ssl.SSLContext:
    """TLS client context for the front's own mutual-TLS connection to mosquitto."""
    cert, key = pki.client(identity)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(cert), str(key))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _open_upstream(
    port: int, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"), 10
    )


# -- ALPN -------------------------------------------------------------------------------------


class AlpnFront(_LoopService):
    """A TLS server that insists on ALPN ``x-amzn-mqtt-ca``, relaying to mosquitto's TLS port.

    Python's ssl does not fail a handshake when the ALPN lists share nothing, so the
    front checks ``selected_alpn_protocol()`` after the handshake and closes the
    connection unless it is ``x-amzn-mqtt-ca``.

    Args:
        pki: the test PKI; the front serves ``server.crt`` and requires a client
            certificate from ``ca.crt``.
        upstream_port: mosquitto's TLS listener.
        identity: the client certificate the front presents to mosquitto (see module doc).
        port: the port to listen on (any free one when ``None``).
        tls_max: the newest TLS version offered; ``TLSv1_1`` makes a front that only speaks
            TLS 1.1 (to check that clients refuse it).

    Attributes:
        port: the listening port (after ``start``).
        accepted: connections relayed (ALPN was right).
        refused: connections closed because ALPN was not selected.
        versions: the TLS version of each completed handshake (``"TLSv1.3"``).
        peers: the client certificate CN of each completed handshake.
    """

    def __init__(
        self,
        pki: Pki,
        upstream_port: int,
        identity: str = "thing1",
        port: Optional[int] = None,
        tls_max: Optional[ssl.TLSVersion] = None,
    ) -> None:
        super().__init__()
        self.pki = pki
        self.upstream_port = upstream_port
        self.identity = identity
        self.port = port or 0
        self.accepted = 0
        self.refused = 0
        self.versions: list[str] = []
        self.peers: list[str] = []
        self._upstream = _upstream_context(pki, identity)
        self._context = _server_context(pki)
        self._context.verify_mode = ssl.CERT_REQUIRED
        self._context.load_verify_locations(cafile=str(pki.ca))
        self._context.set_alpn_protocols([ALPN_MQTT])
        if tls_max is not None:
            with warnings.catch_warnings():  # TLS < 1.2 is deprecated, which is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                self._context.minimum_version = min(tls_max, ssl.TLSVersion.TLSv1_2)
                self._context.maximum_version = tls_max
            self._context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 needs it for TLS 1.1

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self._context
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._guard(self._relay(reader, self._own(writer)))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = writer.get_extra_info("ssl_object")
        self.versions.append(str(tls.version()))
        subject = dict(item for rdn in tls.getpeercert().get("subject", ()) for item in rdn)
        self.peers.append(str(subject.get("commonName", "")))
        if tls.selected_alpn_protocol() != ALPN_MQTT:
            self.refused += 1
            await self._close(writer)
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await _open_upstream(self.upstream_port, self._upstream)
            self._own(up_writer)
        except (OSError, asyncio.TimeoutError):
            await self._close(writer)
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))


# -- SigV4 WebSocket --------------------------------------------------------------------------


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def verify_sigv4_query(
    path: str,
    headers: Mapping[str, str],
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str = "iotdevicegateway",
    now: Optional[datetime.datetime] = None,
    max_skew_s: float = 300.0,
) -> Optional[str]:
    """Check a GET request presigned with SigV4 in its query string.

    Independent of awscrt and botocore: canonical request, string to sign and the
    HMAC-SHA256 key chain done here with hashlib/hmac. ``X-Amz-Security-Token`` is
    not part of the canonical query (AWS IoT signs without it); the signed headers
    are the ones ``X-Amz-SignedHeaders`` lists; the payload is empty.

    Args:
        path: the request target, ``/mqtt?X-Amz-Algorithm=...``.
        headers: the request headers (case-insensitive lookup).
        access_key: the expected access key id.
        secret_key: its secret.
        region: the expected region.
        service: the expected service.
        now: the current time (UTC) for the skew check.
        max_skew_s: how far ``X-Amz-Date`` may be from ``now``.

    Returns:
        ``None`` when the signature is valid, else why not.
    """
    raw_path, _, query = path.partition("?")
    pairs = []
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    params = dict(pairs)
    if len(params) != len(pairs):
        return "duplicate query parameter"
    needed = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders")
    missing = [name for name in (*needed, "X-Amz-Signature") if name not in params]
    if missing:
        return f"missing {', '.join(missing)}"
    if params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        return f"algorithm {params['X-Amz-Algorithm']}"
    scope = params["X-Amz-Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return "malformed X-Amz-Credential"
    key_id, day, cred_region, cred_service, _ = scope
    amz_date = params["X-Amz-Date"]
    if key_id != access_key:
        return f"unknown access key {key_id}"
    if cred_region != region or cred_service != service:
        return f"scope {cred_region}/{cred_service}, expected {region}/{service}"
    try:
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
    except ValueError:
        return f"malformed X-Amz-Date {amz_date}"
    if day != amz_date[:8]:
        return "credential date differs from X-Amz-Date"
    current = now or datetime.datetime.now(datetime.timezone.utc)
    age = (current - signed_at).total_seconds()
    if abs(age) > max_skew_s and not (
        "X-Amz-Expires" in params and 0 <= age <= float(params["X-Amz-Expires"])
    ):
        return f"X-Amz-Date {amz_date} is {age:.0f} s off"
    canonical_query = "&".join(
        f"{key}={value}"
        for key, value in sorted(
            (_uri_encode(key), _uri_encode(value))
            for key, value in pairs
            if key not in ("X-Amz-Signature", "X-Amz-Security-Token")
        )
    )
    signed_headers = params["X-Amz-SignedHeaders"].split(";")
    if "host" not in signed_headers:
        return "host is not signed"
    canonical_headers = ""
    for name in signed_headers:
        header = headers.get(name)
        if header is None:
            return f"signed header {name} is missing"
        canonical_headers += f"{name}:{' '.join(header.split())}\n"
    canonical_request = "\n".join(
        [
            "GET",
            raw_path or "/",
            canonical_query,
            canonical_headers,
            ";".join(signed_headers),
            _EMPTY_SHA256,
        ]
    )
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            f"{day}/{region}/{service}/aws4_request",
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    signing_key = ("AWS4" + secret_key).encode()
    for part in (day, region, service, "aws4_request"):
        signing_key = _hmac(signing_key, part)
    expected = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
        return "signature mismatch"
    return None


class SigV4WebSocketFront(_LoopService):
    """MQTT over WebSocket (TLS, subprotocol ``mqtt``) that checks SigV4, relaying to mosquitto.

    Args:
        pki: the test PKI (the front serves ``server.crt``; no client certificate).
        upstream_port: mosquitto's TLS listener.
        access_key: the access key id the signature must use.
        secret_key: its secret.
        region: the region the signature must be scoped to.
        identity: the client certificate the front presents to mosquitto (see module doc).
        port: the port to listen on (any free one when ``None``).

    Attributes:
        port: the listening port (after ``start``).
        accepted: handshakes with a valid signature.
        rejected: handshakes answered 403.
        reasons: why each rejected handshake was rejected.
        paths: the request target of every handshake.
    """

    GRACEFUL_CLOSE = True

    def __init__(
        self,
        pki: Pki,
        upstream_port: int,
        access_key: str,
        secret_key: str,
        region: str,
        identity: str = "thing1",
        port: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.pki = pki
        self.upstream_port = upstream_port
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.identity = identity
        self.port = port or 0
        self.accepted = 0
        self.rejected = 0
        self.reasons: list[str] = []
        self.paths: list[str] = []
        self._upstream = _upstream_context(pki, identity)
        self._context = _server_context(pki)

    async def _start(self) -> None:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            ssl=self._context,
            subprotocols=["mqtt"],  # type: ignore[list-item]
            process_request=self._check,
            compression=None,
            close_timeout=2,
        )
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])

    def _check(self, connection: ServerConnection, request: Request) -> Optional[Response]:
        self.paths.append(request.path)
        headers = {
            name.lower(): ",".join(request.headers.get_all(name)) for name in request.headers
        }
        problem = verify_sigv4_query(
            request.path,
            headers,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
        )
        if problem is not None:
            self.rejected += 1
            self.reasons.append(problem)
            return connection.respond(HTTPStatus.FORBIDDEN, f"SigV4: {problem}\n")
        self.accepted += 1
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        # No _guard: websockets' Server.close() ends its connections, and the relay with them.
        try:
            up_reader, up_writer = await _open_upstream(self.upstream_port, self._upstream)
            self._own(up_writer)
        except (OSError, asyncio.TimeoutError):
            await connection.close()
            return

        async def client_to_broker() -> None:
            try:
                async for message in connection:
                    up_writer.write(message.encode() if isinstance(message, str) else message)
                    await up_writer.drain()
            except (ConnectionClosed, OSError):
                pass
            finally:
                await self._close(up_writer)

        async def broker_to_client() -> None:
            try:
                while data := await up_reader.read(65536):
                    await connection.send(data)
            except (ConnectionClosed, OSError):
                pass
            finally:
                await connection.close()

        await asyncio.gather(client_to_broker(), broker_to_client())


# -- HTTP CONNECT proxy -----------------------------------------------------------------------


class ConnectProxy(_LoopService):
    """An HTTP CONNECT proxy on 127.0.0.1 that tunnels only to loopback targets.

    Args:
        auth: ``(user, password)`` to require basic auth (407 without it), or ``None``.
        port: the port to listen on (any free one when ``None``).

    Attributes:
        port: the listening port (after ``start``).
        tunnels: tunnels established.
        refused: requests answered with an error (407, 403, 405, 502).
        targets: the ``host:port`` of every CONNECT request.
        auth_seen: whether each request carried a Proxy-Authorization header.
    """

    ALLOWED_HOSTS: ClassVar[dict[str, str]] = {
        "127.0.0.1": "127.0.0.1",
        "localhost": "127.0.0.1",
        "::1": "::1",
    }

    def __init__(self, auth: Optional[tuple[str, str]] = None, port: Optional[int] = None) -> None:
        super().__init__()
        self.auth = auth
        self.port = port or 0
        self.tunnels = 0
        self.refused = 0
        self.targets: list[str] = []
        self.auth_seen: list[bool] = []

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _refuse(
        self, writer: asyncio.StreamWriter, status: HTTPStatus, extra: str = ""
    ) -> None:
        self.refused += 1
        writer.write(
            f"HTTP/1.1 {status.value} {status.phrase}\r\n{extra}Content-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        await self._close(writer)

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if self.auth is None:
            return True
        expected = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        scheme, _, token = headers.get("proxy-authorization", "").partition(" ")
        return scheme.lower() == "basic" and hmac.compare_digest(token.strip(), expected)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._guard(self._tunnel(reader, self._own(writer)))

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            asyncio.TimeoutError,
            OSError,
        ):
            await self._close(writer)
            return
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.partition(" ")[0]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        self.targets.append(target)
        self.auth_seen.append("proxy-authorization" in headers)
        if method != "CONNECT":
            await self._refuse(writer, HTTPStatus.METHOD_NOT_ALLOWED)
            return
        if not self._authorized(headers):
            await self._refuse(
                writer,
                HTTPStatus.PROXY_AUTHENTICATION_REQUIRED,
                'Proxy-Authenticate: Basic realm="test"\r\n',
            )
            return
        host, _, port_text = target.rpartition(":")
        address = self.ALLOWED_HOSTS.get(host.strip("[]").lower())
        if address is None or not port_text.isdigit():
            await self._refuse(writer, HTTPStatus.FORBIDDEN)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(address, int(port_text)), 10
            )
        except (OSError, asyncio.TimeoutError):
            await self._refuse(writer, HTTPStatus.BAD_GATEWAY)
            return
        self._own(up_writer)
        self.tunnels += 1
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
