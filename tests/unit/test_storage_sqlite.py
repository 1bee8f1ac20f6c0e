"""The SQLite store: record, query, export, migrations, concurrency, and surviving a restart."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from defender_agent.errors import ConfigError, StateError
from defender_agent.service import storage
from defender_agent.service.metrics_map import MetricValue
from defender_agent.service.storage import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    SQLiteStore,
    Store,
    StoredValue,
    default_url,
    open_store,
)

T0 = 1_700_000_000.0
BYTES = MetricValue("aws:all-bytes-out", count=1)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "service.sqlite3"


@pytest.fixture
def store(db: Path):
    with open_store(str(db)) as opened:
        yield opened


def _counts(values: list[StoredValue]) -> list[int | None]:
    return [v.value.count for v in values]


# --------------------------------------------------------------------------- record and query
def test_record_then_query_in_time_order(store: Store) -> None:
    ports = MetricValue("aws:listening-tcp-ports", ports=(22, 443))
    store.record("gw-1", 7, T0 + 10, "json", [BYTES, ports])
    store.record("gw-1", 6, T0, "cbor", [MetricValue("aws:all-bytes-out", count=5)])
    got = store.metric_values("gw-1", "aws:all-bytes-out")
    assert got == [
        StoredValue("gw-1", "aws:all-bytes-out", T0, 6, MetricValue("aws:all-bytes-out", count=5)),
        StoredValue("gw-1", "aws:all-bytes-out", T0 + 10, 7, BYTES),
    ]
    assert store.metric_values("gw-1", "aws:listening-tcp-ports")[0].value == ports
    assert store.metric_values("gw-1", "aws:nothing") == []
    assert store.metric_values("gw-9", "aws:all-bytes-out") == []
    assert store.metrics("gw-1") == ["aws:all-bytes-out", "aws:listening-tcp-ports"]


def test_values_at_the_same_time_keep_insertion_order(store: Store) -> None:
    for i in range(5):
        store.record("gw", i, T0, "json", [MetricValue("m", count=i)])
    assert _counts(store.metric_values("gw", "m")) == [0, 1, 2, 3, 4]


def test_every_value_kind_round_trips(store: Store) -> None:
    values = [
        MetricValue("c", count=0),
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


def test_values_are_json_text_with_typed_columns(store: Store, db: Path) -> None:
    store.record("gw", 1, T0, "json", [BYTES, MetricValue("load", number=0.5)])
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT metric, count, number, value FROM metric_values").fetchall()
    conn.close()
    assert rows == [
        ("aws:all-bytes-out", 1, None, '{"count": 1}'),
        ("load", None, 0.5, '{"number": 0.5}'),
    ]


def test_names_are_parameters_never_sql(store: Store) -> None:
    evil = "gw'); DROP TABLE things; --"
    store.record(evil, 1, T0, "json", [MetricValue("m'--", strings=("x'; DELETE",))])
    assert [t.name for t in store.things()] == [evil]
    assert store.metric_values(evil, "m'--")[0].value.strings == ("x'; DELETE",)


def test_a_report_without_values_still_counts_for_its_thing(store: Store) -> None:
    store.record("gw", None, T0, "json", [])
    assert [(t.name, t.reports) for t in store.things()] == [("gw", 1)]
    assert list(store.export()) == []


def test_bad_arguments_are_value_errors(store: Store) -> None:
    with pytest.raises(ValueError):
        store.record("", 1, T0, "json", [BYTES])
    with pytest.raises(ValueError):
        store.record("gw", 1, float("nan"), "json", [BYTES])


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


# --------------------------------------------------------------------------- open, URLs, schema
def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url, file in [
        (str(tmp_path / "a.db"), tmp_path / "a.db"),
        (f"sqlite://{tmp_path}/b.db", tmp_path / "b.db"),
        ("sqlite://rel/c.db", tmp_path / "rel" / "c.db"),
    ]:
        with open_store(url) as store:
            assert isinstance(store, SQLiteStore)
            assert store.name == str(Path(file).relative_to(tmp_path) if "rel" in url else file)
        assert file.exists()
    with open_store("sqlite://:memory:") as store:
        store.record("gw", 1, T0, "json", [BYTES])
        assert len(store.things()) == 1


@pytest.mark.parametrize("url", ["mysql://db/x", "http://example/x", "sqlite://", ""])
def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        open_store(url)


def test_default_url_is_in_the_state_dir() -> None:
    assert default_url({"DEFENDER_AGENT_STATE_DIR": "/srv/dd"}) == "/srv/dd/service.sqlite3"


def test_missing_file_without_create(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no service database at"):
        open_store(str(tmp_path / "none.sqlite3"), create=False)
    assert not (tmp_path / "none.sqlite3").exists()


def test_not_a_database_is_a_state_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=str(junk)) as info:
        open_store(str(junk))
    assert "\n" not in str(info.value)


def test_unwritable_place_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError):
        open_store(str(blocker / "sub" / "db.sqlite3"))


def test_wal_mode_and_schema_from_an_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    with open_store(str(empty)) as store:
        assert store.schema_version() == SCHEMA_VERSION == 1
    conn = sqlite3.connect(empty)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        versions = conn.execute("SELECT version, description FROM schema_version").fetchall()
    finally:
        conn.close()
    assert {"schema_version", "things", "reports", "metric_values"} <= tables
    assert {"metric_values_thing_metric", "metric_values_received"} <= tables
    assert versions == [(1, MIGRATIONS[0].description)]


def test_migrations_run_once(db: Path) -> None:
    for _ in range(3):
        open_store(str(db)).close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (1,)
    finally:
        conn.close()


def test_a_second_migration_applies_on_open_and_keeps_data(db: Path) -> None:
    with open_store(str(db)) as store:
        store.record("gw", 1, T0, "json", [BYTES])
    step = Migration(2, "report ids", ("CREATE INDEX reports_report_id ON reports (report_id)",))
    with SQLiteStore(db, migrations=(*MIGRATIONS, step)) as store:
        assert store.schema_version() == 2
        assert len(store.metric_values("gw", BYTES.metric)) == 1
    # this version of the code knows only version 1: it refuses the upgraded file
    with pytest.raises(StateError, match=r"schema version 2, newer than .* knows \(1\)"):
        open_store(str(db))


def test_a_failed_migration_changes_nothing(db: Path) -> None:
    broken = Migration(2, "broken", ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"))
    with pytest.raises(StateError):
        SQLiteStore(db, migrations=(*MIGRATIONS, broken))
    with open_store(str(db)) as store:  # version 1 was never committed either: one transaction
        assert store.schema_version() == 1
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchall() == []
    finally:
        conn.close()


def test_refuses_a_newer_schema_in_one_line(db: Path) -> None:
    open_store(str(db)).close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO schema_version VALUES (7, 'from the future', 0)")
    conn.close()
    with pytest.raises(StateError) as info:
        open_store(str(db))
    message = str(info.value)
    assert str(db) in message
    assert "schema version 7" in message
    assert "(1)" in message
    assert "\n" not in message


def test_closed_store_refuses(db: Path) -> None:
    store = open_store(str(db))
    store.close()
    store.close()  # twice is fine
    with pytest.raises(StateError, match="closed"):
        store.record("gw", 1, T0, "json", [BYTES])


# --------------------------------------------------------------------------- restart, concurrency
def test_reopen_keeps_data(db: Path) -> None:
    """A service restart loses no stored data."""
    with open_store(str(db)) as store:
        store.record("gw", 1, T0, "json", [BYTES, MetricValue("load", number=0.5)])
    with open_store(f"sqlite://{db}") as store:
        assert [(t.name, t.reports) for t in store.things()] == [("gw", 1)]
        assert store.metric_values("gw", "load")[0].value.number == 0.5
        store.record("gw", 2, T0 + 1, "json", [BYTES])
    with open_store(str(db)) as store:
        assert [v.report_id for v in store.metric_values("gw", BYTES.metric)] == [1, 2]


def test_concurrent_writers_from_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(50):
                store.record(f"gw-{n % 4}", i, time.time(), "json", [BYTES, BYTES])
                store.things()
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [t.reports for t in store.things()] == [100, 100, 100, 100]
    assert len(list(store.export())) == 8 * 50 * 2


def test_two_stores_on_one_file_from_threads(db: Path) -> None:
    """Two connections (as two processes would have) wait for each other's write lock."""
    stores = [open_store(str(db)), open_store(str(db))]
    try:

        def write(store: Store) -> None:
            for i in range(100):
                store.record("gw", i, T0 + i, "json", [BYTES])

        threads = [threading.Thread(target=write, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [t.reports for t in stores[0].things()] == [200]
    finally:
        for s in stores:
            s.close()


def _process_writer(path: str, name: str, n: int, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]  # a multiprocessing Event
    with open_store(path) as store:
        for i in range(n):
            store.record("shared", i, time.time(), "json", [BYTES])
            store.record(name, i, time.time(), "json", [BYTES])


def test_two_processes_share_one_file(db: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_process_writer, args=(str(db), f"p{i}", 40, start)) for i in range(2)
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    with open_store(str(db)) as store:
        assert {t.name: t.reports for t in store.things()} == {"p0": 40, "p1": 40, "shared": 80}
        assert store.schema_version() == 1
