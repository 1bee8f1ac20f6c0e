"""The compiled evaluation against the readable model: the same events for any datapoints.

:func:`defender_agent.detect.evaluate.step` is the model; :mod:`defender_agent.detect.compiled`
is what the engine runs. Hypothesis replays random datapoints of random behaviors through
both and compares every event (``in-alarm``, ``alarm-cleared``, a further violating
datapoint of an alarm) and its value.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defender_agent.detect.behaviors import Behavior, parse_behavior
from defender_agent.detect.compiled import (
    CLEARED,
    IN_ALARM,
    STILL,
    RuleSet,
    ThingState,
    compile_rule,
    decode_state,
    encode_state,
    judge,
    run_code,
)
from defender_agent.detect.evaluate import INITIAL, step
from defender_agent.detect.metrics import metric_value_json
from defender_agent.model import (
    Connection,
    ConnectionList,
    CustomMetric,
    CustomMetricType,
    ListeningPort,
    NetworkStats,
    PortList,
    Report,
)

_NAMES = {IN_ALARM: "in-alarm", CLEARED: "alarm-cleared", STILL: "still"}


def _report(kind: str, value: Any) -> Report:
    if kind == "ports":
        return Report(
            report_id=1,
            listening_tcp_ports=PortList(tuple(ListeningPort(p) for p in value), len(value)),
        )
    if kind == "count":
        return Report(report_id=1, network_stats=NetworkStats(0, value, 0, 0))
    if kind == "cidrs":
        return Report(
            report_id=1,
            tcp_connections=ConnectionList(
                tuple(Connection(a, 443, 50000 + i) for i, a in enumerate(value)), len(value)
            ),
        )
    return Report(
        report_id=1, custom_metrics=(CustomMetric("users", CustomMetricType.STRING_LIST, value),)
    )


def _behavior(kind: str, operator: str, to_alarm: int, to_clear: int, d: Optional[int]) -> Behavior:
    criteria: dict[str, Any] = {
        "comparisonOperator": operator,
        "consecutiveDatapointsToAlarm": to_alarm,
        "consecutiveDatapointsToClear": to_clear,
    }
    if kind == "ports":
        metric, criteria["value"] = "aws:listening-tcp-ports", {"ports": [22, 443]}
    elif kind == "count":
        metric, criteria["value"] = "aws:all-bytes-out", {"count": 1000}
        if d is not None:
            criteria["durationSeconds"] = d
    elif kind == "cidrs":
        metric = "aws:destination-ip-addresses"
        criteria["value"] = {"cidrs": ["10.0.0.0/8", "2001:db8::/32"]}
    else:
        metric, criteria["value"] = "users", {"strings": ["root", "pi"]}
    return parse_behavior({"name": "b", "metric": metric, "criteria": criteria})


_OPERATORS = {
    "ports": ["in-port-set", "not-in-port-set"],
    "count": ["less-than", "less-than-equals", "greater-than", "greater-than-equals"],
    "cidrs": ["in-cidr-set", "not-in-cidr-set"],
    "strings": ["in-set", "not-in-set"],
}
_VALUES = {
    "ports": st.lists(st.sampled_from([22, 443, 8080, 8123]), max_size=3, unique=True),
    "count": st.integers(0, 1500),
    "cidrs": st.lists(
        st.sampled_from(["10.1.2.3", "192.0.2.1", "2001:db8::5", "2001:db9::1"]),
        max_size=3,
        unique=True,
    ),
    "strings": st.lists(st.sampled_from(["root", "pi", "guest"]), max_size=3, unique=True),
}


@st.composite
def _cases(draw: st.DrawFn) -> tuple[Behavior, list[tuple[float, Any]]]:
    kind = draw(st.sampled_from(sorted(_OPERATORS)))
    behavior = _behavior(
        kind,
        draw(st.sampled_from(_OPERATORS[kind])),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
        draw(st.sampled_from([None, 300, 600])) if kind == "count" else None,
    )
    gaps = draw(
        st.lists(st.sampled_from([11.0, 100.0, 299.0, 300.0, 301.0]), min_size=1, max_size=25)
    )
    values = draw(st.lists(_VALUES[kind], min_size=len(gaps), max_size=len(gaps)))
    at, points = 1_000.0, []
    for gap, value in zip(gaps, values):
        at += gap
        points.append((at, value))
    return behavior, points


def _datapoint(kind: str, value: Any) -> Any:
    from defender_agent.detect.metrics import datapoint

    behavior_metric = {
        "ports": "aws:listening-tcp-ports",
        "count": "aws:all-bytes-out",
        "cidrs": "aws:destination-ip-addresses",
        "strings": "users",
    }[kind]
    return datapoint(_report(kind, value), behavior_metric)


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_the_compiled_rules_make_the_events_of_the_model(
    case: tuple[Behavior, list[tuple[float, Any]]],
) -> None:
    behavior, points = case
    kind = {"count": "count", "ports": "ports", "cidrs": "cidrs", "strings": "strings"}[
        behavior.value_kind
    ]
    rule = compile_rule(behavior, "p/b", {})
    state, model = ThingState(), INITIAL
    for at, value in points:
        report = _report(kind, value)
        point = _datapoint(kind, value)
        new, transition = step(behavior, model, point, at)
        expected: list[tuple[str, Any]] = []
        if transition is not None:
            expected.append((transition.event, transition.value))
        elif new is not model and model.in_alarm and new.in_alarm and new.conforming_run == 0:
            expected.append(("still", new.last_value))
        model = new
        got = [
            (_NAMES[event], metric_value_json(m))
            for _r, event, m in judge([rule], state, report, at)
        ]
        assert got == expected, (at, value)
        # the stored form reads back to the same state
        again = decode_state(encode_state(state, "t"), {})
        assert (again.runs, again.windows) == (state.runs, state.windows)


def test_a_window_is_the_things_whatever_behaviors_read_it() -> None:
    def out(name: str, d: int, limit: int) -> Any:
        return compile_rule(
            parse_behavior(
                {
                    "name": name,
                    "metric": "aws:all-bytes-out",
                    "criteria": {
                        "comparisonOperator": "less-than",
                        "value": {"count": limit},
                        "durationSeconds": d,
                    },
                }
            ),
            f"p/{name}",
            {},
        )

    short, long_ = out("short", 300, 250), out("long", 900, 250)
    rules = [short, long_]
    state = ThingState()
    events = []
    for at, sent in [(0.0, 100), (200.0, 100), (400.0, 100), (1000.0, 10)]:
        report = _report("count", sent)
        events += [(at, r.key, e, m) for r, e, m in judge(rules, state, report, at)]
    # the 300 s window sums 200 at 200 s and 400 s; the 900 s one 300 at 400 s (in-alarm),
    # then 210 at 1000 s (the 100 of 200 s and 400 s, and 10): still 210 < 250 clears
    assert events == [
        (400.0, "p/long", IN_ALARM, 300),
        (1000.0, "p/long", CLEARED, 210),
    ]
    assert [t for t, _ in state.windows["aws:all-bytes-out"]] == [200.0, 400.0, 1000.0]


def test_rules_measured_together_still_give_their_outcomes_in_rule_order() -> None:
    def out(name: str, limit: int, d: Optional[int] = None) -> Any:
        criteria: dict[str, Any] = {"comparisonOperator": "less-than", "value": {"count": limit}}
        if d:
            criteria["durationSeconds"] = d
        behavior = {"name": name, "metric": "aws:all-bytes-out", "criteria": criteria}
        return compile_rule(parse_behavior(behavior), f"p/{name}", {})

    # a and c read the report's value, b the 300 s window: judged as two groups
    rules = [out("a", 50), out("b", 50, 300), out("c", 60)]
    ruleset = RuleSet(rules)
    assert len(ruleset) == 3 and ruleset.span == {"aws:all-bytes-out": 300}
    state = ThingState()
    got = [(r.key, e) for r, e, _m in judge(ruleset, state, _report("count", 100), 10.0)]
    assert got == [("p/a", IN_ALARM), ("p/b", IN_ALARM), ("p/c", IN_ALARM)]
    # the same rules as a plain list (grouped on the call) judge the same way
    again = ThingState()
    assert [(r.key, e) for r, e, _m in judge(rules, again, _report("count", 100), 10.0)] == got
    assert again.runs == state.runs


def test_a_first_format_state_is_read_and_bad_entries_start_again() -> None:
    text = (
        '{"p/a": {"in_alarm": true, "violating_run": 3, "conforming_run": 0, "window": []},'
        ' "p/o": {"in_alarm": false, "violating_run": 1, "window": [[5, 20], [9, 30]]},'
        ' "p/bad": {"in_alarm": "yes"}, "p/m": {"ml": {"values": [1.0, 2.0]}}}'
    )
    state = decode_state(text, {"p/o": "aws:all-bytes-out"})
    assert state.runs == {"p/a": run_code(True, 0, 0), "p/o": run_code(False, 1, 0)}
    assert state.windows == {"aws:all-bytes-out": [[5.0, 20.0], [9.0, 30.0]]}
    assert state.ml == {"p/m": {"values": [1.0, 2.0]}}


@pytest.mark.parametrize(
    "text",
    [
        (
            '{"v": 2, "runs": {"p/a": 999, "p/b": -1, "p/c": "7", "p/d": 5}, "windows": '
            '{"m": [[1, "x"]], "n": 3, "o": [[1, 2]]}, "ml": {"p/m": [1]}}'
        ),
        "[]",
        "",
    ],
)
def test_a_damaged_state_keeps_only_what_is_valid(text: str) -> None:
    state = decode_state(text, {})
    if text.startswith('{"v"'):
        assert state.runs == {"p/d": 5}
        assert state.windows == {"o": [[1.0, 2.0]]}
        assert state.ml == {}
    else:
        assert (state.runs, state.windows, state.ml) == ({}, {}, {})


def test_addresses_judge_ipv4_and_ipv6_apart() -> None:
    rule = compile_rule(_behavior("cidrs", "in-cidr-set", 1, 1, None), "p/b", {})
    v4 = _datapoint("cidrs", ["10.9.9.9"])
    v6 = _datapoint("cidrs", ["2001:db8::1"])
    mapped = _datapoint("cidrs", ["::ffff:10.1.1.1"])
    outside = _datapoint("cidrs", ["2001:db9::1", "10.0.0.1"])
    assert [rule.verdict(x) for x in (v4, v6, mapped, outside)] == [0, 0, 0, 1]
    assert ipaddress.IPv6Address("::ffff:10.1.1.1").ipv4_mapped is not None


def test_what_removed_behaviors_left_is_dropped_when_decoded_with_the_plan() -> None:
    kept = ThingState(
        {"p/a": 5, "p/gone": 7},
        {"aws:all-bytes-out": [[1.0, 2.0]], "aws:all-bytes-in": [[1.0, 3.0]]},
        {"p/m": {"values": [1.0]}, "p/gone-ml": {"values": [2.0]}},
    )
    text = encode_state(kept, "w")
    metrics = {"p/a": "aws:listening-tcp-ports", "p/m": "cpu", "p/o": "aws:all-bytes-out"}
    state = decode_state(text, metrics, {"aws:all-bytes-out"})
    assert state.runs == {"p/a": 5}
    assert state.ml == {"p/m": {"values": [1.0]}}
    assert state.windows == {"aws:all-bytes-out": [[1.0, 2.0]]}
    assert decode_state(text, metrics).runs == {"p/a": 5, "p/gone": 7}  # (no plan: all)
