"""MQTT CONNECT and SUBSCRIBE as the agent makes them, with the agent's own transport.

The awscrt transport is used here (not a probe of its own) so that a pass means the
agent itself will connect and subscribe: the same TLS setup, ALPN, proxy, WebSocket
signing, MQTT version and client id. It does say what failed: a CONNACK code, a
connection closed by the broker, a SUBACK failure per topic filter.

Note: the check connects with the agent's client id. AWS IoT allows one connection
per client id, so a running agent is disconnected once (it reconnects by itself).
"""

from __future__ import annotations

import dataclasses
import json
import queue
import time
from typing import TYPE_CHECKING, Callable, Optional

from defender_agent.doctor.policy import connect_refused_fix, subscribe_statement
from defender_agent.doctor.result import Result
from defender_agent.errors import ConnectError, TlsSetupError, TransportError
from defender_agent.transport.base import MqttSettings

if TYPE_CHECKING:
    from defender_agent.transport.mqtt import MqttTransport

__all__ = ["check_mqtt"]


def check_mqtt(
    settings: MqttSettings,
    *,
    thing: str,
    fmt: str,
    timeout: float,
    account: Optional[str] = None,
    publish: Optional[Callable[[], tuple[int, bytes]]] = None,
    reply_timeout: float = 10.0,
) -> list[Result]:
    """CONNECT, SUBSCRIBE to the replies and, with ``publish``, one report and its reply.

    Args:
        settings: the agent's connection settings.
        thing: the thing name.
        fmt: the report format (``json``/``cbor``).
        timeout: the longest the connection and each SUBACK may take.
        account: the AWS account id for the policy text (``*`` when unknown).
        publish: makes the one test report: ``(report_id, payload)``.
        reply_timeout: how long to wait for the test report's reply.
    """
    from defender_agent.transport.mqtt import MqttTransport  # noqa: PLC0415 - awscrt

    settings = dataclasses.replace(settings, connect_timeout_s=timeout)
    transport = MqttTransport(settings)
    results: list[Result] = []
    try:
        started = time.monotonic()
        try:
            transport.connect()
        except (ConnectError, TlsSetupError) as exc:
            reason = str(exc)
            return [
                Result(
                    "MQTT CONNECT",
                    "fail",
                    f"as client id {settings.client_id}: {reason}",
                    fix=connect_refused_fix(reason, settings.client_id, thing, settings.endpoint),
                    seconds=time.monotonic() - started,
                )
            ]
        results.append(
            Result(
                "MQTT CONNECT",
                "ok",
                f"accepted as client id {settings.client_id} "
                f"({'MQTT 5' if settings.mqtt5 else 'MQTT 3.1.1'})",
                seconds=time.monotonic() - started,
            )
        )
        topic = f"$aws/things/{thing}/defender/metrics/{fmt}"
        replies: queue.Queue[tuple[str, bytes]] = queue.Queue()
        refused = []
        started = time.monotonic()
        for kind in ("accepted", "rejected"):
            try:
                transport.subscribe(f"{topic}/{kind}", lambda t, p: replies.put((t, p)))
            except TransportError as exc:
                refused.append(f"{topic}/{kind} ({exc})")
        if refused:
            results.append(
                Result(
                    "MQTT SUBSCRIBE",
                    "fail",
                    "refused: " + "; ".join(refused),
                    fix="the IoT policy attached to the certificate lacks iot:Subscribe/"
                    "iot:Receive for the reply topics; add these statements: "
                    + subscribe_statement(thing, fmt, settings.endpoint, account),
                    seconds=time.monotonic() - started,
                )
            )
            return results
        results.append(
            Result(
                "MQTT SUBSCRIBE",
                "ok",
                f"{topic}/accepted and /rejected granted",
                seconds=time.monotonic() - started,
            )
        )
        if publish is not None:
            results.append(_publish_test(transport, topic, publish, replies, reply_timeout))
        return results
    finally:
        transport.disconnect()


def _publish_test(
    transport: MqttTransport,
    topic: str,
    publish: Callable[[], tuple[int, bytes]],
    replies: queue.Queue[tuple[str, bytes]],
    reply_timeout: float,
) -> Result:
    """One real report, and its reply (ACCEPTED, REJECTED with the code, or none)."""
    name = "test report"
    started = time.monotonic()
    report_id, payload = publish()
    try:
        transport.publish(topic, payload).result(reply_timeout)
    except Exception as exc:  # PublishError, a timeout
        return Result(
            name,
            "fail",
            f"report {report_id} not acknowledged: {exc}",
            fix="the IoT policy needs iot:Publish on " + topic,
        )
    deadline = started + reply_timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            reply_topic, body = replies.get(timeout=left)
        except queue.Empty:
            break
        code = _reply(body)
        if code[0] != report_id and code[0] is not None:
            continue  # an older report's reply
        if reply_topic.endswith("/accepted"):
            return Result(
                name, "ok", f"report {report_id} ACCEPTED", seconds=time.monotonic() - started
            )
        return Result(
            name,
            "fail",
            f"report {report_id} REJECTED: {code[1]}",
            fix="see the rejection code in the README's 'Replies' table",
            seconds=time.monotonic() - started,
        )
    return Result(
        name,
        "fail",
        f"report {report_id}: no reply within {reply_timeout:g} s",
        fix="the reply topics are subscribed: check that Device Defender is enabled in this "
        "region, and iot:Receive in the policy",
        seconds=time.monotonic() - started,
    )


def _reply(body: bytes) -> tuple[Optional[int], str]:
    """``(report id, code)`` of a reply (JSON or CBOR).

    >>> _reply(b'{"reportId": 5, "status": "REJECTED", "statusDetails": {"ErrorCode": "X"}}')
    (5, 'X')
    """
    try:
        doc = json.loads(body)
    except ValueError:
        try:
            import cbor2  # noqa: PLC0415

            doc = cbor2.loads(body)
        except Exception:  # an unreadable reply
            return None, "unreadable reply"
    if not isinstance(doc, dict):
        return None, "unreadable reply"
    rid = doc.get("reportId")
    details = doc.get("statusDetails")
    code = details.get("ErrorCode") if isinstance(details, dict) else None
    return (rid if isinstance(rid, int) else None), str(code or doc.get("status"))
