"""Behaviors in words (detect/describe.py): one row per form of criteria."""

from __future__ import annotations

from typing import Any

import pytest

from defender_agent.detect.behaviors import parse_behavior, validate_behaviors
from defender_agent.detect.describe import describe, metric_words

CUSTOM = {
    "cpu": "number",
    "load": "number-list",
    "users": "string-list",
    "peers": "ip-address-list",
}


def b(metric: str, **criteria: Any) -> dict[str, Any]:
    return {"name": "b", "metric": metric, "criteria": criteria}


ROWS = [
    (b("aws:listening-udp-ports", comparisonOperator="not-in-port-set", value={"ports": [23, 21]}), "listening UDP ports must not be in {21, 23}"),
    (b("aws:listening-tcp-ports", comparisonOperator="in-port-set", value={"ports": []}), "listening TCP ports must be in {}"),
    (b("aws:listening-tcp-ports", comparisonOperator="in-port-set", value={"ports": list(range(1, 13))}), "listening TCP ports must be in {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... 2 more}"),
    (b("aws:destination-ip-addresses", comparisonOperator="in-cidr-set", value={"cidrs": ["10.0.0.0/8", "2001:db8::/32"]}), "destination IP addresses must be in {10.0.0.0/8, 2001:db8::/32}"),
    (b("peers", comparisonOperator="not-in-cidr-set", value={"cidrs": ["::ffff:1.2.3.4"]}), "peers must not be in {1.2.3.4/32}"),
    (b("users", comparisonOperator="in-set", value={"strings": ["root", "admin"]}), "users must be in {admin, root}"),
    (b("load", comparisonOperator="not-in-set", value={"numbers": [2.5, 1]}), "load must not be in {1, 2.5}"),
    (b("cpu", comparisonOperator="less-than-equals", value={"number": 75}), "cpu must be <= 75"),
    (b("cpu", comparisonOperator="greater-than", value={"number": 0.5}, durationSeconds=3600), "cpu over 1 h must be > 0.5"),
    (b("aws:num-established-tcp-connections", comparisonOperator="greater-than-equals", value={"count": 1}, consecutiveDatapointsToAlarm=2, consecutiveDatapointsToClear=3), "number of established TCP connections must be >= 1 (2 datapoints to alarm; 3 datapoints to clear)"),
    (b("aws:all-packets-in", comparisonOperator="less-than", statisticalThreshold={"statistic": "p99.9"}, durationSeconds=900), "packets in over 15 min must be < the fleet p99.9"),
    (b("aws:num-listening-udp-ports", mlDetectionConfig={"confidenceLevel": "LOW"}), "number of listening UDP ports must look normal to the local ML model (LOW confidence)"),
    ({"name": "r", "metric": "load", "suppressAlerts": True}, "load: retained, not judged (alerts suppressed)"),
    (b("aws:source-ip-address", comparisonOperator="in-cidr-set", value={"cidrs": ["10.0.0.0/8"]}), "source IP address must be in {10.0.0.0/8} (a cloud-side metric: stored, not evaluated here)"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "words"), ROWS, ids=lambda x: str(x)[:50])
def test_describe(raw: dict[str, Any], words: str) -> None:
    assert validate_behaviors([raw], CUSTOM) == []
    assert describe(parse_behavior(raw)) == words


def test_metric_words() -> None:
    assert metric_words("aws:all-bytes-out") == "bytes out"
    assert metric_words("my_metric") == "my_metric"
