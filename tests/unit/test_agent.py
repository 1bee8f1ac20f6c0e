"""The agent loop with an in-memory transport: schedule, publishing, replies, restarts, failures."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from defender_agent.agent import Agent, report_topic
from defender_agent.config import AgentConfig, load_config
from defender_agent.cycle import Collector
from defender_agent.errors import TlsSetupError
from defender_agent.state import StateDir
from tests.conftest import advance
from tests.fakes import FakeTransport, reject_with

TOPIC = report_topic("gw", "json")


def make_config(root: Path, state: Path, **extra: Any) -> AgentConfig:
    flags = {
        "endpoint": "broker.invalid",
        "cert_file": "c",
        "key_file": "k",
        "client_id": "gw",
        "interval": 1,
        "allow_short_interval": True,
        "splay": 0,
        "proc_root": str(root),
        "state_dir": str(state),
        "socket_source": "proc",
        **extra,
    }
    return load_config(flags, environ={})


def start(
    config: AgentConfig, transport: FakeTransport | None, **kw: Any
) -> tuple[Agent, threading.Thread]:
    state = StateDir(config.state_dir)
    agent = Agent(
        config, Collector(config.collector_config(), state_dir=state.path), transport, state, **kw
    )
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return agent, thread


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def stop(agent: Agent, thread: threading.Thread) -> None:
    agent.stop()
    thread.join(10)
    assert not thread.is_alive()


def reports(transport: FakeTransport) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in transport.published if t == TOPIC]


def test_baseline_first_then_a_report_every_interval(proc_copy, tmp_path: Path) -> None:
    transport = FakeTransport()
    agent, thread = start(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    wait_for(lambda: len(transport.published) >= 2)
    t0 = time.monotonic()
    wait_for(lambda: len(transport.published) >= 3)
    stop(agent, thread)
    assert 0.5 < time.monotonic() - t0 < 2.0
    assert set(transport.subscriptions) == {TOPIC + "/accepted", TOPIC + "/rejected"}
    docs = reports(transport)
    ids = [d["header"]["report_id"] for d in docs]
    assert ids == sorted(set(ids))
    assert all("network_stats" in d["metrics"] for d in docs)
    snap = agent.ledger.snapshot()
    assert snap["accepted"] == snap["sent"] == len(docs)
    assert transport.disconnected
    status = StateDir(tmp_path / "s").load("status")
    assert status is not None and status["counters"]["accepted"] >= 2


def test_cbor_and_short_names(proc_copy, tmp_path: Path) -> None:
    import cbor2

    config = make_config(
        proc_copy("gateway_dualstack"), tmp_path / "s", format="cbor", short_names=True
    )
    transport = FakeTransport(reply=None)
    agent, thread = start(config, transport)
    wait_for(lambda: len(transport.published) >= 1)
    stop(agent, thread)
    topic, payload = transport.published[0]
    assert topic == report_topic("gw", "cbor")
    assert set(cbor2.loads(payload)) == {"hed", "met"}


def test_reports_are_dropped_while_disconnected_never_replayed(proc_copy, tmp_path: Path) -> None:
    transport = FakeTransport(fail_connects=2)  # backoff ~0.5 s then ~1 s
    agent, thread = start(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    built_offline: list[int] = []
    real_built = agent.ledger.built

    def built(report_id: int) -> None:
        if not transport.connected:
            built_offline.append(report_id)
        real_built(report_id)

    agent.ledger.built = built  # type: ignore[method-assign]
    wait_for(lambda: agent.ledger.snapshot()["dropped"] >= 1)
    wait_for(lambda: len(transport.published) >= 2, timeout=15)
    stop(agent, thread)
    snap = agent.ledger.snapshot()
    assert transport.connect_attempts == 3
    assert snap["built"] == snap["dropped"] + snap["sent"] + snap["held"] + snap["invalid"]
    published = {d["header"]["report_id"] for d in reports(transport)}
    assert built_offline and not published & set(built_offline)
    assert min(published) > max(built_offline)


def test_link_drop_drops_reports_until_restored(proc_copy, tmp_path: Path) -> None:
    transport = FakeTransport()
    agent, thread = start(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    wait_for(lambda: len(transport.published) >= 1)
    transport.drop_link()
    wait_for(lambda: agent.ledger.snapshot()["dropped"] >= 1)
    n = len(transport.published)
    transport.restore_link()
    wait_for(lambda: len(transport.published) > n)
    stop(agent, thread)


def test_throttled_holds_the_next_report(proc_copy, tmp_path: Path) -> None:
    transport = FakeTransport(reply=reject_with("Throttled"))
    agent, thread = start(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    wait_for(lambda: agent.ledger.snapshot()["held"] >= 1)
    stop(agent, thread)
    snap = agent.ledger.snapshot()
    assert snap["rejected"]["Throttled"] >= 1
    # every publish was followed by a held report: no two publishes in consecutive cycles
    assert snap["held"] >= snap["sent"] - 1


def test_invalid_payload_rejections_are_counted(proc_copy, tmp_path: Path) -> None:
    transport = FakeTransport(reply=reject_with("InvalidPayload"))
    agent, thread = start(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    wait_for(lambda: agent.ledger.snapshot()["rejected"].get("InvalidPayload", 0) >= 2)
    stop(agent, thread)
    assert agent.ledger.snapshot()["held"] == 0


def test_collector_failure_drops_a_group_not_the_schedule(
    proc_copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = FakeTransport()
    agent, thread = start(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)

    def boom() -> None:
        raise RuntimeError("collector bug")

    monkeypatch.setattr(agent.collector, "_sockets", boom)
    wait_for(lambda: len(transport.published) >= 2)
    stop(agent, thread)
    doc = reports(transport)[-1]
    assert set(doc["metrics"]) == {"network_stats"}


def test_a_cycle_that_raises_does_not_stop_the_schedule(
    proc_copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = FakeTransport()
    agent, thread = start(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    calls = {"n": 0}
    real = agent.collector.cycle

    def flaky() -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real()

    monkeypatch.setattr(agent.collector, "cycle", flaky)
    wait_for(lambda: len(transport.published) >= 2)
    stop(agent, thread)
    assert agent.ledger.snapshot()["cycle_errors"] >= 1


def test_tls_setup_error_is_fatal(proc_copy, tmp_path: Path) -> None:
    transport = FakeTransport(fail_connects=99, connect_error=TlsSetupError)
    config = make_config(proc_copy("gateway_dualstack"), tmp_path / "s")
    state = StateDir(tmp_path / "s")
    agent = Agent(
        config, Collector(config.collector_config(), state_dir=state.path), transport, state
    )
    assert agent.run() == 2
    assert agent.fatal and "fake failure" in agent.fatal


def test_restart_on_the_same_boot_resumes_the_baseline(proc_copy, tmp_path: Path) -> None:
    root = proc_copy("gateway_dualstack")
    config = make_config(root, tmp_path / "s", interval=2)
    transport = FakeTransport()
    agent, thread = start(config, transport)
    wait_for(lambda: len(transport.published) >= 1)
    stop(agent, thread)
    stopped = time.monotonic()
    last_id = reports(transport)[-1]["header"]["report_id"]
    advance(root)  # traffic happened while the agent was down
    transport2 = FakeTransport()
    agent2, thread2 = start(config, transport2)
    wait_for(lambda: len(transport2.published) >= 1)
    first_after = time.monotonic() - stopped
    stop(agent2, thread2)
    doc = reports(transport2)[0]
    assert doc["header"]["report_id"] > last_id
    # no new baseline cycle: the first report after the restart carries the real delta
    assert doc["metrics"]["network_stats"]["bytes_out"] == 202246
    assert agent2.ledger.snapshot()["built"] >= 1
    assert first_after < 2.5  # due one interval after the previous report, not two


def test_reboot_or_stale_baseline_starts_fresh(proc_copy, tmp_path: Path) -> None:
    root = proc_copy("gateway_dualstack")
    config = make_config(root, tmp_path / "s", interval=2)
    transport = FakeTransport()
    agent, thread = start(config, transport)
    wait_for(lambda: len(transport.published) >= 1)
    stop(agent, thread)
    state = StateDir(tmp_path / "s")
    saved = state.load("baseline")
    assert saved is not None
    saved.pop("version")
    state.save("baseline", {**saved, "boot_id": "another-boot"})
    advance(root)
    transport2 = FakeTransport()
    agent2, thread2 = start(config, transport2)
    wait_for(lambda: len(transport2.published) >= 1)
    stop(agent2, thread2)
    # a fresh baseline was taken after the restart, so the delta does not include the traffic
    # that happened while the agent was down (never a spike)
    assert reports(transport2)[0]["metrics"]["network_stats"]["bytes_out"] == 0


def test_dry_run_prints_reports(proc_copy, tmp_path: Path) -> None:
    out = io.StringIO()
    config = make_config(proc_copy("gateway_dualstack"), tmp_path / "s", dry_run=True)
    agent, thread = start(config, None, out=out)
    wait_for(lambda: out.getvalue().count('"header"') >= 1)
    stop(agent, thread)
    assert json.loads(out.getvalue().split("\n}\n")[0] + "\n}")["header"]["version"] == "1.0"
