"""`defender-agent doctor` against a real mosquitto (client certificates, an AWS-IoT-like ACL).

Each injected fault is found by the right check, with the fix in words: an ACL that
denies the subscription, a wrong CA, an expired client certificate, a server
certificate for another name, a closed port, a port that accepts and never answers
(the whole command under 30 s); and all good exits 0.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_tls_diagnose import elsewhere  # noqa: F401 - a fixture
from tests.mqtt_infra.broker import Mosquitto, dynsec_plugin, free_port
from tests.mqtt_infra.pki import Pki

EXE = [sys.executable, "-m", "defender_agent", "doctor"]


def doctor(
    tmp_path: Path, port: int, pki: Pki, name: str = "thing1", *extra: str
) -> tuple[int, dict[str, Any], float]:
    """Run doctor as a subprocess with --format json: (exit code, document, seconds)."""
    cert, key = pki.client(name)
    args = ["-e", "127.0.0.1", "--port", str(port), "-r", str(pki.ca), "-c", str(cert)]
    args += ["-k", str(key), "--client-id", name, "--state-dir", str(tmp_path / "state")]
    started = time.monotonic()
    result = subprocess.run(
        [*EXE, *args, *extra, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    took = time.monotonic() - started
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout), took


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in doc["checks"]}


def failed(doc: dict[str, Any]) -> list[str]:
    return [c["name"] for c in doc["checks"] if c["status"] == "fail"]


def test_all_good_exits_0_and_lists_every_check_in_order(
    mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    code, doc, _took = doctor(tmp_path, mosquitto.port, pki)
    assert code == 0, doc
    assert doc["ok"] is True
    assert [c["name"] for c in doc["checks"]] == [
        "configuration",
        "CA, certificate and key",
        "certificate expiry",
        "key permissions",
        "thing name",
        "system clock",
        "name resolution",
        "TCP connect",
        "TLS handshake",
        "MQTT CONNECT",
        "MQTT SUBSCRIBE",
        "state directory",
        "proc",
        "interval",
    ]
    checks = by_name(doc)
    assert {c["status"] for c in doc["checks"]} == {"ok"}, doc
    assert "valid for 36" in checks["certificate expiry"]["detail"]
    assert checks["TLS handshake"]["detail"].startswith("TLSv1.")
    assert "granted" in checks["MQTT SUBSCRIBE"]["detail"]
    assert "Received PUBLISH from thing1" not in mosquitto.log()  # only with --publish-test


def test_text_output_one_line_per_check_with_marks(
    mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    cert, key = pki.client("thing1")
    result = subprocess.run(
        [
            *EXE,
            "-e",
            "127.0.0.1",
            "--port",
            str(mosquitto.port),
            "-r",
            str(pki.other_ca),
            "-c",
            str(cert),
            "-k",
            str(key),
            "--client-id",
            "thing1",
            "--state-dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONIOENCODING": "utf-8"},
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("✓ configuration: valid")
    tls = [i for i, line in enumerate(lines) if line.startswith("✗ TLS handshake: ")]
    assert len(tls) == 1, result.stdout
    assert lines[tls[0] + 1].strip().startswith("fix: use the CA that signed")
    assert "- MQTT CONNECT: not tried: TLS handshake failed" in lines


@pytest.fixture
def strict_broker(pki: Pki, tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that, like AWS IoT, refuses a SUBSCRIBE the policy does not allow: thing1
    may subscribe to its JSON replies only."""
    if dynsec_plugin() is None:
        pytest.skip("mosquitto's dynamic-security plugin is not installed")
    json_replies = [
        f"$aws/things/thing1/defender/metrics/json/{k}" for k in ("accepted", "rejected")
    ]
    with Mosquitto(tmp_path / "strict", pki, allow_subscribe={"thing1": json_replies}) as broker:
        yield broker


def test_a_refused_subscribe_prints_the_missing_policy_statement(
    strict_broker: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    """The policy allows the JSON reply topics; the agent is set to CBOR: SUBACK failure,
    and the statement for the CBOR topics of thing1, region from the endpoint (here none)."""
    code, doc, _ = doctor(tmp_path, strict_broker.port, pki, "thing1")
    assert code == 0, doc  # the JSON topics are granted
    code, doc, _ = doctor(tmp_path, strict_broker.port, pki, "thing1", "--report-format", "cbor")
    assert code == 1
    assert failed(doc) == ["MQTT SUBSCRIBE"], doc
    checks = by_name(doc)
    assert checks["MQTT CONNECT"]["status"] == "ok"
    sub = checks["MQTT SUBSCRIBE"]
    assert "$aws/things/thing1/defender/metrics/cbor/accepted" in sub["detail"]
    assert "lacks iot:Subscribe/iot:Receive" in sub["fix"]
    statement = json.loads(sub["fix"].split("add these statements: ", 1)[1])
    assert statement[0]["Action"] == "iot:Subscribe"
    assert statement[0]["Resource"] == [
        "arn:aws:iot:*:*:topicfilter/$aws/things/thing1/defender/metrics/cbor/accepted",
        "arn:aws:iot:*:*:topicfilter/$aws/things/thing1/defender/metrics/cbor/rejected",
    ]
    assert statement[1]["Action"] == "iot:Receive"
    assert statement[1]["Resource"][0].startswith("arn:aws:iot:*:*:topic/$aws/things/thing1/")


def test_a_wrong_ca_is_named_with_the_fix(mosquitto: Mosquitto, pki: Pki, tmp_path: Path) -> None:
    code, doc, _ = doctor(tmp_path, mosquitto.port, pki, "thing1", "-r", str(pki.other_ca))
    assert code == 1
    assert failed(doc) == ["TLS handshake"], doc
    tls = by_name(doc)["TLS handshake"]
    assert tls["detail"] == f"the server's certificate is not signed by CA {pki.other_ca}"
    assert "AmazonRootCA1.pem" in tls["fix"]
    assert by_name(doc)["MQTT CONNECT"]["status"] == "skip"


def test_an_expired_client_certificate(mosquitto: Mosquitto, pki: Pki, tmp_path: Path) -> None:
    code, doc, _ = doctor(tmp_path, mosquitto.port, pki, "expired")
    assert code == 1
    files = by_name(doc)["CA, certificate and key"]
    assert files["status"] == "fail"
    assert "expired on Jan  2 00:00:00 2020 GMT" in files["detail"]
    assert "make a new certificate" in files["fix"]
    # the broker refuses it too; MQTT is not tried with files known to be bad
    assert by_name(doc)["MQTT CONNECT"]["status"] == "skip"


def test_a_server_certificate_for_another_name(
    elsewhere: Mosquitto,  # noqa: F811 - the imported fixture
    pki: Pki,
    tmp_path: Path,
) -> None:
    code, doc, _ = doctor(tmp_path, elsewhere.port, pki)
    assert code == 1
    tls = by_name(doc)["TLS handshake"]
    assert tls["detail"] == "the server's certificate is for elsewhere.example, not 127.0.0.1"
    assert "describe-endpoint" in tls["fix"]


def test_a_closed_port(pki: Pki, tmp_path: Path) -> None:
    code, doc, _ = doctor(tmp_path, free_port(), pki)
    assert code == 1
    assert failed(doc) == ["TCP connect"]
    tcp = by_name(doc)["TCP connect"]
    assert "connection refused" in tcp["detail"] and "8883" in tcp["fix"]
    assert by_name(doc)["TLS handshake"]["status"] == "skip"


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()
    for conn in held:
        conn.close()


def test_a_port_that_never_answers_fails_in_under_30_s(
    black_hole: int, pki: Pki, tmp_path: Path
) -> None:
    code, doc, took = doctor(tmp_path, black_hole, pki)
    assert code == 1
    assert took < 30, took
    assert by_name(doc)["TCP connect"]["status"] == "ok"
    tls = by_name(doc)["TLS handshake"]
    assert tls["status"] == "fail"
    assert "accepts connections but does not answer" in tls["detail"]
    assert failed(doc) == ["TLS handshake"]


def test_publish_test_sends_one_report_and_waits_for_its_reply(
    mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    """No service answers on this broker: the report is published (PUBACK) and the
    missing reply is the failure, in words."""
    code, doc, _ = doctor(tmp_path, mosquitto.port, pki, "thing1", "--publish-test")
    assert code == 1
    test = by_name(doc)["test report"]
    assert test["status"] == "fail" and "no reply within 10 s" in test["detail"]
    assert mosquitto.log().count("Received PUBLISH from thing1") == 1


def test_a_refused_connect_names_the_likely_policy_problem(pki: Pki, tmp_path: Path) -> None:
    """The TLS handshake works, the broker refuses the CONNECT (CONNACK not authorized)."""
    with Mosquitto(tmp_path / "refusing", pki, refuse_connect=True) as broker:
        code, doc, _ = doctor(tmp_path, broker.port, pki, "thing1")
    assert code == 1, doc
    assert failed(doc) == ["MQTT CONNECT"], doc
    connect = by_name(doc)["MQTT CONNECT"]
    # awscrt reports mosquitto's refusal as a protocol error; AWS IoT closes the connection
    assert connect["detail"].startswith("as client id thing1: "), connect
    assert "iot:Connect" in connect["fix"] and "client/thing1" in connect["fix"]
    assert by_name(doc)["TLS handshake"]["status"] == "ok"
