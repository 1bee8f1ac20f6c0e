"""packaging/grafana and packaging/prometheus: importable, and every query names a metric
the service's /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import MappingProxyType

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from defender_agent.service.latency import Latency
from defender_agent.service.runner import RunnerStats
from defender_agent.service.storage import open_store
from defender_agent.web.metrics import METRIC_NAMES, ServiceCollector, registry_for

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "packaging" / "grafana" / "defender-agent-service.json"
PROMETHEUS = ROOT / "packaging" / "prometheus" / "prometheus.yml"


def exported_samples(per_thing: bool) -> set[str]:
    """The sample and family names /metrics has (a store with one thing)."""
    store = open_store(":memory:")
    try:
        store.record("gw", 1, 1.0, "json", [])
        latency = Latency()
        latency.observe(0.01)
        stats = RunnerStats(
            1,
            1,
            1,
            MappingProxyType({"Throttled": 1}),
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            1,
            1,
            store_latency=latency.snapshot(),
        )
        collector = ServiceCollector(lambda: stats, store, None, per_thing=per_thing)
        text = generate_latest(registry_for(collector)).decode()
    finally:
        store.close()
    families = list(text_string_to_metric_families(text))
    # a family without samples yet (no violation) is still exported: its HELP and TYPE
    return {s.name for f in families for s in f.samples} | {f.name for f in families}


def grafana_queries() -> list[str]:
    doc = json.loads(GRAFANA.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_is_importable_json() -> None:
    doc = json.loads(GRAFANA.read_text())
    assert doc["title"] and doc["uid"] and doc["panels"]
    assert [i["pluginId"] for i in doc["__inputs"]] == ["prometheus"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_every_grafana_query_names_an_exported_metric() -> None:
    exported = exported_samples(per_thing=True)
    queries = grafana_queries()
    assert len(queries) >= 10
    for expr in queries:
        names = re.findall(r"\bdefender_agent_[a-z_]+", expr)
        assert names, expr
        for name in names:
            assert name in exported, f"{name} in {expr!r} is not exported"


def test_metric_names_are_all_exported_and_bounded_by_default() -> None:
    exported = exported_samples(per_thing=True)
    for name in METRIC_NAMES:
        assert any(s == name or s.startswith(name + "_") for s in exported), name
    default = exported_samples(per_thing=False)
    assert not any(s.startswith("defender_agent_thing_") for s in default)


def test_prometheus_scrape_config_points_at_metrics() -> None:
    text = PROMETHEUS.read_text()
    assert "metrics_path: /metrics" in text
    assert re.search(r"targets: \[\"127\.0\.0\.1:\d+\"\]", text)
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return
    doc = yaml.safe_load(text)
    (job,) = doc["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
