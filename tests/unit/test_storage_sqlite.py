"""What only the SQLite store does: URLs and files, the WAL journal, unusable files.

The behaviours every store shares (record, query, export, migrations, concurrency) are the
contract suite, ``tests/integration/test_storage_contract.py``, run against SQLite and
PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from defender_agent.errors import ConfigError, StateError
from defender_agent.service.metrics_map import MetricValue
from defender_agent.service.storage import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLiteStore,
    default_url,
    open_store,
)

T0 = 1_700_000_000.0
BYTES = MetricValue("aws:all-bytes-out", count=1)


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
        assert store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    conn = sqlite3.connect(empty)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        versions = conn.execute("SELECT version, description FROM schema_version").fetchall()
    finally:
        conn.close()
    assert {"schema_version", "things", "reports", "metric_values"} <= tables
    assert {"metric_values_thing_metric", "metric_values_received"} <= tables
    assert versions == [(m.version, m.description) for m in MIGRATIONS]
