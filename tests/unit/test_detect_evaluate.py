"""One datapoint against one behavior (detect/evaluate.py) and the ML model (detect/ml.py).

Rows: every operator x metric kind x edge (empty list, IPv6, IPv4-mapped, window edges),
consecutive counters, statistical thresholds and the ML model from pending to active.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defender_agent.detect import ml
from defender_agent.detect.behaviors import Behavior, parse_behavior
from defender_agent.detect.evaluate import (
    INITIAL,
    MAX_WINDOW,
    BehaviorState,
    Transition,
    measurement,
    step,
    window_sum,
)
from defender_agent.detect.metrics import Addresses, Numbers, Ports, Strings

ip = ipaddress.ip_address


def behavior(
    metric: str, operator: str, value: Optional[dict[str, Any]] = None, **criteria: Any
) -> Behavior:
    body: dict[str, Any] = {"comparisonOperator": operator, **criteria}
    if value is not None:
        body["value"] = value
    return parse_behavior({"name": "b", "metric": metric, "criteria": body})


def violates(b: Behavior, value: object) -> bool:
    state, transition = step(b, INITIAL, value, 1000.0)
    assert state.violating_run + state.conforming_run == 1
    return transition is not None and transition.event == "in-alarm"


A4 = ip("10.1.2.3")
A6 = ip("2001:db8::5")
OUT4 = ip("8.8.8.8")
OUT6 = ip("2001:db9::1")

# (metric, operator, value member, datapoint, violates?)
STATIC = [
    ("aws:all-bytes-out", "less-than", {"count": 10}, 9, False),
    ("aws:all-bytes-out", "less-than", {"count": 10}, 10, True),
    ("aws:all-bytes-in", "less-than-equals", {"count": 10}, 10, False),
    ("aws:all-bytes-in", "less-than-equals", {"count": 10}, 11, True),
    ("aws:all-packets-out", "greater-than", {"count": 10}, 11, False),
    ("aws:all-packets-out", "greater-than", {"count": 10}, 10, True),
    ("aws:all-packets-in", "greater-than-equals", {"count": 10}, 10, False),
    ("aws:all-packets-in", "greater-than-equals", {"count": 10}, 9, True),
    ("aws:num-listening-tcp-ports", "less-than-equals", {"count": 0}, 0, False),
    ("aws:num-listening-udp-ports", "less-than", {"count": 3}, 3, True),
    ("aws:num-established-tcp-connections", "greater-than", {"count": 0}, 0, True),
    ("batt", "less-than", {"number": 75}, 74.9, False),
    ("batt", "less-than", {"number": 75}, 75.0, True),
    ("batt", "greater-than-equals", {"number": -1.5}, -1.5, False),
    ("batt", "less-than-equals", {"number": 1}, 1, False),  # an int datapoint for a number
    # Port sets are an allow-list and a deny-list.
    ("aws:listening-tcp-ports", "in-port-set", {"ports": [22, 443]}, Ports({22}), False),
    ("aws:listening-tcp-ports", "in-port-set", {"ports": [22, 443]}, Ports({22, 443}), False),
    ("aws:listening-tcp-ports", "in-port-set", {"ports": [22, 443]}, Ports({22, 8123}), True),
    ("aws:listening-tcp-ports", "in-port-set", {"ports": []}, Ports({22}), True),
    ("aws:listening-tcp-ports", "in-port-set", {"ports": []}, Ports(), False),
    ("aws:listening-udp-ports", "not-in-port-set", {"ports": [23]}, Ports({53}), False),
    ("aws:listening-udp-ports", "not-in-port-set", {"ports": [23]}, Ports({53, 23}), True),
    ("aws:listening-udp-ports", "not-in-port-set", {"ports": [23]}, Ports(), False),
    ("aws:listening-udp-ports", "not-in-port-set", {"ports": [0, 65535]}, Ports({65535}), True),
    # Destination addresses in IPv4, IPv6, IPv4-mapped on either side; versions never mix.
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8"]}, Addresses({A4}), False),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8"]}, Addresses({A4, OUT4}), True),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8"]}, Addresses({A6}), True),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["2001:db8::/32"]}, Addresses({A6}), False),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["2001:db8::/32"]}, Addresses({OUT6}), True),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["::/0"]}, Addresses({A4}), True),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["::ffff:10.0.0.0/104"]}, Addresses({A4}), False),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.1.2.3"]}, Addresses({A4}), False),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8", "2001:db8::/32"]}, Addresses({A4, A6}), False),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8"]}, Addresses(), False),
    ("aws:destination-ip-addresses", "not-in-cidr-set", {"cidrs": ["8.8.0.0/16"]}, Addresses({A4}), False),
    ("aws:destination-ip-addresses", "not-in-cidr-set", {"cidrs": ["8.8.0.0/16"]}, Addresses({A4, OUT4}), True),
    ("aws:destination-ip-addresses", "not-in-cidr-set", {"cidrs": ["2001:db9::/32"]}, Addresses({OUT6}), True),
    ("aws:destination-ip-addresses", "not-in-cidr-set", {"cidrs": ["::ffff:8.8.8.8/128"]}, Addresses({OUT4}), True),
    ("aws:destination-ip-addresses", "not-in-cidr-set", {"cidrs": ["8.8.0.0/16"]}, Addresses(), False),
    ("peers", "in-cidr-set", {"cidrs": ["fe80::/10"]}, Addresses({ip("fe80::1")}), False),
    ("peers", "not-in-cidr-set", {"cidrs": ["fe80::/10"]}, Addresses({ip("fe80::1")}), True),
    # Custom number-list and string-list metrics.
    ("load", "in-set", {"numbers": [1, 2.5]}, Numbers({1.0}), False),
    ("load", "in-set", {"numbers": [1, 2.5]}, Numbers({1.0, 3.0}), True),
    ("load", "in-set", {"numbers": []}, Numbers(), False),
    ("load", "not-in-set", {"numbers": [0]}, Numbers({0.0}), True),
    ("load", "not-in-set", {"numbers": [0]}, Numbers({0.5}), False),
    ("users", "in-set", {"strings": ["root"]}, Strings({"root"}), False),
    ("users", "in-set", {"strings": ["root"]}, Strings({"root", "eve"}), True),
    ("users", "in-set", {"strings": ["root"]}, Strings(), False),
    ("users", "not-in-set", {"strings": ["guest"]}, Strings({"guest"}), True),
    ("users", "not-in-set", {"strings": ["guest"]}, Strings({"Guest"}), False),
    ("users", "not-in-set", {"strings": ["guest"]}, Strings(), False),
]  # fmt: skip


def _id(value: object) -> str:
    """A test id that does not depend on the hash seed (xdist workers must agree)."""
    if isinstance(value, frozenset):
        return f"{type(value).__name__}({sorted(value, key=str)})"
    return str(value)


@pytest.mark.parametrize(("metric", "operator", "value", "point", "expected"), STATIC, ids=_id)
def test_static_operators(
    metric: str, operator: str, value: dict[str, Any], point: object, expected: bool
) -> None:
    assert violates(behavior(metric, operator, value), point) is expected


def test_an_empty_list_conforms_and_clears_at_once() -> None:
    for b, bad, empty in [
        (behavior("aws:listening-tcp-ports", "in-port-set", {"ports": [22]}, consecutiveDatapointsToClear=5), Ports({8}), Ports()),
        (behavior("aws:destination-ip-addresses", "not-in-cidr-set", {"cidrs": ["8.0.0.0/8"]}, consecutiveDatapointsToClear=3), Addresses({OUT4}), Addresses()),
        (behavior("users", "in-set", {"strings": []}, consecutiveDatapointsToClear=10), Strings({"x"}), Strings()),
    ]:  # fmt: skip
        state, t = step(b, INITIAL, bad, 1.0)
        assert t is not None and t.event == "in-alarm"
        state, t = step(b, state, empty, 2.0)
        assert t == Transition("alarm-cleared", {b.value_kind: []}, 2.0)
        assert not state.in_alarm


def run(
    b: Behavior,
    points: Sequence[object],
    threshold: Optional[float] = None,
    start: float = 0.0,
    every: float = 300.0,
) -> list[Optional[str]]:
    """The events of a series of datapoints, one per ``every`` seconds."""
    state, events = INITIAL, []
    for i, point in enumerate(points):
        state, t = step(b, state, point, start + i * every, threshold)
        events.append(None if t is None else t.event)
        state = BehaviorState.from_json(json.loads(json.dumps(state.to_json())))  # as stored
    return events


def test_consecutive_datapoints_to_alarm_and_to_clear() -> None:
    b = behavior(
        "aws:num-listening-tcp-ports",
        "less-than-equals",
        {"count": 5},
        consecutiveDatapointsToAlarm=3,
        consecutiveDatapointsToClear=2,
    )
    # 2 violating, a conforming one resets, then 3 violating alarm; 1 conforming, a violating
    # one resets the clear count, then 2 conforming clear.
    points = [9, 9, 1, 9, 9, 9, 9, 1, 9, 1, 1, 1]
    assert run(b, points) == [
        None,
        None,
        None,
        None,
        None,
        "in-alarm",
        None,
        None,
        None,
        None,
        "alarm-cleared",
        None,
    ]


def test_defaults_alarm_and_clear_after_one() -> None:
    b = behavior("aws:num-listening-tcp-ports", "less-than-equals", {"count": 5})
    assert run(b, [9, 9, 1, 1, 9]) == ["in-alarm", None, "alarm-cleared", None, "in-alarm"]


def test_ten_is_the_most_and_runs_stop_counting_there() -> None:
    b = behavior("batt", "less-than", {"number": 0}, consecutiveDatapointsToAlarm=10)
    events = run(b, [1.0] * 12)
    assert events.index("in-alarm") == 9
    state = INITIAL
    for i in range(25):
        state, _ = step(b, state, 1.0, float(i))
    assert state.violating_run == 10


def test_the_transition_carries_the_violating_value() -> None:
    b = behavior("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8"]})
    _, t = step(b, INITIAL, Addresses({A4, OUT6}), 5.0)
    assert t == Transition("in-alarm", {"cidrs": ["10.1.2.3/32", "2001:db9::1/128"]}, 5.0)


def test_duration_window_sums_deltas_and_the_edge_is_out() -> None:
    b = behavior("aws:all-bytes-out", "less-than-equals", {"count": 100}, durationSeconds=300)
    state, t = step(b, INITIAL, 60, 0.0)
    assert t is None and state.last_value == {"count": 60}
    state, t = step(b, state, 40, 299.0)  # 60 + 40 = 100, conforms
    assert t is None and state.last_value == {"count": 100}
    state, t = step(b, state, 1, 299.5)  # 101: alarm
    assert t == Transition("in-alarm", {"count": 101}, 299.5)
    state, t = step(b, state, 0, 300.0)  # the delta at 0.0 is exactly 300 s old: out
    assert t == Transition("alarm-cleared", {"count": 41}, 300.0)
    assert [v for _, v in state.window] == [40.0, 1.0, 0.0]
    state, _ = step(b, state, 5, 900.0)  # everything older than 600 is gone
    assert state.window == ((900.0, 5.0),)


def test_window_sum_edges() -> None:
    s = BehaviorState(window=((100.0, 1.0), (200.0, 2.0), (400.0, 4.0)))
    assert window_sum(s, 400.0, 300) == 6.0  # (100, 400]: 100 is out
    assert window_sum(s, 399.0, 300) == 3.0  # (99, 399]: 400 is in the future
    assert window_sum(s, 1000.0, 300) == 0.0


def test_the_window_is_bounded() -> None:
    b = behavior("aws:all-packets-in", "less-than", {"count": 10**9}, durationSeconds=3600)
    state = INITIAL
    for i in range(MAX_WINDOW + 50):
        state, _ = step(b, state, 1, float(i))
    assert len(state.window) == MAX_WINDOW
    assert state.last_value == {"count": MAX_WINDOW + 50}  # merged, never lost


def test_no_datapoint_and_wrong_types_change_nothing() -> None:
    b = behavior("aws:listening-tcp-ports", "in-port-set", {"ports": [22]})
    assert step(b, INITIAL, None, 1.0) == (INITIAL, None)
    assert step(b, INITIAL, 3, 1.0) == (INITIAL, None)
    assert step(b, INITIAL, Strings({"22"}), 1.0) == (INITIAL, None)
    c = behavior("aws:all-bytes-out", "less-than", {"count": 1})
    assert step(c, INITIAL, True, 1.0) == (INITIAL, None)
    assert step(c, INITIAL, 2.5, 1.0) == (INITIAL, None)


def test_retained_and_cloud_side_behaviors_only_record() -> None:
    retained = parse_behavior({"name": "r", "metric": "aws:listening-tcp-ports"})
    state, t = step(retained, INITIAL, Ports({1}), 3.0)
    assert t is None and state.last_value == {"ports": [1]} and state.last_time == 3.0
    cloud = behavior("aws:num-messages-sent", "less-than", {"count": 0}, durationSeconds=300)
    assert step(cloud, INITIAL, 5, 3.0)[1] is None


def test_statistical_threshold() -> None:
    b = behavior(
        "aws:all-bytes-out",
        "less-than-equals",
        statisticalThreshold={"statistic": "p90"},
        durationSeconds=300,
    )
    assert b.kind == "statistical"
    # No threshold yet: the window fills, no verdict, counters untouched.
    state, t = step(b, INITIAL, 500, 0.0)
    assert t is None and (state.violating_run, state.conforming_run) == (0, 0)
    assert measurement(b, state, 0.0) == 500.0
    state, t = step(b, state, 600, 100.0, threshold=1000.0)  # 1100 > 1000
    assert t is not None and t.event == "in-alarm" and t.value == {"count": 1100}
    state, t = step(b, state, 0, 400.0, threshold=1000.0)  # 600 + 0 in (100, 400]
    assert t is not None and t.event == "alarm-cleared"
    assert step(b, state, 0, 500.0, threshold=float("nan"))[1] is None


def test_measurement_for_gauges_respects_the_duration() -> None:
    b = behavior(
        "batt", "less-than", statisticalThreshold={"statistic": "p50"}, durationSeconds=600
    )
    state, _ = step(b, INITIAL, 42.0, 1000.0)
    assert measurement(b, state, 1599.0) == 42.0
    assert measurement(b, state, 1600.0) is None
    no_duration = behavior("batt", "less-than", statisticalThreshold={"statistic": "p50"})
    assert measurement(no_duration, state, 10**9) == 42.0
    ports = behavior("aws:listening-tcp-ports", "in-port-set", {"ports": []})
    assert measurement(ports, state, 1000.0) is None
    assert measurement(b, INITIAL, 1000.0) is None


def test_state_json_round_trip_and_bad_state() -> None:
    state = BehaviorState(True, 2, 0, ((1.0, 2.0),), {"count": 2}, 1.0, {"values": [1.0]})
    assert BehaviorState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert BehaviorState.from_json({}) == INITIAL
    bads: list[dict[str, Any]] = [
        {"in_alarm": "yes"},
        {"violating_run": -1},
        {"window": [[1]]},
        {"window": 5},
        {"ml": []},
        {"last_time": "x"},
    ]
    for bad in bads:
        with pytest.raises(ValueError, match="not a behavior state"):
            BehaviorState.from_json(bad)


# ------------------------------------------------------------------ ML
def test_ml_pending_then_active_then_alarm_and_clear() -> None:
    b = parse_behavior(
        {
            "name": "m",
            "metric": "aws:all-bytes-out",
            "criteria": {
                "mlDetectionConfig": {"confidenceLevel": "HIGH"},
                "consecutiveDatapointsToClear": 2,
            },
        }
    )
    state = INITIAL
    for i in range(ml.MIN_DATAPOINTS):
        assert ml.model_status(state.ml) == "PENDING_BUILD"
        assert ml.datapoints_needed(state.ml) == ml.MIN_DATAPOINTS - i
        # a huge value while pending: no verdict
        state, t = step(b, state, 10**9 if i == 5 else 1000 + i % 3, float(i))
        assert t is None and state.violating_run == 0
    assert ml.model_status(state.ml) == "ACTIVE"
    state, t = step(b, state, 1001, 100.0)
    assert t is None and state.conforming_run == 1
    state, t = step(b, state, 10**7, 101.0)
    assert t is not None and t.event == "in-alarm"
    state, _ = step(b, state, 1000, 102.0)
    state, t = step(b, state, 1000, 103.0)
    assert t is not None and t.event == "alarm-cleared"


@pytest.mark.parametrize(
    ("confidence", "z", "expected"),
    [
        ("LOW", 3.5, True),
        ("MEDIUM", 3.5, False),
        ("MEDIUM", 4.5, True),
        ("HIGH", 4.5, False),
        ("HIGH", 5.5, True),
    ],
)
def test_ml_confidence_levels(confidence: str, z: float, expected: bool) -> None:
    state = {"values": [100.0, 110.0, 90.0] * 10}  # median 100, scale 14.826
    assert ml.anomalous(state, 100 + z * 14.826, confidence, two_sided=False) is expected
    assert ml.anomalous(state, 100 - z * 14.826, confidence, two_sided=True) is expected
    assert ml.anomalous(state, 100 - z * 14.826, confidence, two_sided=False) is False


def test_ml_custom_numbers_are_two_sided_device_counts_not() -> None:
    values = [50.0, 51.0, 49.0] * 10
    custom = parse_behavior(
        {
            "name": "m",
            "metric": "batt",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}},
        }
    )
    counts = parse_behavior(
        {
            "name": "m",
            "metric": "aws:all-bytes-in",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}},
        }
    )
    state = BehaviorState(ml={"values": values})
    assert step(custom, state, 1.0, 1.0)[1] is not None
    assert step(counts, state, 1, 1.0)[1] is None


def test_ml_steady_baseline_has_a_floor_and_learns_a_lasting_change() -> None:
    state: Optional[dict[str, Any]] = None
    for _ in range(ml.WINDOW):
        state = ml.learn(state, 3.0)
    assert ml.anomalous(state, 4.0, "LOW", two_sided=False) is False  # MAD 0, scale 1
    assert ml.anomalous(state, 7.0, "LOW", two_sided=False) is True
    for _ in range(ml.WINDOW // 2 + 1):
        state = ml.learn(state, 7.0)
    assert ml.anomalous(state, 7.0, "LOW", two_sided=False) is False
    assert state is not None and len(state["values"]) == ml.WINDOW
    assert ml.learn({"values": "junk"}, float("nan")) == {"values": []}


def test_model_status_takes_the_behavior_state_too() -> None:
    assert ml.model_status(INITIAL) == "PENDING_BUILD"
    assert ml.model_status(BehaviorState(ml={"values": [1.0] * ml.MIN_DATAPOINTS})) == "ACTIVE"
    assert ml.datapoints_needed(BehaviorState(ml={"values": [1.0] * 5})) == ml.MIN_DATAPOINTS - 5


SERIES_BEHAVIORS = [
    behavior("aws:all-bytes-out", "less-than-equals", {"count": 50}, durationSeconds=300, consecutiveDatapointsToAlarm=2, consecutiveDatapointsToClear=3),
    behavior("aws:listening-tcp-ports", "in-port-set", {"ports": [1, 2]}, consecutiveDatapointsToClear=2),
    behavior("aws:num-listening-tcp-ports", "less-than", statisticalThreshold={"statistic": "p50"}),
    parse_behavior({"name": "m", "metric": "aws:all-bytes-in", "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}}}),
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(SERIES_BEHAVIORS),
    st.lists(st.tuples(st.integers(0, 100), st.floats(0, 400), st.sampled_from([None, 10.0]))),
)
def test_any_series_alternates_alarms_and_survives_storage(
    b: Behavior, series: list[tuple[int, float, Optional[float]]]
) -> None:
    state, now, last = INITIAL, 0.0, "alarm-cleared"
    for number, gap, threshold in series:
        now += gap
        point: object = Ports({number % 4}) if b.value_kind == "ports" else number
        state, t = step(b, state, point, now, threshold)
        if t is not None:
            assert t.event != last  # in-alarm and alarm-cleared alternate
            last = t.event
        assert state.in_alarm is (last == "in-alarm")
        assert 0 <= state.violating_run <= 10 and 0 <= state.conforming_run <= 10
        assert state.violating_run == 0 or state.conforming_run == 0
        state = BehaviorState.from_json(json.loads(json.dumps(state.to_json())))


def test_equal_sets_of_other_types_show_their_own_type() -> None:
    # Ports({1}) == Numbers({1.0}) as frozensets: the shown value must still follow the type
    ports = parse_behavior(
        {
            "name": "p",
            "metric": "aws:listening-tcp-ports",
            "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [1]}},
        }
    )
    numbers = parse_behavior(
        {
            "name": "n",
            "metric": "m",
            "criteria": {"comparisonOperator": "in-set", "value": {"numbers": [1.0]}},
        }
    )
    assert step(ports, INITIAL, Ports({1}), 1.0)[0].last_value == {"ports": [1]}
    assert step(numbers, INITIAL, Numbers({1.0}), 1.0)[0].last_value == {"numbers": [1.0]}


def test_an_address_set_is_judged_by_each_behavior_own_networks() -> None:
    allow = parse_behavior(
        {
            "name": "a",
            "metric": "aws:destination-ip-addresses",
            "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}},
        }
    )
    deny = parse_behavior(
        {
            "name": "d",
            "metric": "aws:destination-ip-addresses",
            "criteria": {
                "comparisonOperator": "not-in-cidr-set",
                "value": {"cidrs": ["10.0.0.0/8"]},
            },
        }
    )
    point = Addresses({ipaddress.ip_address("10.1.2.3")})
    for _ in range(2):  # (the second time from the cache)
        assert step(allow, INITIAL, point, 1.0)[0].violating_run == 0
        assert step(deny, INITIAL, point, 1.0)[0].violating_run == 1
