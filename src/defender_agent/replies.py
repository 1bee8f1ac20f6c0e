"""Device Defender's replies to the agent's reports: parse them, match them, count them.

Every report the agent publishes is remembered by its ``report_id`` until the
service answers on ``.../accepted`` or ``.../rejected`` (protocol.md §4). A
reply is matched on ``reportId``; one for an id the agent is not waiting for
is logged and not trusted (it may be another agent's, or stale). Rejections
are logged at ERROR with their ``ErrorCode`` and ``ErrorMessage``; a
``Throttled`` rejection asks the agent to hold its next report a full
interval. Reports that get no answer within an interval count as unanswered.

The ledger is shared between the client's callback threads and the agent's
loop, so every method takes its lock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Final, Optional

from defender_agent.logs import MAX_SHOWN, one_line, shown

__all__ = ["Counters", "Reply", "ReplyLedger", "parse_reply", "rejection_text"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """One decoded reply."""

    accepted: bool
    report_id: Optional[int]
    error_code: Optional[str] = None
    error_message: Optional[str] = None


def parse_reply(topic: str, payload: bytes) -> Reply:
    """Decode a reply from its topic (``.../{json,cbor}/{accepted,rejected}``) and payload.

    >>> parse_reply("$aws/things/t/defender/metrics/json/accepted",
    ...             b'{"thingName":"t","reportId":7,"status":"ACCEPTED","timestamp":1}')
    Reply(accepted=True, report_id=7, error_code=None, error_message=None)

    Raises:
        ValueError: the payload is not a reply document.
    """
    parts = topic.split("/")
    if len(parts) < 2 or parts[-1] not in ("accepted", "rejected"):
        raise ValueError(f"not a reply topic: {shown(topic)}")
    try:
        if parts[-2] == "cbor":
            # the validator's CBOR module: cbor2 5's C decoder (Python 3.9) can crash the
            # process on a truncated text string, so there it is the pure-Python one
            from defender_agent.report.validate import CBOR_MODULE  # noqa: PLC0415

            doc = CBOR_MODULE.loads(payload)
        else:
            doc = json.loads(payload)
    except Exception as exc:  # any decoder failure means the same thing here
        raise ValueError(f"undecodable reply ({type(exc).__name__})") from None
    if not isinstance(doc, Mapping):
        raise ValueError("reply is not an object")  # noqa: TRY004 - callers expect ValueError
    raw_id = doc.get("reportId")
    report_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
    status = doc.get("status")
    accepted = parts[-1] == "accepted"
    if status not in (None, "ACCEPTED" if accepted else "REJECTED"):
        raise ValueError(f"status {shown(status)} on the {parts[-1]} topic")
    details = doc.get("statusDetails")
    code = message = None
    if isinstance(details, Mapping):
        code = details.get("ErrorCode") if isinstance(details.get("ErrorCode"), str) else None
        message = (
            details.get("ErrorMessage") if isinstance(details.get("ErrorMessage"), str) else None
        )
    if not accepted and code is None:
        code = "Unknown"
    return Reply(accepted, report_id, code, message)


def rejection_text(code: Optional[str], message: Optional[str]) -> str:
    r"""A rejection's code, and its message when that adds something to the code.

    >>> rejection_text("Throttled", "Throttled")
    'Throttled'
    >>> rejection_text("InvalidPayload", "Malformed metric value: bytes_in")
    'InvalidPayload: Malformed metric value: bytes_in'
    >>> rejection_text("Unknown", None), rejection_text("Throttled", " throttled. ")
    ('Unknown', 'Throttled')

    Both come from the network: escaped and cut for a log line.

    >>> print(rejection_text("Throttled\n2026-01-01T00:00:00Z defender-agent: info: ok", None))
    Throttled\n2026-01-01T00:00:00Z defender-agent: info: ok
    """
    code = code or "Unknown"
    text = one_line(code, MAX_SHOWN)
    if not message or _letters(message) in ("", _letters(code)):
        return text
    return f"{text}: {one_line(' '.join(message.split()), MAX_SHOWN)}"


def _letters(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


#: Distinct rejection codes counted by name in ``status.json``; the codes come from the
#: network, so any beyond these are counted under ``Other`` (the file stays small).
_MAX_CODES: Final = 16
_MAX_CODE_CHARS: Final = 64
_MAX_MESSAGE_CHARS: Final = 500


def _counted_code(code: str, counted: Mapping[str, int]) -> str:
    """The name a rejection code is counted under: itself (cut), or ``Other`` once full.

    >>> _counted_code("Throttled", {})
    'Throttled'
    >>> _counted_code("Made-up", {f"c{n}": 1 for n in range(16)})
    'Other'
    >>> _counted_code("c3", {f"c{n}": 1 for n in range(16)})
    'c3'
    """
    code = code[:_MAX_CODE_CHARS]
    if code in counted or len(counted) < _MAX_CODES:
        return code
    return "Other"


@dataclass
class Counters:
    """What happened to the reports, for the status file."""

    built: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0
    unanswered_in_a_row: int = 0
    dropped: int = 0
    held: int = 0
    invalid: int = 0
    cycle_errors: int = 0
    unknown_replies: int = 0
    bad_replies: int = 0
    last_accepted_at: Optional[float] = None
    last_report_id: Optional[int] = None
    last_rejection: Optional[dict[str, Any]] = None
    last_error: Optional[str] = None
    last_cycle_error: Optional[dict[str, Any]] = None


class ReplyLedger:
    """Reports awaiting replies, and the counters.

    Args:
        answer_timeout: seconds after which a report without a reply is unanswered.
        clock: monotonic clock for the timeout; ``wall`` stamps "last accepted".
    """

    def __init__(
        self,
        answer_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.answer_timeout = answer_timeout
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._pending: dict[int, float] = {}
        self._hold_next = False
        self.counters = Counters()

    def count(self, name: str, error: Optional[str] = None) -> None:
        """Add one to a plain counter (``dropped``, ``held``, ...) and remember the error."""
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + 1)
            if error:
                self.counters.last_error = error

    def cycle_error(self, stage: str, error: str) -> None:
        """A cycle failed at ``stage`` (``collect``, ``encode``, ``publish``, ``save``...)."""
        with self._lock:
            self.counters.cycle_errors += 1
            self.counters.last_error = f"{stage}: {error}"
            self.counters.last_cycle_error = {"stage": stage, "error": error, "at": self._wall()}

    def built(self, report_id: int) -> None:
        """A report was built."""
        with self._lock:
            self.counters.built += 1
            self.counters.last_report_id = report_id

    def expect(self, report_id: int) -> None:
        """``report_id`` is about to be published: its reply may come before the PUBACK."""
        with self._lock:
            self._pending[report_id] = self._clock()

    def sent(self, report_id: int) -> None:
        """The broker acknowledged the publish of ``report_id`` (PUBACK)."""
        with self._lock:
            self.counters.sent += 1

    def failed(self, report_id: int, error: str) -> None:
        """The publish of ``report_id`` failed: it will get no reply; count it dropped."""
        with self._lock:
            self._pending.pop(report_id, None)
            self.counters.dropped += 1
            self.counters.last_error = error

    def take_hold(self) -> bool:
        """Whether the next report must be held (a Throttled rejection came); resets the flag."""
        with self._lock:
            hold, self._hold_next = self._hold_next, False
            return hold

    def expire(self) -> int:
        """Count reports whose reply did not come in time; return how many expired now."""
        now = self._clock()
        with self._lock:
            late = [rid for rid, at in self._pending.items() if now - at > self.answer_timeout]
            for rid in late:
                del self._pending[rid]
            self.counters.unanswered += len(late)
            self.counters.unanswered_in_a_row += len(late)
        for rid in late:
            log.warning("report %d got no reply within %.0f s", rid, self.answer_timeout)
        return len(late)

    def unanswered_in_a_row(self) -> int:
        """How many reports in a row expired without a reply (0 once one is answered).

        >>> now = [0.0]
        >>> ledger = ReplyLedger(10, clock=lambda: now[0])
        >>> ledger.expect(1); ledger.expect(2); now[0] = 11.0
        >>> ledger.expire(), ledger.unanswered_in_a_row()
        (2, 2)
        >>> ledger.expect(3)
        >>> ledger.on_message("t/json/accepted", b'{"reportId": 3, "status": "ACCEPTED"}')
        >>> ledger.unanswered_in_a_row()
        0
        """
        with self._lock:
            return self.counters.unanswered_in_a_row

    def on_message(self, topic: str, payload: bytes) -> None:
        """Handle a message on the accepted/rejected topics (called on a client thread)."""
        try:
            reply = parse_reply(topic, payload)
        except ValueError as exc:
            self.count("bad_replies")
            log.warning("ignoring a malformed reply on %s: %s", shown(topic), exc)
            return
        with self._lock:
            known = reply.report_id is not None and reply.report_id in self._pending
            if known:
                assert reply.report_id is not None
                del self._pending[reply.report_id]
                self.counters.unanswered_in_a_row = 0  # the replies reach us
            if reply.accepted:
                if known:
                    self.counters.accepted += 1
                    self.counters.last_accepted_at = self._wall()
                else:
                    self.counters.unknown_replies += 1
            else:
                code = reply.error_code or "Unknown"
                if known or reply.report_id is None:
                    counted = _counted_code(code, self.counters.rejected)
                    self.counters.rejected[counted] = self.counters.rejected.get(counted, 0) + 1
                    self.counters.last_rejection = {
                        "report_id": reply.report_id,
                        "code": code[:_MAX_CODE_CHARS],
                        "message": None
                        if reply.error_message is None
                        else reply.error_message[:_MAX_MESSAGE_CHARS],
                        "at": self._wall(),
                    }
                    if code == "Throttled":
                        self._hold_next = True
                else:
                    self.counters.unknown_replies += 1
        if reply.accepted and known:
            log.info("report %d accepted", reply.report_id)
        elif reply.accepted:
            log.warning(
                "accepted reply for unknown report id %s; not ours or late: ignored",
                reply.report_id,
            )
        elif known or reply.report_id is None:
            log.error(
                "report %s rejected: %s%s",
                reply.report_id if reply.report_id is not None else "(no reportId)",
                rejection_text(reply.error_code, reply.error_message),
                "; holding the next report a full interval"
                if reply.error_code == "Throttled"
                else "",
            )
        else:
            log.warning(
                "rejection for unknown report id %s (%s); ignored",
                reply.report_id,
                shown(reply.error_code),
            )

    def snapshot(self) -> dict[str, Any]:
        """The counters and the number of reports awaiting replies, as plain data."""
        with self._lock:
            data = asdict(self.counters)
            data["awaiting_reply"] = len(self._pending)
            return data
