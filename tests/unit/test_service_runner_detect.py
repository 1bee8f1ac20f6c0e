"""The runner's after_store hook (Detect): called after the replies, its errors contained."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from defender_agent.model import Report
from defender_agent.report.decode import decode_report
from defender_agent.service.runner import DeviceDefenderService, ServiceConfig
from defender_agent.service.storage import open_store
from defender_agent.transport.memory import MemoryTransport
from tests.unit.test_service_runner import BROKER, T0, reply_topics, report, topic, wait_for


def start(db: Path, hook: Any) -> tuple[DeviceDefenderService, MemoryTransport]:
    transport = MemoryTransport(client_id="svc")
    config = ServiceConfig(broker=BROKER, db_url="unused")
    service = DeviceDefenderService(
        config, transport=transport, store=open_store(str(db)), clock=lambda: T0, after_store=hook
    )
    service.start()
    return service, transport


def test_the_hook_gets_each_stored_batch_after_its_replies(tmp_path: Path) -> None:
    seen: list[tuple[str, float, int]] = []
    published_before: list[int] = []
    lock = threading.Lock()
    transport_box: list[MemoryTransport] = []

    def hook(items: Any) -> None:
        with lock:
            published_before.append(len(transport_box[0].published))
            for thing, at, rep, document in items:
                assert isinstance(rep, Report)
                # the stored document, what Detect's worker process decodes again
                assert decode_report(json.loads(document)) == rep
                seen.append((thing, at, rep.report_id))

    service, transport = start(tmp_path / "s.sqlite3", hook)
    transport_box.append(transport)
    transport.deliver(topic("a"), report(1))
    transport.deliver(topic("b"), report(2))
    transport.deliver(topic("a"), b"not json")  # rejected: never handed over
    wait_for(lambda: len(seen) == 2)
    service.stop()
    assert sorted(seen) == [("a", T0, 1), ("b", T0, 2)]
    assert all(n >= 1 for n in published_before)  # its ACCEPTED went out first
    assert service.stats().after_store_errors == 0


def test_a_failing_hook_costs_no_reply(tmp_path: Path, caplog: Any) -> None:
    def hook(items: Any) -> None:
        raise RuntimeError("engine bug")

    service, transport = start(tmp_path / "s.sqlite3", hook)
    for i in range(3):
        transport.deliver(topic(f"t{i}"), report(i + 1))
    wait_for(lambda: len(transport.published) == 3)
    wait_for(lambda: service.stats().after_store_errors >= 1)
    service.stop()
    assert reply_topics(transport) == ["accepted"] * 3
    stats = service.stats()
    assert stats.stored == stats.acknowledged == 3
    assert 1 <= stats.after_store_errors <= 3
    lines = [r.getMessage() for r in caplog.records if "evaluating a batch" in r.getMessage()]
    assert lines and "engine bug" in lines[0]
