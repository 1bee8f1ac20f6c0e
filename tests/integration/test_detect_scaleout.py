"""Detect in two ``defender-agent service`` processes of one shared group over one PostgreSQL.

The broker (with the loopback bridge of test_service_scaleout) gives each report to either
process, so a thing's consecutive reports are judged by both, in turn, at random. With
``consecutiveDatapointsToAlarm`` 5 and ``…ToClear`` 5 every thing must get exactly one
in-alarm, on its 5th violating report, and exactly one alarm-cleared, on its 5th conforming
one: the counters live in the database, locked per thing.
"""

from __future__ import annotations

import json
import queue
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from defender_agent.detect.registry import open_registry
from defender_agent.service.storage import open_store
from tests.integration.test_service_mqtt import ServiceProcess
from tests.integration.test_service_scaleout import (  # noqa: F401 - broker: a fixture
    broker,
    group_member_args,
    handled,
)
from tests.mqtt_infra.broker import Mosquitto, connect_device

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the postgresql extra)")

THINGS = [f"thing{n}" for n in range(1, 11)]
RULE = {
    "name": "ports",
    "metric": "aws:listening-tcp-ports",
    "criteria": {
        "comparisonOperator": "in-port-set",
        "value": {"ports": [22]},
        "consecutiveDatapointsToAlarm": 5,
        "consecutiveDatapointsToClear": 5,
    },
}


def payload(report_id: int, port: int) -> bytes:
    doc = {
        "header": {"report_id": report_id, "version": "1.0"},
        "metrics": {"listening_tcp_ports": {"ports": [{"port": port}], "total": 1}},
    }
    return json.dumps(doc).encode()


def events(pg_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT thing, event_type FROM detect_events ORDER BY thing, event_time, id"
        ).fetchall()
    return [(str(t), str(e)) for t, e in rows]


def wait_events(pg_url: str, count: int, timeout: float = 20.0) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while len(found := events(pg_url)) < count:
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    time.sleep(0.5)  # and no more
    found = events(pg_url)
    assert len(found) == count, found
    return found


@pytest.mark.parametrize("evaluate_in", ["process", "thread"])  # whatever the machine's cores
def test_two_service_processes_keep_consecutive_counters_exact(
    broker: Mosquitto,  # noqa: F811
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    evaluate_in: str,
) -> None:
    monkeypatch.setenv("DEFENDER_AGENT_DETECT_EVALUATE_IN", evaluate_in)
    open_store(pg_url).close()
    registry = open_registry(pg_url, region="us-east-1", account="123456789012")
    registry.create_profile("p", {"behaviors": [RULE]}, now=time.time())
    registry.attach("p", registry.arn("all/things"))
    registry.close()
    assert broker.plain is not None
    common = group_member_args(broker, pg_url)
    procs = [ServiceProcess(common, tmp_path / f"service-{n}.log") for n in range(2)]
    replies: queue.Queue[Any] = queue.Queue()
    devices = []
    try:
        for proc in procs:
            proc.wait_ready()
        devices = [connect_device(broker, t, lambda t, p: replies.put(t)) for t in THINGS]
        report_id = 0

        def round_of(port: int) -> None:
            nonlocal report_id
            report_id += 1
            for thing, device in zip(THINGS, devices):
                topic = f"$aws/things/{thing}/defender/metrics/json"
                device.publish(topic, payload(report_id, port)).result(20)
            for _ in THINGS:
                assert replies.get(timeout=20).endswith("/accepted")

        for _ in range(4):
            round_of(8123)  # violating, 4 in a row: not yet
        time.sleep(1.0)
        assert events(pg_url) == []
        round_of(8123)  # the 5th
        assert wait_events(pg_url, len(THINGS)) == [(t, "in-alarm") for t in sorted(THINGS)]
        round_of(8123)
        for _ in range(4):
            round_of(22)  # conforming, 4 in a row: not yet
        time.sleep(1.0)
        assert len(events(pg_url)) == len(THINGS)
        round_of(22)  # the 5th
        found = wait_events(pg_url, 2 * len(THINGS))
        assert found == [(t, e) for t in sorted(THINGS) for e in ("in-alarm", "alarm-cleared")]
    finally:
        for device in devices:
            device.disconnect()
        codes = [proc.stop(signal.SIGTERM) for proc in procs]
    assert codes == [0, 0]
    assert handled(procs[0]) > 0 and handled(procs[1]) > 0  # both judged some
    for proc in procs:
        assert "Traceback" not in proc.log()
        assert ("evaluating in worker process" in proc.log()) == (evaluate_in == "process")
