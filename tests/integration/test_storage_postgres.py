"""The PostgreSQL store against a throwaway cluster: the SQLite behaviours, plus several processes.

The cluster is made with initdb and started with pg_ctl on a free loopback port in a temporary
directory (as the ``postgres`` user when the tests run as root), once per session; each test
gets its own database. Skipped when the server binaries or psycopg are missing.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest

from defender_agent.errors import StateError
from defender_agent.service.metrics_map import MetricValue
from defender_agent.service.storage import (
    MIGRATIONS,
    Migration,
    PostgresStore,
    Store,
    open_store,
)
from tests.mqtt_infra.broker import free_port
from tests.pg_infra import Cluster

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the postgresql extra)")

T0 = 1_700_000_000.0
BYTES = MetricValue("aws:all-bytes-out", count=1)


@pytest.fixture
def url(pg_url: str) -> str:
    """A fresh, empty database for one test."""
    return pg_url


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with open_store(url) as opened:
        yield opened


# --------------------------------------------------------------------------- behaviours
def test_record_query_things_export(store: Store) -> None:
    assert isinstance(store, PostgresStore)
    ports = MetricValue("aws:listening-tcp-ports", ports=(22, 443))
    store.record("gw-1", 7, T0 + 10, "json", [BYTES, ports])
    store.record("gw-1", 6, T0, "cbor", [MetricValue("aws:all-bytes-out", count=5)])
    store.record("gw-2", None, T0 + 5, "json", [MetricValue("load", number=0.5)])
    got = store.metric_values("gw-1", "aws:all-bytes-out")
    assert [(v.timestamp, v.report_id, v.value.count) for v in got] == [(T0, 6, 5), (T0 + 10, 7, 1)]
    assert store.metric_values("gw-1", "aws:listening-tcp-ports")[0].value == ports
    assert store.metric_values("gw-2", "load")[0].report_id is None
    things = store.things()
    assert [(t.name, t.first_seen, t.last_seen, t.reports) for t in things] == [
        ("gw-1", T0, T0 + 10, 2),
        ("gw-2", T0 + 5, T0 + 5, 1),
    ]
    assert store.metrics("gw-1") == ["aws:all-bytes-out", "aws:listening-tcp-ports"]
    records = list(store.export())
    assert [(r["thing"], r["metric"], r["timestamp"]) for r in records] == [
        ("gw-1", "aws:all-bytes-out", T0),
        ("gw-2", "load", T0 + 5),
        ("gw-1", "aws:all-bytes-out", T0 + 10),
        ("gw-1", "aws:listening-tcp-ports", T0 + 10),
    ]
    assert records[0] == {
        "thing": "gw-1",
        "metric": "aws:all-bytes-out",
        "timestamp": T0,
        "report_id": 6,
        "value": {"count": 5},
        "format": "cbor",
    }


def test_time_ranges_and_limit(store: Store) -> None:
    for i in range(10):
        store.record("gw", i + 1, T0 + i, "json", [MetricValue("m", count=i)])
    counts = [v.value.count for v in store.metric_values("gw", "m", T0 + 2, T0 + 5)]
    assert counts == [2, 3, 4]  # since included, until excluded
    assert [v.value.count for v in store.metric_values("gw", "m", limit=2)] == [0, 1]
    assert [v.value.count for v in store.metric_values("gw", "m", since=T0 + 8)] == [8, 9]
    assert [v.value.count for v in store.metric_values("gw", "m", until=T0 + 1)] == [0]
    assert [r["value"] for r in store.export(T0 + 9)] == [{"count": 9}]


def test_export_pages_through_ties(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from defender_agent.service import storage

    monkeypatch.setattr(storage, "_EXPORT_PAGE", 3)
    for i in range(4):
        store.record("gw", i, T0, "json", [MetricValue(f"m{j}", count=i) for j in range(2)])
    assert len(list(store.export())) == 8


def test_every_value_kind_round_trips(store: Store) -> None:
    values = [
        MetricValue("c", count=2**40),
        MetricValue("p", ports=()),
        MetricValue("i", cidrs=("10.0.0.1/32", "2001:db8::1/128")),
        MetricValue("n", number=-1.25),
        MetricValue("ns", numbers=(1.0, 1.0, 0.5)),
        MetricValue("s", strings=("b", "a'; DROP TABLE things; --")),
    ]
    store.record("o'brien", 2**63 - 1, T0, "cbor", values)
    for value in values:
        (stored,) = store.metric_values("o'brien", value.metric)
        assert stored.value == value
        assert stored.report_id == 2**63 - 1


def test_migrates_an_empty_database_once(url: str) -> None:
    for _ in range(2):
        with open_store(url) as store:
            assert store.schema_version() == 1
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
    assert rows == [(1,)]


def test_a_second_migration_applies_on_open(url: str) -> None:
    with open_store(url) as store:
        store.record("gw", 1, T0, "json", [BYTES])
    step = Migration(2, "an extra index", ("CREATE INDEX reports_id ON reports (report_id)",))
    with PostgresStore(url, migrations=(*MIGRATIONS, step)) as store:
        assert store.schema_version() == 2
        assert len(store.metric_values("gw", BYTES.metric)) == 1


def test_refuses_a_newer_schema(url: str) -> None:
    open_store(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schema_version (version, description, applied_at) VALUES (9, 'x', 0)"
        )
    with pytest.raises(StateError, match=r"schema version 9, newer .* \(1\)") as info:
        open_store(url)
    assert "\n" not in str(info.value)
    assert url in str(info.value)


def test_reopen_keeps_the_data(url: str) -> None:
    with open_store(url) as store:
        store.record("gw", 1, T0, "json", [BYTES])
    with open_store(url) as store:
        assert [t.reports for t in store.things()] == [1]
        assert len(store.metric_values("gw", BYTES.metric)) == 1


def test_a_dropped_connection_fails_one_call_then_reconnects(
    store: Store, pg_cluster: Cluster
) -> None:
    store.record("gw", 1, T0, "json", [BYTES])
    with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'defender-agent'"
        )
    with pytest.raises(StateError):
        store.record("gw", 2, T0 + 1, "json", [BYTES])
    store.record("gw", 3, T0 + 2, "json", [BYTES])
    assert [v.report_id for v in store.metric_values("gw", BYTES.metric)] == [1, 3]


def test_unreachable_server_is_a_state_error_without_the_password() -> None:
    port = free_port()
    with pytest.raises(StateError) as info:
        PostgresStore(f"postgresql://svc:s3cret@127.0.0.1:{port}/db", connect_timeout=2)
    assert "s3cret" not in str(info.value)
    assert "svc:***@127.0.0.1" in str(info.value)


def test_closed_store_refuses(url: str) -> None:
    store = open_store(url)
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.things()


def test_threads_share_one_store(store: Store) -> None:
    import threading

    def write(n: int) -> None:
        for i in range(25):
            store.record(f"gw-{n % 2}", i, T0 + i, "json", [BYTES, BYTES])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(t.reports for t in store.things()) == [75, 75]
    assert len(list(store.export())) == 300


# --------------------------------------------------------------------------- processes
def _process_writer(url: str, name: str, n: int, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]  # a multiprocessing Event
    with open_store(url) as store:
        for i in range(n):
            values = [MetricValue("aws:all-bytes-out", count=i), MetricValue("m", number=i)]
            store.record("shared", i, time.time(), "json", values)
            store.record(name, i, time.time(), "json", values)


def test_two_processes_write_concurrently(url: str) -> None:
    """Two service processes on one fresh database: both migrate safely, no write is lost."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    n = 150
    procs = [ctx.Process(target=_process_writer, args=(url, f"p{i}", n, start)) for i in range(2)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    with open_store(url) as store:
        assert store.schema_version() == 1
        summary = {t.name: t.reports for t in store.things()}
        assert summary == {"p0": n, "p1": n, "shared": 2 * n}
        assert len(store.metric_values("shared", "m")) == 2 * n
        assert len(list(store.export())) == 2 * 4 * n
