"""Two ``defender-agent service`` processes in one shared-subscription group, one PostgreSQL.

mosquitto 2.0 never matches a ``$`` topic against a shared subscription
(``$share/g/$aws/...`` receives nothing), so the broker here runs a loopback bridge that
republishes every report ``$aws/things/+/defender/metrics/+`` as ``dd/$aws/...``; the
services subscribe to ``$share/dd-test/dd/$aws/things/+/defender/metrics/+`` with
``--topic-prefix dd/`` and reply on the real ``$aws/.../accepted`` topics. The broker gives
each report to one of them. Devices and services use the broker's plain listener (no ACL:
the test PKI has certificates for two things only). The PostgreSQL cluster is started by
the test on a free port (tests/pg_infra.py).
"""

from __future__ import annotations

import json
import queue
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from defender_agent.transport.mqtt import MqttTransport
from tests.integration.test_service_mqtt import ServiceProcess, report
from tests.mqtt_infra.broker import Mosquitto, connect_device, mosquitto_binary
from tests.mqtt_infra.pki import Pki

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the postgresql extra)")

WAIT_S = 20.0
PREFIX = "dd/"
GROUP = "dd-test"


def group_member_args(broker: Mosquitto, pg_url: str) -> list[str]:
    """``defender-agent service`` options of a member of the shared group on ``pg_url``."""
    assert broker.plain is not None
    return [
        "--no-tls",
        "--broker",
        "127.0.0.1",
        "--port",
        str(broker.plain),
        "--db",
        pg_url,
        "--min-delay",
        "0",
        "--shared-group",
        GROUP,
        "--topic-prefix",
        PREFIX,
    ]


DEVICES = 20
REPORTS = 10


class BridgedMosquitto(Mosquitto):
    """The test broker plus a loopback bridge: ``$aws/things/+/defender/metrics/+`` → ``dd/…``."""

    def _write_config(self) -> None:
        super()._write_config()
        assert self.plain is not None
        bridge = [
            "",
            "connection dd-loopback",
            f"address 127.0.0.1:{self.plain}",
            f'topic $aws/things/+/defender/metrics/+ out 1 "" {PREFIX}',
            "cleansession true",
            "try_private false",
            "bridge_protocol_version mqttv311",
        ]
        with self.conf.open("a") as conf:
            conf.write("\n".join(bridge) + "\n")


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[Mosquitto]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    with BridgedMosquitto(tmp_path / "broker", pki, acl=True, plain_port=True) as running:
        time.sleep(0.3)  # the bridge connects to its own broker
        yield running


class Devices:
    """``count`` devices thing1..thingN on the plain listener, one connection each."""

    def __init__(self, broker: Mosquitto, count: int) -> None:
        assert broker.plain is not None
        self.replies: queue.Queue[tuple[str, dict[str, object]]] = queue.Queue()
        self.things = [f"thing{n}" for n in range(1, count + 1)]
        self.transports: list[MqttTransport] = []
        for thing in self.things:
            self.transports.append(connect_device(broker, thing, self._on_reply, WAIT_S))

    def _on_reply(self, topic: str, payload: bytes) -> None:
        self.replies.put((topic, json.loads(payload)))

    def send(self, report_ids: range) -> int:
        futures = [
            transport.publish(
                f"$aws/things/{thing}/defender/metrics/json", json.dumps(report(rid)).encode()
            )
            for rid in report_ids
            for thing, transport in zip(self.things, self.transports)
        ]
        for future in futures:
            future.result(WAIT_S)
        return len(futures)

    def collect(self, count: int) -> Counter[tuple[str, object, str]]:
        got: Counter[tuple[str, object, str]] = Counter()
        deadline = time.monotonic() + WAIT_S
        while sum(got.values()) < count:
            try:
                topic, doc = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{sum(got.values())} replies of {count} within {WAIT_S} s")
            got[(str(doc["thingName"]), doc["reportId"], topic.rsplit("/", 1)[1])] += 1
        time.sleep(0.5)  # no duplicate may follow
        assert self.replies.empty(), self.replies.get_nowait()
        return got

    def close(self) -> None:
        for transport in self.transports:
            transport.disconnect()


def handled(proc: ServiceProcess) -> int:
    summary = proc.summary()
    assert summary, proc.log()[-2000:]
    return int(summary.split("service stopped: ", 1)[1].split(" messages")[0])


def test_two_processes_split_the_reports_and_share_one_database(
    broker: Mosquitto, pg_url: str, tmp_path: Path
) -> None:
    assert broker.plain is not None
    common = group_member_args(broker, pg_url)
    procs = [ServiceProcess(common, tmp_path / f"service-{n}.log") for n in range(2)]
    devices = None
    try:
        for proc in procs:
            proc.wait_ready()
        assert f"$share/{GROUP}/{PREFIX}$aws/things/+/defender/metrics/+" in procs[0].log()
        devices = Devices(broker, DEVICES)
        sent = devices.send(range(1, REPORTS + 1))
        assert sent == DEVICES * REPORTS == 200
        got = devices.collect(sent)
        expected = {(t, rid, "accepted") for t in devices.things for rid in range(1, REPORTS + 1)}
        assert set(got) == expected
        assert set(got.values()) == {1}  # exactly one reply per report

        # One member stops (its generated client id: the broker session is ended), the
        # other takes every report from then on.
        assert procs[1].stop() == 0
        assert "ended the MQTT session" in procs[1].log()
        sent = devices.send(range(REPORTS + 1, REPORTS + 2))
        got = devices.collect(sent)
        assert set(got.values()) == {1} and len(got) == DEVICES
    finally:
        if devices is not None:
            devices.close()
        codes = [proc.stop(signal.SIGTERM) for proc in procs]
    assert codes == [0, 0]
    first, second = handled(procs[0]), handled(procs[1])
    assert first > DEVICES and second > 0, (first, second)  # both answered some
    assert first + second == DEVICES * (REPORTS + 1)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT thing, report_id, COUNT(*) FROM reports GROUP BY thing, report_id"
        ).fetchall()
        assert {(thing, rid) for thing, rid, _ in rows} == {
            (t, rid) for t in devices.things for rid in range(1, REPORTS + 2)
        }
        assert {n for _, _, n in rows} == {1}  # every accepted report stored exactly once
        things = conn.execute("SELECT name, reports FROM things").fetchall()
        assert sorted(things) == sorted((t, REPORTS + 1) for t in devices.things)
        values = conn.execute(
            "SELECT COUNT(*) FROM metric_values WHERE metric = 'aws:all-bytes-in'"
        ).fetchone()
        assert values == (DEVICES * (REPORTS + 1),)
    for proc in procs:
        assert "Traceback" not in proc.log()
