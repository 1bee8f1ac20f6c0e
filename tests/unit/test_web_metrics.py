"""What /metrics reads from the running service: store and Detect latency, per-thing counts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from defender_agent.service.storage import open_store
from defender_agent.web.metrics import ServiceCollector, registry_for
from tests.unit.test_service_runner import report, topic, wait_for
from tests.unit.test_service_runner_detect import start


def test_the_runner_times_commits_and_detect_and_counts_per_thing(tmp_path: Path) -> None:
    def slow_detect(_items: Any) -> None:
        time.sleep(0.03)

    service, transport = start(tmp_path / "s.sqlite3", slow_detect)
    transport.deliver(topic("gw-1"), report(1))
    transport.deliver(topic("gw-2"), b"not json")
    wait_for(lambda: (service.stats().detect_latency or None) is not None)
    wait_for(lambda: service.stats().detect_latency.count >= 1)  # type: ignore[union-attr]
    stats = service.stats()
    service.stop()
    assert stats.store_latency is not None and stats.store_latency.count >= 1
    assert stats.detect_latency is not None and stats.detect_latency.total >= 0.03
    assert stats.things["gw-1"].accepted == 1
    assert dict(stats.things["gw-2"].rejected) == {"InvalidPayload": 1}

    store = open_store(str(tmp_path / "s.sqlite3"))
    try:
        text = generate_latest(registry_for(ServiceCollector(lambda: stats, store, None)))
    finally:
        store.close()
    samples = {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
    }
    assert samples["defender_agent_detect_evaluation_seconds_count[]"] >= 1
    assert samples["defender_agent_detect_evaluation_seconds_sum[]"] >= 0.03
    assert samples["defender_agent_store_seconds_count[]"] >= 1
    assert samples["defender_agent_detect_evaluation_seconds_bucket[('le', '0.01')]"] == 0


def test_without_detect_there_is_no_detect_latency(tmp_path: Path) -> None:
    service, transport = start(tmp_path / "s.sqlite3", None)
    transport.deliver(topic("gw-1"), report(1))
    wait_for(lambda: service.stats().stored == 1)
    stats = service.stats()
    service.stop()
    assert stats.detect_latency is None
    assert stats.store_latency is not None and stats.store_latency.count == 1
