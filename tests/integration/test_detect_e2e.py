"""Detect end to end: ``defender-agent service`` as a process on mosquitto, driven by boto3.

The security profile and the custom metric are created through the service's own AWS IoT
API (boto3, SigV4); devices publish reports on the broker's plain listener; the service
answers, stores and judges them; the violations are read back with boto3, the alerts arrive
on the MQTT alert topic and at a webhook receiver (an aiohttp server in this test). A
second webhook that accepts connections and never answers shows that a dead webhook does
not slow the replies. (Windows of 300 s and percentiles need a controlled clock: they are
tested on the engine, tests/integration/test_detect_engine.py; the real agent's ports in
tests/integration/test_sandbox_detect.py.)
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_service_mqtt import ServiceProcess
from tests.mqtt_infra.broker import Mosquitto, connect_device

REGION = "us-east-1"
PORTS = {
    "name": "ports",
    "metric": "aws:listening-tcp-ports",
    "criteria": {
        "comparisonOperator": "in-port-set",
        "value": {"ports": [22, 443]},
        "consecutiveDatapointsToClear": 2,
    },
}
USERS = {
    "name": "no-root",
    "metric": "users",
    "criteria": {"comparisonOperator": "not-in-set", "value": {"strings": ["root"]}},
}


class Hooks:
    """An aiohttp server in a thread: /hook records each POST; /dead never answers."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.dead_calls = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from aiohttp import web

        async def hook(request: web.Request) -> web.Response:
            assert request.content_type == "application/json"
            self.received.put(await request.json())
            return web.Response(status=204)

        async def dead(request: web.Request) -> web.Response:
            self.dead_calls += 1
            await self._stop.wait()  # never answers while the test runs
            return web.Response(status=503)

        async def main() -> None:
            self._stop = asyncio.Event()
            app = web.Application()
            app.router.add_post("/hook", hook)
            app.router.add_post("/dead", dead)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(main())

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ports_report(report_id: int, *ports: int) -> bytes:
    doc = {
        "header": {"report_id": report_id, "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": {"ports": [{"port": p} for p in ports], "total": len(ports)},
            "network_stats": {"bytes_in": 1, "bytes_out": 1},
        },
    }
    return json.dumps(doc).encode()


def users_report(report_id: int, *users: str) -> bytes:
    doc = {
        "header": {"report_id": report_id, "version": "1.0"},
        "metrics": {"network_stats": {"bytes_in": 1, "bytes_out": 1}},
        "custom_metrics": {"users": [{"string_list": list(users)}]},
    }
    return json.dumps(doc).encode()


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    server = Hooks()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def service(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto, hooks: Hooks
) -> Iterator[tuple[Any, ServiceProcess]]:
    key_id, secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    creds = tmp_path / "api-credentials"
    creds.write_text(f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    config = tmp_path / "service.toml"
    config.write_text(
        "[detect]\n"
        f'evaluate_in = "{getattr(request, "param", "process")}"\n'
        f'webhooks = ["http://127.0.0.1:{hooks.port}/hook", "http://127.0.0.1:{hooks.port}/dead"]\n'
        "webhook_timeout = 5.0\nwebhook_retries = 2\n"
    )
    port = _free_port()
    proc = ServiceProcess(
        [
            "--config",
            str(config),
            "--broker",
            "127.0.0.1",
            "--port",
            str(mosquitto.plain),
            "--no-tls",
            "--min-delay",
            "0",
            "--db",
            str(tmp_path / "service.sqlite3"),
            "--http",
            f"127.0.0.1:{port}",
            "--http-credentials-file",
            str(creds),
        ],
        tmp_path / "service.log",
    )
    try:
        proc.wait_ready()
        import boto3  # type: ignore[import-untyped]

        client = boto3.client(
            "iot",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name=REGION,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )
        yield client, proc
    finally:
        proc.stop()


def _alerts(mosquitto: Mosquitto) -> tuple[Any, queue.Queue[dict[str, Any]]]:
    from defender_agent.transport.base import MqttSettings
    from defender_agent.transport.mqtt import MqttTransport

    assert mosquitto.plain is not None
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    transport = MqttTransport(
        MqttSettings(endpoint="127.0.0.1", port=mosquitto.plain, client_id="alerts", use_tls=False)
    )
    transport.connect()
    transport.subscribe("defender-agent/alerts", lambda _t, p: got.put(json.loads(p)))
    return transport, got


def _next(q: queue.Queue[Any], timeout: float = 15.0) -> Any:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"nothing within {timeout} s")


@pytest.mark.parametrize(  # [detect] evaluate_in: both, whatever the machine's cores
    "service", ["process", "thread"], indirect=True
)
def test_violations_and_alerts_end_to_end(
    request: pytest.FixtureRequest, service: tuple[Any, Any], mosquitto: Mosquitto, hooks: Hooks
) -> None:
    client, proc = service
    client.create_custom_metric(metricName="users", metricType="string-list")
    client.create_security_profile(securityProfileName="e2e", behaviors=[PORTS, USERS])
    client.attach_security_profile(
        securityProfileName="e2e",
        securityProfileTargetArn=f"arn:aws:iot:{REGION}:123456789012:all/things",
    )
    alerts_client, alerts = _alerts(mosquitto)
    replies: queue.Queue[tuple[str, float]] = queue.Queue()
    device = connect_device(mosquitto, "gw-1", lambda t, _p: replies.put((t, time.monotonic())))
    topic = "$aws/things/gw-1/defender/metrics/json"
    try:

        def send(payload: bytes) -> float:
            began = time.monotonic()
            device.publish(topic, payload).result(10)
            reply_topic, at = _next(replies)
            assert reply_topic.endswith("/accepted")
            return float(at - began)

        send(ports_report(1, 22, 443))
        send(ports_report(2, 22, 8123))  # outside the allow-list
        alert = _next(alerts)
        assert alert["violationEventType"] == "in-alarm"
        assert (alert["thingName"], alert["securityProfileName"]) == ("gw-1", "e2e")
        assert alert["behavior"]["name"] == "ports"
        assert alert["metricValue"] == {"ports": [22, 8123]}
        assert isinstance(alert["violationEventTime"], int)
        assert _next(hooks.received) == alert
        (active,) = client.list_active_violations(thingName="gw-1")["activeViolations"]
        assert active["violationId"] == alert["violationId"]
        assert active["lastViolationValue"] == {"ports": [22, 8123]}

        send(ports_report(3, 22))  # one conforming datapoint: ToClear is 2
        send(ports_report(4, 22))
        cleared = _next(alerts)
        assert (cleared["violationEventType"], cleared["violationId"]) == (
            "alarm-cleared",
            alert["violationId"],
        )
        assert alerts.empty()  # (the first conforming report cleared nothing)
        assert client.list_active_violations()["activeViolations"] == []

        send(users_report(5, "pi", "root"))
        root = _next(alerts)
        assert (root["behavior"]["name"], root["metricValue"]) == (
            "no-root",
            {"strings": ["pi", "root"]},
        )
        # the dead webhook got each alert and never answered: the replies stayed quick
        assert hooks.dead_calls >= 1
        latencies = [send(ports_report(10 + i, 22, 9000 + i % 2)) for i in range(10)]
        assert max(latencies) < 2.0, latencies  # the dead webhook's timeout is 5 s
        events = client.list_violation_events(startTime=0, endTime=time.time() + 60)
        kinds = [e["violationEventType"] for e in events["violationEvents"]]
        assert kinds[:4] == ["in-alarm", "alarm-cleared", "in-alarm", "in-alarm"]
    finally:
        device.disconnect()
        alerts_client.disconnect()
    assert proc.stop() == 0
    log = proc.log()
    assert re.search(r"detect stopped: \d+ reports judged", log), log[-2000:]
    assert "Traceback" not in log
    in_worker = re.search(r"detect: evaluating in worker process \d+", log) is not None
    assert in_worker == (request.node.callspec.params["service"] == "process")
    # the worker published the alerts on its own connection ([detect] alert_connection)
    own = re.search(r"connecting to \S+ as \S+-detect ", log) is not None
    assert own == in_worker, log[-3000:]
