"""The Device Defender responder: answers metrics reports the way the service does.

This is the pure core of the local Device Defender service. :meth:`Responder.handle`
takes one MQTT message (topic and payload) and decides what AWS IoT Device Defender
would do with it, following the emulator policy of docs/protocol.md §7 and the replies of §4:

1. **Topic** (§1.1, §7.1). Only ``$aws/things/{thing}/defender/metrics/json|cbor`` is a
   report topic: exact, lower-case, one non-empty thing level, no extra levels. Anything
   else, the reply topics included, is not for Device Defender: no reply.
2. **Broker limits** (§1.1 [S22], §3, §7.2). A topic over 256 bytes or a payload over
   128 KB never reaches Device Defender: no reply.
3. **Thing name** (§1.2, §7.1). Over 128 bytes of UTF-8 or with a control character:
   REJECTED ``InvalidPayload`` [policy].
4. **Throttle** (§3, §7.8). Per thing name, less than ``min_delay_s`` after the thing's
   last ACCEPTED report: REJECTED ``Throttled``. Rejected reports do not move the window.
5. **Report** (§2, §7.3-§7.7). Decoded in the topic's format and checked by the project's
   validator (:func:`~defender_agent.report.validate.validate_payload`); any ERROR:
   REJECTED ``InvalidPayload`` / ``"Malformed metrics report"``.
6. **Report ids** (§2.3, §7.5). Only in the optional strict mode: an id not above the
   thing's last accepted one is REJECTED ``InvalidPayload`` [policy].
7. Otherwise ACCEPTED, and the time is remembered (§4.1, §7.9).

**Cheap rejection first.** Steps 1-4 read only the topic, the sizes and the per-thing
table: they never decode the payload. A thing that floods reports inside its window is
answered ``Throttled`` for the price of a dictionary lookup and a small reply, so it cannot
make other things wait behind the decoding and validation of reports that would be
thrown away anyway (issue #9). The consequence, a choice of this service [policy]: a report
that is both throttled and malformed gets ``Throttled`` (the cheap answer), not
``InvalidPayload``; and in strict mode a report inside the window is ``Throttled`` whatever
its id. The ``reportId`` of these early rejections is read by a scan of the raw payload
for the header's ``report_id``/``rid`` key and its integer (:func:`peek_report_id`), not by
decoding: the same id for any ordinary report, none when the scan finds no such key with
a 64-bit integer. A thing that goes on reporting inside its window gets at most
``max_throttled_replies`` (default 100) ``Throttled`` replies in that window; its later
reports there are dropped with no reply [policy], so the flood costs neither decoding nor
publishing, and :attr:`Outcome.quiet` lets the logs show one line per power of ten of them.
The throttle is checked again, under the same lock, when an accepted
report is recorded, so two concurrent reports of one thing still get one ACCEPTED.

Replies are encoded in the topic's format (compact JSON, or CBOR) and go to the format's
``accepted`` or ``rejected`` topic (§1.1). Rejections carry ``reportId`` whenever the
header's ``report_id`` could be read as a 64-bit integer (§4.2, §7.8 [policy]).

The responder does no I/O and is thread-safe: the per-thing state (throttle table and
counters) sits behind one lock and is bounded, so hostile thing names cannot make it grow
without limit. :class:`~defender_agent.service.responder_service.ResponderService` binds it to an
MQTT transport.

>>> responder = Responder(clock=lambda: 1700000000.0)
>>> report = b'{"header": {"report_id": 7, "version": "1.0"}, "metrics": {}}'
>>> outcome = responder.handle("$aws/things/t1/defender/metrics/json", report)
>>> outcome.reply.topic
'$aws/things/t1/defender/metrics/json/accepted'
>>> outcome.reply.payload
b'{"thingName":"t1","reportId":7,"status":"ACCEPTED","timestamp":1700000000000}'
>>> responder.handle("$aws/things/t1/defender/metrics/json", report).reply.error_code
'Throttled'
>>> print(responder.handle("$aws/things/t1/defender/metrics/json/accepted", report).reply)
None
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Final, Optional

from defender_agent.errors import ConfigError
from defender_agent.model import Report
from defender_agent.report.decode import read_report_id
from defender_agent.report.serialize import encode_document
from defender_agent.report.validate import (
    DEFAULT_POLICY,
    PayloadFormat,
    ValidationPolicy,
    ValidationResult,
    validate_payload,
)
from defender_agent.rules import validate_thing_name

__all__ = [
    "DEFAULT_RESPONDER_POLICY",
    "INVALID_PAYLOAD",
    "THROTTLED",
    "Outcome",
    "Reply",
    "Responder",
    "ResponderPolicy",
    "ResponderStats",
    "ThingCounts",
    "parse_topic",
    "peek_report_id",
]

#: The documented schema-failure code (§4.3 [DOC S2]).
INVALID_PAYLOAD: Final = "InvalidPayload"
#: The code of a report sent too soon (§3, §4.3 [OBS S10]).
THROTTLED: Final = "Throttled"

_PREFIX: Final = "$aws/things/"
_FORMATS: Final[Mapping[str, PayloadFormat]] = {
    "defender/metrics/json": PayloadFormat.JSON,
    "defender/metrics/cbor": PayloadFormat.CBOR,
}
# Unicode category Cc (C0 controls, DEL and C1 controls): escaped in a reason for the logs.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
# "Read as an int" (§4.2): what fits a signed or unsigned 64-bit integer, so the echo
# never needs a CBOR bignum and never turns a hostile 100 000-digit number into text.
_ID_MIN: Final = -(2**63)
_ID_MAX: Final = 2**64 - 1
_REASON_LIMIT: Final = 300  # characters of an Outcome reason
# peek_report_id. JSON: the key with both quotes unescaped can only be a key (inside a
# string the quote would end the string), then an integer that is not a float's start.
_JSON_ID: Final = re.compile(
    rb'"(?:report_id|rid)"[ \t\r\n]*:[ \t\r\n]*(-?(?:0|[1-9][0-9]{0,19}))(?![0-9.eE])'
)
# CBOR: the definite-length text key, then the head of an unsigned or negative integer.
_CBOR_ID: Final = re.compile(rb"(?:\x69report_id|\x63rid)([\x00-\x1b\x20-\x3b])", re.DOTALL)


@dataclass(frozen=True)
class ResponderPolicy:
    """The responder's choices; the [policy] ones are where the service's behaviour is unknown.

    The payload limit is the validator's ``validation.max_payload_bytes`` (131 072 bytes,
    §3, §7.2 [INF]): one number for both, so they cannot disagree.

    Attributes:
        min_delay_s: The throttle window per thing name, measured from the thing's last
            ACCEPTED report (§3 [DOC S6] "device metric minimum delay", §7.8). 0 disables
            throttling.
        throttle_message: The ``ErrorMessage`` of a ``Throttled`` rejection (§4.3 [UNK],
            §7.8 [policy]).
        invalid_message: The ``ErrorMessage`` of an ``InvalidPayload`` rejection of a report
            that does not decode or validate (§4.3 [DOC S2], §7.3).
        thing_name_code: The ``ErrorCode`` for a bad thing name (§1.2 [UNK], §7.1 [policy]).
        thing_name_message: Its ``ErrorMessage`` (§1.2 [UNK], §7.1 [policy]).
        include_report_id_in_rejections: Put ``reportId`` in rejections when the header's
            ``report_id`` could be read as an integer (§4.2 [UNK], §7.8 [policy]).
        validation: The validator's own choices (§7.4-§7.7).
        max_thing_name_bytes: The longest thing name, in bytes of UTF-8 (§1.2 [DOC S4, S2],
            §7.1).
        max_topic_bytes: The longest topic IoT Core takes; a longer publish is dropped by
            the broker, with no reply (§1.1 [S22]).
        strict_report_ids: Reject (``InvalidPayload``, [policy]) a report whose id is not
            greater than the thing's last accepted id. Off by default (§2.3 [UNK],
            §7.5 [policy] "offer an optional strict mode"). The last id is forgotten when
            the thing is evicted from the bounded table (``max_tracked_things``).
        max_throttled_replies: The most ``Throttled`` replies one thing gets in one throttle
            window; its later reports in that window are dropped with no reply [policy]
            (a flood then costs no publishing either; an agent that holds its next report
            after a ``Throttled``, as AWS asks, never comes near it). 0: no limit.
        max_tracked_things: The most thing names kept in the throttle table and, separately,
            in the per-thing counters. When full, the oldest entry is evicted; an evicted
            thing may report again before ``min_delay_s`` (bounded memory; not a protocol
            rule).
    """

    min_delay_s: float = 300.0
    throttle_message: str = "Throttled"
    invalid_message: str = "Malformed metrics report"
    thing_name_code: str = INVALID_PAYLOAD
    thing_name_message: str = "Malformed metrics report"
    include_report_id_in_rejections: bool = True
    validation: ValidationPolicy = DEFAULT_POLICY
    max_thing_name_bytes: int = 128
    max_topic_bytes: int = 256
    strict_report_ids: bool = False
    max_tracked_things: int = 10_000
    max_throttled_replies: int = 100

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_delay_s) and self.min_delay_s >= 0):
            raise ConfigError(f"min_delay_s: expected a finite number >= 0, got {self.min_delay_s}")
        for name in ("max_thing_name_bytes", "max_topic_bytes", "max_tracked_things"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.max_throttled_replies < 0:
            raise ConfigError(
                f"max_throttled_replies: expected an integer >= 0, got {self.max_throttled_replies}"
            )


#: The policy of docs/protocol.md §7 as written.
DEFAULT_RESPONDER_POLICY: Final = ResponderPolicy()


@dataclass(frozen=True)
class Reply:
    """The Device Defender reply to one report.

    Attributes:
        topic: ``$aws/things/{thing}/defender/metrics/{fmt}/accepted`` or ``.../rejected``.
        payload: The reply document, compact JSON or CBOR as the report's topic (§1.1, §4).
        accepted: Whether the status is ``ACCEPTED``.
        thing_name: The thing name from the report's topic.
        report_id: The ``reportId`` in the reply; None when it is left out.
        error_code: ``statusDetails.ErrorCode`` of a rejection; None when accepted.
    """

    topic: str
    payload: bytes
    accepted: bool
    thing_name: str
    report_id: Optional[int]
    error_code: Optional[str]


@dataclass(frozen=True)
class Outcome:
    """What became of one message.

    Attributes:
        reply: The reply to publish; None when Device Defender never sees the message
            (not a report topic, or dropped by the broker, §7.1, §7.2).
        reason: One line for the logs: why it was accepted, rejected or dropped.
        report: The typed report, decoded once by the validator, when it was ACCEPTED;
            None otherwise.
        quiet: A repeat that a log may show below INFO: a ``Throttled`` reply to a thing
            already told ``Throttled`` in the same window, except the 10th, 100th, 1000th…
            (their reason says the count). One thing's flood is then a handful of lines,
            not one per report (issue #9); the counters still count every reply.
    """

    reply: Optional[Reply]
    reason: str
    report: Optional[Report] = None
    quiet: bool = False


@dataclass(frozen=True)
class ThingCounts:
    """The replies sent for one thing name.

    Attributes:
        accepted: ACCEPTED replies.
        rejected: REJECTED replies, by ``ErrorCode``.
    """

    accepted: int = 0
    rejected: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def rejected_total(self) -> int:
        """All REJECTED replies."""
        return sum(self.rejected.values())


@dataclass(frozen=True)
class ResponderStats:
    """A read-only snapshot of a responder's counters.

    Attributes:
        accepted: ACCEPTED replies in total.
        rejected: REJECTED replies in total, by ``ErrorCode``.
        dropped: Messages that got no reply (not a report topic, or over a broker limit).
        things: Counts per thing name, for at most ``max_tracked_things`` names (the ones
            most recently answered); the totals above count every thing.
        forgotten_things: Thing names evicted from ``things`` to keep it bounded.
        throttle_entries: Thing names in the throttle table now.
    """

    accepted: int
    rejected: Mapping[str, int]
    dropped: int
    things: Mapping[str, ThingCounts]
    forgotten_things: int
    throttle_entries: int


class _Throttle:
    """The last accepted report of one thing (slots: one per tracked thing)."""

    __slots__ = ("at", "report_id", "told")

    def __init__(self, at: float, report_id: int) -> None:
        self.at = at  # clock time
        self.report_id = report_id
        self.told = 0  # Throttled replies since


@dataclass(frozen=True)
class _Rejection:
    """Why a report is rejected: the reply's code and message, and a reason for the logs."""

    code: str
    message: str
    reason: str
    quiet: bool = False
    unanswered: bool = False  # over max_throttled_replies: no reply at all


class _Counts:
    """The replies of one thing, small: slots, and a table only for rare rejection codes."""

    __slots__ = ("accepted", "others", "throttled")

    def __init__(self) -> None:
        self.accepted = 0
        self.throttled = 0  # the common rejection, kept out of the table
        self.others: Optional[dict[str, int]] = None

    def reject(self, code: str) -> None:
        if code == THROTTLED:
            self.throttled += 1
            return
        if self.others is None:
            self.others = {}
        self.others[code] = self.others.get(code, 0) + 1

    def rejected(self) -> dict[str, int]:
        """REJECTED replies by ``ErrorCode``."""
        table = dict(self.others) if self.others else {}
        if self.throttled:
            table[THROTTLED] = self.throttled
        return table


def parse_topic(topic: str) -> Optional[tuple[str, PayloadFormat]]:
    """The thing name and format of a report topic, or None if it is not one (§1.1).

    The grammar is exact: ``"$aws/things/" + thing + "/defender/metrics/" + ("json" |
    "cbor")``, case-sensitive, the thing non-empty and without ``/``, and no further
    levels. The reply topics (``.../accepted``, ``.../rejected``) are not report topics.
    A topic name with ``+`` or ``#`` is not a valid MQTT topic name (MQTT 3.1.1 §4.7.1).

    >>> parse_topic("$aws/things/pump-7/defender/metrics/cbor")
    ('pump-7', <PayloadFormat.CBOR: 'cbor'>)
    >>> print(parse_topic("$aws/things/pump-7/defender/metrics/JSON"))
    None

    Args:
        topic: The topic a message was published on.

    Returns:
        ``(thing_name, format)``, or None.
    """
    if not topic.startswith(_PREFIX):
        return None
    thing, _, rest = topic[len(_PREFIX) :].partition("/")
    fmt = _FORMATS.get(rest)
    if fmt is None or not thing or "+" in thing or "#" in thing:
        return None
    return thing, fmt


def peek_report_id(payload: bytes, fmt: PayloadFormat) -> Optional[int]:
    r"""The header's report id, found by scanning the raw payload; None if not found.

    No decoding: the first ``report_id`` (or ``rid``) key followed by an integer of 64
    bits, in the topic's format. For the ``reportId`` of a rejection decided before the
    payload is decoded (a throttled report); best effort on a payload that would not
    decode.

    >>> peek_report_id(b'{"header": {"report_id": 42, "version": "1.0"}}', PayloadFormat.JSON)
    42
    >>> print(peek_report_id(b'{"header": {"report_id": 4.2}}', PayloadFormat.JSON))
    None
    >>> peek_report_id(bytes.fromhex("a163686564a1637269641903e8"), PayloadFormat.CBOR)
    1000

    Args:
        payload: The report as received.
        fmt: The format of its topic.

    Returns:
        The id, or None.
    """
    if fmt is PayloadFormat.JSON:
        match = _JSON_ID.search(payload)
        value = int(match.group(1)) if match else None
    else:
        match = _CBOR_ID.search(payload)
        if match is None:
            return None
        head = match.group(1)[0]
        info, start = head & 0x1F, match.end()
        if info < 24:
            value = info
        else:
            size = 1 << (info - 24)  # 24..27: 1, 2, 4 or 8 bytes follow
            raw = payload[start : start + size]
            if len(raw) < size:
                return None
            value = int.from_bytes(raw, "big")
        if head >= 0x20:  # major type 1: -1 - n
            value = -1 - value
    return value if value is not None and _ID_MIN <= value <= _ID_MAX else None


def _thing_name_problem(thing: str, max_bytes: int) -> Optional[str]:
    r"""Why ``thing`` is not an acceptable thing name (§1.2, §7.1); None if it is.

    >>> _thing_name_problem("a\x07b", 128)
    'thing name must not contain control characters'
    """
    try:
        validate_thing_name(thing, max_bytes=max_bytes)
    except ValueError as exc:
        return f"thing name {exc}"
    return None


def _echo_id(result: ValidationResult) -> Optional[int]:
    """The report id a reply carries: ``header.report_id`` if it is an integer of 64 bits."""
    report = result.report
    value = report.report_id if report is not None else read_report_id(result.document)
    return value if value is not None and _ID_MIN <= value <= _ID_MAX else None


def _one_line(text: str) -> str:
    """``text`` without control characters and cut to a log-friendly length."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 1] + "…"


def _encode(document: dict[str, Any], fmt: PayloadFormat) -> bytes:
    return encode_document(document, "cbor" if fmt is PayloadFormat.CBOR else "json")


class Responder:
    """Decides Device Defender's reply to each report; thread-safe, no I/O.

    Args:
        policy: The choices where the protocol leaves the behaviour open.
        clock: Seconds since the epoch; gives the replies' ``timestamp`` (epoch ms, §4)
            and the throttle's time. A clock that steps back lengthens the throttle window
            by the step.
    """

    parse_topic = staticmethod(parse_topic)

    def __init__(
        self,
        policy: ResponderPolicy = DEFAULT_RESPONDER_POLICY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        # Both ordered oldest first: move_to_end on every update, evict from the front.
        self._throttle: OrderedDict[str, _Throttle] = OrderedDict()
        self._things: OrderedDict[str, _Counts] = OrderedDict()
        self._accepted = 0
        self._rejected: Counter[str] = Counter()
        self._dropped = 0
        self._forgotten = 0

    @property
    def policy(self) -> ResponderPolicy:
        """The policy this responder applies."""
        return self._policy

    def handle(self, topic: str, payload: bytes) -> Outcome:
        """Answer one message as Device Defender would (§7, §4).

        Never raises on any topic or payload: a hostile message is rejected or dropped.

        Args:
            topic: The topic it was published on.
            payload: Its payload.

        Returns:
            The reply to publish (or None) and a one-line reason.
        """
        policy = self._policy
        parsed = parse_topic(topic)
        if parsed is None:
            return self._drop("not a Device Defender report topic")
        thing, fmt = parsed
        try:
            topic_bytes = len(topic.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates: no MQTT client can send this topic
            return self._drop("topic is not valid UTF-8")
        if topic_bytes > policy.max_topic_bytes:
            limit = policy.max_topic_bytes
            return self._drop(f"topic is {topic_bytes} bytes, over the {limit}-byte limit")
        limit = policy.validation.max_payload_bytes
        if len(payload) > limit:
            return self._drop(f"payload is {len(payload)} bytes, over the {limit}-byte limit")

        early = self._early(thing, fmt, payload)
        if early is not None:
            return early
        result = validate_payload(payload, fmt, policy.validation)
        report_id = _echo_id(result)
        rejection = self._screen(result, report_id)
        with self._lock:
            now = self._clock()
            if rejection is None:
                assert report_id is not None  # _screen rejects a report without a readable id
                rejection = self._admit(thing, report_id, now)
            self._count(thing, rejection)
        if rejection is not None and rejection.unanswered:
            return _unanswered(rejection)
        accepted = result.report if rejection is None else None
        return self._outcome(thing, fmt, report_id, rejection, now, report=accepted)

    def _early(self, thing: str, fmt: PayloadFormat, payload: bytes) -> Optional[Outcome]:
        """The rejections decided without decoding: the throttle, then the thing name.

        None when the report must be decoded; see "Cheap rejection first" above.
        """
        policy = self._policy
        with self._lock:  # the table holds only accepted, so valid, names: throttle first
            now = self._clock()
            rejection = self._throttled(thing, now)
            if rejection is None:
                problem = _thing_name_problem(thing, policy.max_thing_name_bytes)
                if problem is None:
                    return None
                rejection = _Rejection(policy.thing_name_code, policy.thing_name_message, problem)
            self._count(thing, rejection)
        if rejection.unanswered:
            return _unanswered(rejection)
        report_id = peek_report_id(payload, fmt)
        return self._outcome(thing, fmt, report_id, rejection, now, report=None)

    def snapshot(self) -> ResponderStats:
        """A consistent, read-only copy of the counters."""
        with self._lock:
            things = {
                name: ThingCounts(counts.accepted, MappingProxyType(counts.rejected()))
                for name, counts in self._things.items()
            }
            return ResponderStats(
                accepted=self._accepted,
                rejected=MappingProxyType(dict(self._rejected)),
                dropped=self._dropped,
                things=MappingProxyType(things),
                forgotten_things=self._forgotten,
                throttle_entries=len(self._throttle),
            )

    def _screen(self, result: ValidationResult, report_id: Optional[int]) -> Optional[_Rejection]:
        """The report itself (§7.3-§7.7); no state."""
        if result.ok and result.report is not None and report_id is not None:
            return None
        errors = result.errors
        # report_id is None here only under a ValidationPolicy that allows ids beyond 64 bits
        first = str(errors[0]) if errors else "header.report_id: not a 64-bit integer"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        reason = f"invalid report: {first}{more}"
        return _Rejection(INVALID_PAYLOAD, self._policy.invalid_message, reason)

    def _throttled(self, thing: str, now: float) -> Optional[_Rejection]:
        """The throttle (§7.8): a rejection if ``thing`` is inside its window. Holds the lock."""
        self._expire(now)
        last = self._throttle.get(thing)
        window = self._policy.min_delay_s
        if last is None or (elapsed := now - last.at) >= window:
            return None
        last.told += 1
        told, budget = last.told, self._policy.max_throttled_replies
        reason = f"throttled: {elapsed:.1f} s since the last accepted report, under {window:g} s"
        if told > 1:
            reason += f" (Throttled {told} times in this window)"
        unanswered = 0 < budget < told
        if unanswered:
            reason += f"; no reply after {budget} Throttled replies in one window"
        quiet = told > 1 and not _power_of_ten(told)
        return _Rejection(THROTTLED, self._policy.throttle_message, reason, quiet, unanswered)

    def _admit(self, thing: str, report_id: int, now: float) -> Optional[_Rejection]:
        """The throttle again, then strict ids; records an admission (§7.5, §7.8). Holds the lock.

        The throttle was checked before decoding; it is checked again here because another
        report of the same thing may have been accepted meanwhile on another thread.
        """
        policy = self._policy
        if (throttled := self._throttled(thing, now)) is not None:
            return throttled
        last = self._throttle.get(thing)
        if last is not None and policy.strict_report_ids and report_id <= last.report_id:
            reason = f"report id {report_id} is not above the last accepted {last.report_id}"
            return _Rejection(INVALID_PAYLOAD, policy.invalid_message, reason)
        if last is None and len(self._throttle) >= policy.max_tracked_things:
            self._throttle.popitem(last=False)
        self._throttle[thing] = _Throttle(now, report_id)
        self._throttle.move_to_end(thing)
        return None

    def _expire(self, now: float) -> None:
        """Forget throttle entries whose window is over (not in strict mode, §7.5)."""
        if self._policy.strict_report_ids:
            return
        table, window = self._throttle, self._policy.min_delay_s
        while table:
            oldest = next(iter(table))
            if now - table[oldest].at < window:
                return
            del table[oldest]

    def _count(self, thing: str, rejection: Optional[_Rejection]) -> None:
        """Count one reply, in total and for ``thing`` (made most recent). Holds the lock.

        A report that gets no reply (over ``max_throttled_replies``) counts as dropped.
        """
        if rejection is not None and rejection.unanswered:
            self._dropped += 1
            return
        counts = self._things.get(thing)
        if counts is None:
            if len(self._things) >= self._policy.max_tracked_things:
                self._things.popitem(last=False)
                self._forgotten += 1
            counts = self._things[thing] = _Counts()
        else:
            self._things.move_to_end(thing)
        if rejection is None:
            self._accepted += 1
            counts.accepted += 1
        else:
            self._rejected[rejection.code] += 1
            counts.reject(rejection.code)

    def _drop(self, reason: str) -> Outcome:
        with self._lock:
            self._dropped += 1
        return Outcome(None, f"dropped: {reason}")

    def _outcome(
        self,
        thing: str,
        fmt: PayloadFormat,
        report_id: Optional[int],
        rejection: Optional[_Rejection],
        now: float,
        *,
        report: Optional[Report],
    ) -> Outcome:
        """The reply document of §4.1 / §4.2, encoded in the topic's format."""
        timestamp = int(now * 1000)
        if rejection is None:
            accepted = {
                "thingName": thing,
                "reportId": report_id,
                "status": "ACCEPTED",
                "timestamp": timestamp,
            }
            topic = _reply_topic(thing, fmt, "accepted")
            reply = Reply(topic, _encode(accepted, fmt), True, thing, report_id, None)
            return Outcome(reply, "accepted", report)
        if not self._policy.include_report_id_in_rejections:
            report_id = None
        rejected: dict[str, Any] = {"thingName": thing}
        if report_id is not None:
            rejected["reportId"] = report_id
        rejected["status"] = "REJECTED"
        rejected["statusDetails"] = {"ErrorCode": rejection.code, "ErrorMessage": rejection.message}
        rejected["timestamp"] = timestamp
        topic = _reply_topic(thing, fmt, "rejected")
        reply = Reply(topic, _encode(rejected, fmt), False, thing, report_id, rejection.code)
        reason = _one_line(f"rejected {rejection.code}: {rejection.reason}")
        return Outcome(reply, reason, quiet=rejection.quiet)


def _unanswered(rejection: _Rejection) -> Outcome:
    """The outcome of a report dropped for flooding: no reply, a reason for the logs."""
    return Outcome(None, f"dropped: {rejection.reason}", quiet=rejection.quiet)  # no controls


def _power_of_ten(n: int) -> bool:
    """Whether ``n`` is a power of ten: 1, 10, 100, 1000 and so on.

    >>> [n for n in (1, 9, 10, 11, 100, 1000, 2000) if _power_of_ten(n)]
    [1, 10, 100, 1000]
    """
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


def _reply_topic(thing: str, fmt: PayloadFormat, status: str) -> str:
    """``$aws/things/{thing}/defender/metrics/{fmt}/{status}`` (§1.1)."""
    return f"{_PREFIX}{thing}/defender/metrics/{fmt.value}/{status}"
