"""Tests for defender_agent.service.responder: every rule of protocol.md §7 and the replies of §4.

Replies are checked by decoding them (json / cbor2) and comparing whole documents,
key order included, so the exact shape of §4.1 and §4.2 is pinned.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from typing import Any, Optional

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defender_agent.errors import ConfigError
from defender_agent.report.decode import decode_report
from defender_agent.report.validate import PayloadFormat, ValidationPolicy
from defender_agent.service.responder import (
    DEFAULT_RESPONDER_POLICY,
    INVALID_PAYLOAD,
    THROTTLED,
    Outcome,
    Reply,
    Responder,
    ResponderPolicy,
    ThingCounts,
    parse_topic,
    peek_report_id,
)
from tests.conftest import PROTOCOL_EXAMPLE_METRICS

JSON, CBOR = PayloadFormat.JSON, PayloadFormat.CBOR
T0 = 1_700_000_000.5  # a clock reading with an exact millisecond value
T0_MS = 1_700_000_000_500
MALFORMED = {"ErrorCode": "InvalidPayload", "ErrorMessage": "Malformed metrics report"}
THROTTLED_DETAILS = {"ErrorCode": "Throttled", "ErrorMessage": "Throttled"}

# protocol.md §2.7, long names
LONG: dict[str, Any] = {
    "header": {"report_id": 1700000000, "version": "1.0"},
    "metrics": copy.deepcopy(PROTOCOL_EXAMPLE_METRICS),
    "custom_metrics": {"cpu_usage": [{"number": 12.5}], "ifaces": [{"string_list": ["eth0"]}]},
}
# the same report with short names (§2.7)
SHORT: dict[str, Any] = {
    "hed": {"rid": 1700000001, "v": "1.0"},
    "met": {
        "tp": {"pts": [{"if": "eth0", "pt": 22}], "t": 1},
        "up": {"pts": [{"if": "eth0", "pt": 68}], "t": 1},
        "ns": {"bi": 5120, "bo": 2048, "pi": 40, "po": 31},
        "tc": {
            "ec": {
                "cs": [
                    {"li": "eth0", "lp": 50312, "rad": "203.0.113.7:8883"},
                    {"lp": 50400, "rad": "[2001:db8::5]:443"},
                ],
                "t": 2,
            }
        },
    },
    "cmet": {"cpu_usage": [{"number": 12.5}]},
}
MINIMAL: dict[str, Any] = {"header": {"report_id": 7, "version": "1.0"}, "metrics": {}}


class Clock:
    """A settable clock: ``clock.now`` is what the responder reads."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def topic(thing: str = "thing1", fmt: PayloadFormat = JSON) -> str:
    return f"$aws/things/{thing}/defender/metrics/{fmt.value}"


def encode(doc: object, fmt: PayloadFormat) -> bytes:
    return json.dumps(doc).encode() if fmt is JSON else cbor2.dumps(doc)


def decode(reply: Reply, fmt: PayloadFormat) -> dict[str, Any]:
    if fmt is JSON:
        doc = json.loads(reply.payload)
    else:
        assert 0xA0 <= reply.payload[0] <= 0xBF, "a CBOR map, not JSON"
        doc = cbor2.loads(reply.payload)
    assert isinstance(doc, dict)
    return doc


def with_header(**header: object) -> dict[str, Any]:
    return {"header": header, "metrics": {}}


def answer(
    responder: Responder, payload: bytes, fmt: PayloadFormat = JSON, thing: str = "thing1"
) -> Reply:
    outcome = responder.handle(topic(thing, fmt), payload)
    assert outcome.reply is not None, outcome.reason
    return outcome.reply


def assert_rejected(
    reply: Reply,
    fmt: PayloadFormat,
    details: dict[str, str],
    report_id: Optional[int],
    thing: str = "thing1",
    timestamp: int = T0_MS,
) -> None:
    expected: dict[str, Any] = {"thingName": thing}
    if report_id is not None:
        expected["reportId"] = report_id
    expected |= {"status": "REJECTED", "statusDetails": details, "timestamp": timestamp}
    doc = decode(reply, fmt)
    assert doc == expected
    assert list(doc) == list(expected)  # the key order of §4.2
    assert reply.topic == f"$aws/things/{thing}/defender/metrics/{fmt.value}/rejected"
    assert (reply.accepted, reply.thing_name) == (False, thing)
    assert (reply.report_id, reply.error_code) == (report_id, details["ErrorCode"])


def assert_accepted(
    reply: Reply, fmt: PayloadFormat, report_id: int, thing: str = "thing1", timestamp: int = T0_MS
) -> None:
    expected = {"thingName": thing, "reportId": report_id, "status": "ACCEPTED"}
    expected["timestamp"] = timestamp
    doc = decode(reply, fmt)
    assert doc == expected
    assert list(doc) == ["thingName", "reportId", "status", "timestamp"]  # §4.1
    assert reply.topic == f"$aws/things/{thing}/defender/metrics/{fmt.value}/accepted"
    assert (reply.accepted, reply.thing_name, reply.report_id) == (True, thing, report_id)
    assert reply.error_code is None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def responder(clock: Clock) -> Responder:
    return Responder(clock=clock)


# ---------------------------------------------------------------- accepted reports


@pytest.mark.parametrize("fmt", [JSON, CBOR])
@pytest.mark.parametrize(
    ("doc", "report_id"),
    [
        pytest.param(LONG, 1700000000, id="long"),
        pytest.param(SHORT, 1700000001, id="short"),
        pytest.param(MINIMAL, 7, id="header+empty-metrics"),
        pytest.param(
            {"hed": {"rid": 9, "v": "1.0"}, "cmet": {"n": [{"number": 1}]}}, 9, id="header+cmet"
        ),
        pytest.param(
            {"header": {"report_id": 2**63 - 1, "version": "1.0"}, "metrics": {}},
            2**63 - 1,
            id="largest-id",
        ),
    ],
)
def test_good_report_is_accepted(
    responder: Responder, fmt: PayloadFormat, doc: dict[str, Any], report_id: int
) -> None:
    outcome = responder.handle(topic(fmt=fmt), encode(doc, fmt))
    assert outcome.reply is not None
    assert outcome.reason == "accepted"
    assert_accepted(outcome.reply, fmt, report_id)
    assert outcome.report == decode_report(doc)  # decoded once, by the validator


def test_only_an_accepted_outcome_carries_the_report(responder: Responder) -> None:
    accepted = responder.handle(topic(), encode(LONG, JSON))
    assert accepted.report is not None and accepted.report.report_id == 1700000000
    assert accepted.report.custom_metrics[0].name == "cpu_usage"
    throttled = responder.handle(topic(), encode(LONG, JSON))
    assert throttled.reply is not None and throttled.reply.error_code == THROTTLED
    assert throttled.report is None
    invalid = responder.handle(topic("thing2"), b'{"header": {"report_id": 5}}')
    assert invalid.reply is not None and invalid.reply.report_id == 5  # the id is still echoed
    assert invalid.report is None
    assert responder.handle(topic() + "/accepted", encode(LONG, JSON)).report is None


def test_json_reply_is_compact_ascii(responder: Responder) -> None:
    reply = answer(responder, encode(MINIMAL, JSON), thing="träger")
    assert reply.payload == (
        b'{"thingName":"tr\\u00e4ger","reportId":7,"status":"ACCEPTED","timestamp":1700000000500}'
    )


def test_cbor_reply_on_cbor_topic_decodes_with_cbor2(responder: Responder) -> None:
    reply = answer(responder, encode(LONG, CBOR), CBOR)
    assert reply.topic == "$aws/things/thing1/defender/metrics/cbor/accepted"
    assert cbor2.loads(reply.payload) == {
        "thingName": "thing1",
        "reportId": 1700000000,
        "status": "ACCEPTED",
        "timestamp": T0_MS,
    }
    rejected = answer(responder, encode(LONG, CBOR), CBOR)
    assert cbor2.loads(rejected.payload)["statusDetails"]["ErrorCode"] == "Throttled"


def test_timestamp_is_epoch_milliseconds_from_the_clock(clock: Clock) -> None:
    clock.now = 1542697506.269
    reply = answer(Responder(clock=clock), encode(MINIMAL, JSON))
    assert decode(reply, JSON)["timestamp"] in {1542697506268, 1542697506269}
    assert isinstance(decode(reply, JSON)["timestamp"], int)


def test_validation_policy_is_applied(clock: Clock) -> None:
    doc = {**MINIMAL, "extra": 1}
    assert answer(Responder(clock=clock), encode(doc, JSON)).error_code == INVALID_PAYLOAD
    lenient = ResponderPolicy(validation=ValidationPolicy(reject_unknown_keys=False))
    assert answer(Responder(lenient, clock), encode(doc, JSON)).accepted


# ---------------------------------------------------------------- invalid reports

NO_ID = None
INVALID_CASES: list[Any] = [
    # (id, format of the topic, payload, reportId expected in the reply)
    ("empty", JSON, b"", NO_ID),
    ("not-json", JSON, b"hello", NO_ID),
    ("not-utf8", JSON, b'{"header": "\xff\xfe"}', NO_ID),
    ("truncated-json", JSON, b'{"header": {"report_id": 5', NO_ID),
    ("json-array", JSON, b"[1, 2]", NO_ID),
    ("json-string", JSON, b'"report"', NO_ID),
    ("json-nan", JSON, b'{"header":{"report_id":NaN,"version":"1.0"},"metrics":{}}', NO_ID),
    ("json-duplicate-key", JSON, b'{"header":{"report_id":5,"version":"1.0"},"header":{}}', NO_ID),
    ("json-trailing-data", JSON, encode(MINIMAL, JSON) + b"{}", NO_ID),
    ("cbor-on-json-topic", JSON, encode(MINIMAL, CBOR), NO_ID),
    ("json-on-cbor-topic", CBOR, encode(MINIMAL, JSON), NO_ID),
    ("cbor-trailing-bytes", CBOR, encode(MINIMAL, CBOR) + b"\x00", NO_ID),
    ("cbor-int-key", CBOR, cbor2.dumps({1: 2}), NO_ID),
    ("cbor-array", CBOR, cbor2.dumps([MINIMAL]), NO_ID),
    ("cbor-truncated", CBOR, encode(MINIMAL, CBOR)[:-3], NO_ID),
    ("no-header", JSON, encode({"metrics": {}}, JSON), NO_ID),
    ("header-not-object", JSON, encode({"header": [7], "metrics": {}}, JSON), NO_ID),
    ("no-report-id", JSON, encode(with_header(version="1.0"), JSON), NO_ID),
    ("id-string", JSON, encode(with_header(report_id="7", version="1.0"), JSON), NO_ID),
    ("id-float", JSON, b'{"header":{"report_id":7.0,"version":"1.0"},"metrics":{}}', NO_ID),
    ("id-true", JSON, encode(with_header(report_id=True, version="1.0"), JSON), NO_ID),
    ("id-null", CBOR, encode(with_header(report_id=None, version="1.0"), CBOR), NO_ID),
    ("id-2**64", CBOR, encode(with_header(report_id=2**64, version="1.0"), CBOR), NO_ID),
    ("id-bignum", CBOR, encode(with_header(report_id=10**40, version="1.0"), CBOR), NO_ID),
    ("id-huge-json", JSON, b'{"header":{"report_id":' + b"9" * 5000 + b"}}", NO_ID),
    # the id can be read as an integer: it is echoed (§4.2, §7.8 [policy])
    ("id-zero", JSON, encode(with_header(report_id=0, version="1.0"), JSON), 0),
    ("id-negative", CBOR, encode(with_header(report_id=-5, version="1.0"), CBOR), -5),
    ("id-2**63", CBOR, encode(with_header(report_id=2**63, version="1.0"), CBOR), 2**63),
    ("id-2**64-1", JSON, encode(with_header(report_id=2**64 - 1, version="1.0"), JSON), 2**64 - 1),
    ("no-version", JSON, encode(with_header(report_id=11), JSON), 11),
    ("bad-version", CBOR, encode(with_header(report_id=11, version=1.0), CBOR), 11),
    ("no-metrics", JSON, encode({"header": MINIMAL["header"]}, JSON), 7),
    ("unknown-root-key", JSON, encode({**MINIMAL, "extra": {}}, JSON), 7),
    ("mixed-names", JSON, encode({"hed": {"rid": 8, "version": "1.0"}, "met": {}}, JSON), 8),
    ("short-no-metrics", CBOR, encode({"hed": {"rid": 9, "v": "1.0"}}, CBOR), 9),
    (
        "custom-value-not-array",  # the one documented rejection (§2.6, §4.3 [DOC S2])
        JSON,
        encode({**MINIMAL, "custom_metrics": {"my_custom_metric": {"number": 0}}}, JSON),
        7,
    ),
    (
        "bad-remote-addr",
        CBOR,
        encode(
            {
                "header": MINIMAL["header"],
                "metrics": {
                    "tcp_connections": {
                        "established_connections": {"connections": [{"remote_addr": "::1:80"}]}
                    }
                },
            },
            CBOR,
        ),
        7,
    ),
    (
        "negative-count",
        JSON,
        encode({"header": MINIMAL["header"], "metrics": {"network_stats": {"bytes_in": -1}}}, JSON),
        7,
    ),
    (
        "nan-in-cbor",
        CBOR,
        encode(
            {"header": MINIMAL["header"], "metrics": {"network_stats": {"bytes_in": float("nan")}}},
            CBOR,
        ),
        7,
    ),
    (
        "misplaced-total",  # §2.8 [OBS S11]
        JSON,
        encode({"header": MINIMAL["header"], "metrics": {"tcp_connections": {"total": 1}}}, JSON),
        7,
    ),
]


@pytest.mark.parametrize(
    ("fmt", "payload", "report_id"),
    [pytest.param(*case[1:], id=case[0]) for case in INVALID_CASES],
)
def test_invalid_report_is_rejected_invalid_payload(
    responder: Responder, fmt: PayloadFormat, payload: bytes, report_id: Optional[int]
) -> None:
    outcome = responder.handle(topic(fmt=fmt), payload)
    assert outcome.reply is not None
    assert_rejected(outcome.reply, fmt, MALFORMED, report_id)
    assert outcome.reason.startswith("rejected InvalidPayload: invalid report: ")
    assert "\n" not in outcome.reason
    assert len(outcome.reason) <= 300


def test_report_id_left_out_when_the_policy_says_so(clock: Clock) -> None:
    policy = ResponderPolicy(include_report_id_in_rejections=False)
    responder = Responder(policy, clock)
    bad = encode({"header": MINIMAL["header"]}, JSON)
    assert_rejected(answer(responder, bad), JSON, MALFORMED, None)
    assert answer(responder, encode(MINIMAL, JSON)).accepted
    assert_rejected(answer(responder, encode(MINIMAL, JSON)), JSON, THROTTLED_DETAILS, None)


def test_custom_invalid_message(clock: Clock) -> None:
    responder = Responder(ResponderPolicy(invalid_message="Bad report"), clock)
    details = {"ErrorCode": "InvalidPayload", "ErrorMessage": "Bad report"}
    assert_rejected(answer(responder, b"{"), JSON, details, None)


def test_id_valid_for_the_validator_but_beyond_64_bits_is_rejected(clock: Clock) -> None:
    policy = ResponderPolicy(validation=ValidationPolicy(min_report_id=-(2**80)))
    responder = Responder(policy, clock)
    outcome = responder.handle(
        topic(fmt=CBOR), encode(with_header(report_id=-(2**70), version="1.0"), CBOR)
    )
    assert outcome.reply is not None
    assert outcome.reply.error_code == INVALID_PAYLOAD
    assert outcome.reply.report_id is None
    assert "not a 64-bit integer" in outcome.reason


def test_reason_lists_how_many_more_problems(responder: Responder) -> None:
    doc = {"header": {"report_id": 0, "version": "x"}, "metrics": {"bogus": 1}}
    outcome = responder.handle(topic(), encode(doc, JSON))
    assert outcome.reason.endswith("(+2 more)")


# ---------------------------------------------------------------- throttling (§3, §7.8)


@pytest.mark.parametrize("fmt", [JSON, CBOR])
def test_throttled_within_min_delay_then_accepted(
    clock: Clock, responder: Responder, fmt: PayloadFormat
) -> None:
    first = encode(with_header(report_id=100, version="1.0"), fmt)
    assert_accepted(answer(responder, first, fmt), fmt, 100)
    clock.now = T0 + 299.999
    second = encode({"header": {"report_id": 101, "version": "1.0"}, "metrics": {}}, fmt)
    outcome = responder.handle(topic(fmt=fmt), second)
    assert outcome.reply is not None
    assert_rejected(outcome.reply, fmt, THROTTLED_DETAILS, 101, timestamp=T0_MS + 299_999)
    assert outcome.reason.startswith("rejected Throttled: throttled: 300.0 s")
    clock.now = T0 + 300
    third = encode({"header": {"report_id": 102, "version": "1.0"}, "metrics": {}}, fmt)
    assert_accepted(answer(responder, third, fmt), fmt, 102, timestamp=T0_MS + 300_000)


def test_throttle_is_per_thing_not_global(clock: Clock, responder: Responder) -> None:
    report = encode(MINIMAL, JSON)
    assert answer(responder, report, thing="a").accepted
    assert answer(responder, report, thing="b").accepted
    assert answer(responder, report, thing="a").error_code == THROTTLED
    assert answer(responder, report, thing="c").accepted
    assert answer(responder, report, thing="b").error_code == THROTTLED


def test_throttle_is_per_thing_across_formats(responder: Responder) -> None:
    # §3 leaves "per thing name or per topic" [UNK]; §7.8 says per thing name
    assert answer(responder, encode(MINIMAL, JSON), JSON).accepted
    reply = answer(responder, encode(MINIMAL, CBOR), CBOR)
    assert_rejected(reply, CBOR, THROTTLED_DETAILS, 7)


def test_rejected_reports_do_not_move_the_window(clock: Clock, responder: Responder) -> None:
    report = encode(MINIMAL, JSON)
    assert answer(responder, report).accepted  # the window runs from T0
    for offset in (100.0, 200.0, 299.0):
        clock.now = T0 + offset
        assert answer(responder, report).error_code == THROTTLED
        assert answer(responder, b"garbage").error_code == THROTTLED  # throttled first
        assert answer(responder, b"garbage", thing="other").error_code == INVALID_PAYLOAD
    clock.now = T0 + 300
    assert answer(responder, report).accepted


@pytest.mark.parametrize("fmt", [JSON, CBOR])
def test_invalid_report_within_the_window_is_throttled_not_invalid(
    responder: Responder, fmt: PayloadFormat
) -> None:
    # issue #9: the throttle is decided before decoding, so Throttled is the cheap answer
    assert answer(responder, encode(MINIMAL, fmt), fmt).accepted
    reply = answer(responder, encode({"header": MINIMAL["header"]}, fmt), fmt)
    assert_rejected(reply, fmt, THROTTLED_DETAILS, 7)  # the id is found without decoding
    assert_rejected(answer(responder, b"\xff{garbage", fmt), fmt, THROTTLED_DETAILS, None)


def test_a_flood_gets_at_most_max_throttled_replies(
    clock: Clock, responder: Responder, decodings: _NoDecoding
) -> None:
    # issue #9: past the budget a flood costs no reply (no publish) and few log lines
    report = encode(LONG, JSON)
    assert answer(responder, report).accepted
    outcomes = [responder.handle(topic(), report) for _ in range(1_500)]
    answered = [o for o in outcomes if o.reply is not None]
    assert len(answered) == DEFAULT_RESPONDER_POLICY.max_throttled_replies == 100
    assert all(o.reply is not None and o.reply.error_code == THROTTLED for o in answered)
    assert outcomes[100].reason.startswith("dropped: throttled: ")
    assert outcomes[100].reason.endswith(
        "(Throttled 101 times in this window); no reply after 100 Throttled replies in one window"
    )
    loud = [n + 1 for n, o in enumerate(outcomes) if not o.quiet]
    assert loud == [1, 10, 100, 1000]  # one log line per power of ten
    snap = responder.snapshot()
    assert (snap.accepted, dict(snap.rejected), snap.dropped) == (1, {"Throttled": 100}, 1_400)
    assert snap.things["thing1"] == ThingCounts(1, {"Throttled": 100})
    assert decodings.calls == 1
    assert answer(responder, report, thing="other").accepted  # others are not affected
    clock.now = T0 + 300  # a new window: a new budget
    assert answer(responder, report).accepted
    assert answer(responder, report).error_code == THROTTLED


def test_max_throttled_replies_zero_answers_every_report(clock: Clock) -> None:
    responder = Responder(ResponderPolicy(max_throttled_replies=0), clock)
    assert answer(responder, encode(MINIMAL, JSON)).accepted
    for _ in range(300):
        assert answer(responder, encode(MINIMAL, JSON)).error_code == THROTTLED


class _NoDecoding:
    """Stands in for validate_payload and counts the calls."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.fixture
def decodings(monkeypatch: pytest.MonkeyPatch) -> _NoDecoding:
    from defender_agent.report.validate import validate_payload

    counter = _NoDecoding(validate_payload)
    monkeypatch.setattr("defender_agent.service.responder.validate_payload", counter)
    return counter


@pytest.mark.parametrize("fmt", [JSON, CBOR])
def test_a_throttled_report_is_not_decoded(
    responder: Responder, decodings: _NoDecoding, fmt: PayloadFormat
) -> None:
    # issue #9: a flood of one thing costs a table lookup per report, not a validation
    report = encode(LONG, fmt)
    assert answer(responder, report, fmt).accepted
    assert decodings.calls == 1
    for _ in range(100):
        assert_rejected(answer(responder, report, fmt), fmt, THROTTLED_DETAILS, 1700000000)
    assert decodings.calls == 1
    assert answer(responder, report, fmt, thing="other").accepted  # others are decoded
    assert decodings.calls == 2


def test_a_bad_thing_name_is_rejected_without_decoding(
    responder: Responder, decodings: _NoDecoding
) -> None:
    reply = answer(responder, encode(LONG, JSON), thing="x" * 129)
    assert_rejected(reply, JSON, MALFORMED, 1700000000, thing="x" * 129)
    reply = answer(responder, encode(SHORT, CBOR), CBOR, thing="bad\x07")
    assert_rejected(reply, CBOR, MALFORMED, 1700000001, thing="bad\x07")
    assert decodings.calls == 0


def test_strict_mode_inside_the_window_is_throttled(clock: Clock) -> None:
    responder = Responder(ResponderPolicy(strict_report_ids=True), clock)
    assert answer(responder, encode(with_header(report_id=500, version="1.0"), JSON)).accepted
    reply = answer(responder, encode(with_header(report_id=3, version="1.0"), JSON))
    assert_rejected(reply, JSON, THROTTLED_DETAILS, 3)


def test_invalid_reports_do_not_start_a_window(responder: Responder) -> None:
    assert answer(responder, b"{}").error_code == INVALID_PAYLOAD
    assert answer(responder, encode(MINIMAL, JSON)).accepted


def test_custom_min_delay_and_message(clock: Clock) -> None:
    policy = ResponderPolicy(min_delay_s=60, throttle_message="Rate exceeded")
    responder = Responder(policy, clock)
    assert answer(responder, encode(MINIMAL, JSON)).accepted
    clock.now = T0 + 59
    details = {"ErrorCode": "Throttled", "ErrorMessage": "Rate exceeded"}
    assert_rejected(
        answer(responder, encode(MINIMAL, JSON)), JSON, details, 7, timestamp=T0_MS + 59_000
    )
    clock.now = T0 + 60
    assert answer(responder, encode(MINIMAL, JSON)).accepted


def test_zero_min_delay_never_throttles(clock: Clock) -> None:
    responder = Responder(ResponderPolicy(min_delay_s=0), clock)
    assert all(answer(responder, encode(MINIMAL, JSON)).accepted for _ in range(5))


def test_report_ids_need_not_increase_by_default(clock: Clock, responder: Responder) -> None:
    assert answer(responder, encode(with_header(report_id=500, version="1.0"), JSON)).accepted
    clock.now = T0 + 300
    assert answer(responder, encode(with_header(report_id=3, version="1.0"), JSON)).accepted


def test_strict_report_ids(clock: Clock) -> None:
    responder = Responder(ResponderPolicy(strict_report_ids=True), clock)
    assert answer(responder, encode(with_header(report_id=500, version="1.0"), JSON)).accepted
    for report_id in (500, 3):
        clock.now += 300
        outcome = responder.handle(
            topic(), encode(with_header(report_id=report_id, version="1.0"), JSON)
        )
        assert outcome.reply is not None
        assert_rejected(outcome.reply, JSON, MALFORMED, report_id, timestamp=int(clock.now * 1000))
        assert "not above the last accepted 500" in outcome.reason
    clock.now += 1  # after the window, the id does not depend on time
    assert answer(responder, encode(with_header(report_id=501, version="1.0"), JSON)).accepted
    assert answer(
        responder, encode(with_header(report_id=502, version="1.0"), JSON)
    ).error_code == (THROTTLED)
    clock.now += 10_000  # strict mode remembers ids beyond the throttle window
    assert answer(
        responder, encode(with_header(report_id=501, version="1.0"), JSON)
    ).error_code == (INVALID_PAYLOAD)


# ---------------------------------------------------------------- topics (§1.1, §7.1)

NOT_REPORT_TOPICS = [
    "$aws/things/thing1/defender/metrics/JSON",
    "$aws/things/thing1/defender/metrics/Json",
    "$aws/things/thing1/defender/metrics/CBOR",
    "$AWS/things/thing1/defender/metrics/json",
    "$aws/Things/thing1/defender/metrics/json",
    "$aws/things/thing1/Defender/metrics/json",
    "$aws/things/thing1/defender/metrics/json/accepted",
    "$aws/things/thing1/defender/metrics/json/rejected",
    "$aws/things/thing1/defender/metrics/cbor/accepted",
    "$aws/things/thing1/defender/metrics/cbor/rejected",
    "$aws/things/thing1/defender/metrics/json/extra",
    "$aws/things/thing1/defender/metrics/json/",
    "$aws/things/thing1/defender/metrics/",
    "$aws/things/thing1/defender/metrics/xml",
    "$aws/things/thing1/defender/metrics/json ",
    "$aws/things/thing1/defender/metric/json",
    "$aws/things/thing1/extra/defender/metrics/json",
    "$aws/things/a/b/defender/metrics/json",
    "$aws/things//defender/metrics/json",
    "$aws/things/+/defender/metrics/json",
    "$aws/things/#/defender/metrics/json",
    "$aws/things/a+b/defender/metrics/json",
    "$aws/things/thing1/defender/metrics/+",
    "$aws/things/thing1/defender/metrics/#",
    "$aws/things/thing1",
    "$aws/things/",
    "/$aws/things/thing1/defender/metrics/json",
    "aws/things/thing1/defender/metrics/json",
    "things/thing1/defender/metrics/json",
    "thing1/defender/metrics/json",
    "$aws/things/thing1/shadow/update",
    "",
]


@pytest.mark.parametrize("name", NOT_REPORT_TOPICS)
def test_not_a_report_topic_gets_no_reply(responder: Responder, name: str) -> None:
    assert parse_topic(name) is None
    for fmt in (JSON, CBOR):
        outcome = responder.handle(name, encode(MINIMAL, fmt))
        assert outcome == Outcome(None, "dropped: not a Device Defender report topic")
    assert responder.snapshot().dropped == 2
    assert responder.snapshot().accepted == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("$aws/things/thing1/defender/metrics/json", ("thing1", JSON)),
        ("$aws/things/thing1/defender/metrics/cbor", ("thing1", CBOR)),
        ("$aws/things/Thing-1:a_b/defender/metrics/json", ("Thing-1:a_b", JSON)),
        ("$aws/things/my thing/defender/metrics/cbor", ("my thing", CBOR)),
        ("$aws/things/träger/defender/metrics/json", ("träger", JSON)),
        ("$aws/things/$aws/defender/metrics/json", ("$aws", JSON)),
        ("$aws/things/\x01/defender/metrics/json", ("\x01", JSON)),  # rejected later, not here
    ],
)
def test_parse_topic(name: str, expected: tuple[str, PayloadFormat]) -> None:
    assert parse_topic(name) == expected
    assert Responder.parse_topic(name) == expected


def test_topic_over_256_bytes_is_dropped_by_the_broker(responder: Responder) -> None:
    long_topic = topic("x" * 300)
    outcome = responder.handle(long_topic, encode(MINIMAL, JSON))
    assert outcome == Outcome(None, "dropped: topic is 334 bytes, over the 256-byte limit")
    assert len(topic("x" * 222).encode()) == 256
    assert answer(responder, encode(MINIMAL, JSON), thing="x" * 222).error_code == INVALID_PAYLOAD
    assert responder.handle(topic("x" * 223), encode(MINIMAL, JSON)).reply is None


def test_topic_that_is_not_utf8_is_dropped(responder: Responder) -> None:
    outcome = responder.handle(topic("bad\udcff"), encode(MINIMAL, JSON))
    assert outcome == Outcome(None, "dropped: topic is not valid UTF-8")


# ---------------------------------------------------------------- thing names (§1.2, §7.1)


@pytest.mark.parametrize(
    ("thing", "accepted"),
    [
        pytest.param("t" * 128, True, id="128-ascii"),
        pytest.param("t" * 129, False, id="129-ascii"),
        pytest.param("é" * 64, True, id="128-bytes-of-2-byte-chars"),
        pytest.param("é" * 64 + "t", False, id="129-bytes-of-2-byte-chars"),
        pytest.param("€" * 42 + "ab", True, id="128-bytes-of-3-byte-chars"),
        pytest.param("😀" * 32, True, id="128-bytes-of-4-byte-chars"),
        pytest.param("😀" * 32 + "t", False, id="129-bytes-of-4-byte-chars"),
        pytest.param("t" * 100 + "😀" * 8, False, id="108-chars-132-bytes"),
        pytest.param("a\x00b", False, id="nul"),
        pytest.param("a\tb", False, id="tab"),
        pytest.param("a\nb", False, id="newline"),
        pytest.param("\x1f", False, id="unit-separator"),
        pytest.param("a\x7f", False, id="del"),
        pytest.param("a\x85", False, id="c1-next-line"),
        pytest.param("a\x9f", False, id="c1-last"),
        pytest.param("a\xa0b", True, id="nbsp-is-not-a-control"),
        pytest.param("a b", True, id="space"),
    ],
)
@pytest.mark.parametrize("fmt", [JSON, CBOR])
def test_thing_name_rules(
    responder: Responder, thing: str, accepted: bool, fmt: PayloadFormat
) -> None:
    reply = answer(responder, encode(MINIMAL, fmt), fmt, thing)
    if accepted:
        assert_accepted(reply, fmt, 7, thing)
    else:
        assert_rejected(reply, fmt, MALFORMED, 7, thing)  # the id could still be read


def test_bad_thing_name_reason_does_not_echo_control_characters(responder: Responder) -> None:
    outcome = responder.handle(topic("a\nb"), encode(MINIMAL, JSON))
    assert (
        outcome.reason == "rejected InvalidPayload: thing name must not contain control characters"
    )
    outcome = responder.handle(topic("t" * 129), encode(MINIMAL, JSON))
    assert outcome.reason == (
        "rejected InvalidPayload: thing name must be 1 to 128 bytes of UTF-8, got 129"
    )


def test_bad_thing_name_with_a_bad_report(responder: Responder) -> None:
    reply = answer(responder, b"nonsense", CBOR, "t" * 200)
    assert_rejected(reply, CBOR, MALFORMED, None, "t" * 200)


def test_thing_name_code_and_limit_are_policy(clock: Clock) -> None:
    policy = ResponderPolicy(
        thing_name_code="InvalidThingName", thing_name_message="Bad name", max_thing_name_bytes=8
    )
    responder = Responder(policy, clock)
    details = {"ErrorCode": "InvalidThingName", "ErrorMessage": "Bad name"}
    assert_rejected(
        answer(responder, encode(MINIMAL, JSON), thing="123456789"), JSON, details, 7, "123456789"
    )
    assert answer(responder, encode(MINIMAL, JSON), thing="12345678").accepted


def test_bad_thing_name_does_not_start_a_window(responder: Responder) -> None:
    assert not answer(responder, encode(MINIMAL, JSON), thing="a\x01").accepted
    assert answer(responder, encode(MINIMAL, JSON), thing="a\x01").error_code == INVALID_PAYLOAD


# ---------------------------------------------------------------- size (§3, §7.2)


@pytest.mark.parametrize("fmt", [JSON, CBOR])
def test_oversize_payload_gets_no_reply(responder: Responder, fmt: PayloadFormat) -> None:
    outcome = responder.handle(topic(fmt=fmt), b"\x00" * 131_073)
    assert outcome == Outcome(None, "dropped: payload is 131073 bytes, over the 131072-byte limit")
    # the broker drops it before Device Defender looks at the thing name
    assert responder.handle(topic("a\x01", fmt), b"{" * 200_000).reply is None
    assert responder.snapshot().dropped == 2


def test_payload_of_exactly_the_limit_is_answered(responder: Responder) -> None:
    report = encode(MINIMAL, JSON)
    padded = report + b" " * (131_072 - len(report))
    assert_accepted(answer(responder, padded), JSON, 7)


def test_payload_limit_comes_from_the_validation_policy(clock: Clock) -> None:
    policy = ResponderPolicy(validation=ValidationPolicy(max_payload_bytes=100))
    responder = Responder(policy, clock)
    assert responder.handle(topic(), encode(LONG, JSON)).reply is None
    assert answer(responder, encode(MINIMAL, JSON)).accepted


# ---------------------------------------------------------------- counters and memory


def test_snapshot_counts_per_thing_and_in_total(clock: Clock, responder: Responder) -> None:
    report = encode(MINIMAL, JSON)
    answer(responder, report, thing="a")
    answer(responder, report, thing="a")  # throttled
    answer(responder, b"x", thing="a")  # throttled too: decided before decoding
    answer(responder, b"x", thing="e")
    answer(responder, report, thing="b")
    answer(responder, report, thing="c\x01")
    responder.handle("not/a/report", report)
    snap = responder.snapshot()
    assert snap.accepted == 2
    assert dict(snap.rejected) == {"Throttled": 2, "InvalidPayload": 2}
    assert snap.dropped == 1
    assert dict(snap.things) == {
        "a": ThingCounts(1, {"Throttled": 2}),
        "e": ThingCounts(0, {"InvalidPayload": 1}),
        "b": ThingCounts(1, {}),
        "c\x01": ThingCounts(0, {"InvalidPayload": 1}),
    }
    assert snap.things["a"].rejected_total == 2
    assert snap.forgotten_things == 0
    assert snap.throttle_entries == 2
    # a snapshot is read-only and does not change afterwards
    with pytest.raises(TypeError):
        snap.things["z"] = ThingCounts()  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.things["a"].rejected["Throttled"] = 5  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.accepted = 5  # type: ignore[misc]
    answer(responder, report, thing="d")
    assert snap.accepted == 2
    assert "d" not in snap.things


def test_ten_thousand_thing_names_stay_bounded(clock: Clock) -> None:
    responder = Responder(ResponderPolicy(max_tracked_things=1000), clock)
    report = encode(MINIMAL, JSON)
    for n in range(10_000):
        assert answer(responder, report, thing=f"hostile-{n}").accepted
    snap = responder.snapshot()
    assert snap.throttle_entries == 1000
    assert len(snap.things) == 1000
    assert snap.forgotten_things == 9000
    assert snap.accepted == 10_000
    assert "hostile-9999" in snap.things  # the most recent are kept
    assert "hostile-0" not in snap.things
    # the newest entries are still throttled; the evicted oldest may report again
    assert answer(responder, report, thing="hostile-9999").error_code == THROTTLED
    assert answer(responder, report, thing="hostile-0").accepted


def test_default_policy_bounds_the_tables(clock: Clock) -> None:
    responder = Responder(clock=clock)
    report = encode(MINIMAL, CBOR)
    for n in range(DEFAULT_RESPONDER_POLICY.max_tracked_things + 500):
        responder.handle(topic(f"t{n}", CBOR), report)
    snap = responder.snapshot()
    assert snap.throttle_entries == len(snap.things) == 10_000


def test_expired_entries_are_forgotten(clock: Clock, responder: Responder) -> None:
    report = encode(MINIMAL, JSON)
    for n in range(50):
        clock.now = T0 + n
        answer(responder, report, thing=f"t{n}")
    assert responder.snapshot().throttle_entries == 50
    clock.now = T0 + 320  # the windows of t0..t20 are over
    answer(responder, report, thing="new")
    assert responder.snapshot().throttle_entries == 50 - 21 + 1
    clock.now = T0 + 10_000
    answer(responder, report, thing="newer")
    assert responder.snapshot().throttle_entries == 1


def test_concurrent_reports_of_one_thing_accept_exactly_one(clock: Clock) -> None:
    responder = Responder(ResponderPolicy(max_throttled_replies=0), clock)  # every one answered
    report = encode(MINIMAL, JSON)
    replies: list[Reply] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            reply = answer(responder, report)
            with lock:
                replies.append(reply)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(reply.accepted for reply in replies) == 1
    assert responder.snapshot().rejected == {"Throttled": 399}


# ---------------------------------------------------------------- peek_report_id (issue #9)

ID_EDGES = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63, 2**64 - 1]
ID_EDGES += [-1, -24, -25, -(2**32), -(2**63)]


@pytest.mark.parametrize("fmt", [JSON, CBOR])
@pytest.mark.parametrize("report_id", ID_EDGES)
def test_peek_finds_the_id_of_every_integer_size(fmt: PayloadFormat, report_id: int) -> None:
    for doc in (with_header(report_id=report_id, version="1.0"), {"hed": {"rid": report_id}}):
        assert peek_report_id(encode(doc, fmt), fmt) == report_id


@pytest.mark.parametrize("fmt", [JSON, CBOR])
@pytest.mark.parametrize("report_id", [2**64, -(2**63) - 1, 10**30, 1.5, "7", True, None])
def test_peek_finds_no_id_beyond_64_bits_or_not_an_integer(
    fmt: PayloadFormat, report_id: object
) -> None:
    assert peek_report_id(encode(with_header(report_id=report_id), fmt), fmt) is None


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"garbage",
        b'{"header": {"report_id": 1e3}}',
        b'{"header": {"report_id": 12.0}}',
        b'{"header": {"report_id": 007}}',
        b'{"header": {"x": "\\"report_id\\": 5"}}',  # inside a string, escaped
        b'{"header": {"report_id" 5}}',
    ],
)
def test_peek_json_without_an_id(payload: bytes) -> None:
    assert peek_report_id(payload, JSON) is None


def test_peek_json_allows_whitespace_and_takes_the_first_key() -> None:
    assert peek_report_id(b'{"header":{\n "report_id" :\t42 ,"version":"1.0"}}', JSON) == 42
    assert peek_report_id(b'{"hed":{"rid":-3}, "header":{"report_id":9}}', JSON) == -3


def test_peek_cbor_truncated_or_indefinite() -> None:
    whole = cbor2.dumps({"hed": {"rid": 2**40}})
    assert peek_report_id(whole, CBOR) == 2**40
    assert peek_report_id(whole[:-1], CBOR) is None  # the 8-byte integer is cut short
    assert peek_report_id(cbor2.dumps({"hed": {"rid": 1.0}}), CBOR) is None
    assert peek_report_id(b"\x7freport_id", CBOR) is None


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    report_id=st.integers(min_value=-(2**63), max_value=2**64 - 1),
    fmt=st.sampled_from([JSON, CBOR]),
    short=st.booleans(),
)
def test_peek_agrees_with_decoding_on_valid_reports(
    report_id: int, fmt: PayloadFormat, short: bool
) -> None:
    doc = copy.deepcopy(SHORT if short else LONG)
    doc["hed" if short else "header"]["rid" if short else "report_id"] = report_id
    assert peek_report_id(encode(doc, fmt), fmt) == report_id


def test_tracked_things_cost_little_memory(clock: Clock) -> None:
    # issue #9: 50 000 hostile thing names must not grow the service; the tables are
    # bounded (max_tracked_things) and each entry is small (slots, no table for Throttled):
    # about 370 bytes a thing in both tables here, 650 before
    import tracemalloc

    responder = Responder(ResponderPolicy(max_tracked_things=5_000), clock)
    report = encode(MINIMAL, JSON)
    names = [f"bench-{n:05d}" for n in range(20_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name in names:
            responder.handle(topic(name), report)
            responder.handle(topic(name), report)  # throttled: a rejection count too
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    snap = responder.snapshot()
    assert snap.throttle_entries == len(snap.things) == 5_000
    assert grown / 5_000 < 500, f"{grown / 5_000:.0f} bytes per tracked thing"


# ---------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_delay_s", -1.0),
        ("min_delay_s", float("nan")),
        ("min_delay_s", float("inf")),
        ("max_thing_name_bytes", 0),
        ("max_topic_bytes", 0),
        ("max_tracked_things", 0),
        ("max_throttled_replies", -1),
    ],
)
def test_policy_rejects_bad_values(field: str, value: float) -> None:
    changes: dict[str, Any] = {field: value}
    with pytest.raises(ConfigError, match=field):
        ResponderPolicy(**changes)


def test_default_policy_matches_protocol_section_7() -> None:
    policy = ResponderPolicy()
    assert policy == DEFAULT_RESPONDER_POLICY
    assert policy.min_delay_s == 300.0
    assert policy.max_thing_name_bytes == 128
    assert policy.validation.max_payload_bytes == 131_072
    assert (policy.throttle_message, policy.invalid_message) == (
        "Throttled",
        "Malformed metrics report",
    )
    assert policy.include_report_id_in_rejections
    assert not policy.strict_report_ids
    assert Responder().policy is DEFAULT_RESPONDER_POLICY


# ---------------------------------------------------------------- hostile input

HOSTILE: list[Any] = [
    ("not-utf8", JSON, b"\xff" * 100),
    ("deep-json-arrays", JSON, b"[" * 100_000),
    ("deep-json-objects", JSON, b'{"a":' * 20_000 + b"1" + b"}" * 20_000),
    ("deep-in-header", JSON, b'{"header":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    ("deep-cbor-arrays", CBOR, b"\x81" * 100_000 + b"\x00"),
    ("deep-cbor-maps", CBOR, b"\xa1\x61a" * 30_000 + b"\x00"),
    ("json-nan", JSON, b'{"header":{"report_id":NaN,"version":"1.0"},"metrics":{}}'),
    ("json-infinity", JSON, b'{"header":{"report_id":-Infinity,"version":"1.0"},"metrics":{}}'),
    ("json-1e999", JSON, b'{"header":{"report_id":1e999,"version":"1.0"},"metrics":{}}'),
    (
        "json-huge-int",
        JSON,
        b'{"header":{"report_id":1,"version":"1.0"},"metrics":{"network_stats":{"bytes_in":'
        + b"9" * 50_000
        + b"}}}",
    ),
    (
        "cbor-huge-bignum",
        CBOR,
        cbor2.dumps(
            {
                "header": {"report_id": 2**500_000, "version": "1.0"},
                "metrics": {"network_stats": {"bytes_in": -(2**400_000)}},
            }
        ),
    ),
    (
        "cbor-nan-id",
        CBOR,
        cbor2.dumps({"header": {"report_id": float("nan"), "version": "1.0"}, "metrics": {}}),
    ),
    ("cbor-huge-array-length", CBOR, b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff"),
    ("cbor-huge-map-length", CBOR, b"\xbb\xff\xff\xff\xff\xff\xff\xff\xff"),
    ("cbor-huge-bytes-length", CBOR, b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff"),
    ("cbor-cyclic-array", CBOR, b"\xd8\x1c\x81\xd8\x1d\x00"),
    ("cbor-cyclic-header", CBOR, b"\xd8\x1c\xa1\x66header\xd8\x1d\x00"),
    ("cbor-unterminated", CBOR, b"\xbf\x61a\x01"),
    ("cbor-undefined", CBOR, b"\xf7"),
    ("cbor-bad-datetime", CBOR, b"\xc1\xfb\x7f\xef\xff\xff\xff\xff\xff\xff"),
    ("cbor-bad-regex", CBOR, b"\xd8\x23\x61("),
    ("cbor-bad-uuid", CBOR, b"\xd8\x25\x41\x00"),
    ("cbor-set-of-lists", CBOR, b"\xd9\x01\x02\x81\x80"),
    ("cbor-array-key", CBOR, b"\xa1\x80\x00"),
    ("cbor-stringref", CBOR, b"\xd9\x01\x00\x81\xd8\x19\x00"),
    ("cbor-self-described", CBOR, b"\xd9\xd9\xf7" * 1000),
    ("nul-bytes", JSON, b"\x00" * 1000),
]


@pytest.mark.parametrize(("fmt", "payload"), [pytest.param(*c[1:], id=c[0]) for c in HOSTILE])
def test_hostile_payload_is_rejected_never_raises(
    responder: Responder, fmt: PayloadFormat, payload: bytes
) -> None:
    outcome = responder.handle(topic(fmt=fmt), payload)
    assert outcome.reply is not None
    assert outcome.reply.error_code == INVALID_PAYLOAD
    assert decode(outcome.reply, fmt)["statusDetails"] == MALFORMED
    assert "\n" not in outcome.reason
    assert len(outcome.reason) <= 300


TOPICS = st.one_of(
    st.text(max_size=80),
    st.sampled_from([topic(), topic(fmt=CBOR), *NOT_REPORT_TOPICS]),
    st.builds(
        lambda thing, fmt: f"$aws/things/{thing}/defender/metrics/{fmt}",
        st.text(max_size=200),
        st.sampled_from(["json", "cbor", "JSON", "json/accepted", "cbor/rejected", ""]),
    ),
)


def check_outcome(outcome: Outcome) -> None:
    assert isinstance(outcome, Outcome)
    assert "\n" not in outcome.reason
    reply = outcome.reply
    if reply is None:
        assert outcome.reason.startswith("dropped: ")
        return
    fmt = JSON if "/metrics/json/" in reply.topic else CBOR
    doc = decode(reply, fmt)
    assert doc["status"] == ("ACCEPTED" if reply.accepted else "REJECTED")
    assert doc["thingName"] == reply.thing_name
    assert doc.get("reportId") == reply.report_id
    assert parse_topic(reply.topic.rsplit("/", 1)[0]) == (reply.thing_name, fmt)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=TOPICS, payload=st.binary(max_size=300))
def test_random_bytes_on_random_topics_never_raise(name: str, payload: bytes) -> None:
    check_outcome(Responder(clock=Clock()).handle(name, payload))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        "header",
        "hed",
        "metrics",
        "met",
        "custom_metrics",
        "cmet",
        "report_id",
        "rid",
        "version",
        "v",
        "x",
    ]
)
DOCS = st.dictionaries(
    KEYS,
    st.one_of(JSON_VALUES, st.dictionaries(KEYS, JSON_VALUES, max_size=4)),
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=DOCS, fmt=st.sampled_from([JSON, CBOR]), thing=st.text(min_size=1, max_size=20))
def test_random_report_like_documents_never_raise(
    doc: dict[str, Any], fmt: PayloadFormat, thing: str
) -> None:
    payload = json.dumps(doc).encode() if fmt is JSON else cbor2.dumps(doc)
    check_outcome(
        Responder(clock=Clock()).handle(
            f"$aws/things/{thing}/defender/metrics/{fmt.value}", payload
        )
    )
