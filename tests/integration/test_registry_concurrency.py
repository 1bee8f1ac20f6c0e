"""The registry's changes are serialised across connections (processes): a version check
and the write after it never interleave with another's, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from defender_agent.detect.registry import RegistryError, SqlRegistry, open_registry


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "service.sqlite3")


def _open(url: str) -> SqlRegistry:
    return open_registry(url, region="eu-west-1", account="111122223333")


def test_one_of_many_updates_of_a_version_wins(db_url: str) -> None:
    registries = [_open(db_url) for _ in range(4)]  # one connection each, as processes
    try:
        registries[0].create_profile("p", {"behaviors": []}, now=1.0)
        start = threading.Barrier(len(registries))
        outcomes: list[str] = []

        def update(registry: SqlRegistry, i: int) -> None:
            start.wait()
            try:
                registry.update_profile(
                    "p", {"securityProfileDescription": f"d{i}"}, expected_version=1, now=2.0
                )
                outcomes.append("ok")
            except RegistryError as exc:
                outcomes.append(exc.code)

        threads = [threading.Thread(target=update, args=(r, i)) for i, r in enumerate(registries)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["VersionConflictException"] * 3 + ["ok"]
        assert registries[3].describe_profile("p")["version"] == 2
    finally:
        for r in registries:
            r.close()


def test_racing_creates_one_exists_the_others_are_told(db_url: str) -> None:
    registries = [_open(db_url) for _ in range(3)]
    try:
        start = threading.Barrier(len(registries))
        outcomes: list[str] = []

        def create(registry: SqlRegistry) -> None:
            start.wait()
            try:
                registry.create_custom_metric("m", "number", None, now=1.0)
                outcomes.append("ok")
            except RegistryError as exc:
                outcomes.append(exc.code)

        threads = [threading.Thread(target=create, args=(r,)) for r in registries]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["ResourceAlreadyExistsException"] * 2 + ["ok"]
        generation = registries[0].generation()
        assert generation == 1  # refused changes leave the counter as it was
    finally:
        for r in registries:
            r.close()
