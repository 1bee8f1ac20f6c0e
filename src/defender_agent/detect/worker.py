"""Detect's worker process: the engine judging the service's stored reports, in a child.

``python -m defender_agent.detect.worker`` is started by :class:`~.process.DetectProcess`,
never by hand. It speaks with the service over its standard input and output, as framed
pickled tuples (a private pipe between a process and its own child):

* from the service: ``("start", Start)`` once; then ``("judge", [(thing, received_at,
  document), ...])`` per committed batch, in store order; ``("stop",)`` at the end;
* to the service: ``("ready", pid)`` or ``("failed", message)`` after the start;
  ``("judged", count, error)`` per batch (``error`` empty when it went well);
  ``("publish", topic, payload)`` per MQTT alert when it has no connection of its own
  (:mod:`.alert_link`; the service publishes it on its connection). Then it exits, and
  the pipe's end tells the service.

The worker ignores SIGTERM and SIGINT: systemd and a terminal signal the whole process
group, and the service must first hand over what it stored, then say ``stop``. It stops too
when its standard input closes (the service died): what it was given, it has judged.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Optional

from defender_agent.config.extra_sections import DetectSection
from defender_agent.transport.base import MqttSettings

if TYPE_CHECKING:
    from defender_agent.detect.runtime import DetectRuntime

__all__ = ["Start", "main", "receive", "send"]

log = logging.getLogger("defender_agent.detect.worker")


@dataclass(frozen=True)
class Start:
    """What the worker needs to open Detect as the service would.

    Attributes:
        db_url: The service's database.
        detect: ``[detect]``.
        region: ``[http] region``.
        account: ``[http] account_id``.
        log_level: The service's log level.
        log_format: ``text`` or ``json``.
        mqtt: The worker's own connection for its MQTT alerts (None: they go back to the
            service, ``("publish", topic, payload)``).
    """

    db_url: str
    detect: DetectSection
    region: str
    account: str
    log_level: str = "info"
    log_format: str = "text"
    mqtt: Optional[MqttSettings] = None


def send(conn: Connection, message: tuple[Any, ...], lock: Optional[threading.Lock] = None) -> None:
    """Send one message (framed); ``lock`` when several threads send on ``conn``."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if lock is None:
        conn.send_bytes(data)
    else:
        with lock:
            conn.send_bytes(data)


def receive(conn: Connection) -> tuple[Any, ...]:
    """The next message.

    Raises:
        EOFError: The other side closed the pipe.
    """
    message = pickle.loads(conn.recv_bytes())  # noqa: S301 - our own child or parent
    if not isinstance(message, tuple) or not message:
        raise EOFError(f"not a message: {type(message).__name__}")
    return message


def main() -> int:
    """The worker: 0 after a stop, 1 when Detect could not be opened."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # a stray print() must not corrupt the pipe: stdout is stderr now
    inbound, outbound = Connection(0, writable=False), Connection(out_fd, readable=False)
    lock = threading.Lock()
    kind, start = receive(inbound)
    if kind != "start" or not isinstance(start, Start):
        sys.stderr.write(f"defender-agent: error: detect worker: not a start: {kind!r}\n")
        return 2
    from defender_agent.logs import setup_logging  # noqa: PLC0415

    setup_logging(start.log_level, start.log_format, timestamps=True)
    from defender_agent.detect.runtime import DetectRuntime  # noqa: PLC0415
    from defender_agent.errors import AgentError  # noqa: PLC0415

    try:
        runtime = DetectRuntime(
            start.db_url, start.detect, region=start.region, account=start.account
        )
    except AgentError as exc:
        send(outbound, ("failed", str(exc)), lock)
        return 1
    link = None
    if start.mqtt is not None:
        from defender_agent.detect.alert_link import AlertLink  # noqa: PLC0415

        link = AlertLink(start.mqtt)
        link.start()
        runtime.bind_publish(link.publish)
    else:
        runtime.bind_publish(
            lambda topic, payload: send(outbound, ("publish", topic, payload), lock)
        )
    runtime.start()
    send(outbound, ("ready", os.getpid()), lock)
    try:
        _serve(runtime, inbound, outbound, lock)
    finally:
        runtime.stop()  # logs "detect stopped: ..."
        if link is not None:
            link.stop()
    return 0  # (the pipe closes: the service sees the end)


def _serve(
    runtime: DetectRuntime, inbound: Connection, outbound: Connection, lock: threading.Lock
) -> None:
    from defender_agent.report.decode import decode_report  # noqa: PLC0415

    while True:
        try:
            message = receive(inbound)
        except EOFError:
            log.warning("detect worker: the service closed the pipe; stopping")
            return
        if message[0] == "stop":
            return
        if message[0] != "judge":
            log.error("detect worker: unknown message %r ignored", message[0])
            continue
        items = message[1]
        error = ""
        try:
            runtime.judge(
                [(thing, at, decode_report(json.loads(text))) for thing, at, text in items]
            )
        except Exception as exc:  # counted by the service, one line there
            error = f"{type(exc).__name__}: {exc}"
        try:
            send(outbound, ("judged", len(items), error), lock)
        except OSError:
            return


if __name__ == "__main__":  # (the module itself, not __main__: the pickled Start is its class)
    from defender_agent.detect import worker  # noqa: PLW0406

    sys.exit(worker.main())
