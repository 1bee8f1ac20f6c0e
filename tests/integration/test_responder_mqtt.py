"""The responder service against a real mosquitto, over MqttTransport with mutual TLS.

The service connects as the user ``responder`` (may read and write ``$aws/#``); the
device connects as ``thing1``, which the broker's ACL lets publish only its own
report topics and read only its own reply topics, as an AWS IoT policy would
(tests/mqtt_infra/broker.py). Everything is on 127.0.0.1.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from typing import Any, Callable

import cbor2
import pytest

from defender_agent.service.responder import Responder
from defender_agent.service.responder_service import ResponderService
from defender_agent.transport.base import MqttSettings
from defender_agent.transport.mqtt import MqttTransport
from tests.mqtt_infra.broker import Mosquitto
from tests.mqtt_infra.pki import Pki

WAIT_S = 10.0
BASE = "$aws/things/thing1/defender/metrics"
REPLY_TOPICS = [
    f"{BASE}/{fmt}/{status}" for fmt in ("json", "cbor") for status in ("accepted", "rejected")
]


def report(report_id: int) -> dict[str, Any]:
    return {
        "header": {"report_id": report_id, "version": "1.0"},
        "metrics": {
            "network_stats": {"bytes_in": 10, "bytes_out": 20, "packets_in": 1, "packets_out": 2}
        },
    }


class Inbox:
    """The replies a device receives, in arrival order."""

    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.put((topic, payload))

    def next(self) -> tuple[str, bytes]:
        try:
            return self.messages.get(timeout=WAIT_S)
        except queue.Empty:
            pytest.fail(f"no reply within {WAIT_S} s")

    def assert_empty(self, wait_s: float = 0.3) -> None:
        time.sleep(wait_s)
        assert self.messages.empty(), self.messages.get_nowait()


@pytest.fixture
def connect(mosquitto: Mosquitto, pki: Pki) -> Iterator[Callable[[str], MqttTransport]]:
    """Connect an MqttTransport to the broker's TLS listener as one of the PKI's clients."""
    made: list[MqttTransport] = []

    def make(name: str) -> MqttTransport:
        cert, key = pki.client(name)
        transport = MqttTransport(
            MqttSettings(
                endpoint="127.0.0.1",
                port=mosquitto.port,
                client_id=name,
                ca_file=pki.ca,
                cert_file=cert,
                key_file=key,
                connect_timeout_s=WAIT_S,
            )
        )
        made.append(transport)
        transport.connect()
        return transport

    yield make
    for transport in reversed(made):
        transport.disconnect()


@pytest.fixture
def service(connect: Callable[[str], MqttTransport]) -> Iterator[ResponderService]:
    svc = ResponderService(connect("responder"), Responder())
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def device(connect: Callable[[str], MqttTransport]) -> tuple[MqttTransport, Inbox]:
    """thing1, subscribed to its four reply topics (before it publishes, §1.1)."""
    transport, inbox = connect("thing1"), Inbox()
    for topic in REPLY_TOPICS:
        transport.subscribe(topic, inbox)
    return transport, inbox


def publish(transport: MqttTransport, topic: str, payload: bytes) -> None:
    transport.publish(topic, payload).result(timeout=WAIT_S)  # PUBACK


def test_json_report_invalid_then_accepted_then_throttled(
    service: ResponderService, device: tuple[MqttTransport, Inbox]
) -> None:
    transport, inbox = device
    # invalid reports first: inside a throttle window a report is Throttled before it is
    # decoded (issue #9)
    bad = {
        "header": {"report_id": 1_700_000_002, "version": "1.0"},
        "custom_metrics": {"m": {"number": 0}},
    }
    publish(transport, f"{BASE}/json", json.dumps(bad).encode())
    topic, payload = inbox.next()
    assert topic == f"{BASE}/json/rejected"
    rejected = json.loads(payload)
    assert rejected["status"] == "REJECTED"
    assert rejected["reportId"] == 1_700_000_002
    assert rejected["statusDetails"] == {
        "ErrorCode": "InvalidPayload",
        "ErrorMessage": "Malformed metrics report",
    }

    publish(transport, f"{BASE}/json", b"\xff not json")
    topic, payload = inbox.next()
    assert topic == f"{BASE}/json/rejected"
    assert "reportId" not in json.loads(payload)

    started_ms = int(time.time() * 1000)
    publish(transport, f"{BASE}/json", json.dumps(report(1_700_000_001)).encode())
    topic, payload = inbox.next()
    assert topic == f"{BASE}/json/accepted"
    accepted = json.loads(payload)
    assert list(accepted) == ["thingName", "reportId", "status", "timestamp"]
    assert accepted["thingName"] == "thing1"
    assert accepted["reportId"] == 1_700_000_001
    assert accepted["status"] == "ACCEPTED"
    assert started_ms - 1000 <= accepted["timestamp"] <= int(time.time() * 1000) + 1000

    publish(transport, f"{BASE}/json", json.dumps(report(1_700_000_003)).encode())
    topic, payload = inbox.next()
    assert topic == f"{BASE}/json/rejected"
    throttled = json.loads(payload)
    assert throttled["reportId"] == 1_700_000_003
    assert throttled["statusDetails"] == {"ErrorCode": "Throttled", "ErrorMessage": "Throttled"}
    inbox.assert_empty()

    snap = service.responder.snapshot()
    assert snap.accepted == 1
    assert dict(snap.rejected) == {"InvalidPayload": 2, "Throttled": 1}
    stats = service.stats()
    assert (stats.messages, stats.replies, stats.handler_errors) == (4, 4, 0)


def test_cbor_report_gets_a_cbor_reply(
    service: ResponderService, device: tuple[MqttTransport, Inbox]
) -> None:
    transport, inbox = device
    publish(transport, f"{BASE}/cbor", cbor2.dumps(report(42)))
    topic, payload = inbox.next()
    assert topic == f"{BASE}/cbor/accepted"
    accepted = cbor2.loads(payload)
    assert accepted["thingName"] == "thing1"
    assert (accepted["reportId"], accepted["status"]) == (42, "ACCEPTED")

    publish(transport, f"{BASE}/cbor", cbor2.dumps(report(43)))
    topic, payload = inbox.next()
    assert topic == f"{BASE}/cbor/rejected"
    assert cbor2.loads(payload)["statusDetails"]["ErrorCode"] == "Throttled"
    inbox.assert_empty()


def test_reports_of_other_things_and_bad_topics_get_no_reply_here(
    service: ResponderService,
    device: tuple[MqttTransport, Inbox],
    connect: Callable[[str], MqttTransport],
) -> None:
    transport, inbox = device
    other = connect("thing2")
    publish(other, "$aws/things/thing2/defender/metrics/json", json.dumps(report(5)).encode())
    publish(transport, f"{BASE}/json", b"x" * 131_073)  # over the limit: no reply (§7.2)
    inbox.assert_empty(1.0)
    deadline = time.monotonic() + WAIT_S
    while service.stats().messages < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    snap = service.responder.snapshot()
    assert snap.things["thing2"].accepted == 1
    assert snap.dropped == 1
