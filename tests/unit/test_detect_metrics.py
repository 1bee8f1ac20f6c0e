"""A report's datapoints (detect/metrics.py) and their MetricValue JSON.

Reports are decoded from documents the way the service decodes them, so the tests pin the
datapoints from the wire format on, and they must agree with the stored values of
service/metrics_map.py.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from defender_agent.detect.behaviors import CLOUD_METRIC_TYPES, METRIC_TYPES
from defender_agent.detect.metrics import (
    Addresses,
    Numbers,
    Ports,
    Strings,
    datapoint,
    datapoints,
    metric_value_json,
)
from defender_agent.model import CustomMetric, CustomMetricType, Report
from defender_agent.report.decode import decode_report
from defender_agent.service.metrics_map import metric_values
from tests.unit.test_metrics_map import FULL, HEADER

ip = ipaddress.ip_address


def report_of(doc: dict[str, Any]) -> Report:
    return decode_report(doc)


def test_full_report_gives_every_device_side_metric() -> None:
    report = report_of(FULL)
    found = datapoints(report, list(METRIC_TYPES))
    assert set(found) == set(METRIC_TYPES)
    assert found["aws:all-bytes-out"] == 20 and found["aws:all-packets-in"] == 3
    assert found["aws:num-listening-tcp-ports"] == 7  # total, not the list's 3
    assert found["aws:listening-tcp-ports"] == Ports({22, 443})
    assert isinstance(found["aws:destination-ip-addresses"], Addresses)


def test_datapoints_agree_with_the_stored_metric_values() -> None:
    report = report_of(FULL)
    stored = {v.metric: v.to_json() for v in metric_values(report)}
    for metric, value in datapoints(report, stored).items():
        ((member, want),) = stored[metric].items()
        if member in ("numbers", "strings"):  # stored as sent; judged as sets
            want = sorted(set(want))  # type: ignore[call-overload]
        assert metric_value_json(value) == {member: want}, metric


ABSENT = [
    ({}, "aws:all-bytes-out"),
    ({"network_stats": {"bytes_in": 1}}, "aws:all-bytes-out"),
    ({"listening_tcp_ports": {}}, "aws:num-listening-tcp-ports"),
    ({"listening_tcp_ports": {"total": 3}}, "aws:listening-tcp-ports"),
    ({"tcp_connections": {}}, "aws:destination-ip-addresses"),
    ({"tcp_connections": {"established_connections": {"total": 2}}}, "aws:destination-ip-addresses"),
    ({"listening_udp_ports": {"ports": []}}, "aws:listening-tcp-ports"),
]  # fmt: skip


@pytest.mark.parametrize(("metrics", "metric"), ABSENT)
def test_absent_is_no_datapoint(metrics: dict[str, Any], metric: str) -> None:
    assert datapoint(report_of({"header": HEADER, "metrics": metrics}), metric) is None


def test_cloud_side_and_unknown_metrics_have_no_datapoint() -> None:
    report = report_of(FULL)
    assert all(datapoint(report, m) is None for m in CLOUD_METRIC_TYPES)
    assert datapoint(report, "no-such-custom-metric") is None


def test_empty_lists_are_empty_sets_and_counts_fall_back_to_list_length() -> None:
    doc = {
        "header": HEADER,
        "metrics": {
            "listening_tcp_ports": {"ports": []},
            "listening_udp_ports": {"ports": [{"port": 53}, {"port": 53, "interface": "lo"}]},
            "tcp_connections": {"established_connections": {"connections": []}},
        },
    }
    report = report_of(doc)
    assert datapoint(report, "aws:listening-tcp-ports") == Ports()
    assert datapoint(report, "aws:num-listening-tcp-ports") == 0
    assert datapoint(report, "aws:num-listening-udp-ports") == 2
    assert datapoint(report, "aws:listening-udp-ports") == Ports({53})
    assert datapoint(report, "aws:destination-ip-addresses") == Addresses()
    assert datapoint(report, "aws:num-established-tcp-connections") == 0


def test_destination_addresses_ipv6_and_ipv4_mapped() -> None:
    conns = [
        {"remote_addr": "[2001:db8::1]:443"},
        {"remote_addr": "[::ffff:192.0.2.7]:443"},
        {"remote_addr": "192.0.2.7:80"},
    ]
    doc = {
        "header": HEADER,
        "metrics": {"tcp_connections": {"established_connections": {"connections": conns}}},
    }
    value = datapoint(report_of(doc), "aws:destination-ip-addresses")
    assert value == Addresses({ip("2001:db8::1"), ip("192.0.2.7")})
    assert metric_value_json(value) == {"cidrs": ["192.0.2.7/32", "2001:db8::1/128"]}


T = CustomMetricType
CUSTOM = [
    (CustomMetric("n", T.NUMBER, 82), 82.0),
    (CustomMetric("n", T.NUMBER, -1.5), -1.5),
    (CustomMetric("n", T.NUMBER, 1234567890123456), None),  # 16 digits: not kept by AWS
    (CustomMetric("n", T.NUMBER_LIST, (1, 2.5, 1)), Numbers({1.0, 2.5})),
    (CustomMetric("n", T.NUMBER_LIST, ()), Numbers()),
    (CustomMetric("n", T.STRING_LIST, ("eth0", "wlan0")), Strings({"eth0", "wlan0"})),
    (CustomMetric("n", T.STRING_LIST, ("One Fish",)), None),  # a space: not kept by AWS
    (CustomMetric("n", T.IP_ADDRESS_LIST, ("10.0.0.1", "::ffff:10.0.0.1", "fe80::1")), Addresses({ip("10.0.0.1"), ip("fe80::1")})),
    (CustomMetric("n", T.IP_ADDRESS_LIST, ()), Addresses()),
]  # fmt: skip


@pytest.mark.parametrize(("metric", "expected"), CUSTOM)
def test_custom_metrics(metric: CustomMetric, expected: object) -> None:
    got = datapoint(Report(report_id=1, custom_metrics=(metric,)), "n")
    assert got == expected
    if expected is not None:
        assert type(got) is type(expected)


JSON = [
    (0, {"count": 0}),
    (5.0, {"number": 5.0}),
    (Ports({443, 22}), {"ports": [22, 443]}),
    (Ports(), {"ports": []}),
    (Numbers(), {"numbers": []}),
    (Strings(), {"strings": []}),
    (Strings({"b", "a"}), {"strings": ["a", "b"]}),
    (Numbers({2.0, -1.0}), {"numbers": [-1.0, 2.0]}),
    (frozenset({ip("::1"), ip("10.0.0.1")}), {"cidrs": ["10.0.0.1/32", "::1/128"]}),
    (frozenset({3, 1}), {"ports": [1, 3]}),
    (frozenset({1.5}), {"numbers": [1.5]}),
    (frozenset({"x"}), {"strings": ["x"]}),
]


@pytest.mark.parametrize(("value", "expected"), JSON)
def test_metric_value_json(value: object, expected: dict[str, Any]) -> None:
    assert metric_value_json(value) == expected


@pytest.mark.parametrize("value", [True, None, "x", [1], frozenset({1, "a"})])
def test_metric_value_json_refuses_non_datapoints(value: object) -> None:
    with pytest.raises(TypeError):
        metric_value_json(value)
