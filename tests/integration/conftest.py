"""Fixtures for tests against real MQTT servers on 127.0.0.1: the test PKI and mosquitto.

``pki`` is made once per session (a few seconds of openssl); ``mosquitto`` is a
fresh broker per test (about 25 ms to start), stopped at teardown even when the
test fails. Both skip with a clear reason when openssl or mosquitto is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_infra.broker import Mosquitto, mosquitto_binary
from tests.mqtt_infra.pki import Pki, make_pki, openssl_available
from tests.pg_infra import Cluster, create_database, pg_bin, unavailable_reason


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The throwaway test PKI (see tests/mqtt_infra/pki.py)."""
    if not openssl_available():
        pytest.skip("the openssl command is not installed (apt-get install openssl)")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def mosquitto(pki: Pki, tmp_path: Path) -> Iterator[Mosquitto]:
    """A started mosquitto: TLS listener with the AWS-like ACL, plus a plain listener."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = Mosquitto(tmp_path / "mosquitto", pki, acl=True, plain_port=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster for the session (see tests/pg_infra.py)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    bindir = pg_bin()
    assert bindir is not None
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A fresh, empty database in the session's cluster."""
    return create_database(pg_cluster)
