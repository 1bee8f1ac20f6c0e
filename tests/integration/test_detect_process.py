"""Detect in its worker process (``[detect] evaluate_in = process``): real child processes.

The service's side (:class:`DetectProcess`) hands batches over, the worker judges them
against a real SQLite database and a security profile made through the registry, its MQTT
alerts come back to be published here, a worker that dies is started again, and one that
cannot open Detect fails the start in one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from defender_agent.config.extra_sections import DetectSection
from defender_agent.detect.contract import ViolationFilter
from defender_agent.detect.process import DetectProcess
from defender_agent.detect.registry import open_registry
from defender_agent.errors import StateError
from defender_agent.report.decode import decode_report
from defender_agent.service.runner import HandedOver
from defender_agent.service.storage import open_store

SRC = Path(__file__).resolve().parents[2] / "src"
ALL = "arn:aws:iot:us-east-1:123456789012:all/things"


def seed(db: str) -> None:
    """A profile allowing TCP port 22 only, on every thing."""
    open_store(db).close()
    registry = open_registry(db, region="us-east-1", account="123456789012")
    try:
        registry.create_profile(
            "ports",
            {
                "behaviors": [
                    {
                        "name": "tcp",
                        "metric": "aws:listening-tcp-ports",
                        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}},
                    }
                ]
            },
            now=time.time(),
        )
        registry.attach("ports", ALL)
    finally:
        registry.close()


def item(thing: str, report_id: int, *ports: int) -> HandedOver:
    doc = {
        "header": {"report_id": report_id, "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": {"ports": [{"port": p} for p in ports], "total": len(ports)}
        },
    }
    return HandedOver(thing, time.time(), decode_report(doc), json.dumps(doc))


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def active(detect: DetectProcess) -> list[tuple[str, str]]:
    assert detect.store is not None
    page = detect.store.list_active(ViolationFilter(), limit=100, token=None)
    return sorted((v["thingName"], v["behavior"]["name"]) for v in page.items)


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path}/service.sqlite3"
    seed(url)
    return url


def test_the_worker_judges_batches_and_its_alerts_come_back(db: str) -> None:
    published: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def publish(topic: str, payload: bytes) -> None:
        with lock:
            published.append((topic, payload))

    detect = DetectProcess(db, DetectSection(alert_topic="fleet/alerts"))
    detect.start()
    try:
        detect.bind_publish(publish)
        detect.after_store([item("a", 1, 22, 8123), item("b", 1, 22)])
        # after_store returns once judged: the violation is in the database now
        assert active(detect) == [("a", "tcp")]
        wait_for(lambda: published)
        topic, payload = published[0]
        message = json.loads(payload)
        assert topic == "fleet/alerts"
        assert (message["thingName"], message["violationEventType"]) == ("a", "in-alarm")
        detect.after_store([item("a", 2, 22)])
        assert active(detect) == []
        wait_for(lambda: len(published) == 2)
        assert json.loads(published[1][1])["violationEventType"] == "alarm-cleared"
    finally:
        detect.stop()


def test_a_worker_that_cannot_open_detect_fails_the_start_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-database.sqlite3"
    bad.write_bytes(b"this is not SQLite" * 100)
    detect = DetectProcess(f"sqlite://{bad}")
    with pytest.raises(StateError) as caught:
        detect.start()
    # the worker's own one-line reason (the service opens nothing before the worker is up)
    assert str(caught.value) == f"service database {bad}: file is not a database"
    assert detect._proc is None  # no worker left behind


def test_a_worker_killed_fails_its_batch_and_is_started_again(db: str, caplog: Any) -> None:
    detect = DetectProcess(db)
    detect.start()
    try:
        first = detect._proc
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        with pytest.raises(StateError, match="detect worker"):
            detect.after_store([item("a", 1, 22, 8123)])  # lost: counted, one line
        assert detect.lost == 1
        wait_for(lambda: detect.restarts == 1)
        detect.after_store([item("b", 1, 22, 9000)])
        assert active(detect) == [("b", "tcp")]
        assert any("starting it again" in r.getMessage() for r in caplog.records)
    finally:
        detect.stop()


def test_the_worker_ignores_sigterm_until_the_service_says_stop(db: str) -> None:
    detect = DetectProcess(db)
    detect.start()
    try:
        proc = detect._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGTERM)  # (systemd signals the whole control group)
        time.sleep(0.3)
        assert proc.poll() is None
        detect.after_store([item("a", 1, 22, 8123)])  # still judging what is stored
        assert active(detect) == [("a", "tcp")]
    finally:
        detect.stop()
    assert proc.poll() == 0


def test_the_worker_stops_when_the_service_is_killed(db: str, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(SRC)!r})
        from defender_agent.detect.process import DetectProcess
        detect = DetectProcess({db!r})
        detect.start()
        print(detect._proc.pid, flush=True)
        time.sleep(60)
        """
    )
    service = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    with service:
        assert service.stdout is not None
        worker = int(service.stdout.readline())
        service.kill()
        service.wait()

        def gone() -> bool:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return True
            return Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z"

        wait_for(gone, 15)


def test_an_alert_before_the_workers_own_connection_fails_in_one_line() -> None:
    import socket

    from defender_agent.detect.alert_link import AlertLink
    from defender_agent.errors import ConnectError
    from defender_agent.transport.base import MqttSettings

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = AlertLink(
        MqttSettings(
            endpoint="127.0.0.1", port=port, client_id="svc-detect", use_tls=False,
            connect_timeout_s=1.0,
        ),
        first_wait_s=0.3,
    )  # fmt: skip
    link.start()
    try:
        with pytest.raises(ConnectError, match=f"no connection to 127.0.0.1:{port} yet"):
            link.publish("defender-agent/alerts", b"{}")
        assert not link.wait_connected(0.1)
    finally:
        link.stop()
