"""The service's HTTP server: aiohttp in its own thread, beside the MQTT side.

One server carries several *installers*: the AWS IoT control-plane API for Detect
(:func:`defender_agent.service.api.handlers.install`), the dashboard and ``/metrics``.
Each installer adds its routes (and, if it needs, middlewares) to the one
:class:`aiohttp.web.Application` before it starts; all share one :class:`HttpContext`.

The server runs its own event loop in a daemon thread, so a slow database call in a
handler (which should go to the loop's executor anyway) never stalls the MQTT callbacks,
and the service's shutdown stops it in a bounded time.

>>> parse_listen("127.0.0.1:8080"), parse_listen("[::1]:0"), parse_listen(":9000")
(('127.0.0.1', 8080), ('::1', 0), ('127.0.0.1', 9000))
>>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost"), is_loopback("0.0.0.0")
(True, True, True, False)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from aiohttp import web

from defender_agent.errors import ConfigError

if TYPE_CHECKING:
    from defender_agent.config import Config
    from defender_agent.detect.contract import Registry, Violations
    from defender_agent.service.runner import RunnerStats

__all__ = [
    "MAX_BODY",
    "HttpContext",
    "HttpServer",
    "Installer",
    "check_exposure",
    "is_loopback",
    "parse_listen",
]

log = logging.getLogger(__name__)

#: The largest request body the server reads (bytes); larger ones get a 413.
MAX_BODY = 1024 * 1024

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_SHUTDOWN_GRACE_S = 2.0


@dataclass(frozen=True)
class HttpContext:
    """What every installer's handlers may use.

    Attributes:
        config: The loaded configuration (``.http``, ``.service``, ``.detect`` ...).
        db_url: The service's database; handlers open their own connections.
        registry: Detect's control-plane store (:mod:`defender_agent.detect.registry`).
        violations: The engine's violations, or None when Detect's engine is not running.
        stats: The running service's counters.
    """

    config: Config
    db_url: str
    registry: Registry
    violations: Optional[Violations]
    stats: Callable[[], RunnerStats]


#: Adds routes (and middlewares) to the application before it starts.
Installer = Callable[[web.Application, HttpContext], None]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``; an empty host is 127.0.0.1) as ``(host, port)``.

    >>> parse_listen("0.0.0.0:80")
    ('0.0.0.0', 80)
    >>> parse_listen("8080")
    Traceback (most recent call last):
    ...
    defender_agent.errors.ConfigError: http listen '8080' is not HOST:PORT
    """
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"http listen {text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, credentials_file: Optional[Path]) -> None:
    """Refuse to serve a non-loopback address without access keys.

    >>> check_exposure("127.0.0.1", None)
    >>> check_exposure("0.0.0.0", None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    defender_agent.errors.ConfigError: http listen on 0.0.0.0 (not loopback) needs ...
    """
    if not is_loopback(host) and credentials_file is None:
        raise ConfigError(
            f"http listen on {host} (not loopback) needs [http] credentials_file: "
            "the API must not be open to the network"
        )


class HttpServer:
    """An aiohttp server in a thread of its own with its own event loop.

    Args:
        host: The address to bind.
        port: The port; 0 picks a free one (read it back from :attr:`port`).
        context: Handed to every installer.
        installers: Add the routes, in order.
        closing: Called once the server has stopped (or failed to start), in order: what
            the caller opened for the server alone, such as the context's registry.
    """

    def __init__(
        self,
        host: str,
        port: int,
        context: HttpContext,
        installers: Sequence[Installer],
        *,
        closing: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.host = host
        self._closing = list(closing)
        self._requested_port = port
        self.context = context
        self._installers = tuple(installers)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._port = 0
        self._error: Optional[BaseException] = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def application(self) -> web.Application:
        """A new application with every installer's routes (the server calls it once)."""
        app = web.Application(client_max_size=MAX_BODY)
        for install in self._installers:
            install(app, self.context)
        return app

    def start(self) -> None:
        """Bind and serve; returns once the port is bound.

        Raises:
            ConfigError: The address cannot be bound (taken, not local, no permission).
        """
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="defender-agent-http", daemon=True
        )
        self._thread.start()
        if not ready.wait(_START_TIMEOUT_S):
            raise ConfigError(f"http server on {self.host}:{self._requested_port} did not start")
        if self._error is not None:
            self._thread.join(_STOP_TIMEOUT_S)
            self._thread = None
            error = self._error
            self._error = None
            self._close()
            raise ConfigError(
                f"cannot serve HTTP on {self.host}:{self._requested_port}: {_reason(error)}"
            ) from error

    def stop(self) -> None:
        """Stop serving (requests in flight get up to 2 s), end the thread, run ``closing``."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(_STOP_TIMEOUT_S)
        self._thread = None
        self._close()

    def _close(self) -> None:
        closing, self._closing = self._closing, []
        for close in closing:
            try:
                close()
            except Exception:  # one failing close must not keep the others open
                log.exception("closing after the HTTP server stopped failed")

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            try:
                self._runner = loop.run_until_complete(self._bind())
            except Exception as exc:
                self._error = exc
                return
            finally:
                ready.set()
            log.info("HTTP server listening on %s", self.url)
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _bind(self) -> web.AppRunner:
        runner = web.AppRunner(
            self.application(), access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else self._requested_port
        return runner


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
