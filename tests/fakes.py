"""The agent's transport in tests: a MemoryTransport with Device Defender on the same broker.

``FakeTransport`` is :class:`defender_agent.transport.MemoryTransport` plus a
second transport on its broker that answers each report the way Device Defender
would, through a ``reply`` function, on the reply topics the agent subscribed to.
"""

from __future__ import annotations

import json
from typing import Callable, Optional

from defender_agent.errors import ConnectError
from defender_agent.transport import MemoryBroker, MemoryTransport

__all__ = [
    "FakeTransport",
    "MemoryBroker",
    "MemoryTransport",
    "ReplyFn",
    "accept_all",
    "reject_with",
]

#: reply(topic, payload) -> list of (reply topic, reply payload)
ReplyFn = Callable[[str, bytes], list[tuple[str, bytes]]]

#: Every report topic of every thing, in both formats.
REPORT_FILTER = "$aws/things/+/defender/metrics/+"


def _report_id(payload: bytes) -> object:
    header = json.loads(payload)
    header = header.get("header") or header.get("hed")
    return header.get("report_id", header.get("rid"))


def accept_all(topic: str, payload: bytes) -> list[tuple[str, bytes]]:
    """Accept every (JSON) report."""
    thing = topic.split("/")[2]
    body = {
        "thingName": thing,
        "reportId": _report_id(payload),
        "status": "ACCEPTED",
        "timestamp": 1,
    }
    return [(topic + "/accepted", json.dumps(body).encode())]


def reject_with(code: str, *, with_id: bool = True) -> ReplyFn:
    """Reject every (JSON) report with ``code`` (and its report id unless ``with_id`` is False)."""

    def reply(topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        body: dict[str, object] = {
            "thingName": topic.split("/")[2],
            "status": "REJECTED",
            "statusDetails": {"ErrorCode": code, "ErrorMessage": f"{code} message"},
            "timestamp": 1,
        }
        if with_id:
            body["reportId"] = _report_id(payload)
        return [(topic + "/rejected", json.dumps(body).encode())]

    return reply


class FakeTransport(MemoryTransport):
    """The agent's side of a broker where ``device_defender`` answers reports with ``reply``.

    Args:
        reply: how Device Defender answers a report; ``None``: it never answers.
        fail_connects: the first this many connects fail ...
        connect_error: ... with this error class (message "fake failure").
    """

    def __init__(
        self,
        reply: Optional[ReplyFn] = accept_all,
        fail_connects: int = 0,
        connect_error: type[Exception] = ConnectError,
    ) -> None:
        super().__init__(MemoryBroker(), client_id="agent")
        self.reply = reply
        if fail_connects:
            self.fail_next_connects(fail_connects, connect_error("fake failure"))
        self.device_defender = MemoryTransport(self.broker, client_id="device-defender")
        self.device_defender.connect()
        self.device_defender.subscribe(REPORT_FILTER, self._answer)

    def _answer(self, topic: str, payload: bytes) -> None:
        if self.reply is not None:
            for reply_topic, reply_payload in self.reply(topic, payload):
                self.device_defender.publish(reply_topic, reply_payload)

    @property
    def disconnected(self) -> bool:
        """Whether disconnect() was called."""
        return self.disconnects > 0

    def inject(self, topic: str, payload: bytes) -> None:
        """A message from the broker that the agent must have subscribed to."""
        assert self.deliver(topic, payload) >= 1, f"nothing subscribed to {topic}"
