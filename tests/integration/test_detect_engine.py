"""Detect's engine over a real store (SQLite and PostgreSQL) and a small in-memory registry.

The registry here is the contract's four methods over plain data (the API's SQL registry is
tested with the API); reports are typed ``Report`` objects with controlled arrival times, so
a 300 s window needs no 300 s of waiting.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from defender_agent.detect.compiled import decode_state
from defender_agent.detect.contract import ProfileView, ViolationFilter
from defender_agent.detect.engine import DetectEngine, EngineSettings, Judged
from defender_agent.detect.store import DetectStore, EventRow
from defender_agent.model import (
    ConnectionList,
    CustomMetric,
    CustomMetricType,
    ListeningPort,
    NetworkStats,
    PortList,
    Report,
)
from defender_agent.service.storage import open_store

T0 = 1_700_000_000.0
ALL = "arn:aws:iot:us-east-1:123456789012:all/things"


@dataclass
class MemoryRegistry:
    """contract.Registry over plain data; every change bumps the generation."""

    views: dict[str, ProfileView] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    gen: int = 1

    def generation(self) -> int:
        return self.gen

    def profiles(self) -> Sequence[ProfileView]:
        return [self.views[name] for name in sorted(self.views)]

    def custom_metric_types(self) -> Mapping[str, str]:
        return dict(self.metrics)

    def groups_of(self, thing_name: str) -> frozenset[str]:
        return self.groups.get(thing_name, frozenset())

    def put(self, name: str, behaviors: Sequence[Mapping[str, Any]], targets=(ALL,)) -> None:
        old = self.views.get(name)
        self.views[name] = ProfileView(
            name,
            f"arn:aws:iot:us-east-1:123456789012:securityprofile/{name}",
            (old.version + 1) if old else 1,
            tuple(behaviors),
            {},
            tuple(targets),
        )
        self.gen += 1


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def ports_report(*ports: int, report_id: int = 1) -> Report:
    return Report(
        report_id=report_id,
        listening_tcp_ports=PortList(tuple(ListeningPort(p) for p in ports), len(ports)),
    )


def bytes_report(out: int) -> Report:
    return Report(report_id=1, network_stats=NetworkStats(0, out, 0, 0))


def strings_report(name: str, *items: str) -> Report:
    return Report(
        report_id=1, custom_metrics=(CustomMetric(name, CustomMetricType.STRING_LIST, items),)
    )


PORTS: dict[str, Any] = {
    "name": "ports",
    "metric": "aws:listening-tcp-ports",
    "criteria": {
        "comparisonOperator": "in-port-set",
        "value": {"ports": [22, 443]},
        "consecutiveDatapointsToClear": 2,
    },
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "service.sqlite3")
    return str(request.getfixturevalue("pg_url"))


@dataclass
class Rig:
    url: str
    registry: MemoryRegistry = field(default_factory=MemoryRegistry)
    clock: Clock = field(default_factory=Clock)
    events: list[EventRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.open()

    def open(self) -> None:
        self.service = open_store(self.url)
        self.store = DetectStore.beside(self.service)
        self.engine = DetectEngine(
            self.store,
            self.registry,
            settings=EngineSettings(invalidate_after_s=600, statistics_every_s=60),
            clock=self.clock,
            on_event=self.events.append,
        )

    def close(self) -> None:
        self.store.close()
        self.service.close()

    def send(self, thing: str, report: Report, at: float) -> list[tuple[str, str]]:
        self.clock.now = at
        made = self.engine.evaluate([Judged(thing, at, report)])
        return [(e.violation_id and e.event_type, e.behavior["name"]) for e in made]

    def active(self, **where: Any) -> list[Mapping[str, Any]]:
        return list(self.store.list_active(ViolationFilter(**where), limit=250, token=None).items)


@pytest.fixture
def rig(url: str) -> Iterator[Rig]:
    made = Rig(url)
    try:
        yield made
    finally:
        made.close()


def test_a_port_outside_the_allow_list_alarms_and_clears_after_two(rig: Rig) -> None:
    rig.registry.put("starter", [PORTS])
    assert rig.send("gw-1", ports_report(22, 443), T0) == []
    assert rig.send("gw-1", ports_report(22, 443, 8123), T0 + 10) == [("in-alarm", "ports")]
    (active,) = rig.active()
    assert active["lastViolationValue"] == {"ports": [22, 443, 8123]}
    assert rig.send("gw-1", ports_report(22, 8123, 9000), T0 + 20) == []
    assert rig.active()[0]["lastViolationValue"] == {"ports": [22, 8123, 9000]}
    assert rig.active()[0]["lastViolationTime"] == T0 + 20
    assert rig.send("gw-1", ports_report(22), T0 + 30) == []  # one conforming: ToClear is 2
    assert rig.send("gw-1", ports_report(22), T0 + 40) == [("alarm-cleared", "ports")]
    assert rig.active() == []
    assert [e.event_type for e in rig.events] == ["in-alarm", "alarm-cleared"]
    # an empty list conforms and clears at once
    rig.send("gw-1", ports_report(8123), T0 + 50)
    assert rig.send("gw-1", ports_report(), T0 + 60) == [("alarm-cleared", "ports")]


def test_bytes_out_summed_over_a_300_s_window(rig: Rig) -> None:
    rig.registry.put(
        "traffic",
        [
            {
                "name": "out",
                "metric": "aws:all-bytes-out",
                "criteria": {
                    "comparisonOperator": "less-than",
                    "value": {"count": 1000},
                    "durationSeconds": 300,
                },
            }
        ],
    )
    assert rig.send("gw-1", bytes_report(400), T0) == []
    assert rig.send("gw-1", bytes_report(400), T0 + 100) == []  # 800
    assert rig.send("gw-1", bytes_report(400), T0 + 200) == [("in-alarm", "out")]  # 1200
    assert rig.active()[0]["lastViolationValue"] == {"count": 1200}
    # T0 drops out at T0 + 300 (the window is (now - 300, now]): 400 + 400 + 10
    assert rig.send("gw-1", bytes_report(10), T0 + 300) == [("alarm-cleared", "out")]
    assert rig.events[-1].metric_value == {"count": 810}  # < 1000
    assert rig.active() == []
    assert [e.event_type for e in rig.events] == ["in-alarm", "alarm-cleared"]


def test_custom_string_list_not_in_set(rig: Rig) -> None:
    rig.registry.metrics["users"] = "string-list"
    rig.registry.put(
        "accounts",
        [
            {
                "name": "no-root",
                "metric": "users",
                "criteria": {"comparisonOperator": "not-in-set", "value": {"strings": ["root"]}},
            }
        ],
    )
    assert rig.send("gw-1", strings_report("users", "pi", "admin"), T0) == []
    assert rig.send("gw-1", strings_report("users", "pi", "root"), T0 + 1) == [
        ("in-alarm", "no-root")
    ]
    assert rig.active()[0]["lastViolationValue"] == {"strings": ["pi", "root"]}
    assert rig.send("gw-1", Report(report_id=1), T0 + 2) == []  # no datapoint: nothing changes
    assert rig.send("gw-1", strings_report("users"), T0 + 3) == [("alarm-cleared", "no-root")]


def test_p90_over_20_things(rig: Rig) -> None:
    rig.registry.put(
        "fleet",
        [
            {
                "name": "out-p90",
                "metric": "aws:all-bytes-out",
                "criteria": {
                    "comparisonOperator": "less-than-equals",
                    "statisticalThreshold": {"statistic": "p90"},
                    "durationSeconds": 300,
                },
            }
        ],
    )
    things = [f"dev-{i:02d}" for i in range(20)]
    for i, thing in enumerate(things):  # values 100, 200, ..., 2000
        assert rig.send(thing, bytes_report(100 * (i + 1)), T0 + i) == []  # no threshold yet
    thresholds = rig.engine.recompute_statistics(T0 + 30)
    assert thresholds == {("fleet", "out-p90"): 1800.0}  # nearest rank 18 of 20
    # the next report of each: a device's measurement is its window sum
    made = {}
    for i, thing in enumerate(things):
        made[thing] = rig.send(thing, bytes_report(0), T0 + 40 + i)
    assert made["dev-18"] == [("in-alarm", "out-p90")]
    assert made["dev-19"] == [("in-alarm", "out-p90")]
    assert sum(map(len, made.values())) == 2
    assert {a["thingName"] for a in rig.active(behavior_criteria_type="STATISTICAL")} == {
        "dev-18",
        "dev-19",
    }


def test_restart_keeps_counters_and_violations(rig: Rig) -> None:
    three = dict(PORTS, criteria=dict(PORTS["criteria"], consecutiveDatapointsToAlarm=3))
    rig.registry.put("starter", [three])
    assert rig.send("gw-1", ports_report(8123), T0) == []
    assert rig.send("gw-1", ports_report(8123), T0 + 1) == []
    rig.close()
    rig.open()
    assert rig.send("gw-1", ports_report(8123), T0 + 2) == [("in-alarm", "ports")]
    rig.close()
    rig.open()
    assert len(rig.active()) == 1
    rig.send("gw-1", ports_report(22), T0 + 3)
    assert rig.send("gw-1", ports_report(22), T0 + 4) == [("alarm-cleared", "ports")]


def test_invalidated_when_the_behavior_goes_or_the_thing_is_silent(rig: Rig) -> None:
    bytes_rule = {
        "name": "out",
        "metric": "aws:all-bytes-out",
        "criteria": {"comparisonOperator": "less-than", "value": {"count": 10}},
    }
    rig.registry.put("starter", [PORTS, bytes_rule])
    rig.send("gw-1", Report(1, network_stats=NetworkStats(0, 50, 0, 0)), T0)
    rig.send("gw-1", ports_report(8123), T0 + 1)
    rig.send("gw-2", ports_report(8123), T0 + 1)
    assert len(rig.active()) == 3
    rig.registry.put("starter", [PORTS])  # "out" removed
    rig.engine.tick(T0 + 2)
    assert {(a["thingName"], a["behavior"]["name"]) for a in rig.active()} == {
        ("gw-1", "ports"),
        ("gw-2", "ports"),
    }
    assert rig.events[-1].event_type == "alarm-invalidated"
    assert rig.events[-1].behavior["name"] == "out"
    # gw-2 keeps reporting, gw-1 goes silent for longer than invalidate_after (600 s)
    rig.send("gw-2", ports_report(8123), T0 + 500)
    rig.engine.tick(T0 + 600)  # gw-1 silent for 599 s
    assert sorted(a["thingName"] for a in rig.active()) == ["gw-1", "gw-2"]
    rig.engine.tick(T0 + 603)  # (silent checks run at most every 5 s)
    assert len(rig.active()) == 2
    rig.engine.tick(T0 + 700)
    assert [a["thingName"] for a in rig.active()] == ["gw-2"]
    assert (rig.events[-1].thing, rig.events[-1].event_type) == ("gw-1", "alarm-invalidated")
    # a detached profile invalidates too
    rig.registry.put("starter", [PORTS], targets=())
    rig.engine.tick(T0 + 701)
    assert rig.active() == []
    events = rig.store.list_events(
        ViolationFilter(), start_time=0, end_time=T0 * 2, limit=100, token=None
    ).items
    assert [e["violationEventType"] for e in events].count("alarm-invalidated") == 3


def test_thing_groups_target_only_their_members(rig: Rig) -> None:
    rig.registry.put("lab", [PORTS], targets=("arn:aws:iot:us-east-1:123456789012:thinggroup/lab",))
    rig.registry.groups["gw-lab"] = frozenset({"lab"})
    assert rig.send("gw-lab", ports_report(8123), T0) == [("in-alarm", "ports")]
    assert rig.send("gw-other", ports_report(8123), T0) == []


def _worker(url: str, thing: str, reports: list[tuple[float, list[int]]], barrier: Any) -> None:
    service = open_store(url)
    store = DetectStore.beside(service)
    registry = MemoryRegistry()
    rule = dict(
        PORTS,
        criteria=dict(
            PORTS["criteria"], consecutiveDatapointsToAlarm=10, consecutiveDatapointsToClear=10
        ),
    )
    registry.put("starter", [rule])
    engine = DetectEngine(store, registry, settings=EngineSettings(invalidate_after_s=0))
    barrier.wait()
    for at, ports in reports:
        engine.evaluate([Judged(thing, at, ports_report(*ports))])
    store.close()
    service.close()


def test_two_processes_keep_counters_exact(pg_url: str) -> None:
    """Reports of one thing split between two processes: one in-alarm, one clear, exactly."""
    service = open_store(pg_url)
    DetectStore.beside(service).close()  # migrate once
    reports = [(T0 + i, [8123]) for i in range(40)] + [(T0 + 40 + i, [22]) for i in range(40)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=_worker, args=(pg_url, "gw-1", reports[k::2], barrier))
        for k in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    store = DetectStore.beside(service)
    try:
        events = store.list_events(
            ViolationFilter(), start_time=0, end_time=T0 * 2, limit=100, token=None
        ).items
        kinds = [e["violationEventType"] for e in events]
        # the two halves interleave, so a run of 10 violating reports happens once in each
        # phase whatever the order: exactly one in-alarm and one alarm-cleared
        assert kinds == ["in-alarm", "alarm-cleared"], kinds
        with store.batch(["gw-1"], now=T0) as tx:
            state = decode_state(tx.texts["gw-1"], {})
        # out of alarm, no violating datapoint pending: the code of nothing to remember
        assert state.runs == {} and '"v":2' in tx.texts["gw-1"]
    finally:
        store.close()
        service.close()


def test_an_engine_without_profiles_does_nothing(rig: Rig) -> None:
    assert rig.send("gw-1", ports_report(8123), T0) == []
    assert rig.engine.counters()["reports"] == 1
    rig.registry.put("p", [replace_name(PORTS, "x")], targets=())
    assert rig.send("gw-1", ports_report(8123), T0) == []


def replace_name(behavior: Mapping[str, Any], name: str) -> dict[str, Any]:
    return dict(behavior, name=name)


def test_ml_detect_learns_then_alarms_with_its_confidence(rig: Rig) -> None:
    rig.registry.put(
        "ml",
        [
            {
                "name": "conns",
                "metric": "aws:num-established-tcp-connections",
                "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}},
            }
        ],
    )

    def conns(n: int) -> Report:
        return Report(report_id=1, tcp_connections=ConnectionList((), n))

    assert rig.send("gw-1", conns(500), T0) == []  # no baseline: nothing judged
    assert rig.engine.ml_models("gw-1")["ml/conns"]["modelStatus"] == "PENDING_BUILD"
    for i in range(30):
        assert rig.send("gw-1", conns(4 + i % 3), T0 + 1 + i) == []
    models = rig.engine.ml_models("gw-1")
    assert models["ml/conns"] == {
        "modelStatus": "ACTIVE",
        "datapointsNeeded": 0,
        "confidenceLevel": "HIGH",
    }
    assert rig.send("gw-1", conns(400), T0 + 40) == [("in-alarm", "conns")]
    assert rig.events[-1].additional_info == {"confidenceLevel": "HIGH"}
    (active,) = rig.active(behavior_criteria_type="MACHINE_LEARNING")
    assert active["violationEventAdditionalInfo"] == {"confidenceLevel": "HIGH"}
    assert rig.engine.ml_models("gw-2") == {
        "ml/conns": {
            "modelStatus": "PENDING_BUILD",
            "datapointsNeeded": 30,
            "confidenceLevel": "HIGH",
        }
    }


def test_an_unchanged_last_value_is_written_at_most_every_30_s_and_at_stop(rig: Rig) -> None:
    rig.registry.put("starter", [PORTS])
    rig.send("gw-1", ports_report(22, 8123), T0)
    for k in range(1, 6):  # the same violating value every 5 s: held
        assert rig.send("gw-1", ports_report(22, 8123), T0 + 5 * k) == []
    assert rig.active()[0]["lastViolationTime"] == T0
    # a new value is written at once
    rig.send("gw-1", ports_report(22, 9000), T0 + 26)
    assert rig.active()[0]["lastViolationValue"] == {"ports": [22, 9000]}
    assert rig.active()[0]["lastViolationTime"] == T0 + 26
    # unchanged again: held until its written time is 30 s old ...
    rig.send("gw-1", ports_report(22, 9000), T0 + 40)
    assert rig.active()[0]["lastViolationTime"] == T0 + 26
    rig.send("gw-1", ports_report(22, 9000), T0 + 56)
    assert rig.active()[0]["lastViolationTime"] == T0 + 56
    # ... or until the ticker finds it that old, or the engine stops
    rig.send("gw-1", ports_report(22, 9000), T0 + 60)
    assert rig.engine.write_held(30.0, T0 + 70) == 0
    assert rig.engine.write_held(30.0, T0 + 86) == 1
    assert rig.active()[0]["lastViolationTime"] == T0 + 60
    rig.send("gw-1", ports_report(22, 9000), T0 + 61)
    rig.engine.stop()
    assert rig.active()[0]["lastViolationTime"] == T0 + 61


def test_every_violating_datapoint_is_written_with_last_violation_every_0(url: str) -> None:
    made = Rig(url)
    try:
        made.engine.settings = EngineSettings(last_violation_every_s=0)
        made.registry.put("starter", [PORTS])
        made.send("gw-1", ports_report(22, 8123), T0)
        made.send("gw-1", ports_report(22, 8123), T0 + 1)
        assert made.active()[0]["lastViolationTime"] == T0 + 1
    finally:
        made.close()


def test_an_ending_event_carries_the_verification_state_set_meanwhile(rig: Rig) -> None:
    """The engine holds the violation between reports; the API may set its state then."""
    rig.registry.put("starter", [PORTS])
    rig.send("gw-1", ports_report(22, 8123), T0)
    (active,) = rig.active()
    other = DetectStore.beside(rig.service)  # the API's connection
    try:
        assert other.set_verification_state(active["violationId"], "BENIGN_POSITIVE", "lab")
    finally:
        other.close()
    rig.send("gw-1", ports_report(22), T0 + 10)
    assert rig.send("gw-1", ports_report(22), T0 + 20) == [("alarm-cleared", "ports")]
    cleared = rig.events[-1]
    assert (cleared.verification_state, cleared.verification_description) == (
        "BENIGN_POSITIVE",
        "lab",
    )


def test_a_row_written_by_another_process_is_read_again(rig: Rig) -> None:
    """Two engines over one database: each goes on from the other's counters."""
    rig.registry.put("starter", [PORTS])
    second = DetectEngine(
        DetectStore.beside(rig.service), rig.registry, clock=rig.clock, on_event=rig.events.append
    )
    try:
        rig.send("gw-1", ports_report(22, 8123), T0)  # in-alarm (first engine)
        rig.clock.now = T0 + 10
        assert second.evaluate([Judged("gw-1", T0 + 10, ports_report(22))]) == []  # 1 of 2
        # the first engine must not go on from what it holds (still "in alarm, 0 conforming")
        assert rig.send("gw-1", ports_report(22), T0 + 20) == [("alarm-cleared", "ports")]
        assert rig.active() == []
    finally:
        second.store.close()


def test_detects_commits_do_not_wait_for_the_disk_and_reports_do(tmp_path: Path) -> None:
    service = open_store(str(tmp_path / "s.sqlite3"))
    store = DetectStore.beside(service)
    try:
        with service._read() as cur:
            cur.execute("PRAGMA synchronous", ())
            assert cur.fetchone()[0] == 2  # FULL
        with store._db._read() as cur:
            cur.execute("PRAGMA synchronous", ())
            assert cur.fetchone()[0] == 1  # NORMAL (WAL: safe from a crash of the process)
    finally:
        store.close()
        service.close()


def test_detects_postgresql_commits_are_asynchronous(pg_url: str) -> None:
    service = open_store(pg_url)
    store = DetectStore.beside(service)
    try:
        with service._read() as cur:
            cur.execute("SHOW synchronous_commit", ())
            assert cur.fetchone()[0] == "on"
        with store._db._read() as cur:
            cur.execute("SHOW synchronous_commit", ())
            assert cur.fetchone()[0] == "off"
    finally:
        store.close()
        service.close()
