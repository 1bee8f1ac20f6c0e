"""The service's HTTP server: installers, ephemeral ports, a taken port, stop."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from aiohttp import web

from defender_agent.config import load_config
from defender_agent.errors import ConfigError
from defender_agent.service.http import HttpContext, HttpServer, check_exposure
from tests.api_infra import zero_stats


class _NoRegistry:
    def generation(self) -> int:
        return 0

    def profiles(self) -> list[Any]:
        return []

    def custom_metric_types(self) -> dict[str, str]:
        return {}

    def groups_of(self, thing_name: str) -> frozenset[str]:
        return frozenset()


def _context() -> HttpContext:
    return HttpContext(
        config=load_config({"service_tls": False}, None, command="service"),
        db_url=":memory:",
        registry=_NoRegistry(),
        violations=None,
        stats=zero_stats,
    )


def _hello(app: web.Application, context: HttpContext) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"messages={context.stats().messages}")

    app.router.add_get("/hello", hello)


def test_serves_installed_routes_on_an_ephemeral_port() -> None:
    server = HttpServer("127.0.0.1", 0, _context(), [_hello])
    server.start()
    try:
        assert server.port > 0
        with urllib.request.urlopen(f"{server.url}/hello", timeout=5) as resp:
            assert resp.read() == b"messages=0"
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/hello", timeout=2)


def test_a_taken_port_is_one_config_error() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        server = HttpServer("127.0.0.1", port, _context(), [_hello])
        with pytest.raises(ConfigError, match=f"cannot serve HTTP on 127.0.0.1:{port}"):
            server.start()
        server.stop()  # harmless after a failed start
    finally:
        holder.close()


def test_non_loopback_needs_credentials(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="credentials_file"):
        check_exposure("0.0.0.0", None)
    check_exposure("0.0.0.0", tmp_path / "credentials")
    check_exposure("::1", None)


def test_closing_runs_once_after_stop_and_after_a_failed_start() -> None:
    closed: list[str] = []
    server = HttpServer(
        "127.0.0.1", 0, _context(), [_hello], closing=[lambda: closed.append("registry")]
    )
    server.start()
    assert closed == []
    server.stop()
    server.stop()
    assert closed == ["registry"]

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        failed = HttpServer(
            "127.0.0.1", port, _context(), [_hello], closing=[lambda: closed.append("again")]
        )
        with pytest.raises(ConfigError):
            failed.start()
        assert closed == ["registry", "again"]
    finally:
        holder.close()


def test_the_service_closes_the_registry_it_opened_for_the_api(tmp_path: Any) -> None:
    """``service --http``: the registry start_http opens is closed when the server stops."""
    from defender_agent.cli.service import start_http
    from defender_agent.errors import StateError

    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AK\naws_secret_access_key = s\n")
    config = load_config(
        {
            "service_tls": False,
            "http_listen": "127.0.0.1:0",
            "http_credentials_file": str(creds),
        },
        None,
        command="service",
    )
    server = start_http(config, str(tmp_path / "service.sqlite3"), zero_stats)
    assert server is not None
    registry = server.context.registry
    assert registry.generation() == 0
    server.stop()
    with pytest.raises(StateError):
        registry.generation()
