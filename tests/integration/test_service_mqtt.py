"""``defender-agent service`` as a process against a real mosquitto: rules, throttle, CBOR, restarts.

The service runs as ``python -m defender_agent service …`` and connects over mutual TLS as
the user ``responder`` (may read and write ``$aws/#``). The device ``thing1`` connects over
mutual TLS too, and the broker's ACL lets it publish only its own report topics, as an AWS
IoT policy would. Hostile thing names need other topics: that device uses the broker's plain
listener, which has no ACL. Everything is on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import cbor2
import pytest

from defender_agent.service.storage import open_store
from defender_agent.transport.base import MqttSettings
from defender_agent.transport.mqtt import MqttTransport
from tests.mqtt_infra.broker import Mosquitto, mosquitto_binary
from tests.mqtt_infra.pki import Pki

WAIT_S = 10.0
BASE = "$aws/things/thing1/defender/metrics"
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers (also used by test_service_scaleout)
def service_command() -> list[str]:
    """``python -m defender_agent service``."""
    return [sys.executable, "-m", "defender_agent", "service"]


class ServiceProcess:
    """``defender-agent service`` in a subprocess, its stderr in a file."""

    def __init__(self, args: list[str], log_file: Path) -> None:
        self.log_file = log_file
        env = {**os.environ, "DEFENDER_AGENT_STATE_DIR": str(log_file.parent)}
        with log_file.open("ab") as err:
            self.proc = subprocess.Popen(
                [*service_command(), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=REPO,
            )

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while "service answering reports" not in self.log():
            if self.proc.poll() is not None:
                pytest.fail(f"service exited {self.proc.returncode}: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"service not ready within {timeout} s: {self.log()[-2000:]}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                pytest.fail(f"service did not stop on {sig}: {self.log()[-2000:]}")
        return int(self.proc.returncode)

    def summary(self) -> str:
        lines = [ln for ln in self.log().splitlines() if "service stopped:" in ln]
        return lines[-1] if lines else ""


def tls_args(broker: Mosquitto, pki: Pki, name: str = "responder") -> list[str]:
    cert, key = pki.client(name)
    return [
        "--broker",
        "127.0.0.1",
        "--port",
        str(broker.port),
        "--ca-file",
        str(pki.ca),
        "--cert-file",
        str(cert),
        "--key-file",
        str(key),
    ]


class Device:
    """An MqttTransport device, subscribed to reply topics, with an inbox of replies."""

    def __init__(self, settings: MqttSettings, reply_filter: str) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.transport = MqttTransport(settings)
        self.transport.connect()
        self.transport.subscribe(reply_filter, lambda t, p: self.inbox.put((t, p)))

    def publish(self, topic: str, payload: bytes) -> None:
        self.transport.publish(topic, payload).result(timeout=WAIT_S)

    def reply(self, timeout: float = WAIT_S) -> tuple[str, Any]:
        try:
            topic, payload = self.inbox.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no reply within {timeout} s")
        doc = cbor2.loads(payload) if "/cbor/" in topic else json.loads(payload)
        return topic, doc

    def assert_no_reply(self, wait_s: float = 0.5) -> None:
        time.sleep(wait_s)
        assert self.inbox.empty(), self.inbox.get_nowait()

    def close(self) -> None:
        self.transport.disconnect()


def tls_device(broker: Mosquitto, pki: Pki, name: str = "thing1") -> Device:
    cert, key = pki.client(name)
    settings = MqttSettings(
        endpoint="127.0.0.1",
        port=broker.port,
        client_id=name,
        ca_file=pki.ca,
        cert_file=cert,
        key_file=key,
        connect_timeout_s=WAIT_S,
    )
    return Device(settings, f"$aws/things/{name}/defender/metrics/+/+")


def plain_device(broker: Mosquitto, client_id: str = "odd-device") -> Device:
    assert broker.plain is not None
    settings = MqttSettings(
        endpoint="127.0.0.1",
        port=broker.plain,
        client_id=client_id,
        use_tls=False,
        connect_timeout_s=WAIT_S,
    )
    return Device(settings, "$aws/things/+/defender/metrics/+/+")


def report(report_id: int, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "header": {"report_id": report_id, "version": "1.0"},
        "metrics": {"network_stats": {"bytes_in": report_id, "bytes_out": 20}},
    }
    doc.update(extra)
    return doc


def encoded(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the module's shared service (TLS with the ACL, plus a plain listener)."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    with Mosquitto(tmp_path_factory.mktemp("broker"), pki, acl=True, plain_port=True) as running:
        yield running


@pytest.fixture(scope="module")
def service(
    broker: Mosquitto, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A service with --min-delay 0 (no throttle), over mutual TLS as ``responder``."""
    work = tmp_path_factory.mktemp("service")
    proc = ServiceProcess(
        [*tls_args(broker, pki), "--min-delay", "0", "--db", str(work / "db.sqlite3")],
        work / "service.log",
    )
    proc.wait_ready()
    yield proc
    assert proc.stop() == 0
    assert "Traceback" not in proc.log()


@pytest.fixture(scope="module")
def thing1(broker: Mosquitto, pki: Pki, service: ServiceProcess) -> Iterator[Device]:
    device = tls_device(broker, pki)
    yield device
    device.close()


@pytest.fixture(scope="module")
def odd(broker: Mosquitto, service: ServiceProcess) -> Iterator[Device]:
    device = plain_device(broker)
    yield device
    device.close()


# --------------------------------------------------------------------------- every rule family through the broker
HUGE = 10**30
# (family, payload, reportId expected in the rejection)
RULES: list[tuple[str, bytes, Optional[int]]] = [
    ("decode: not JSON", b"{nope", None),
    ("decode: not UTF-8", b'{"header": "\xff"}', None),
    ("decode: duplicate key", b'{"header":{"report_id":5,"version":"1.0"},"header":{}}', None),
    (
        "decode: NaN",
        b'{"header":{"report_id":5,"version":"1.0"},"metrics":{"network_stats":{"bytes_in":NaN}}}',
        None,
    ),
    ("root: not an object", b"[1, 2]", None),
    ("root: unknown key", encoded(report(11, extra={})), 11),
    ("root: no header", encoded({"metrics": {}}), None),
    (
        "root: no metrics nor custom_metrics",
        encoded({"header": {"report_id": 12, "version": "1.0"}}),
        12,
    ),
    ("header: report_id zero", encoded(report(0)), 0),
    (
        "header: report_id not an integer",
        encoded({**report(1), "header": {"report_id": "13", "version": "1.0"}}),
        None,
    ),
    (
        "header: report_id beyond 64 bits",
        encoded({**report(1), "header": {"report_id": HUGE, "version": "1.0"}}),
        None,
    ),
    (
        "header: bad version",
        encoded({**report(1), "header": {"report_id": 14, "version": "one"}}),
        14,
    ),
    (
        "header: unknown key",
        encoded({**report(1), "header": {"report_id": 15, "version": "1.0", "x": 1}}),
        15,
    ),
    ("metrics: unknown group", encoded(report(16, metrics={"cpu": {}})), 16),
    (
        "metrics: misplaced total (aws-c-iot 2020)",
        encoded(report(17, metrics={"tcp_connections": {"total": 1}})),
        17,
    ),
    (
        "metrics: port out of range",
        encoded(report(18, metrics={"listening_tcp_ports": {"ports": [{"port": 70000}]}})),
        18,
    ),
    (
        "metrics: port zero",
        encoded(report(19, metrics={"listening_udp_ports": {"ports": [{"port": 0}]}})),
        19,
    ),
    (
        "metrics: negative count",
        encoded(report(20, metrics={"network_stats": {"bytes_in": -1}})),
        20,
    ),
    (
        "metrics: wrong type",
        encoded(report(21, metrics={"listening_tcp_ports": {"total": "2"}})),
        21,
    ),
    (
        "metrics: fractional integer",
        encoded(report(22, metrics={"network_stats": {"packets_in": 1.5}})),
        22,
    ),
    (
        "metrics: huge integer",
        encoded(report(23, metrics={"network_stats": {"bytes_out": HUGE}})),
        23,
    ),
    (
        "metrics: remote_addr without port",
        encoded(
            report(
                24,
                metrics={
                    "tcp_connections": {
                        "established_connections": {"connections": [{"remote_addr": "10.0.0.1"}]}
                    }
                },
            )
        ),
        24,
    ),
    (
        "metrics: connection without remote_addr",
        encoded(
            report(
                25,
                metrics={
                    "tcp_connections": {
                        "established_connections": {"connections": [{"local_port": 5}]}
                    }
                },
            )
        ),
        25,
    ),
    (
        "names: long and short mixed",
        encoded({"header": {"report_id": 26, "version": "1.0"}, "met": {}}),
        26,
    ),
    (
        "custom: value is an object (documented rejection)",
        encoded(report(27, custom_metrics={"m": {"number": 0}})),
        27,
    ),
    (
        "custom: two value keys",
        encoded(report(28, custom_metrics={"m": [{"number": 1, "number_list": [1]}]})),
        28,
    ),
    ("custom: empty array", encoded(report(29, custom_metrics={"m": []})), 29),
    ("custom: reserved name", encoded(report(30, custom_metrics={"aws:cpu": [{"number": 1}]})), 30),
    (
        "custom: bad ip_list entry",
        encoded(report(31, custom_metrics={"ips": [{"ip_list": ["300.1.1.1"]}]})),
        31,
    ),
    (
        "custom: string_list of numbers",
        encoded(report(32, custom_metrics={"s": [{"string_list": [1]}]})),
        32,
    ),
]


@pytest.mark.parametrize(("family", "payload", "report_id"), RULES, ids=[r[0] for r in RULES])
def test_each_rule_family_is_rejected_through_the_broker(
    thing1: Device, family: str, payload: bytes, report_id: Optional[int]
) -> None:
    thing1.publish(f"{BASE}/json", payload)
    topic, doc = thing1.reply()
    assert topic == f"{BASE}/json/rejected", family
    expected: dict[str, Any] = {"thingName": "thing1"}
    if report_id is not None:
        expected["reportId"] = report_id
    expected.update(
        status="REJECTED",
        statusDetails={"ErrorCode": "InvalidPayload", "ErrorMessage": "Malformed metrics report"},
    )
    assert {k: v for k, v in doc.items() if k != "timestamp"} == expected
    assert isinstance(doc["timestamp"], int)


def test_a_good_report_is_accepted_in_json(thing1: Device) -> None:
    thing1.publish(f"{BASE}/json", encoded(report(1000)))
    topic, doc = thing1.reply()
    assert topic == f"{BASE}/json/accepted"
    assert list(doc) == ["thingName", "reportId", "status", "timestamp"]
    assert (doc["reportId"], doc["status"]) == (1000, "ACCEPTED")


@pytest.mark.parametrize("short", [False, True], ids=["long-names", "short-names"])
def test_cbor_reports_get_cbor_replies_on_cbor_topics(thing1: Device, short: bool) -> None:
    doc = (
        {"hed": {"rid": 2001, "v": "1.0"}, "met": {"ns": {"bi": 1}}}
        if short
        else report(2001, custom_metrics={"cpu_usage": [{"number": 0.5}]})
    )
    thing1.publish(f"{BASE}/cbor", cbor2.dumps(doc))
    topic, reply = thing1.reply()  # decoded with cbor2 (it would not parse as JSON)
    assert topic == f"{BASE}/cbor/accepted"
    assert (reply["reportId"], reply["status"]) == (2001, "ACCEPTED")
    thing1.publish(f"{BASE}/cbor", cbor2.dumps({**doc, "bogus": 1}))
    topic, reply = thing1.reply()
    assert topic == f"{BASE}/cbor/rejected"
    assert reply["statusDetails"]["ErrorCode"] == "InvalidPayload"
    thing1.publish(f"{BASE}/cbor", encoded(report(2002)))  # JSON on the CBOR topic
    topic, reply = thing1.reply()
    assert topic == f"{BASE}/cbor/rejected"
    assert "reportId" not in reply


# --------------------------------------------------------------------------- hostile input
def _nested_cbor(depth: int) -> bytes:
    return b"\x81" * depth + b"\x00"


HOSTILE: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not UTF-8", b"\xff\xfe\xfd" * 1000),
    ("binary zeros", b"\x00" * 4096),
    ("128 KB exactly, garbage", b"{" + b"x" * (131_072 - 1)),
    ("deep JSON arrays", b"[" * 100_000),
    ("deep JSON objects", b'{"a":' * 20_000 + b"1" + b"}" * 20_000),
    ("deep CBOR", _nested_cbor(100_000)),
    ("CBOR indefinite garbage", b"\x9f" * 50_000),
    ("NaN and Infinity", b'{"header":{"report_id":Infinity,"version":"1.0"},"metrics":NaN}'),
    ("huge integer", b'{"header":{"report_id":' + b"9" * 5000 + b',"version":"1.0"},"metrics":{}}'),
    ("wrong types everywhere", encoded({"header": [], "metrics": "x", "custom_metrics": 3})),
    ("100 KB string", encoded(report(5, custom_metrics={"s": [{"string_list": "x" * 100_000}]}))),
]


def test_hostile_payloads_and_thing_names_never_crash_or_stall(
    odd: Device, service: ServiceProcess
) -> None:
    topic = "$aws/things/hostile-1/defender/metrics/"
    expected_replies = 0
    for _name, payload in HOSTILE:
        for fmt in ("json", "cbor"):
            odd.publish(topic + fmt, payload)
            expected_replies += 1
    odd.publish(topic + "json", b"{" * 131_073)  # over 128 KB: the broker's, no reply
    odd.publish(topic + "cbor", b"\x00" * 200_000)
    names = {  # unregistered devices' names have no pattern: only length and controls count
        "thing with spaces": "ACCEPTED",
        "thïng-ünïcödé-✓": "ACCEPTED",
        "a:b_c-d.e@f": "ACCEPTED",
        "x" * 129: "REJECTED",  # over 128 bytes
        "é" * 65: "REJECTED",  # 130 bytes of UTF-8
    }
    for thing in names:
        odd.publish(f"$aws/things/{thing}/defender/metrics/json", encoded(report(7)))
        expected_replies += 1
    got: dict[str, list[Any]] = {}
    for _ in range(expected_replies):
        reply_topic, doc = odd.reply()
        got.setdefault(doc["thingName"], []).append((reply_topic.rsplit("/", 2)[1:], doc))
    odd.assert_no_reply(0.3)  # the oversized ones got nothing
    hostile = got.pop("hostile-1")
    assert len(hostile) == 2 * len(HOSTILE)
    assert all(
        status == "rejected" and doc["statusDetails"]["ErrorCode"] == "InvalidPayload"
        for (_fmt, status), doc in hostile
    )
    for thing, status in names.items():
        (((_fmt, _status), doc),) = got[thing]
        assert doc["status"] == status, thing
    # and the service still answers a good report promptly
    started = time.monotonic()
    odd.publish("$aws/things/after-the-storm/defender/metrics/json", encoded(report(9)))
    reply_topic, doc = odd.reply(timeout=2.0)
    assert reply_topic.endswith("/json/accepted")
    assert time.monotonic() - started < 2.0
    assert service.proc.poll() is None
    assert "Traceback" not in service.log()
    assert "responder failed" not in service.log()


# --------------------------------------------------------------------------- throttle, restart
def test_throttled_per_thing_in_both_formats_then_accepted_after_the_window(
    mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    proc = ServiceProcess(
        [*tls_args(mosquitto, pki), "--min-delay", "1.5", "--db", str(tmp_path / "db.sqlite3")],
        tmp_path / "service.log",
    )
    device = None
    try:
        proc.wait_ready()
        device = tls_device(mosquitto, pki)
        device.publish(f"{BASE}/json", encoded(report(1)))
        accepted_at = time.monotonic()
        assert device.reply()[0] == f"{BASE}/json/accepted"
        device.publish(f"{BASE}/json", encoded(report(2)))
        topic, doc = device.reply()
        assert topic == f"{BASE}/json/rejected"
        assert doc["statusDetails"] == {"ErrorCode": "Throttled", "ErrorMessage": "Throttled"}
        assert doc["reportId"] == 2
        device.publish(f"{BASE}/cbor", cbor2.dumps(report(3)))  # the window is per thing
        topic, doc = device.reply()
        assert (topic, doc["statusDetails"]["ErrorCode"]) == (f"{BASE}/cbor/rejected", "Throttled")
        time.sleep(max(0.0, 1.6 - (time.monotonic() - accepted_at)))
        device.publish(f"{BASE}/json", encoded(report(4)))
        topic, doc = device.reply()
        assert (topic, doc["reportId"]) == (f"{BASE}/json/accepted", 4)
    finally:
        if device is not None:
            device.close()
        assert proc.stop() == 0
    log = proc.log()
    assert "report thing='thing1' report_id=2 status=REJECTED code=Throttled" in log
    assert "4 messages, 2 accepted, 2 rejected, 2 stored" in proc.summary()


def test_restart_loses_no_stored_data(mosquitto: Mosquitto, pki: Pki, tmp_path: Path) -> None:
    db = tmp_path / "state" / "service.sqlite3"
    args = [*tls_args(mosquitto, pki), "--min-delay", "0", "--state-dir", str(tmp_path / "state")]
    device = tls_device(mosquitto, pki)
    try:
        for run, ids in enumerate(([1, 2, 3], [4, 5])):
            proc = ServiceProcess(args, tmp_path / f"service-{run}.log")
            proc.wait_ready()
            for rid in ids:
                device.publish(f"{BASE}/json", encoded(report(rid)))
                assert device.reply()[0] == f"{BASE}/json/accepted"
            assert proc.stop(signal.SIGTERM if run == 0 else signal.SIGINT) == 0
            summary = proc.summary()
            assert f"{len(ids)} stored, {len(ids)} acknowledged once stored, 0 store errors" in (
                summary
            )
    finally:
        device.close()
    with open_store(str(db), create=False) as store:
        values = store.metric_values("thing1", "aws:all-bytes-in")
        assert [(v.report_id, v.value.count) for v in values] == [(i, i) for i in range(1, 6)]
        assert [(t.name, t.reports) for t in store.things()] == [("thing1", 5)]
    with sqlite3.connect(db) as conn:  # the file is a plain SQLite database
        assert conn.execute("SELECT COUNT(*) FROM reports").fetchone() == (5,)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--min-delay", "-1"], "--min-delay"),
        (["--port", "70000"], "--port"),
        (["--broker", "127.0.0.1"], "mutual TLS needs --cert-file and --key-file"),
        (["--no-tls", "--shared-group", "a/b"], "shared group"),
        (["--no-tls", "--db", "mysql://x"], "unsupported database URL"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run(
        [*service_command(), *args, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_waits_for_a_broker_that_is_down_and_stops_on_sigterm(tmp_path: Path) -> None:
    from tests.mqtt_infra.broker import free_port

    proc = ServiceProcess(
        [
            "--no-tls",
            "--broker",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--db",
            str(tmp_path / "d"),
        ],
        tmp_path / "service.log",
    )
    deadline = time.monotonic() + 20
    while "retrying in" not in proc.log():
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.05)
    assert proc.stop() == 0


# --------------------------------------------------------------------------- the MQTT session
def _session_present(broker: Mosquitto, client_id: str) -> bool:
    """Connect with paho, persistent session, and say whether the broker had one for the id."""
    from paho.mqtt import client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    assert broker.plain is not None
    seen: queue.Queue[bool] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_connect = lambda _c, _u, flags, _rc, _p: seen.put(bool(flags.session_present))
    client.connect("127.0.0.1", broker.plain)
    client.loop_start()
    try:
        return seen.get(timeout=WAIT_S)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("discard", [False, True])
def test_discard_session_ends_the_broker_session_at_disconnect(
    mosquitto: Mosquitto, discard: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT 3.1.1 sessions persist; with ``discard_session`` the transport ends its own."""
    assert mosquitto.plain is not None
    client_id = f"svc-discard-{discard}"
    settings = MqttSettings(
        endpoint="127.0.0.1",
        port=mosquitto.plain,
        client_id=client_id,
        use_tls=False,
        connect_timeout_s=WAIT_S,
        discard_session=discard,
    )
    transport = MqttTransport(settings)
    transport.connect()
    transport.subscribe("$aws/things/+/defender/metrics/+", lambda _t, _p: None)
    with caplog.at_level("INFO"):
        transport.disconnect()
    assert ("ended the MQTT session of " + client_id in caplog.text) is discard
    assert _session_present(mosquitto, client_id) is not discard
