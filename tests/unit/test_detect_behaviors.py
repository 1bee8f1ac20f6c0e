"""Behavior validation (AWS's rules) and the typed form (detect/behaviors.py).

Each rule has a row: the behavior, and the message (or its start) validation must give.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defender_agent.custom.builtins import BUILTINS
from defender_agent.detect.behaviors import (
    CLOUD_METRIC_TYPES,
    METRIC_TYPES,
    ML_METRICS,
    parse_behavior,
    parse_cidr,
    validate_behaviors,
)
from defender_agent.security_profile import behaviors as starter_behaviors

CUSTOM = {
    "batt": "number",
    "load": "number-list",
    "users": "string-list",
    "peers": "ip-address-list",
}


def crit(metric: str, **criteria: Any) -> dict[str, Any]:
    return {"name": "b", "metric": metric, "criteria": criteria}


def static(metric: str, operator: str, value: Any, **more: Any) -> dict[str, Any]:
    return crit(metric, comparisonOperator=operator, value=value, **more)


# One valid behavior per operator x metric kind.
VALID = [
    static("aws:all-bytes-out", "less-than", {"count": 0}),
    static("aws:all-bytes-in", "less-than-equals", {"count": 2**63 - 1}, durationSeconds=300),
    static("aws:all-packets-out", "greater-than", {"count": 5}, durationSeconds=3600),
    static("aws:all-packets-in", "greater-than-equals", {"count": 5}, durationSeconds=600),
    static("aws:num-listening-tcp-ports", "less-than", {"count": 3}, durationSeconds=900),
    static("aws:num-listening-udp-ports", "less-than", {"count": 3}),
    static("aws:num-established-tcp-connections", "less-than", {"count": 3}, durationSeconds=1800),
    static("aws:listening-tcp-ports", "in-port-set", {"ports": [0, 22, 65535]}),
    static("aws:listening-udp-ports", "not-in-port-set", {"ports": []}),
    static("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8", "::/0"]}),
    static("aws:destination-ip-addresses", "not-in-cidr-set", {"cidrs": ["2001:db8::/32", "1.2.3.4"]}),
    static("batt", "less-than", {"number": -1.5}),
    static("batt", "greater-than-equals", {"number": 3}, durationSeconds=300),
    static("load", "in-set", {"numbers": [1, 2.5]}),
    static("load", "not-in-set", {"numbers": []}),
    static("users", "in-set", {"strings": ["root"]}),
    static("users", "not-in-set", {"strings": ["guest", ""]}),
    static("peers", "in-cidr-set", {"cidrs": ["192.168.0.0/16"]}),
    static("peers", "not-in-cidr-set", {"cidrs": ["::ffff:10.0.0.0/104"]}),
    crit("aws:all-bytes-out", comparisonOperator="greater-than", statisticalThreshold={"statistic": "p90"}, durationSeconds=300),
    crit("aws:num-listening-tcp-ports", comparisonOperator="less-than", statisticalThreshold={"statistic": "p99.99"}),
    crit("batt", comparisonOperator="less-than", statisticalThreshold={"statistic": "p0"}),
    crit("aws:all-bytes-out", mlDetectionConfig={"confidenceLevel": "HIGH"}, consecutiveDatapointsToAlarm=3),
    crit("batt", mlDetectionConfig={"confidenceLevel": "LOW"}),
    crit("aws:num-messages-sent", mlDetectionConfig={"confidenceLevel": "MEDIUM"}),
    static("aws:num-messages-sent", "greater-than", {"count": 10}, durationSeconds=300),
    {**static("aws:num-messages-sent", "less-than", {"count": 1}, durationSeconds=300), "metricDimension": {"dimensionName": "topics", "operator": "NOT_IN"}},
    static("aws:source-ip-address", "in-cidr-set", {"cidrs": ["10.0.0.0/8"]}),
    {"name": "retained", "metric": "aws:listening-tcp-ports"},
    {**static("batt", "less-than", {"number": 1}, consecutiveDatapointsToAlarm=10, consecutiveDatapointsToClear=1), "suppressAlerts": True, "exportMetric": False},
]  # fmt: skip


@pytest.mark.parametrize("behavior", VALID, ids=lambda b: f"{b['metric']}")
def test_valid_behaviors_pass_and_parse(behavior: dict[str, Any]) -> None:
    assert validate_behaviors([behavior], CUSTOM) == []
    parsed = parse_behavior(behavior)
    assert parsed.name == behavior["name"] and parsed.metric == behavior["metric"]


# (behavior, the message start expected); the path is behaviors[0]...
INVALID = [
    ({"metric": "batt"}, "behaviors[0].name: is required"),
    ({"name": "", "metric": "batt"}, "behaviors[0].name: '' must be 1 to 128"),
    ({"name": "a" * 129, "metric": "batt"}, "behaviors[0].name: 'aaaa"),
    ({"name": "a.b", "metric": "batt"}, "behaviors[0].name: 'a.b' must be"),
    ({"name": 5, "metric": "batt"}, "behaviors[0].name: must be a string, not a number"),
    ({"name": "b"}, "behaviors[0].metric: is required"),
    ({"name": "b", "metric": "aws:cpu"}, "behaviors[0].metric: 'aws:cpu' is not an aws:* metric"),
    ({"name": "b", "metric": "nope"}, "behaviors[0].metric: 'nope' is not a custom metric that exists"),
    ({"name": "b", "metric": ["x"]}, "behaviors[0].metric: must be a string, not a list"),
    ({"name": "b", "metric": "batt", "colour": 1}, "behaviors[0]: unknown field 'colour'"),
    ({"name": "b", "metric": "batt", "suppressAlerts": "yes"}, "behaviors[0].suppressAlerts: must be a boolean"),
    ({"name": "b", "metric": "batt", "exportMetric": 1}, "behaviors[0].exportMetric: must be a boolean"),
    ({"name": "b", "metric": "batt", "criteria": []}, "behaviors[0].criteria: must be an object, not a list"),
    ({"name": "b", "metric": "nope", "criteria": 3}, "behaviors[0].criteria: must be an object"),
    (crit("batt"), "behaviors[0].criteria.comparisonOperator: is required"),
    (crit("batt", comparisonOperator="less-than"), "behaviors[0].criteria: needs a value"),
    (crit("batt", value={"number": 1}), "behaviors[0].criteria.comparisonOperator: is required"),
    (static("batt", "less-than", {"number": 1}, bogus=1), "behaviors[0].criteria: unknown field 'bogus'"),
    (static("batt", "less-than-or-equal", {"number": 1}), "behaviors[0].criteria.comparisonOperator: 'less-than-or-equal' is not an operator"),
    (static("aws:listening-tcp-ports", "less-than", {"ports": [1]}), "behaviors[0].criteria.comparisonOperator: less-than does not apply to aws:listening-tcp-ports"),
    (static("aws:all-bytes-out", "in-set", {"count": 1}), "behaviors[0].criteria.comparisonOperator: in-set does not apply"),
    (static("users", "in-cidr-set", {"strings": ["a"]}), "behaviors[0].criteria.comparisonOperator: in-cidr-set does not apply"),
    (static("peers", "in-set", {"cidrs": ["10.0.0.0/8"]}), "behaviors[0].criteria.comparisonOperator: in-set does not apply"),
    (static("aws:listening-tcp-ports", "in-port-set", {"count": 2}), "behaviors[0].criteria.value: aws:listening-tcp-ports takes 'ports', not 'count'"),
    (static("batt", "less-than", {"count": 2}), "behaviors[0].criteria.value: batt takes 'number', not 'count'"),
    (static("aws:all-bytes-out", "less-than", {"number": 2}), "behaviors[0].criteria.value: aws:all-bytes-out takes 'count', not 'number'"),
    (static("load", "in-set", {"strings": ["a"]}), "behaviors[0].criteria.value: load takes 'numbers', not 'strings'"),
    (static("aws:all-bytes-out", "less-than", {}), "behaviors[0].criteria.value: aws:all-bytes-out takes 'count'; the value is empty"),
    (static("aws:all-bytes-out", "less-than", {"count": 1, "number": 1}), "behaviors[0].criteria.value: has 2 members"),
    (static("aws:all-bytes-out", "less-than", {"counts": 1}), "behaviors[0].criteria.value: unknown field 'counts'"),
    (static("aws:all-bytes-out", "less-than", [1]), "behaviors[0].criteria.value: must be an object"),
    (static("aws:all-bytes-out", "less-than", {"count": -1}), "behaviors[0].criteria.value.count: -1 must be a whole number >= 0"),
    (static("aws:all-bytes-out", "less-than", {"count": 2**63}), "behaviors[0].criteria.value.count: 9223372036854775808 must be"),
    (static("aws:all-bytes-out", "less-than", {"count": 1.5}), "behaviors[0].criteria.value.count: 1.5 must be"),
    (static("aws:all-bytes-out", "less-than", {"count": True}), "behaviors[0].criteria.value.count: True must be"),
    (static("aws:all-bytes-out", "less-than", {"count": "5"}), "behaviors[0].criteria.value.count: '5' must be"),
    (static("batt", "less-than", {"number": float("nan")}), "behaviors[0].criteria.value.number: nan must be a finite number"),
    (static("batt", "less-than", {"number": None}), "behaviors[0].criteria.value.number: None must be a finite number"),
    (static("aws:listening-tcp-ports", "in-port-set", {"ports": [65536]}), "behaviors[0].criteria.value.ports[0]: 65536 must be a port"),
    (static("aws:listening-tcp-ports", "in-port-set", {"ports": [22, -1]}), "behaviors[0].criteria.value.ports[1]: -1 must be a port"),
    (static("aws:listening-tcp-ports", "in-port-set", {"ports": 22}), "behaviors[0].criteria.value.ports: must be a list, not a number"),
    (static("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/33"]}), "behaviors[0].criteria.value.cidrs[0]: '10.0.0.0/33' is not an IPv4 or IPv6 network"),
    (static("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["1"]}), "behaviors[0].criteria.value.cidrs[0]: '1' must be 2 to 43"),
    (static("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0 /8"]}), "behaviors[0].criteria.value.cidrs[0]: '10.0.0.0 /8' must be 2 to 43"),
    (static("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["abcd" * 11]}), "behaviors[0].criteria.value.cidrs[0]: 'abcd"),
    (static("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["fe80::1%eth0"]}), "behaviors[0].criteria.value.cidrs[0]: 'fe80::1%eth0' must be"),
    (static("peers", "in-cidr-set", {"cidrs": [10]}), "behaviors[0].criteria.value.cidrs[0]: must be a string, not a number"),
    (static("load", "in-set", {"numbers": ["1"]}), "behaviors[0].criteria.value.numbers[0]: '1' must be a finite number"),
    (static("users", "in-set", {"strings": [None]}), "behaviors[0].criteria.value.strings[0]: must be a string, not null"),
    (static("aws:all-bytes-out", "less-than", {"count": 1}, durationSeconds=301), "behaviors[0].criteria.durationSeconds: 301 must be 300, 600"),
    (static("aws:all-bytes-out", "less-than", {"count": 1}, durationSeconds="300"), "behaviors[0].criteria.durationSeconds: '300' must be"),
    (static("aws:listening-tcp-ports", "in-port-set", {"ports": [1]}, durationSeconds=300), "behaviors[0].criteria.durationSeconds: is not allowed with aws:listening-tcp-ports, a list metric"),
    (static("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": []}, durationSeconds=300), "behaviors[0].criteria.durationSeconds: is not allowed"),
    (static("users", "in-set", {"strings": []}, durationSeconds=300), "behaviors[0].criteria.durationSeconds: is not allowed"),
    (static("batt", "less-than", {"number": 1}, consecutiveDatapointsToAlarm=0), "behaviors[0].criteria.consecutiveDatapointsToAlarm: 0 must be a whole number 1 to 10"),
    (static("batt", "less-than", {"number": 1}, consecutiveDatapointsToClear=11), "behaviors[0].criteria.consecutiveDatapointsToClear: 11 must be"),
    (static("batt", "less-than", {"number": 1}, consecutiveDatapointsToClear=2.0), "behaviors[0].criteria.consecutiveDatapointsToClear: 2.0 must be"),
    (crit("batt", comparisonOperator="less-than", statisticalThreshold={"statistic": "p95"}), "behaviors[0].criteria.statisticalThreshold.statistic: 'p95' is not one of"),
    (crit("batt", comparisonOperator="less-than", statisticalThreshold={}), "behaviors[0].criteria.statisticalThreshold.statistic: None is not one of"),
    (crit("batt", comparisonOperator="less-than", statisticalThreshold={"statistic": "p50", "x": 1}), "behaviors[0].criteria.statisticalThreshold: unknown field 'x'"),
    (crit("aws:all-bytes-out", comparisonOperator="less-than", statisticalThreshold={"statistic": "p50"}), "behaviors[0].criteria.durationSeconds: is required for a statisticalThreshold on aws:all-bytes-out"),
    (crit("aws:listening-tcp-ports", comparisonOperator="in-port-set", statisticalThreshold={"statistic": "p50"}), "behaviors[0].criteria.statisticalThreshold: applies only to count and number metrics"),
    (crit("batt", comparisonOperator="less-than", value={"number": 1}, statisticalThreshold={"statistic": "p50"}), "behaviors[0].criteria: has both value and statisticalThreshold"),
    (crit("batt", mlDetectionConfig={"confidenceLevel": "VERY"}), "behaviors[0].criteria.mlDetectionConfig.confidenceLevel: 'VERY' is not LOW, MEDIUM or HIGH"),
    (crit("batt", mlDetectionConfig={}), "behaviors[0].criteria.mlDetectionConfig.confidenceLevel: None is not"),
    (crit("batt", mlDetectionConfig="HIGH"), "behaviors[0].criteria.mlDetectionConfig: must be an object"),
    (crit("aws:listening-tcp-ports", mlDetectionConfig={"confidenceLevel": "LOW"}), "behaviors[0].criteria.mlDetectionConfig: ML Detect does not support aws:listening-tcp-ports"),
    (crit("load", mlDetectionConfig={"confidenceLevel": "LOW"}), "behaviors[0].criteria.mlDetectionConfig: ML Detect does not support load"),
    (crit("batt", mlDetectionConfig={"confidenceLevel": "LOW"}, value={"number": 1}), "behaviors[0].criteria.value: is not allowed with mlDetectionConfig"),
    (crit("batt", mlDetectionConfig={"confidenceLevel": "LOW"}, comparisonOperator="less-than"), "behaviors[0].criteria.comparisonOperator: is not allowed with mlDetectionConfig"),
    (crit("aws:all-bytes-out", mlDetectionConfig={"confidenceLevel": "LOW"}, durationSeconds=300), "behaviors[0].criteria.durationSeconds: is not allowed with mlDetectionConfig"),
    ({**static("batt", "less-than", {"number": 1}), "metricDimension": {"dimensionName": "t"}}, "behaviors[0].metricDimension: is only for cloud-side metrics"),
    ({**static("aws:num-messages-sent", "less-than", {"count": 1}, durationSeconds=300), "metricDimension": {"dimensionName": "t", "operator": "OUT"}}, "behaviors[0].metricDimension.operator: 'OUT' is not IN or NOT_IN"),
    ({**static("aws:num-messages-sent", "less-than", {"count": 1}, durationSeconds=300), "metricDimension": {}}, "behaviors[0].metricDimension.dimensionName: is required"),
    ("not a behavior", "behaviors[0]: must be an object, not a string"),
]  # fmt: skip


@pytest.mark.parametrize(("behavior", "message"), INVALID, ids=lambda x: str(x)[:60])
def test_each_rule_has_its_message(behavior: Any, message: str) -> None:
    errors = validate_behaviors([behavior], CUSTOM)
    assert any(e.startswith(message) for e in errors), errors


def test_the_list_itself() -> None:
    assert validate_behaviors({"behaviors": []}, {}) == ["behaviors: must be a list, not an object"]
    assert validate_behaviors(None, {}) == ["behaviors: must be a list, not null"]
    assert validate_behaviors([], {}) == []
    many = [{"name": f"b{i}", "metric": "aws:all-bytes-out"} for i in range(101)]
    assert validate_behaviors(many[:100], {}) == []
    assert validate_behaviors(many, {}) == ["behaviors: has 101 behaviors; at most 100"]
    twice = [
        {"name": "x", "metric": "batt"},
        {"name": "y", "metric": "batt"},
        {"name": "x", "metric": "batt"},
    ]
    assert validate_behaviors(twice, CUSTOM) == ["behaviors[2].name: 'x' is also behaviors[0]'s"]


def test_every_problem_is_reported_not_only_the_first() -> None:
    bad = [static("aws:listening-tcp-ports", "less-than", {"count": -1}, durationSeconds=5)]
    assert len(validate_behaviors(bad, {})) == 3


def test_a_custom_metric_must_exist_and_its_type_decides() -> None:
    behavior = static("batt", "less-than", {"number": 1})
    assert validate_behaviors([behavior], {}) != []
    assert validate_behaviors([behavior], {"batt": "string-list"}) != []
    assert validate_behaviors([behavior], {"batt": "number"}) == []
    # An aws:-prefixed name is never a custom metric.
    assert validate_behaviors([static("aws:x", "less-than", {"number": 1})], {"aws:x": "number"})


def test_the_aws_setup_profile_is_accepted_unchanged() -> None:
    metrics = [(name, builtin.type) for name, builtin in BUILTINS.items()]
    types = {name: kind.value for name, kind in metrics}
    assert validate_behaviors(starter_behaviors(metrics), types) == []


def test_metric_tables() -> None:
    assert len(METRIC_TYPES) == 10 and len(ML_METRICS) == 7
    assert not set(METRIC_TYPES) & set(CLOUD_METRIC_TYPES)


def test_parse_behavior_types_each_value() -> None:
    def value(metric: str, operator: str, member: dict[str, Any]) -> object:
        return parse_behavior(static(metric, operator, member)).value

    assert value("aws:all-bytes-out", "less-than", {"count": 7}) == 7
    assert value("batt", "less-than", {"number": 7}) == 7.0
    assert value("aws:listening-tcp-ports", "in-port-set", {"ports": [22, 22, 443]}) == frozenset(
        {22, 443}
    )
    assert value("load", "in-set", {"numbers": [1, 2.5]}) == frozenset({1.0, 2.5})
    assert value("users", "in-set", {"strings": ["a"]}) == frozenset({"a"})
    cidrs = value(
        "peers",
        "in-cidr-set",
        {"cidrs": ["10.0.0.1/8", "10.0.0.0/8", "::ffff:1.2.3.0/120", "2001:db8::/32"]},
    )
    assert cidrs == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("1.2.3.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    b = parse_behavior(
        {
            **static(
                "batt",
                "less-than",
                {"number": 1},
                consecutiveDatapointsToAlarm=3,
                consecutiveDatapointsToClear=2,
                durationSeconds=600,
            ),
            "suppressAlerts": True,
        }
    )
    assert (b.to_alarm, b.to_clear, b.duration_s, b.suppress_alerts, b.value_kind) == (
        3,
        2,
        600,
        True,
        "number",
    )
    assert (
        parse_behavior(crit("batt", mlDetectionConfig={"confidenceLevel": "LOW"})).criteria_type
        == "MACHINE_LEARNING"
    )
    assert parse_behavior({"name": "r", "metric": "users"}).criteria_type == "STATIC"
    assert parse_behavior(static("aws:num-messages-sent", "less-than", {"count": 1})).cloud_side
    with pytest.raises(ValueError, match="not a valid behavior"):
        parse_behavior({"name": "x"})


def test_parse_cidr() -> None:
    assert parse_cidr("::ffff:0:0/96") == ipaddress.ip_network("0.0.0.0/0")
    assert parse_cidr("::ffff:0:0/95") == ipaddress.ip_network("::ffff:0:0/95", strict=False)
    assert parse_cidr("1.2.3.4") == ipaddress.ip_network("1.2.3.4/32")
    with pytest.raises(ValueError):
        parse_cidr("10.0.0.0/8/8")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        "name",
        "metric",
        "criteria",
        "value",
        "comparisonOperator",
        "count",
        "ports",
        "cidrs",
        "statisticalThreshold",
        "mlDetectionConfig",
        "durationSeconds",
        "metricDimension",
    ]
)
SHAPED = st.lists(
    st.dictionaries(KEYS, JSON | st.dictionaries(KEYS, JSON, max_size=4), max_size=6), max_size=4
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, SHAPED))
def test_arbitrary_json_never_raises(doc: object) -> None:
    errors = validate_behaviors(doc, CUSTOM)
    assert all(isinstance(e, str) and e.startswith("behaviors") for e in errors)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VALID), st.sampled_from(["name", "metric", "criteria"]), JSON)
def test_a_mutated_valid_behavior_is_judged_without_raising(
    behavior: dict[str, Any], key: str, junk: object
) -> None:
    mutated = copy.deepcopy(behavior)
    mutated[key] = junk
    if not validate_behaviors([mutated], CUSTOM):
        parse_behavior(mutated)  # what validation accepts, parsing takes
