"""A running Detect API for tests: the service's HTTP server on a free loopback port.

:func:`running_api` opens a database (SQLite file by default, or a PostgreSQL URL), the
registry, Detect's store (the engine's ``contract.Violations``) and the HTTP server with
the API installer, writes an AWS credentials file with one key pair, and yields
:class:`Api` (the URL, the keys, the open objects). Everything is closed on exit.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from defender_agent.config import load_config
from defender_agent.detect.registry import SqlRegistry, open_registry
from defender_agent.detect.store import DetectStore
from defender_agent.service.api.handlers import install
from defender_agent.service.http import HttpContext, HttpServer
from defender_agent.service.runner import RunnerStats
from defender_agent.service.storage import Store, open_store

REGION = "eu-west-1"
ACCOUNT = "111122223333"


@dataclass
class Api:
    """A running API."""

    url: str
    key_id: str
    secret: str
    credentials_file: Path
    registry: SqlRegistry
    store: Store
    violations: DetectStore
    server: HttpServer

    def client(self, **extra: Any) -> Any:
        """A real boto3 IoT client signed with the API's key pair."""
        import boto3  # type: ignore[import-untyped]

        return boto3.client(
            "iot",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            **extra,
        )


def zero_stats() -> RunnerStats:
    """The counters of a service that has done nothing (for an HttpContext in tests)."""
    return RunnerStats(0, 0, 0, {}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


@contextmanager
def running_api(tmp: Path, db_url: Optional[str] = None) -> Iterator[Api]:
    """Serve the API on 127.0.0.1 (a free port) over a fresh database."""
    key_id = "AKIA" + secrets.token_hex(8).upper()
    secret = secrets.token_urlsafe(30)
    creds = tmp / "api-credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n",
        encoding="utf-8",
    )
    url = db_url or str(tmp / "service.sqlite3")
    config = load_config(
        {
            "service_tls": False,
            "http_region": REGION,
            "http_account_id": ACCOUNT,
            "http_credentials_file": str(creds),
        },
        None,
        command="service",
    )
    store = open_store(url)
    violations = DetectStore.beside(store)
    registry = open_registry(url, region=REGION, account=ACCOUNT)
    context = HttpContext(config, url, registry, violations, zero_stats)
    server = HttpServer("127.0.0.1", 0, context, [install])
    server.start()
    try:
        yield Api(server.url, key_id, secret, creds, registry, store, violations, server)
    finally:
        server.stop()
        registry.close()
        violations.close()
        store.close()
