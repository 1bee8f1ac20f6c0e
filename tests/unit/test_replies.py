"""Reply parsing and the ledger: matching by reportId, counters, Throttled, unknown ids."""

from __future__ import annotations

import json

import cbor2
import pytest

from defender_agent.replies import ReplyLedger, parse_reply

T = "$aws/things/gw/defender/metrics/json"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def accepted(rid: object) -> bytes:
    return json.dumps(
        {"thingName": "gw", "reportId": rid, "status": "ACCEPTED", "timestamp": 1}
    ).encode()


def rejected(code: str, rid: object = None) -> bytes:
    doc: dict[str, object] = {
        "thingName": "gw",
        "status": "REJECTED",
        "timestamp": 1,
        "statusDetails": {"ErrorCode": code, "ErrorMessage": "why"},
    }
    if rid is not None:
        doc["reportId"] = rid
    return json.dumps(doc).encode()


def test_parse_accepted_and_rejected_json_and_cbor() -> None:
    assert parse_reply(T + "/accepted", accepted(5)).report_id == 5
    r = parse_reply(T + "/rejected", rejected("InvalidPayload", 6))
    assert (r.accepted, r.report_id, r.error_code, r.error_message) == (
        False,
        6,
        "InvalidPayload",
        "why",
    )
    c = parse_reply(
        "$aws/things/gw/defender/metrics/cbor/rejected",
        cbor2.dumps({"status": "REJECTED", "statusDetails": {"ErrorCode": "Throttled"}}),
    )
    assert (c.report_id, c.error_code) == (None, "Throttled")


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (T + "/accepted", b"{not json"),
        (T + "/accepted", b"[1]"),
        (T, accepted(1)),
        (T + "/accepted", json.dumps({"status": "REJECTED"}).encode()),
        ("$aws/things/gw/defender/metrics/cbor/accepted", b"\xff\xff"),
    ],
)
def test_parse_bad_replies(topic: str, payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse_reply(topic, payload)


def test_ledger_matches_by_report_id() -> None:
    clock = Clock()
    ledger = ReplyLedger(300, clock=clock, wall=lambda: 1.7e9)
    for rid in (1, 2):
        ledger.expect(rid)
        ledger.sent(rid)
    ledger.on_message(T + "/accepted", accepted(2))
    ledger.on_message(T + "/accepted", accepted(2))  # a duplicate: no longer pending
    ledger.on_message(T + "/accepted", accepted(99))  # not ours
    snap = ledger.snapshot()
    assert (snap["sent"], snap["accepted"], snap["unknown_replies"], snap["awaiting_reply"]) == (
        2,
        1,
        2,
        1,
    )
    assert snap["last_accepted_at"] == 1.7e9
    clock.now += 301
    assert ledger.expire() == 1
    assert ledger.snapshot()["unanswered"] == 1


def test_rejections_counted_by_code_and_throttled_holds(caplog: pytest.LogCaptureFixture) -> None:
    ledger = ReplyLedger(300, clock=Clock())
    ledger.expect(1)
    ledger.expect(2)
    ledger.on_message(T + "/rejected", rejected("InvalidPayload", 1))
    assert not ledger.take_hold()
    ledger.on_message(T + "/rejected", rejected("Throttled", 2))
    assert ledger.take_hold() and not ledger.take_hold()
    ledger.on_message(T + "/rejected", rejected("InvalidPayload"))  # no reportId: still counted
    snap = ledger.snapshot()
    assert snap["rejected"] == {"InvalidPayload": 2, "Throttled": 1}
    assert snap["last_rejection"]["code"] == "InvalidPayload"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 3 and "Throttled" in errors[1].getMessage()


def test_hostile_rejection_codes_cannot_grow_the_status_file() -> None:
    ledger = ReplyLedger(300, clock=Clock())
    for n in range(1000):  # a publisher on our reply topic, a new code each time, no reportId
        ledger.on_message(T + "/rejected", rejected(f"Code{n}" + "x" * 500))
    snap = ledger.snapshot()
    assert len(snap["rejected"]) == 17  # 16 codes by name, then "Other"
    assert snap["rejected"]["Other"] == 1000 - 16
    assert all(len(code) <= 64 for code in snap["rejected"])
    assert len(json.dumps(snap)) < 4000


def test_rejection_for_someone_else_is_ignored() -> None:
    ledger = ReplyLedger(300, clock=Clock())
    ledger.on_message(T + "/rejected", rejected("Throttled", 77))
    assert not ledger.take_hold()
    assert ledger.snapshot()["rejected"] == {}
    ledger.on_message(T + "/accepted", b"garbage")
    assert ledger.snapshot()["bad_replies"] == 1


def test_reply_before_puback_and_failed_publish() -> None:
    ledger = ReplyLedger(300, clock=Clock())
    ledger.expect(1)
    ledger.on_message(T + "/accepted", accepted(1))  # the reply raced the PUBACK
    ledger.sent(1)
    ledger.expect(2)
    ledger.failed(2, "no PUBACK")
    ledger.on_message(T + "/accepted", accepted(2))  # too late to trust
    snap = ledger.snapshot()
    assert (snap["accepted"], snap["sent"], snap["dropped"], snap["unknown_replies"]) == (
        1,
        1,
        1,
        1,
    )
    assert snap["last_error"] == "no PUBACK"
