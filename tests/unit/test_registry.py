"""The registry's schema: versioned migrations in its own table, beside the service's."""

from __future__ import annotations

from pathlib import Path

import pytest

from defender_agent.detect.registry import REGISTRY_MIGRATIONS, SQLiteRegistry, open_registry
from defender_agent.errors import StateError
from defender_agent.service.storage import Migration, open_store


def test_a_version_1_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    url = str(tmp_path / "service.sqlite3")
    old = SQLiteRegistry(url, migrations=REGISTRY_MIGRATIONS[:1])
    old.region, old.account = "eu-west-1", "111122223333"
    old.custom_metric_types()  # version 1 has no client_token column: insert by hand
    with old._change() as cur:
        cur.execute(
            "INSERT INTO custom_metrics (name, arn, metric_type, display_name, created, modified)"
            " VALUES ('m', 'arn', 'number', NULL, 1, 1)",
            (),
        )
    assert old.schema_version() == 1
    old.close()
    new = open_registry(url, region="eu-west-1", account="111122223333")
    try:
        assert new.schema_version() == REGISTRY_MIGRATIONS[-1].version
        assert new.custom_metric_types() == {"m": "number"}
        new.create_custom_metric("n", "number", None, now=2.0, client_token="t")
        assert new.create_custom_metric("n", "number", None, now=3.0, client_token="t")
    finally:
        new.close()
    # the service's own store shares the file and keeps its own schema version
    with open_store(url) as store:
        assert store.schema_version() >= 1


def test_a_newer_registry_schema_is_refused(tmp_path: Path) -> None:
    url = str(tmp_path / "service.sqlite3")
    future = (*REGISTRY_MIGRATIONS, Migration(99, "from the future", ()))
    SQLiteRegistry(url, migrations=future).close()
    with pytest.raises(StateError, match="schema version 99, newer than"):
        open_registry(url, region="eu-west-1", account="111122223333")


def test_recursive_child_groups_page_through_every_descendant() -> None:
    """A later page's group below the parent through an earlier page's group is listed."""
    registry = open_registry("sqlite://:memory:", region="eu-west-1", account="111122223333")
    try:
        registry.create_group("a", None, {}, now=1.0)
        registry.create_group("b", "a", {}, now=1.0)
        registry.create_group("c", "b", {}, now=1.0)
        registry.create_group("d", "c", {}, now=1.0)
        names, token = [], None
        for _ in range(5):
            page, token = registry.list_groups(limit=1, token=token, parent="a", recursive=True)
            names += [g["groupName"] for g in page]
            if token is None:
                break
        assert names == ["b", "c", "d"]
        direct, _ = registry.list_groups(limit=10, token=None, parent="a", recursive=False)
        assert [g["groupName"] for g in direct] == ["b"]
    finally:
        registry.close()
