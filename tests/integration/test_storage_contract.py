"""The store contract, run against every back end: SQLite, and PostgreSQL when it is installed.

Each test gets an empty database of one back end (``backend``): a file in a temporary
directory for SQLite, a fresh database in the session's throwaway cluster for PostgreSQL
(``pg_url``, skipped with the reason when the server binaries or psycopg are missing).
What only one back end does (SQLite's files and URLs, PostgreSQL's reconnects) is tested in
``tests/unit/test_storage_sqlite.py`` and ``tests/integration/test_storage_postgres.py``.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from defender_agent.errors import StateError
from defender_agent.service import storage
from defender_agent.service.metrics_map import MetricValue
from defender_agent.service.storage import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    PostgresStore,
    SQLiteStore,
    Store,
    StoredReport,
    StoredValue,
    open_store,
)

T0 = 1_700_000_000.0
BYTES = MetricValue("aws:all-bytes-out", count=1)


@dataclass
class Backend:
    """One empty database of one back end, and a way around the store to look into it."""

    name: str
    url: str
    make: Callable[[Sequence[Migration]], Store]
    execute: Callable[[str], list[tuple[Any, ...]]]

    def open(self, migrations: Sequence[Migration] = MIGRATIONS) -> Store:
        return self.make(migrations)


def _sqlite(path: Path) -> Backend:
    import sqlite3

    def execute(sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(path)
        try:
            with conn:
                return conn.execute(sql).fetchall()
        finally:
            conn.close()

    return Backend("sqlite", str(path), lambda m: SQLiteStore(path, migrations=m), execute)


def _postgres(url: str) -> Backend:
    import psycopg

    def execute(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    return Backend("postgresql", url, lambda m: PostgresStore(url, migrations=m), execute)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite(tmp_path / "state" / "service.sqlite3")
    return _postgres(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    with backend.open() as opened:
        yield opened


def _counts(values: list[StoredValue]) -> list[Optional[int]]:
    return [v.value.count for v in values]


# --------------------------------------------------------------------------- record and query
def test_record_then_query_in_time_order(store: Store) -> None:
    ports = MetricValue("aws:listening-tcp-ports", ports=(22, 443))
    store.record("gw-1", 7, T0 + 10, "json", [BYTES, ports])
    store.record("gw-1", 6, T0, "cbor", [MetricValue("aws:all-bytes-out", count=5)])
    store.record("gw-2", None, T0 + 5, "json", [MetricValue("load", number=0.5)])
    assert store.metric_values("gw-1", "aws:all-bytes-out") == [
        StoredValue("gw-1", "aws:all-bytes-out", T0, 6, MetricValue("aws:all-bytes-out", count=5)),
        StoredValue("gw-1", "aws:all-bytes-out", T0 + 10, 7, BYTES),
    ]
    assert store.metric_values("gw-1", "aws:listening-tcp-ports")[0].value == ports
    assert store.metric_values("gw-2", "load")[0].report_id is None
    assert store.metric_values("gw-1", "aws:nothing") == []
    assert store.metric_values("gw-9", "aws:all-bytes-out") == []
    assert store.metrics("gw-1") == ["aws:all-bytes-out", "aws:listening-tcp-ports"]
    assert store.metrics("gw-9") == []


def test_values_at_the_same_time_keep_insertion_order(store: Store) -> None:
    for i in range(5):
        store.record("gw", i, T0, "json", [MetricValue("m", count=i)])
    assert _counts(store.metric_values("gw", "m")) == [0, 1, 2, 3, 4]


def test_every_value_kind_round_trips(store: Store) -> None:
    values = [
        MetricValue("c", count=2**40),
        MetricValue("z", count=0),
        MetricValue("p", ports=()),
        MetricValue("i", cidrs=("10.0.0.1/32", "2001:db8::1/128")),
        MetricValue("n", number=-1.25),
        MetricValue("ns", numbers=(1.0, 1.0, 0.5)),
        MetricValue("s", strings=("b", "a")),
    ]
    store.record("gw", 2**63 - 1, T0, "cbor", values)
    for value in values:
        (stored,) = store.metric_values("gw", value.metric)
        assert stored.value == value
        assert stored.report_id == 2**63 - 1


def test_values_are_json_text_with_typed_columns(store: Store, backend: Backend) -> None:
    store.record("gw", 1, T0, "json", [BYTES, MetricValue("load", number=0.5)])
    rows = backend.execute("SELECT metric, count, number, value FROM metric_values ORDER BY id")
    assert [tuple(row) for row in rows] == [
        ("aws:all-bytes-out", 1, None, '{"count": 1}'),
        ("load", None, 0.5, '{"number": 0.5}'),
    ]


def test_names_are_parameters_never_sql(store: Store) -> None:
    evil = "gw'); DROP TABLE things; --"
    store.record(evil, 1, T0, "json", [MetricValue("m'--", strings=("x'; DELETE", "100%?"))])
    assert [t.name for t in store.things()] == [evil]
    assert store.metric_values(evil, "m'--")[0].value.strings == ("x'; DELETE", "100%?")


def test_a_report_without_values_still_counts_for_its_thing(store: Store) -> None:
    store.record("gw", None, T0, "json", [])
    assert [(t.name, t.reports) for t in store.things()] == [("gw", 1)]
    assert list(store.export()) == []


def test_bad_arguments_are_value_errors_and_keep_nothing(store: Store) -> None:
    with pytest.raises(ValueError):
        store.record("", 1, T0, "json", [BYTES])
    with pytest.raises(ValueError):
        store.record("gw", 1, float("nan"), "json", [BYTES])
    with pytest.raises(ValueError):
        store.record("gw", 1, T0, "json", [MetricValue("n", number=float("inf"))])
    assert store.things() == []


# --------------------------------------------------------------------------- record_many
def test_record_many_is_one_transaction(store: Store) -> None:
    values = [MetricValue("aws:all-bytes-in", count=1), MetricValue("n", number=0.5)]
    store.record_many(
        [
            StoredReport("b", 2, T0 + 1, "cbor", values),
            StoredReport("a", 1, T0, "json", []),
            StoredReport("b", 3, T0 + 2, "json", [BYTES]),
        ]
    )
    store.record_many([])
    assert [(t.name, t.first_seen, t.last_seen, t.reports) for t in store.things()] == [
        ("a", T0, T0, 1),
        ("b", T0 + 1, T0 + 2, 2),
    ]
    assert [v.value.number for v in store.metric_values("b", "n")] == [0.5]
    # each value with its own report (PostgreSQL inserts a batch's rows in one statement)
    assert [(v.report_id, v.timestamp) for v in store.metric_values("b", "aws:all-bytes-in")] == [
        (2, T0 + 1)
    ]
    assert [v.report_id for v in store.metric_values("b", BYTES.metric)] == [3]
    assert next(iter(store.export()))["format"] == "cbor"
    bad = [
        StoredReport("c", 3, T0, "json", [BYTES]),
        StoredReport("d", 4, T0, "json", [MetricValue("n", number=float("nan"))]),
    ]
    with pytest.raises(ValueError):
        store.record_many(bad)
    assert [t.name for t in store.things()] == ["a", "b"]  # nothing of the failed batch
    assert store.metric_values("c", BYTES.metric) == []


# --------------------------------------------------------------------------- things
def test_things_track_first_and_last_seen_and_reports(store: Store) -> None:
    store.record("gw-b", 1, T0 + 100, "json", [BYTES])
    store.record("gw-a", 1, T0 + 50, "json", [BYTES])
    store.record("gw-b", 2, T0, "json", [BYTES])  # out of order: first_seen moves back
    store.record("gw-b", 3, T0 + 200, "json", [BYTES])
    summary = [(t.name, t.first_seen, t.last_seen, t.reports) for t in store.things()]
    assert summary == [("gw-a", T0 + 50, T0 + 50, 1), ("gw-b", T0, T0 + 200, 3)]
    assert store.things()[0].to_json() == {
        "thing": "gw-a",
        "first_seen": T0 + 50,
        "last_seen": T0 + 50,
        "reports": 1,
    }


# --------------------------------------------------------------------------- time ranges
def test_since_is_included_until_is_excluded(store: Store) -> None:
    for i in range(10):
        store.record("gw", i, T0 + i, "json", [MetricValue("m", count=i)])
    assert _counts(store.metric_values("gw", "m", T0 + 2, T0 + 5)) == [2, 3, 4]
    assert _counts(store.metric_values("gw", "m", since=T0 + 8)) == [8, 9]
    assert _counts(store.metric_values("gw", "m", until=T0 + 1)) == [0]
    assert _counts(store.metric_values("gw", "m", T0 + 5, T0 + 5)) == []
    assert _counts(store.metric_values("gw", "m", limit=3)) == [0, 1, 2]
    assert _counts(store.metric_values("gw", "m", T0 + 6, limit=2)) == [6, 7]


# --------------------------------------------------------------------------- export
def test_export_records_are_json_lines(store: Store) -> None:
    store.record("gw-1", 6, T0, "cbor", [MetricValue("aws:all-bytes-out", count=5)])
    store.record("gw-2", None, T0 + 1, "json", [MetricValue("peers", cidrs=("10.0.0.1/32",))])
    records = list(store.export())
    assert records == [
        {
            "thing": "gw-1",
            "metric": "aws:all-bytes-out",
            "timestamp": T0,
            "report_id": 6,
            "value": {"count": 5},
            "format": "cbor",
        },
        {
            "thing": "gw-2",
            "metric": "peers",
            "timestamp": T0 + 1,
            "report_id": None,
            "value": {"cidrs": ["10.0.0.1/32"]},
            "format": "json",
        },
    ]
    assert all(json.loads(json.dumps(r)) == r for r in records)


def test_export_range(store: Store) -> None:
    for i in range(6):
        store.record("gw", i, T0 + i, "json", [MetricValue("m", count=i)])
    assert [r["value"] for r in store.export(T0 + 2, T0 + 4)] == [{"count": 2}, {"count": 3}]
    assert len(list(store.export(since=T0 + 5))) == 1
    assert len(list(store.export(until=T0))) == 0


@pytest.mark.parametrize("page", [1, 2, 3, 7])
def test_export_pages_through_equal_times(
    store: Store, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    monkeypatch.setattr(storage, "_EXPORT_PAGE", page)
    for i in range(4):  # 3 values per report, all at the same time, then one later
        store.record("gw", i, T0, "json", [MetricValue(f"m{j}", count=i) for j in range(3)])
    store.record("gw", 9, T0 + 1, "json", [BYTES])
    records = list(store.export())
    assert len(records) == 13
    assert [(r["report_id"], r["metric"]) for r in records[:4]] == [
        (0, "m0"),
        (0, "m1"),
        (0, "m2"),
        (1, "m0"),
    ]
    assert records[-1]["report_id"] == 9


def test_export_holds_no_lock_between_pages(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_EXPORT_PAGE", 1)
    for i in range(3):
        store.record("gw", i, T0 + i, "json", [BYTES])
    records = store.export()
    next(records)
    store.record("gw", 3, T0 + 3, "json", [BYTES])  # would deadlock if export held the lock
    assert [r["report_id"] for r in records] == [1, 2, 3]  # later pages see the new value


# --------------------------------------------------------------------------- schema
def test_migrations_run_once(backend: Backend) -> None:
    for _ in range(3):
        with backend.open() as store:
            assert store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    rows = backend.execute("SELECT version, description FROM schema_version")
    assert [tuple(row) for row in rows] == [(m.version, m.description) for m in MIGRATIONS]


def test_a_second_migration_applies_on_open_and_keeps_data(backend: Backend) -> None:
    with backend.open() as store:
        store.record("gw", 1, T0, "json", [BYTES])
    new = SCHEMA_VERSION + 1
    step = Migration(new, "report ids", ("CREATE INDEX reports_report_id ON reports (report_id)",))
    with backend.open((*MIGRATIONS, step)) as store:
        assert store.schema_version() == new
        assert len(store.metric_values("gw", BYTES.metric)) == 1
    # this version of the code does not know the step: it refuses the upgraded database
    with pytest.raises(
        StateError, match=rf"schema version {new}, newer than .* knows \({SCHEMA_VERSION}\)"
    ):
        open_store(backend.url)


def test_a_failed_migration_changes_nothing(backend: Backend) -> None:
    broken = Migration(
        SCHEMA_VERSION + 1, "broken", ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL")
    )
    with pytest.raises(StateError):
        backend.open((*MIGRATIONS, broken))
    with pytest.raises(Exception):  # noqa: B017 - nothing was committed: one transaction
        backend.execute("SELECT version FROM schema_version")
    with backend.open() as store:
        assert store.schema_version() == SCHEMA_VERSION
    with pytest.raises(Exception):  # noqa: B017 - each driver's own "no such table"
        backend.execute("SELECT * FROM extra")


def test_refuses_a_newer_schema_in_one_line(backend: Backend) -> None:
    backend.open().close()
    backend.execute("INSERT INTO schema_version VALUES (7, 'from the future', 0)")
    with pytest.raises(StateError) as info:
        open_store(backend.url)
    message = str(info.value)
    assert backend.url in message
    assert "schema version 7" in message
    assert f"({SCHEMA_VERSION})" in message
    assert "\n" not in message


def test_closed_store_refuses(backend: Backend) -> None:
    store = backend.open()
    store.close()
    store.close()  # twice is fine
    with pytest.raises(StateError, match="closed"):
        store.record("gw", 1, T0, "json", [BYTES])
    with pytest.raises(StateError, match="closed"):
        store.things()


# --------------------------------------------------------------------------- restart, concurrency
def test_reopen_keeps_the_data(backend: Backend) -> None:
    """A service restart loses no stored data."""
    with backend.open() as store:
        store.record("gw", 1, T0, "json", [BYTES, MetricValue("load", number=0.5)])
    with open_store(backend.url) as store:
        assert [(t.name, t.reports) for t in store.things()] == [("gw", 1)]
        assert store.metric_values("gw", "load")[0].value.number == 0.5
        store.record("gw", 2, T0 + 1, "json", [BYTES])
    with backend.open() as store:
        assert [v.report_id for v in store.metric_values("gw", BYTES.metric)] == [1, 2]


def test_threads_share_one_store(store: Store) -> None:
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(25):
                store.record(f"gw-{n % 2}", i, T0 + i, "json", [BYTES, BYTES])
                store.things()
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [t.reports for t in store.things()] == [75, 75]
    assert len(list(store.export())) == 6 * 25 * 2


def test_two_stores_on_one_database_from_threads(backend: Backend) -> None:
    """Two connections (as two processes would have) wait for each other's writes."""
    stores = [backend.open(), backend.open()]
    try:

        def write(store: Store) -> None:
            for i in range(100):
                store.record_many([StoredReport("gw", i, T0 + i, "json", [BYTES])])

        threads = [threading.Thread(target=write, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [t.reports for t in stores[0].things()] == [200]
    finally:
        for s in stores:
            s.close()


def _process_writer(url: str, name: str, n: int, start: Any) -> None:
    start.wait()  # a multiprocessing Event
    with open_store(url) as store:
        for i in range(n):
            values = [MetricValue("aws:all-bytes-out", count=i), MetricValue("m", number=i)]
            store.record("shared", i, time.time(), "json", values)
            # a batch takes the thing rows in name order: two writers never deadlock
            store.record_many(
                [
                    StoredReport(name, i, time.time(), "json", values),
                    StoredReport("shared", i, time.time(), "json", []),
                ]
            )


def test_two_processes_write_concurrently_to_a_new_database(backend: Backend) -> None:
    """Two service processes on one new database: both migrate safely, no write is lost."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    n = 60
    procs = [
        ctx.Process(target=_process_writer, args=(backend.url, f"p{i}", n, start)) for i in range(2)
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    with backend.open() as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert {t.name: t.reports for t in store.things()} == {"p0": n, "p1": n, "shared": 4 * n}
        assert len(store.metric_values("shared", "m")) == 2 * n
        assert len(list(store.export())) == 2 * 4 * n


def test_last_report_is_the_newest_document(backend: Backend) -> None:
    with backend.open() as store:
        assert store.last_report("gw") is None
        store.record_many(
            [
                StoredReport("gw", 2, T0 + 2, "cbor", [BYTES], '{"header":{"report_id":2}}'),
                StoredReport("gw", 1, T0 + 1, "json", [BYTES], '{"header":{"report_id":1}}'),
            ]
        )
        assert store.last_report("gw") == (T0 + 2, "cbor", '{"header":{"report_id":2}}')
        store.record_many([StoredReport("gw", 0, T0, "json", [], '{"old":1}')])  # older: kept
        store.record("gw", 3, T0 + 3, "json", [BYTES])  # no document: the last one stays
        assert store.last_report("gw") == (T0 + 3, "cbor", '{"header":{"report_id":2}}')
        store.record_many([StoredReport("gw", 4, T0 + 4, "json", [], '{"n":4}')])
        assert store.last_report("gw") == (T0 + 4, "json", '{"n":4}')
