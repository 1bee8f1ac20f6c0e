"""The component configuration as settings, live updates (Component.apply_update), Agent.reconfigure."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import cbor2
import pytest

from defender_agent.agent import report_topic
from defender_agent.config import Config
from defender_agent.cycle import Collector
from defender_agent.errors import ConfigError
from defender_agent.greengrass.component import Component
from defender_agent.greengrass.settings import component_document, config_from_component
from defender_agent.report.decode import read_report_id
from defender_agent.report.validate import decode_payload
from tests.fakes import FakeTransport
from tests.sim_clock import START
from tests.unit.test_agent import Run, make_config

FAST = {"interval": 1, "allow_short_interval": True, "splay": 0}


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def load(value: dict[str, Any], **kw: Any) -> Config:
    return config_from_component(value, thing_name="core1", environ={}, **kw)


# ------------------------------------------------------------------ the mapping
def test_keys_are_the_toml_files() -> None:
    config = load(
        {
            "agent": {"interval": 600, "format": "cbor", "short_names": True},
            "collector": {"list_size": 7, "interfaces_exclude": ["docker*"]},
            "custom_metrics": {"enabled": ["cpu_usage"]},
        }
    )
    assert (config.agent.interval, config.agent.format, config.agent.short_names) == (
        600,
        "cbor",
        True,
    )
    assert config.collector.list_size == 7
    assert config.collector.interfaces_exclude == ("docker*",)
    assert not config.custom_metrics.empty
    assert config.sources["interval"] == "component configuration: agent.interval"


def test_sample_interval_seconds_and_the_nucleus_own_keys() -> None:
    assert load({"SampleIntervalSeconds": 900}).agent.interval == 900
    assert load({"SampleIntervalSeconds": "900.0"}).agent.interval == 900
    both = load({"SampleIntervalSeconds": 900, "agent": {"interval": 1200}})
    assert both.agent.interval == 1200  # the agent's own key wins
    assert load({"accessControl": {"aws.greengrass.ipc.mqttproxy": {}}}).agent.interval == 300


def test_floats_from_the_nucleus_are_whole_numbers() -> None:
    assert (
        load({"agent": {"interval": 600.0}, "collector": {"list_size": 5.0}}).collector.list_size
        == 5
    )


def test_the_core_thing_name_unless_configured() -> None:
    assert load({}).effective_thing_name == "core1"
    assert load({"agent": {"thing_name": "sensor-7"}}).effective_thing_name == "sensor-7"
    assert component_document({}, thing_name=None) == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"agent": {"interval": 60}}, "component configuration: agent.interval: interval 60 s"),
        ({"SampleIntervalSeconds": 10}, "component configuration: SampleIntervalSeconds"),
        ({"agent": {"interval": "soon"}}, "component configuration: agent.interval:"),
        (
            {"agent": {"formatt": "json"}},
            "unknown key 'agent.formatt'; did you mean 'agent.format'",
        ),
        ({"agent": 5}, "agent must be an object"),
        ({"mqtt": {"endpoint": "x"}}, "mqtt: not used under Greengrass"),
        ({"agent": {"thing_name": "a/b"}}, "agent.thing_name: invalid thing name"),
        ({"agent": {"dry_run": True}}, "dry_run has no use under Greengrass"),
        ({"custom_metrics": {"enabled": ["nope"]}}, "nope"),
    ],
)
def test_a_bad_configuration_is_one_line_naming_the_key(
    value: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(value)
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_options_and_the_environment_win() -> None:
    config = config_from_component(
        {"agent": {"interval": 600}},
        thing_name="core1",
        environ={"DEFENDER_AGENT_INTERVAL": "900"},
    )
    assert config.agent.interval == 900
    config = config_from_component(
        {"agent": {"interval": 600}}, thing_name="core1", environ={}, flags={"interval": "1200"}
    )
    assert config.agent.interval == 1200


# ------------------------------------------------------------------ Agent.reconfigure
def test_reconfigure_changes_the_interval_at_once_keeping_the_baseline(
    proc_copy: Any, tmp_path: Path
) -> None:
    root = proc_copy("gateway_dualstack")
    config = make_config(root, tmp_path / "s", interval=10)
    run = Run(config, FakeTransport())
    faster = make_config(root, tmp_path / "s", interval=2)
    run.clock.at(START + 15, lambda: run.agent.reconfigure(faster))
    assert run.run(21.5) == 0
    # baseline at 0, report at 10; at 15 the interval becomes 2: due at 12 (past) -> at once
    assert run.times == [10.0, 15.0, 17.0, 19.0, 21.0]
    snap = run.counters()
    assert snap["accepted"] == 5
    assert run.status()["interval"] == 2


def test_reconfigure_to_another_format_subscribes_to_its_replies(
    proc_copy: Any, tmp_path: Path
) -> None:
    root = proc_copy("gateway_dualstack")
    run = Run(make_config(root, tmp_path / "s"), FakeTransport(reply=accept_any_format))
    cbor = make_config(root, tmp_path / "s", format="cbor", short_names=True, list_size=3)
    collector = Collector(cbor.collector, state_dir=tmp_path / "s")
    run.clock.at(START + 2.5, lambda: run.agent.reconfigure(cbor, collector))
    assert run.run(4.5) == 0
    assert run.transport is not None
    topics = [t for t, _ in run.transport.published if "/defender/metrics/" in t]
    cbor_topic = report_topic("gw", "cbor")
    assert topics == [report_topic("gw", "json")] * 2 + [cbor_topic] * 2
    assert {cbor_topic + "/accepted", cbor_topic + "/rejected"} <= set(run.transport.subscriptions)
    assert run.counters()["accepted"] == 4  # the CBOR reports' replies are matched too
    assert run.agent.collector is collector  # and its first report had deltas: no new baseline


def accept_any_format(topic: str, payload: bytes) -> list[tuple[str, bytes]]:
    """Accept every report, JSON or CBOR, answering in its format (as AWS does)."""
    document, _ = decode_payload(payload)
    body = {"thingName": topic.split("/")[2], "reportId": read_report_id(document)}
    body.update(status="ACCEPTED", timestamp=1)
    data = json.dumps(body).encode() if topic.endswith("json") else cbor2.dumps(body)
    return [(topic + "/accepted", data)]


# ------------------------------------------------------------------ Component.apply_update
class FakeIpc:
    """What Component needs of the IPC transport: the configuration."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value

    def get_configuration(self) -> dict[str, Any]:
        return dict(self.value)


class RecordingAgent:
    def __init__(self) -> None:
        self.calls: list[tuple[Config, Optional[Collector]]] = []

    def reconfigure(self, config: Config, collector: Optional[Collector] = None) -> None:
        self.calls.append((config, collector))


def component(ipc: FakeIpc, tmp_path: Path) -> tuple[Component, RecordingAgent]:
    made: list[Config] = []

    def make(config: Config) -> Collector:
        made.append(config)
        return Collector(config.collector, state_dir=tmp_path)

    comp = Component(ipc, environ={"AWS_IOT_THING_NAME": "core1"}, make_collector=make)  # type: ignore[arg-type]
    agent = RecordingAgent()
    comp.agent = agent  # type: ignore[assignment]
    comp.config = comp.load(ipc.get_configuration())
    return comp, agent


def test_an_update_is_applied_a_bad_one_refused_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ipc = FakeIpc({"agent": {"interval": 300}})
    comp, agent = component(ipc, tmp_path)
    assert comp.apply_update() is False  # nothing changed
    ipc.value = {"agent": {"interval": 600}}
    assert comp.apply_update() is True
    ((config, collector),) = agent.calls
    assert config.agent.interval == 600 and collector is None  # the collector stays
    ipc.value = {"agent": {"interval": 600}, "collector": {"list_size": 9}}
    assert comp.apply_update() is True
    assert agent.calls[-1][1] is not None  # a new collector for new collector settings
    ipc.value = {"agent": {"interval": "often"}}
    with caplog.at_level(logging.ERROR):
        assert comp.apply_update() is False
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "previous one stays" in line and "agent.interval" in line
    assert comp.config is not None and comp.config.agent.interval == 600
    assert len(agent.calls) == 2


def test_an_update_that_fails_unexpectedly_does_not_stop_later_updates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher thread outlives a failure no one foresaw (here the agent's reconfigure)."""
    import threading

    ipc = FakeIpc({"agent": {"interval": 300}})
    comp, agent = component(ipc, tmp_path)
    applied = threading.Event()
    fail = [True]

    def reconfigure(config: Config, collector: Optional[Collector] = None) -> None:
        if fail.pop() if fail else False:
            raise RuntimeError("a bug")
        agent.calls.append((config, collector))
        applied.set()

    agent.reconfigure = reconfigure  # type: ignore[method-assign]
    watcher = threading.Thread(target=comp._watch_updates, daemon=True)
    watcher.start()
    try:
        with caplog.at_level(logging.ERROR):
            ipc.value = {"agent": {"interval": 600}}
            comp._on_update()
            for _ in range(100):
                if any("update failed" in r.getMessage() for r in caplog.records):
                    break
                threading.Event().wait(0.05)
            comp.config = comp.load({"agent": {"interval": 300}})  # that update was lost
            ipc.value = {"agent": {"interval": 900}}
            comp._on_update()
            assert applied.wait(10)
        assert agent.calls[-1][0].agent.interval == 900
        assert watcher.is_alive()
    finally:
        comp.stop_event.set()
        comp._on_update()
        watcher.join(5)
