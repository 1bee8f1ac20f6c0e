"""A dashboard to test against: the service's HTTP server with the dashboard installed, a
real SQLite store seeded with reports (as the service stores them), a real Detect store with
violations, and a registry of profiles (the control plane's shape, in memory)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional

from defender_agent.config import load_config
from defender_agent.detect.contract import ProfileView
from defender_agent.detect.store import DetectStore
from defender_agent.model import ListeningPort, NetworkStats, PortList, Report
from defender_agent.report.document import to_document
from defender_agent.service.http import HttpContext, HttpServer
from defender_agent.service.metrics_map import metric_values
from defender_agent.service.responder import ThingCounts
from defender_agent.service.runner import RunnerStats
from defender_agent.service.storage import Store, StoredReport, open_store
from defender_agent.web.app import install

XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_STRING = '"><script>window.__pwned=1</script>'
PORTS_BEHAVIOR = {
    "name": "tcp-ports",
    "metric": "aws:listening-tcp-ports",
    "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443]}},
}


@dataclass
class Registry:
    """Detect's registry (contract.Registry) in memory."""

    views: list[ProfileView] = field(default_factory=list)

    def generation(self) -> int:
        return len(self.views)

    def profiles(self) -> Sequence[ProfileView]:
        return list(self.views)

    def custom_metric_types(self) -> Mapping[str, str]:
        return {}

    def groups_of(self, thing_name: str) -> frozenset[str]:
        return frozenset()


@dataclass
class Counters:
    """What the service's stats() would say: counters a test moves."""

    messages: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    stored: int = 0
    detect_errors: int = 0
    things: dict[str, ThingCounts] = field(default_factory=dict)

    def stats(self) -> RunnerStats:
        return RunnerStats(
            self.messages,
            self.messages,
            self.accepted,
            MappingProxyType(dict(self.rejected)),
            0,
            0,
            0,
            0,
            self.stored,
            0,
            0,
            0,
            0,
            0,
            things=MappingProxyType(dict(self.things)),
            after_store_errors=self.detect_errors,
        )


def report(report_id: int, ports: Sequence[int], out_bytes: int) -> Report:
    """A report with listening TCP ports and traffic."""
    return Report(
        report_id=report_id,
        listening_tcp_ports=PortList(tuple(ListeningPort(p) for p in ports), None),
        network_stats=NetworkStats(out_bytes // 2, out_bytes, 10, 20),
    )


def store_report(
    store: Store, thing: str, rep: Report, at: float, fmt: str = "json", extra: Any = None
) -> None:
    """Store a report the way the service's writer does (values and document)."""
    values = metric_values(rep)
    if extra:
        values = [*values, *extra]
    document = json.dumps(to_document(rep))
    store.record_many([StoredReport(thing, rep.report_id, at, fmt, values, document)])


@dataclass
class Dashboard:
    """A running dashboard and what feeds it."""

    server: HttpServer
    store: Store
    detect: DetectStore
    registry: Registry
    counters: Counters

    @property
    def url(self) -> str:
        return self.server.url

    def open_violation(self, thing: str, profile: str = "ports", at: Optional[float] = None) -> str:
        when = time.time() if at is None else at
        with self.detect.batch([thing], now=when) as batch:
            row = batch.open_violation(
                thing, profile, PORTS_BEHAVIOR, "STATIC", False, {"ports": [22, 8080]}, when
            )
        return row.violation_id


@contextmanager
def dashboard(
    tmp_path: Path, settings: Optional[Mapping[str, object]] = None, *, host: str = "127.0.0.1"
) -> Iterator[Dashboard]:
    """Serve the dashboard on an ephemeral port over a new SQLite database."""
    db = str(tmp_path / "service.sqlite3")
    store = open_store(db)
    detect = DetectStore.beside(store)
    registry = Registry()
    counters = Counters()
    config = load_config(
        {"service_tls": False, "http_listen": f"{host}:0", **(settings or {})},
        None,
        command="service",
    )
    context = HttpContext(config, db, registry, detect, counters.stats)
    server = HttpServer(host, 0, context, [install])
    server.start()
    try:
        yield Dashboard(server, store, detect, registry, counters)
    finally:
        server.stop()
        detect.close()
        store.close()


def profile(
    name: str = "ports", behaviors: Sequence[Mapping[str, Any]] = (PORTS_BEHAVIOR,)
) -> ProfileView:
    """A profile attached to all things."""
    return ProfileView(
        name,
        f"arn:aws:iot:us-east-1:123456789012:securityprofile/{name}",
        1,
        tuple(behaviors),
        {},
        ("arn:aws:iot:us-east-1:123456789012:all/things",),
    )


__all__ = [
    "PORTS_BEHAVIOR",
    "XSS_NAME",
    "XSS_STRING",
    "Counters",
    "Dashboard",
    "Registry",
    "dashboard",
    "profile",
    "replace",
    "report",
    "store_report",
]
