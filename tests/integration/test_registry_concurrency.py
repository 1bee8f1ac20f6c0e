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


@pytest.mark.parametrize("operation", ["CreateSecurityProfile", "UpdateSecurityProfile"])
def test_a_custom_metric_deleted_during_a_profile_write_is_never_left_named(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    """A DeleteCustomMetric (another process) arriving while the API checks a profile's
    behaviors waits for the profile's write and is then refused: no profile names a
    metric that does not exist."""
    from defender_agent.detect import behaviors
    from defender_agent.service.api.handlers import Api
    from tests.api_infra import running_api

    with running_api(tmp_path, db_url) as api:
        handlers = Api(api.server.context)
        other = _open(db_url)  # another process's connection
        try:
            api.registry.create_custom_metric("open_files", "number", None, now=1.0)
            api.registry.create_profile("p", {"behaviors": []}, now=1.0)
            deleted: list[str] = []
            validate = behaviors.validate_behaviors

            def delete() -> None:
                try:
                    other.delete_custom_metric("open_files")
                    deleted.append("deleted")
                except RegistryError as exc:
                    deleted.append(exc.code)

            def validate_while_deleting(*args: object, **kwargs: object) -> list[str]:
                errors = validate(*args, **kwargs)  # type: ignore[arg-type]
                deleter = threading.Thread(target=delete)
                deleter.start()
                deleter.join(1.0)  # the delete goes through unless the check holds the lock
                return errors

            monkeypatch.setattr(behaviors, "validate_behaviors", validate_while_deleting)
            behavior = {
                "name": "files",
                "metric": "open_files",
                "criteria": {"comparisonOperator": "less-than", "value": {"number": 5}},
            }
            params = {"securityProfileName": "q", "behaviors": [behavior]}
            if operation == "UpdateSecurityProfile":
                params["securityProfileName"] = "p"
                handlers.update_security_profile(params)
            else:
                handlers.create_security_profile(params)
            for _ in range(100):
                if deleted:
                    break
                threading.Event().wait(0.05)
            assert deleted == ["InvalidRequestException"]
            assert api.registry.custom_metric_types() == {"open_files": "number"}
            assert api.registry.profiles_using_metric("open_files") == [
                params["securityProfileName"]
            ]
        finally:
            other.close()
