"""What only the PostgreSQL store does: URLs, reconnecting after a dropped connection, secrets.

The behaviours every store shares (record, query, export, migrations, two writing processes)
are the contract suite, ``tests/integration/test_storage_contract.py``. The cluster is the
session's throwaway one (``pg_cluster``, ``pg_url``); skipped when the server binaries or
psycopg are missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from defender_agent.errors import StateError
from defender_agent.service.metrics_map import MetricValue
from defender_agent.service.storage import PostgresStore, Store, open_store
from tests.mqtt_infra.broker import free_port
from tests.pg_infra import Cluster

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the postgresql extra)")

T0 = 1_700_000_000.0
BYTES = MetricValue("aws:all-bytes-out", count=1)


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    with open_store(pg_url) as opened:
        yield opened


def test_both_url_schemes_open_a_postgres_store(pg_url: str) -> None:
    for url in (pg_url, "postgres://" + pg_url.partition("://")[2]):
        with open_store(url) as store:
            assert isinstance(store, PostgresStore)
            assert store.name == url


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
    assert "\n" not in str(info.value)
