"""Tests for defender_agent.service.responder_service over the in-memory transport.

Messages arrive through :class:`MemoryTransport` as a broker would route them; the ones a real
broker would never deliver (a NUL in the topic) are handed to the subscription's handler
directly (:func:`hand_over`), since the service must survive them all the same.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future

import cbor2
import pytest

from defender_agent.errors import ConfigError, PublishError, TransportError
from defender_agent.service.responder import Outcome, Responder
from defender_agent.service.responder_service import (
    REPORT_TOPIC_FILTER,
    ResponderService,
    ServiceStats,
    report_filter,
)
from defender_agent.transport.memory import MemoryTransport
from defender_agent.transport.topics import topic_matches
from defender_agent.transport.wrap import TransportWrapper

REPORT = b'{"header":{"report_id":7,"version":"1.0"},"metrics":{}}'
JSON_TOPIC = "$aws/things/thing1/defender/metrics/json"
CBOR_TOPIC = "$aws/things/thing1/defender/metrics/cbor"


def hand_over(transport: MemoryTransport, topic: str, payload: bytes) -> None:
    """Call every subscription's handler with a message no real broker would deliver."""
    for handler in transport.subscriptions.values():
        handler(topic, payload)


class CancellingTransport(TransportWrapper):
    """Every publish's future is cancelled (what a client does with a request it drops)."""

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        super().publish(topic, payload)
        cancelled: Future[None] = Future()
        cancelled.cancel()
        return cancelled


class ExplodingResponder(Responder):
    """Raises on the first ``failures`` messages, then answers normally."""

    def __init__(self, failures: int = 1) -> None:
        super().__init__(clock=lambda: 1_700_000_000.0)
        self.failures = failures

    def handle(self, topic: str, payload: bytes) -> Outcome:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("boom")
        return super().handle(topic, payload)


@pytest.fixture
def transport() -> MemoryTransport:
    connected = MemoryTransport(client_id="service")
    connected.connect()
    return connected


@pytest.fixture
def service(transport: MemoryTransport) -> ResponderService:
    svc = ResponderService(transport, Responder(clock=lambda: 1_700_000_000.0))
    svc.start()
    return svc


def test_start_subscribes_to_every_report_topic_once(transport: MemoryTransport) -> None:
    service = ResponderService(transport)
    assert not service.running
    service.start()
    service.start()
    assert list(transport.subscriptions) == ["$aws/things/+/defender/metrics/+"]
    assert REPORT_TOPIC_FILTER == "$aws/things/+/defender/metrics/+"
    assert service.running


@pytest.mark.parametrize(
    ("topic", "matched"),
    [
        (JSON_TOPIC, True),
        (CBOR_TOPIC, True),
        ("$aws/things/other/defender/metrics/json", True),
        ("$aws/things/thing1/defender/metrics/JSON", True),  # matched, then dropped
        ("$aws/things/thing1/defender/metrics/json/accepted", False),  # never our own replies
        ("$aws/things/thing1/defender/metrics/json/rejected", False),
        ("$aws/things/thing1/defender/metrics/cbor/accepted", False),
        ("$aws/things/thing1/shadow/update", False),
    ],
)
def test_subscription_filter(topic: str, matched: bool) -> None:
    assert topic_matches(REPORT_TOPIC_FILTER, topic) is matched


@pytest.mark.parametrize(
    ("topic", "payload", "reply_topic", "status"),
    [
        (JSON_TOPIC, REPORT, JSON_TOPIC + "/accepted", "ACCEPTED"),
        (JSON_TOPIC, b"{}", JSON_TOPIC + "/rejected", "REJECTED"),
        (CBOR_TOPIC, cbor2.dumps(json.loads(REPORT)), CBOR_TOPIC + "/accepted", "ACCEPTED"),
        (CBOR_TOPIC, REPORT, CBOR_TOPIC + "/rejected", "REJECTED"),
    ],
)
def test_reply_is_published_on_the_right_topic(
    service: ResponderService,
    transport: MemoryTransport,
    topic: str,
    payload: bytes,
    reply_topic: str,
    status: str,
) -> None:
    assert transport.deliver(topic, payload) == 1
    assert [t for t, _ in transport.published] == [reply_topic]
    reply = transport.published[0][1]
    doc = json.loads(reply) if topic.endswith("json") else cbor2.loads(reply)
    assert doc["status"] == status
    assert doc["thingName"] == "thing1"
    assert service.stats() == ServiceStats(
        messages=1, replies=1, publish_failures=0, handler_errors=0, ignored=0
    )


def test_throttled_second_report(service: ResponderService, transport: MemoryTransport) -> None:
    transport.deliver(JSON_TOPIC, REPORT)
    transport.deliver(JSON_TOPIC, REPORT)
    second = json.loads(transport.published[1][1])
    assert transport.published[1][0] == JSON_TOPIC + "/rejected"
    assert second["statusDetails"]["ErrorCode"] == "Throttled"
    assert second["reportId"] == 7
    snap = service.responder.snapshot()
    assert (snap.accepted, dict(snap.rejected)) == (1, {"Throttled": 1})


def test_not_a_report_topic_publishes_nothing(
    service: ResponderService, transport: MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "defender_agent.service.responder_service")
    transport.deliver("$aws/things/thing1/defender/metrics/JSON", REPORT)
    transport.deliver("$aws/things/thing1/defender/metrics/json", b"\x00" * 200_000)
    assert transport.published == []
    assert service.stats().messages == 2
    assert service.responder.snapshot().dropped == 2
    dropped = [r.getMessage() for r in caplog.records if "DROPPED" in r.getMessage()]
    assert len(dropped) == 2
    assert "not a Device Defender report topic" in dropped[0]


def test_each_outcome_is_logged_at_info_in_one_line(
    service: ResponderService, transport: MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "defender_agent.service.responder_service")
    transport.deliver(JSON_TOPIC, REPORT)
    transport.deliver(JSON_TOPIC, REPORT)
    transport.deliver("$aws/things/a\nb/defender/metrics/json", b"nonsense")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "report thing='thing1' report_id=7 status=ACCEPTED code=-: accepted" in lines
    assert any(
        line.startswith("report thing='thing1' report_id=7 status=REJECTED code=Throttled: ")
        for line in lines
    )
    assert any(
        line.startswith("report thing='a\\nb' report_id=None status=REJECTED") for line in lines
    )
    assert all("\n" not in line for line in lines)


def test_exception_in_handling_is_caught_logged_and_counted(
    transport: MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    service = ResponderService(transport, ExplodingResponder(failures=2))
    service.start()
    transport.deliver(JSON_TOPIC, REPORT)  # must not raise into the transport's thread
    transport.deliver(JSON_TOPIC, REPORT)
    assert service.stats().handler_errors == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert errors[0].exc_info is not None
    assert "thing1" in errors[0].getMessage()
    transport.deliver(JSON_TOPIC, REPORT)  # the next message is answered as usual
    assert [t for t, _ in transport.published] == [JSON_TOPIC + "/accepted"]
    assert service.stats().messages == 3


def test_publish_that_raises_is_logged_at_warning(
    service: ResponderService, transport: MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    transport.fail_next_publishes(1, PublishError("not connected"), synchronous=True)
    transport.deliver(JSON_TOPIC, REPORT)
    assert service.stats().publish_failures == 1
    assert service.stats().replies == 0
    assert service.stats().handler_errors == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    reply_topic = "'$aws/things/thing1/defender/metrics/json/accepted'"
    assert warnings == [f"responder could not publish the reply on {reply_topic}: not connected"]


def test_publish_is_fired_not_awaited(
    service: ResponderService, transport: MemoryTransport
) -> None:
    transport.auto_ack = False
    transport.deliver(JSON_TOPIC, REPORT)  # returns although the PUBACK never comes
    assert service.stats().replies == 1
    assert service.stats().publish_failures == 0


def test_publish_failing_later_is_logged_at_warning(
    service: ResponderService, transport: MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    transport.auto_ack = False
    transport.deliver(JSON_TOPIC, REPORT)
    assert transport.ack_pending(PublishError("no PUBACK")) == 1
    transport.deliver("$aws/things/thing2/defender/metrics/json", REPORT)
    transport.disconnect()
    assert service.stats().publish_failures == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].endswith("json/accepted': no PUBACK")
    assert warnings[1].endswith("json/accepted': disconnected before the PUBACK arrived")


def test_a_cancelled_publish_is_logged_at_warning(
    transport: MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    service = ResponderService(CancellingTransport(transport), Responder(clock=lambda: 1.0))
    service.start()
    transport.deliver(JSON_TOPIC, REPORT)
    assert service.stats().publish_failures == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"responder could not publish the reply on '{JSON_TOPIC}/accepted': cancelled"
    ]


def test_stop_ignores_messages_and_start_resumes(
    service: ResponderService, transport: MemoryTransport
) -> None:
    service.stop()
    service.stop()
    assert not service.running
    transport.deliver(JSON_TOPIC, REPORT)
    assert transport.published == []
    assert service.stats().ignored == 1
    service.start()
    transport.deliver(JSON_TOPIC, REPORT)
    assert [t for t, _ in transport.published] == [JSON_TOPIC + "/accepted"]
    assert list(transport.subscriptions) == [REPORT_TOPIC_FILTER]  # not subscribed twice


def test_failed_subscription_leaves_the_service_stopped(transport: MemoryTransport) -> None:
    service = ResponderService(transport)
    transport.fail_next_subscribes(1, TransportError("SUBACK refused"))
    with pytest.raises(TransportError):
        service.start()
    assert not service.running
    service.start()
    assert list(transport.subscriptions) == [REPORT_TOPIC_FILTER]
    transport.deliver(JSON_TOPIC, REPORT)
    assert [t for t, _ in transport.published] == [JSON_TOPIC + "/accepted"]


def test_default_responder(transport: MemoryTransport) -> None:
    service = ResponderService(transport)
    assert service.responder.policy.min_delay_s == 300.0


HOSTILE = [
    b"",
    b"\xff\xfe\x00",
    b"[" * 100_000,
    b"\x81" * 100_000 + b"\x00",
    b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xd8\x1c\x81\xd8\x1d\x00",
    b'{"header":{"report_id":NaN}}',
    b"x" * 131_073,
]


def test_hostile_messages_never_escape(
    service: ResponderService, transport: MemoryTransport
) -> None:
    for n, payload in enumerate(HOSTILE):
        for fmt in ("json", "cbor"):
            transport.deliver(f"$aws/things/t{n}/defender/metrics/{fmt}", payload)
            hand_over(transport, f"$aws/things/t\x00{n}/defender/metrics/{fmt}", payload)
    stats = service.stats()
    assert stats.handler_errors == 0
    assert stats.messages == 4 * len(HOSTILE)
    assert stats.replies == 4 * (len(HOSTILE) - 1)  # the oversize payloads get no reply
    assert all(topic.endswith("/rejected") for topic, _ in transport.published)


def test_concurrent_deliveries(service: ResponderService, transport: MemoryTransport) -> None:
    def deliver(n: int) -> None:
        for _ in range(25):
            transport.deliver(f"$aws/things/t{n % 4}/defender/metrics/json", REPORT)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert service.stats().messages == service.stats().replies == 200
    snap = service.responder.snapshot()
    assert snap.accepted == 4
    assert dict(snap.rejected) == {"Throttled": 196}


# --------------------------------------------------------------------------- topic_filter, topic_prefix, on_outcome
def test_report_filter_forms() -> None:
    assert report_filter() == REPORT_TOPIC_FILTER
    assert report_filter("dd") == "$share/dd/$aws/things/+/defender/metrics/+"
    assert report_filter(None, "b/") == "b/$aws/things/+/defender/metrics/+"
    for group in ("", "a/b", "a+", "#"):
        with pytest.raises(ConfigError):
            report_filter(group)
    with pytest.raises(ConfigError):
        report_filter(None, "x/+/")


def test_shared_filter_is_subscribed_and_real_topics_answered(transport: MemoryTransport) -> None:
    shared = report_filter("dd")
    service = ResponderService(transport, Responder(clock=lambda: 1.0), topic_filter=shared)
    service.start()
    assert list(transport.subscriptions) == [shared]
    assert service.topic_filter == shared
    ((_, handler),) = transport.subscriptions.items()
    handler(JSON_TOPIC, REPORT)  # a broker hands shared messages over with the real topic
    assert [t for t, _ in transport.published] == [JSON_TOPIC + "/accepted"]


def test_topic_prefix_is_taken_off_before_the_responder(transport: MemoryTransport) -> None:
    seen: list[tuple[str, Outcome]] = []
    service = ResponderService(
        transport,
        Responder(clock=lambda: 1.0),
        topic_filter=report_filter("dd", "bridged/"),
        topic_prefix="bridged/",
        on_outcome=lambda t, o: seen.append((t, o)),
    )
    service.start()
    ((_, handler),) = transport.subscriptions.items()
    handler("bridged/" + JSON_TOPIC, REPORT)
    handler(JSON_TOPIC, REPORT)  # without the prefix: handled as it is (throttled here)
    assert [t for t, _ in transport.published] == [
        JSON_TOPIC + "/accepted",
        JSON_TOPIC + "/rejected",
    ]
    assert [t for t, _ in seen] == [JSON_TOPIC, JSON_TOPIC]
    assert seen[0][1].reason == "accepted"
    assert seen[0][1].report is not None and seen[1][1].report is None  # only when accepted


def test_on_outcome_runs_after_the_publish_and_for_drops(transport: MemoryTransport) -> None:
    order: list[str] = []

    def hook(topic: str, outcome: Outcome) -> None:
        order.append(f"hook:{len(transport.published)}:{outcome.reply is not None}")

    service = ResponderService(transport, Responder(clock=lambda: 1.0), on_outcome=hook)
    service.start()
    transport.deliver(JSON_TOPIC, REPORT)
    transport.deliver(JSON_TOPIC, b"x" * 200_000)  # dropped: no reply, the hook still runs
    assert order == ["hook:1:True", "hook:1:False"]


def test_on_outcome_errors_are_contained(
    transport: MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(topic: str, outcome: Outcome) -> None:
        raise RuntimeError("storage bug")

    service = ResponderService(transport, Responder(clock=lambda: 1.0), on_outcome=hook)
    service.start()
    transport.deliver(JSON_TOPIC, REPORT)
    transport.deliver("$aws/things/t2/defender/metrics/json", REPORT)
    assert [t for t, _ in transport.published] == [
        JSON_TOPIC + "/accepted",
        "$aws/things/t2/defender/metrics/json/accepted",
    ]  # the reply went out before the hook failed
    assert service.stats().handler_errors == 2
    assert "responder failed on a message" in caplog.text


def test_on_accepted_takes_over_the_accepted_replies_only(transport: MemoryTransport) -> None:
    held: list[Outcome] = []
    service = ResponderService(
        transport,
        Responder(clock=lambda: 1_700_000_000.0),
        on_accepted=lambda _topic, outcome: held.append(outcome),
    )
    service.start()
    transport.deliver(JSON_TOPIC, REPORT)
    transport.deliver(JSON_TOPIC, b"not json")  # a rejection goes out at once
    assert [t.rsplit("/", 1)[1] for t, _ in transport.published] == ["rejected"]
    (outcome,) = held
    assert outcome.report is not None and outcome.reply is not None
    service.publish(outcome.reply)  # the hook's owner publishes it (once stored)
    assert [t.rsplit("/", 1)[1] for t, _ in transport.published] == ["rejected", "accepted"]
    assert service.stats().replies == 2
