"""An in-memory transport that speaks the contract of ``transport.base.Transport``.

It records subscriptions and publishes, completes publish futures like a broker's
PUBACK, and can answer reports through a ``reply`` function the way Device
Defender would (on the reply topics the agent subscribed to).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from typing import Callable, Optional

from defender_agent.errors import ConnectError, PublishError
from defender_agent.transport.base import ConnectionListener, MessageHandler

#: reply(topic, payload) -> list of (reply topic, reply payload)
ReplyFn = Callable[[str, bytes], list[tuple[str, bytes]]]


def accept_all(topic: str, payload: bytes) -> list[tuple[str, bytes]]:
    doc = json.loads(payload)
    header = doc.get("header") or doc.get("hed")
    rid = header.get("report_id", header.get("rid"))
    thing = topic.split("/")[2]
    body = {"thingName": thing, "reportId": rid, "status": "ACCEPTED", "timestamp": 1}
    return [(topic + "/accepted", json.dumps(body).encode())]


def reject_with(code: str, *, with_id: bool = True) -> ReplyFn:
    def reply(topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        doc = json.loads(payload)
        header = doc.get("header") or doc.get("hed")
        body: dict[str, object] = {
            "thingName": topic.split("/")[2],
            "status": "REJECTED",
            "statusDetails": {"ErrorCode": code, "ErrorMessage": f"{code} message"},
            "timestamp": 1,
        }
        if with_id:
            body["reportId"] = header.get("report_id", header.get("rid"))
        return [(topic + "/rejected", json.dumps(body).encode())]

    return reply


class FakeTransport:
    def __init__(
        self,
        reply: Optional[ReplyFn] = accept_all,
        fail_connects: int = 0,
        connect_error: type[Exception] = ConnectError,
    ) -> None:
        self.reply = reply
        self.fail_connects = fail_connects
        self.connect_error = connect_error
        self.connect_attempts = 0
        self.subscriptions: dict[str, MessageHandler] = {}
        self.published: list[tuple[str, bytes]] = []
        self.connected = False
        self.disconnected = False
        self.listener: Optional[ConnectionListener] = None
        self.lock = threading.Lock()

    def connect(self) -> None:
        with self.lock:
            self.connect_attempts += 1
            if self.connect_attempts <= self.fail_connects:
                raise self.connect_error(f"fake failure {self.connect_attempts}")
            self.connected = True

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        self.subscriptions[topic_filter] = handler

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        future: Future[None] = Future()
        if not self.connected:
            future.set_exception(PublishError("not connected"))
            return future
        with self.lock:
            self.published.append((topic, payload))
        future.set_result(None)
        if self.reply is not None:
            for reply_topic, reply_payload in self.reply(topic, payload):
                handler = self.subscriptions.get(reply_topic)
                if handler is not None:
                    handler(reply_topic, reply_payload)
        return future

    def inject(self, topic: str, payload: bytes) -> None:
        self.subscriptions[topic](topic, payload)

    def disconnect(self) -> None:
        self.connected = False
        self.disconnected = True

    def set_connection_listener(self, listener: Optional[ConnectionListener]) -> None:
        self.listener = listener

    def drop_link(self) -> None:
        self.connected = False
        if self.listener:
            self.listener(False, "fake drop")

    def restore_link(self) -> None:
        self.connected = True
        if self.listener:
            self.listener(True, "fake restore")
