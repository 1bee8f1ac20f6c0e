"""The agent loop on a simulated clock: schedule, publishing, replies, restarts, failures.

Every run is deterministic and instant: :class:`tests.sim_clock.SimClock` advances
time when every agent thread waits, so the assertions are about exact times.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from defender_agent.agent import Agent, report_topic
from defender_agent.config import Config, load_config
from defender_agent.cycle import Collector
from defender_agent.errors import PublishError, StateError, TlsSetupError
from defender_agent.report.fit import encode_fitted
from defender_agent.report.validate import validate_document
from defender_agent.schedule import backoff_delay
from defender_agent.state import StateDir
from tests.conftest import advance
from tests.fakes import FakeTransport, reject_with
from tests.sim_clock import START, SimClock

TOPIC = report_topic("gw", "json")


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """State writes without fsync: durability is test_state's subject, speed is this file's."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def make_config(root: Path, state: Path, **extra: Any) -> Config:
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


class Run:
    """One agent on the simulated clock; records when (in simulated time) reports go out."""

    def __init__(
        self,
        config: Config,
        transport: Optional[FakeTransport],
        clock: Optional[SimClock] = None,
        **kw: Any,
    ) -> None:
        self.clock = clock or SimClock()
        assert config.agent.state_dir is not None
        self.state = StateDir(config.agent.state_dir)
        collector = Collector(config.collector_config(), state_dir=self.state.path)
        self.transport = transport
        self.agent = Agent(
            config,
            collector,
            transport,
            self.state,
            clock=self.clock,
            rng=random.Random(7),
            **kw,
        )
        self.times: list[float] = []  # simulated boot time of each publish that reached the broker
        if transport is not None:
            publish = transport.publish

            def timed(topic: str, payload: bytes) -> Future[None]:
                future = publish(topic, payload)
                if transport.connected and topic == TOPIC:
                    self.times.append(self.clock.now - START)
                return future

            transport.publish = timed  # type: ignore[method-assign]

    def run(self, seconds: float) -> int:
        return self.clock.run(self.agent, seconds)

    def reports(self) -> list[dict[str, Any]]:
        assert self.transport is not None
        return [json.loads(p) for t, p in self.transport.published if t == TOPIC]

    def status(self) -> dict[str, Any]:
        status = self.state.load("status")
        assert status is not None
        return status

    def counters(self) -> dict[str, Any]:
        return self.agent.ledger.snapshot()


def test_baseline_first_then_a_report_every_interval(proc_copy, tmp_path: Path) -> None:
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), FakeTransport())
    assert run.run(3.5) == 0
    # a baseline at 0, then a report each interval, exactly on the schedule
    assert run.times == [1.0, 2.0, 3.0]
    assert run.transport is not None
    assert set(run.transport.subscriptions) == {TOPIC + "/accepted", TOPIC + "/rejected"}
    docs = run.reports()
    ids = [d["header"]["report_id"] for d in docs]
    assert ids == sorted(set(ids))
    assert all("network_stats" in d["metrics"] for d in docs)
    snap = run.counters()
    assert snap["accepted"] == snap["sent"] == snap["built"] == 3
    assert snap["cycle_errors"] == 0
    assert run.transport.disconnected
    status = run.status()
    assert status["counters"]["accepted"] == 3 and status["state_error"] is None
    assert status["connected"] is False  # saved after the disconnect


def test_status_carries_the_collector_health(proc_copy, tmp_path: Path) -> None:
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), FakeTransport())
    run.run(1.5)
    health = run.status()["collector"]
    assert health == json.loads(json.dumps(run.agent.collector.health()))
    assert health["socket_source"] == "proc"
    assert health["sources"]["net/dev"]["missing"] is None


def test_cbor_and_short_names(proc_copy, tmp_path: Path) -> None:
    import cbor2

    config = make_config(
        proc_copy("gateway_dualstack"), tmp_path / "s", format="cbor", short_names=True
    )
    transport = FakeTransport(reply=None)
    Run(config, transport).run(1.5)
    topic, payload = transport.published[0]
    assert topic == report_topic("gw", "cbor")
    assert set(cbor2.loads(payload)) == {"hed", "met"}


def test_reports_are_dropped_while_disconnected_never_replayed(proc_copy, tmp_path: Path) -> None:
    transport = FakeTransport(fail_connects=2)
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    built_offline: list[int] = []
    real_built = run.agent.ledger.built

    def built(report_id: int) -> None:
        if not transport.connected:
            built_offline.append(report_id)
        real_built(report_id)

    run.agent.ledger.built = built  # type: ignore[method-assign]
    run.run(5.5)
    # the agent's rng: the splay (0 here), then the two backoff delays
    rng = random.Random(7)
    rng.uniform(0, 0)
    connected_at = backoff_delay(0, rng=rng) + backoff_delay(1, rng=rng)
    assert 1.5 < connected_at < 2.5
    assert transport.connect_attempts == 3
    assert run.times == [3.0, 4.0, 5.0]
    snap = run.counters()
    assert snap["built"] == snap["dropped"] + snap["sent"] + snap["held"] + snap["invalid"]
    assert snap["dropped"] == len(built_offline) == 2  # the reports at 1 s and 2 s
    assert snap["cycle_errors"] == 2  # the two failed connects
    published = {d["header"]["report_id"] for d in run.reports()}
    assert built_offline and not published & set(built_offline)
    assert min(published) > max(built_offline)


def test_link_drop_drops_reports_until_restored(proc_copy, tmp_path: Path) -> None:
    transport = FakeTransport()
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    run.clock.at(START + 1.5, transport.drop_link)
    run.clock.at(START + 3.5, transport.restore_link)
    run.run(5.5)
    assert run.times == [1.0, 4.0, 5.0]
    assert run.counters()["dropped"] == 2


def test_throttled_holds_the_next_report(proc_copy, tmp_path: Path) -> None:
    run = Run(
        make_config(proc_copy("gateway_dualstack"), tmp_path / "s"),
        FakeTransport(reply=reject_with("Throttled")),
    )
    run.run(5.5)
    # every publish is followed by a held report: no two publishes in consecutive cycles
    assert run.times == [1.0, 3.0, 5.0]
    snap = run.counters()
    assert snap["rejected"] == {"Throttled": 3} and snap["held"] == 2


def test_a_throttled_rejection_logs_its_code_once(
    proc_copy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = Run(
        make_config(proc_copy("gateway_dualstack"), tmp_path / "s"),
        FakeTransport(reply=reject_with("Throttled")),
    )
    # the fake's message is "Throttled message": make it say no more than the code, as AWS does
    real = reject_with("Throttled")

    def reply(topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        return [(t, p.replace(b"Throttled message", b"Throttled")) for t, p in real(topic, payload)]

    assert run.transport is not None
    run.transport.reply = reply
    with caplog.at_level(logging.ERROR, logger="defender_agent"):
        run.run(1.5)
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert lines and lines[0].startswith("report ") and "rejected: Throttled;" in lines[0]
    assert "Throttled: Throttled" not in lines[0]


def test_invalid_payload_rejections_are_counted(proc_copy, tmp_path: Path) -> None:
    run = Run(
        make_config(proc_copy("gateway_dualstack"), tmp_path / "s"),
        FakeTransport(reply=reject_with("InvalidPayload")),
    )
    run.run(2.5)
    snap = run.counters()
    assert snap["rejected"] == {"InvalidPayload": 2} and snap["held"] == 0
    assert snap["last_rejection"]["message"] == "InvalidPayload message"


def test_collector_failure_drops_a_group_not_the_schedule(
    proc_copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), FakeTransport())

    def boom() -> None:
        raise RuntimeError("collector bug")

    monkeypatch.setattr(run.agent.collector, "_sockets", boom)
    run.run(2.5)
    assert run.times == [1.0, 2.0]
    assert set(run.reports()[-1]["metrics"]) == {"network_stats"}


def _fail_once(real: Callable[..., Any], error: BaseException) -> Callable[..., Any]:
    """``real``, except that its second call raises ``error``."""
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise error
        return real(*args, **kwargs)

    return wrapper


def _break(stage: str, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the cycle at 1 s (the second call of the stage's code) fail."""
    bug = RuntimeError(f"{stage} bug")
    agent = run.agent
    transport = run.transport
    assert transport is not None
    if stage == "collect":
        monkeypatch.setattr(agent.collector, "cycle", _fail_once(agent.collector.cycle, bug))
    elif stage == "encode":
        calls = {"n": 0}
        real_encode = encode_fitted

        def encode(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:  # encoding starts with the first report (at 1 s)
                raise bug
            return real_encode(*args, **kwargs)

        monkeypatch.setattr("defender_agent.agent.loop.encode_fitted", encode)
    elif stage == "validate":
        calls = {"n": 0}
        real_validate = validate_document

        def validate(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise bug
            return real_validate(*args, **kwargs)

        monkeypatch.setattr("defender_agent.agent.loop.validate_document", validate)
    elif stage == "publish":  # a synchronous raise that is not a TransportError
        real_publish = transport.publish
        calls = {"n": 0}

        def publish(topic: str, payload: bytes) -> Future[None]:
            calls["n"] += 1
            if calls["n"] == 1:
                raise bug
            return real_publish(topic, payload)

        monkeypatch.setattr(transport, "publish", publish)
    elif stage == "save":
        monkeypatch.setattr(agent.state, "save", _fail_once(agent.state.save, bug))  # type: ignore[union-attr]
    else:  # pragma: no cover
        raise AssertionError(stage)


@pytest.mark.parametrize("stage", ["collect", "encode", "validate", "publish", "save"])
def test_a_failure_at_any_stage_costs_one_cycle_not_the_schedule(
    stage: str,
    proc_copy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), FakeTransport())
    _break(stage, run, monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="defender_agent.agent"):
        assert run.run(3.5) == 0
    snap = run.counters()
    assert snap["cycle_errors"] == 1
    assert snap["last_cycle_error"]["stage"] == stage
    assert snap["last_cycle_error"]["error"] == f"RuntimeError: {stage} bug"
    # the schedule went on: every later cycle published
    assert run.times[-2:] == [2.0, 3.0]
    if stage in ("collect", "encode", "validate", "publish"):
        assert run.times == [2.0, 3.0]  # the report of the cycle at 1 s was lost
    if stage == "publish":
        assert snap["dropped"] == 1 and snap["awaiting_reply"] == 0
    # one ERROR line naming the stage; the traceback only at DEBUG
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"cycle failed at {stage}: RuntimeError: {stage} bug; the schedule goes on"
    ]
    assert errors[0].exc_info is None
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)
    status = run.status()
    assert status["counters"]["cycle_errors"] == 1
    assert status["counters"]["last_error"] == f"{stage}: RuntimeError: {stage} bug"


def test_a_publish_that_raises_a_transport_error_drops_the_report(
    proc_copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = FakeTransport()
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    monkeypatch.setattr(
        transport, "publish", _fail_once(transport.publish, PublishError("publish to x: closed"))
    )
    run.run(3.5)
    snap = run.counters()
    assert snap["dropped"] == 1 and snap["cycle_errors"] == 0
    assert snap["last_error"] == "publish to x: closed"
    assert run.times == [1.0, 3.0]  # the second publish call (at 2 s) raised


def test_a_publish_whose_future_fails_drops_the_report(
    proc_copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = FakeTransport(reply=None)
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    real = transport.publish
    calls = {"n": 0}

    def publish(topic: str, payload: bytes) -> Future[None]:
        calls["n"] += 1
        if calls["n"] == 1:
            failed: Future[None] = Future()
            failed.set_exception(PublishError("no PUBACK"))
            return failed
        return real(topic, payload)

    monkeypatch.setattr(transport, "publish", publish)
    run.run(3.5)
    snap = run.counters()
    assert snap["dropped"] == 1 and snap["sent"] == 2 and snap["cycle_errors"] == 0
    assert snap["last_error"] == "publish: no PUBACK"
    assert len(transport.published) == 2


def test_a_state_write_failure_is_shown_in_the_status(
    proc_copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), FakeTransport())
    assert run.agent.state is not None
    real_save = run.agent.state.save

    def save(name: str, data: dict[str, Any]) -> None:
        if name == "baseline":
            raise StateError("cannot write state file baseline.json: disk full")
        real_save(name, data)

    monkeypatch.setattr(run.agent.state, "save", save)
    run.run(1.5)
    assert run.status()["state_error"] == "cannot write state file baseline.json: disk full"
    assert run.counters()["cycle_errors"] == 0
    monkeypatch.setattr(run.agent.state, "save", real_save)
    run.agent.stop_event.clear()
    run.run(1.0)
    assert run.status()["state_error"] is None


def test_tls_setup_error_is_fatal(proc_copy, tmp_path: Path) -> None:
    transport = FakeTransport(fail_connects=99, connect_error=TlsSetupError)
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    assert run.run(60) == 2
    assert run.agent.fatal and "fake failure" in run.agent.fatal
    assert run.clock.now == START  # stopped at once, no waiting


def test_restart_on_the_same_boot_resumes_the_baseline(proc_copy, tmp_path: Path) -> None:
    root = proc_copy("gateway_dualstack")
    config = make_config(root, tmp_path / "s", interval=2)
    first = Run(config, FakeTransport())
    first.run(2.5)
    assert first.times == [2.0]
    last_id = first.reports()[-1]["header"]["report_id"]
    advance(root)  # traffic happened while the agent was down
    second = Run(config, FakeTransport(), clock=first.clock)  # the same boot, 0.5 s later
    second.run(4.5)
    # no new baseline cycle: due one interval after the previous report, not two
    assert second.times == [4.0, 6.0]
    doc = second.reports()[0]
    assert doc["header"]["report_id"] > last_id
    # the first report after the restart carries the real delta
    assert doc["metrics"]["network_stats"]["bytes_out"] == 202246


def _restart_fresh(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, **second_config: Any
) -> tuple[Run, str]:
    config = make_config(root, tmp_path / "s", interval=2)
    first = Run(config, FakeTransport())
    first.run(2.5)
    advance(root)
    config2 = make_config(root, tmp_path / "s", interval=2, **second_config)
    second = Run(config2, FakeTransport(), clock=first.clock)
    with caplog.at_level(logging.INFO, logger="defender_agent.agent"):
        second.run(4.5)
    lines = [r.getMessage() for r in caplog.records if "not resuming" in r.getMessage()]
    assert len(lines) == 1
    # a fresh baseline at 2.5 s: the delta does not include the traffic while the agent was
    # down (never a spike), and the first report is one interval after that baseline
    assert second.times == [4.5, 6.5]
    return second, lines[0]


def test_reboot_starts_fresh(proc_copy, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = proc_copy("gateway_dualstack")
    config = make_config(root, tmp_path / "s", interval=2)
    first = Run(config, FakeTransport())
    first.run(2.5)
    saved = first.state.load("baseline")
    assert saved is not None
    saved.pop("version")
    first.state.save("baseline", {**saved, "boot_id": "another-boot"})
    advance(root)
    second = Run(config, FakeTransport(), clock=first.clock)
    with caplog.at_level(logging.INFO, logger="defender_agent.agent"):
        second.run(4.5)
    assert second.times == [4.5, 6.5]
    assert second.reports()[0]["metrics"]["network_stats"]["bytes_out"] == 0
    assert "the machine rebooted since it was saved" in caplog.text


def test_a_stale_baseline_starts_fresh(
    proc_copy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = proc_copy("gateway_dualstack")
    config = make_config(root, tmp_path / "s", interval=2)
    first = Run(config, FakeTransport())
    first.run(2.5)
    first.clock.now += 100  # the agent was down longer than the resume window
    second = Run(config, FakeTransport(), clock=first.clock)
    with caplog.at_level(logging.INFO, logger="defender_agent.agent"):
        second.run(4.5)
    assert second.times == [104.5, 106.5]
    assert "it is 100 s old (resume window 3 s)" in caplog.text


def test_a_baseline_from_another_proc_root_is_not_resumed(
    proc_copy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # run --proc-root FIXTURE --state-dir S, then run --state-dir S on another proc root
    first_root = proc_copy("gateway_dualstack")
    config = make_config(first_root, tmp_path / "s", interval=2)
    first = Run(config, FakeTransport())
    first.run(2.5)
    other = tmp_path / "other-proc"
    other.mkdir()
    import shutil

    shutil.copytree(first_root, other / "gateway_dualstack")
    other_root = other / "gateway_dualstack"
    advance(other_root)
    second = Run(make_config(other_root, tmp_path / "s", interval=2), FakeTransport(), first.clock)
    with caplog.at_level(logging.INFO, logger="defender_agent.agent"):
        second.run(4.5)
    assert second.times == [4.5, 6.5]
    assert second.reports()[0]["metrics"]["network_stats"]["bytes_out"] == 0  # no spike
    lines = [r.getMessage() for r in caplog.records if "not resuming" in r.getMessage()]
    assert lines == [
        (
            f"not resuming the saved baseline: it was read with proc_root '{first_root}', "
            f"now '{other_root}'; starting fresh"
        )
    ]


@pytest.mark.parametrize(
    ("setting", "value", "key"),
    [
        ("interfaces_exclude", "lo,wlan0", "interfaces_exclude"),
        ("interfaces_include", "eth*", "interfaces_include"),
        ("wildcard_interface", "eth0", "wildcard_interface"),
    ],
)
def test_a_baseline_of_another_interface_selection_is_not_resumed(
    setting: str,
    value: str,
    key: str,
    proc_copy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    second, line = _restart_fresh(
        proc_copy("gateway_dualstack"), tmp_path, caplog, **{setting: value}
    )
    assert f"it was read with {key} " in line
    assert second.reports()[0]["metrics"]["network_stats"]["bytes_out"] == 0


def test_the_start_splay_is_capped_at_the_interval(
    proc_copy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(proc_copy("gateway_dualstack"), tmp_path / "s", interval=2, splay=30)
    run = Run(config, FakeTransport())
    with caplog.at_level(logging.INFO, logger="defender_agent.agent"):
        run.run(5.0)
    splay = random.Random(7).uniform(0, 2.0)  # the agent's rng, first draw
    assert run.times == [pytest.approx(splay + 2), pytest.approx(splay + 4)]
    assert f"first sample in {splay:.1f} s, first report one interval (2 s) later" in caplog.text


def test_dry_run_prints_reports(proc_copy, tmp_path: Path) -> None:
    out = io.StringIO()
    config = make_config(proc_copy("gateway_dualstack"), tmp_path / "s", dry_run=True)
    run = Run(config, None, out=out)
    run.run(1.5)
    assert json.loads(out.getvalue())["header"]["version"] == "1.0"
    status = run.status()
    assert status["dry_run"] is True and status["endpoint"] is None
    assert status["connected"] is False


def test_a_second_agent_on_the_same_state_dir_refuses(proc_copy, tmp_path: Path) -> None:
    config = make_config(proc_copy("gateway_dualstack"), tmp_path / "s")
    run = Run(config, FakeTransport())
    held = StateDir(tmp_path / "s").acquire_lock()  # another agent (here: this process)
    try:
        with pytest.raises(StateError, match="is in use by pid"):
            run.run(1)
    finally:
        held.release()
    assert run.state.load("status") is None  # it wrote nothing into the other's directory
    assert run.run(1.5) == 0


# --------------------------------------------------------------------------- going deaf (#9)
class DeafTransport(FakeTransport):
    """The broker drops the agent's subscriptions behind its back while the link stays up.

    ``stubborn``: subscribing again does not help either, only a new connection does.
    """

    def __init__(self, stubborn: bool = False) -> None:
        super().__init__()
        self.stubborn = stubborn
        self.deaf = False
        self.subscribe_calls = 0
        self.on_subscribe: Callable[[], None] = lambda: None

    def go_deaf(self) -> None:
        self.deaf = True
        with self._lock:
            self._subscriptions.clear()

    def subscribe(self, topic_filter: str, handler: Any) -> None:
        self.subscribe_calls += 1
        self.on_subscribe()
        if self.deaf and self.stubborn:
            return  # SUBACKed, and still nothing arrives
        self.deaf = False
        super().subscribe(topic_filter, handler)

    def connect(self) -> None:
        if self.deaf:  # a new connection: the broker restores the session's subscriptions
            self.deaf = False
            with self._lock:
                self._subscriptions.clear()
        super().connect()


def _accepted_after(run: Run, since: float) -> int:
    return sum(1 for t in run.times if t > since)


def test_unanswered_reports_in_a_row_resubscribe_and_replies_return(
    proc_copy: Callable[[str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    transport = DeafTransport()
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    run.clock.at(START + 3.5, transport.go_deaf)
    statuses: list[bool] = []  # at each subscribe: the first, then the remedy's
    transport.on_subscribe = lambda: statuses.append(bool(run.agent.status()["replies_missing"]))
    with caplog.at_level(logging.INFO, "defender_agent"):
        assert run.run(14.5) == 0
    counters = run.counters()
    assert counters["unanswered"] >= 3
    assert counters["unanswered_in_a_row"] == 0  # replies came back
    assert transport.disconnects == 1  # only the final one: re-subscribing was enough
    text = caplog.text
    assert "reports in a row got no reply: subscribing to the replies again" in text
    assert "reconnecting" not in text
    assert "replies arrive again (after the resubscribe)" in text
    assert statuses == [False, False, True, True], statuses
    assert run.status()["replies_missing"] is False


def test_still_unanswered_after_resubscribing_reconnects(
    proc_copy: Callable[[str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    transport = DeafTransport(stubborn=True)
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    run.clock.at(START + 3.5, transport.go_deaf)
    with caplog.at_level(logging.INFO, "defender_agent"):
        assert run.run(16.5) == 0
    text = caplog.text
    resubscribed = text.index("subscribing to the replies again")
    assert text.index("got no reply: reconnecting", resubscribed) > resubscribed
    assert "replies arrive again (after the reconnect)" in text
    assert transport.connect_attempts == 2 and transport.disconnects == 2  # + the final one
    assert run.counters()["unanswered_in_a_row"] == 0
    assert run.counters()["accepted"] >= 5


def test_never_answered_reports_show_replies_missing_and_keep_trying(
    proc_copy: Callable[[str], Path], tmp_path: Path
) -> None:
    transport = FakeTransport(reply=None)  # Device Defender never answers
    run = Run(make_config(proc_copy("gateway_dualstack"), tmp_path / "s"), transport)
    assert run.run(20.5) == 0
    status = run.status()
    assert status["replies_missing"] is True
    assert status["counters"]["unanswered_in_a_row"] >= 10
    # resubscribe, reconnect, then again after resubscribe_after more: not on every report
    assert 2 <= transport.connect_attempts <= 5, transport.connect_attempts
    assert len(run.times) >= 17  # the schedule went on throughout
