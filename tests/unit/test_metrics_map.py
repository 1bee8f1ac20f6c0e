"""Reports to Device Defender metric values (protocol §5.1, §2.6).

The inputs are written as documents (long and short names) and decoded as the service does:
:func:`decode_report` of what the validator accepted, so these tests pin the stored values
from the wire format to the ``MetricValue``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from defender_agent.report.decode import decode_report
from defender_agent.report.names import LONG_TO_SHORT
from defender_agent.report.validate import Severity, validate_document
from defender_agent.service.metrics_map import MetricValue
from defender_agent.service.metrics_map import metric_values as values_of_report
from tests.conftest import GOLDEN

HEADER = {"report_id": 1_700_000_000_000, "version": "1.0"}

FULL: dict[str, Any] = {
    "header": HEADER,
    "metrics": {
        "network_stats": {"bytes_in": 10, "bytes_out": 20, "packets_in": 3, "packets_out": 4},
        "listening_tcp_ports": {
            "ports": [{"port": 443, "interface": "eth0"}, {"port": 22}, {"port": 443}],
            "total": 7,
        },
        "listening_udp_ports": {"ports": [{"port": 5353}, {"port": 53, "interface": "lo"}]},
        "tcp_connections": {
            "established_connections": {
                "connections": [
                    {"remote_addr": "10.0.0.2:443", "local_port": 50000},
                    {"remote_addr": "9.9.9.9:53"},
                    {"remote_addr": "10.0.0.2:8883", "local_interface": "eth0"},
                    {"remote_addr": "[2001:db8::1]:443"},
                    {"remote_addr": "[::ffff:192.0.2.7]:22"},
                    {"remote_addr": "[2001:DB8:0:0::1]:80"},
                ],
                "total": 40,
            }
        },
    },
    "custom_metrics": {
        "cpu_usage": [{"number": 26}],
        "temps": [{"number_list": [40.5, 39, 40.5]}],
        "ifaces": [{"string_list": ["wlan0", "eth0", "wlan0"]}],
        "peers": [{"ip_list": ["172.16.0.10", "172.16.0.9", "fe80::1", "172.16.0.9"]}],
    },
}

EXPECTED = [
    MetricValue("aws:all-bytes-in", count=10),
    MetricValue("aws:all-bytes-out", count=20),
    MetricValue("aws:all-packets-in", count=3),
    MetricValue("aws:all-packets-out", count=4),
    MetricValue("aws:num-listening-tcp-ports", count=7),
    MetricValue("aws:listening-tcp-ports", ports=(22, 443)),
    MetricValue("aws:num-listening-udp-ports", count=2),
    MetricValue("aws:listening-udp-ports", ports=(53, 5353)),
    MetricValue("aws:num-established-tcp-connections", count=40),
    MetricValue(
        "aws:destination-ip-addresses",
        cidrs=("9.9.9.9/32", "10.0.0.2/32", "192.0.2.7/32", "2001:db8::1/128"),
    ),
    MetricValue("cpu_usage", number=26.0),
    MetricValue("temps", numbers=(40.5, 39.0, 40.5)),
    MetricValue("ifaces", strings=("wlan0", "eth0", "wlan0")),
    MetricValue("peers", cidrs=("172.16.0.9/32", "172.16.0.10/32", "fe80::1/128")),
]


def shorten(node: Any, custom: bool = False) -> Any:
    """The document with short standard keys; custom metric names and value keys as they are."""
    if isinstance(node, list):
        return [shorten(item, custom) for item in node]
    if not isinstance(node, dict):
        return node
    if custom:
        return node
    return {
        LONG_TO_SHORT.get(key, key): shorten(value, custom=key == "custom_metrics")
        for key, value in node.items()
    }


def doc(metrics: Any = None, custom: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"header": HEADER}
    if metrics is not None:
        out["metrics"] = metrics
    if custom is not None:
        out["custom_metrics"] = custom
    return out


STYLES = pytest.mark.parametrize("style", ["long", "short"])


def metric_values(document: dict[str, Any], *, drop_unkept: bool = True) -> list[MetricValue]:
    """The values of a document, decoded as the service decodes what the validator accepted."""
    return values_of_report(decode_report(document), drop_unkept=drop_unkept)


def styled(document: dict[str, Any], style: str) -> dict[str, Any]:
    return shorten(document) if style == "short" else document


def by_metric(values: list[MetricValue]) -> dict[str, MetricValue]:
    return {v.metric: v for v in values}


# --------------------------------------------------------------------------- every metric
@STYLES
def test_every_metric_from_a_full_report(style: str) -> None:
    document = styled(FULL, style)
    assert validate_document(document) == []  # the input is one the validator accepts
    assert metric_values(document) == EXPECTED


def test_short_fixture_really_is_short() -> None:
    short = json.dumps(shorten(FULL))
    assert '"met"' in short and '"tp"' in short and '"rad"' in short
    assert '"metrics"' not in short and '"remote_addr"' not in short
    assert '"cpu_usage"' in short and '"number_list"' in short  # never renamed


def test_golden_reports_give_the_same_values_in_both_spellings() -> None:
    long = json.loads((GOLDEN / "gateway_dualstack.long.json").read_text())
    short = json.loads((GOLDEN / "gateway_dualstack.short.json").read_text())
    values = metric_values(long)
    assert values == metric_values(short)
    got = by_metric(values)
    assert got["aws:listening-tcp-ports"].ports == (22, 80, 631, 1883, 8443)
    assert got["aws:num-listening-tcp-ports"].count == 5
    assert got["aws:destination-ip-addresses"].cidrs is not None


def test_mixed_spellings_are_read_too() -> None:
    document = {"hed": HEADER, "metrics": {"ns": {"bytes_in": 1, "bo": 2}}}
    assert metric_values(document) == [
        MetricValue("aws:all-bytes-in", count=1),
        MetricValue("aws:all-bytes-out", count=2),
    ]


# --------------------------------------------------------------------------- counts
@STYLES
def test_counts_prefer_total_else_the_list_length(style: str) -> None:
    document = styled(
        doc(
            {
                "listening_tcp_ports": {"ports": [{"port": 1}, {"port": 2}], "total": 9},
                "listening_udp_ports": {"ports": [{"port": 1}, {"port": 1}, {}]},
                "tcp_connections": {
                    "established_connections": {"connections": [{"remote_addr": "1.2.3.4:5"}]}
                },
            }
        ),
        style,
    )
    got = by_metric(metric_values(document))
    assert got["aws:num-listening-tcp-ports"].count == 9
    assert got["aws:num-listening-udp-ports"].count == 3  # entries as sent
    assert got["aws:listening-udp-ports"].ports == (1,)  # the port-less entry has no port
    assert got["aws:num-established-tcp-connections"].count == 1


@STYLES
def test_total_alone_gives_a_count_but_no_set(style: str) -> None:
    document = styled(
        doc(
            {
                "listening_tcp_ports": {"total": 3},
                "tcp_connections": {"established_connections": {"total": 12}},
            }
        ),
        style,
    )
    assert metric_values(document) == [
        MetricValue("aws:num-listening-tcp-ports", count=3),
        MetricValue("aws:num-established-tcp-connections", count=12),
    ]


@STYLES
def test_empty_lists_are_zero_and_empty_sets(style: str) -> None:
    document = styled(
        doc(
            {
                "listening_udp_ports": {"ports": [], "total": 0},
                "tcp_connections": {"established_connections": {"connections": []}},
            }
        ),
        style,
    )
    assert metric_values(document) == [
        MetricValue("aws:num-listening-udp-ports", count=0),
        MetricValue("aws:listening-udp-ports", ports=()),
        MetricValue("aws:num-established-tcp-connections", count=0),
        MetricValue("aws:destination-ip-addresses", cidrs=()),
    ]


@STYLES
def test_network_stats_fields_are_independent_and_zero_is_kept(style: str) -> None:
    document = styled(doc({"network_stats": {"bytes_out": 0, "packets_in": 5}}), style)
    assert metric_values(document) == [
        MetricValue("aws:all-bytes-out", count=0),
        MetricValue("aws:all-packets-in", count=5),
    ]


# --------------------------------------------------------------------------- absent groups
@pytest.mark.parametrize(
    "metrics",
    [
        {},
        {"listening_tcp_ports": {}},
        {"tcp_connections": {}},
        {"tcp_connections": {"established_connections": {}}},
        {"network_stats": {}},
    ],
)
@STYLES
def test_absent_groups_give_no_value(metrics: dict[str, Any], style: str) -> None:
    assert metric_values(styled(doc(metrics), style)) == []


def test_a_custom_only_report_gives_only_custom_values() -> None:
    for document in (
        doc(custom={"up": [{"number": 1}]}),
        {"hed": HEADER, "met": None, "cmet": {"up": [{"number": 1}]}},  # rustot's null metrics
    ):
        assert metric_values(document) == [MetricValue("up", number=1.0)]


def test_no_metrics_at_all() -> None:
    assert metric_values({"header": HEADER}) == []


# --------------------------------------------------------------------------- de-dup and sorting
def test_ports_are_unique_and_sorted_by_number() -> None:
    ports = [{"port": p} for p in (8443, 80, 22, 80, 1883, 22)]
    got = by_metric(metric_values(doc({"listening_tcp_ports": {"ports": ports}})))
    assert got["aws:listening-tcp-ports"].ports == (22, 80, 1883, 8443)
    assert got["aws:num-listening-tcp-ports"].count == 6


def test_destination_addresses_unique_ipv4_first_numerically() -> None:
    addrs = [
        "[2001:db8::2]:1",
        "10.0.0.1:1",
        "9.0.0.1:1",
        "[2001:0db8::2]:2",
        "10.0.0.1:2",
        "[::ffff:9.0.0.1]:3",  # IPv4-mapped: the same destination as 9.0.0.1
        "[::1]:4",
    ]
    connections = [{"remote_addr": a} for a in addrs]
    values = metric_values(
        doc({"tcp_connections": {"established_connections": {"connections": connections}}})
    )
    assert by_metric(values)["aws:destination-ip-addresses"].cidrs == (
        "9.0.0.1/32",
        "10.0.0.1/32",
        "::1/128",
        "2001:db8::2/128",
    )


# --------------------------------------------------------------------------- custom metrics
@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ([{"number": 82}], MetricValue("x", number=82.0)),
        ([{"number": -1.5}], MetricValue("x", number=-1.5)),
        ([{"number_list": []}], MetricValue("x", numbers=())),
        ([{"number_list": [3, 1, 3]}], MetricValue("x", numbers=(3.0, 1.0, 3.0))),
        ([{"string_list": ["b", "a"]}], MetricValue("x", strings=("b", "a"))),
        ([{"string_list": []}], MetricValue("x", strings=())),
        ([{"ip_list": ["::2", "10.0.0.1"]}], MetricValue("x", cidrs=("10.0.0.1/32", "::2/128"))),
        ([{"ip_list": []}], MetricValue("x", cidrs=())),
    ],
)
def test_custom_metric_types(entry: list[Any], expected: MetricValue) -> None:
    assert metric_values(doc(custom={"x": entry})) == [expected]
    assert metric_values(shorten(doc(custom={"x": entry}))) == [expected]


@pytest.mark.parametrize(
    "entry",
    [
        {"number": 1},  # not wrapped in an array (the documented rejection)
        [],
        [{"number": 1}, {"number": 2}],
        [{}],
        [{"other": 1}],
        [{"number": True}],
        [{"number_list": [1, "2"]}],
        [{"string_list": ["a", 1]}],
        ["number"],
    ],
)
def test_malformed_custom_values_never_reach_the_mapping(entry: Any) -> None:
    """The validator refuses them, so the responder rejects the report: nothing to store."""
    problems = validate_document(doc(custom={"x": entry, "ok": [{"number": 1}]}))
    assert [p for p in problems if p.severity is Severity.ERROR], problems


@pytest.mark.parametrize(
    "entry",
    [
        [{"number": 0.30000000000000004}],  # 17 significant digits
        [{"number_list": [1, 1234567890123456]}],
        [{"string_list": ["One Fish"]}],  # a space
        [{"string_list": [""]}],
    ],
)
def test_values_device_defender_drops_are_left_out_unless_asked(entry: list[Any]) -> None:
    document = doc(custom={"x": entry})
    assert metric_values(document) == []
    (kept,) = metric_values(document, drop_unkept=False)
    assert kept.metric == "x"


def test_custom_metrics_keep_report_order() -> None:
    custom = {"zeta": [{"number": 1}], "alpha": [{"number": 2}]}
    assert [v.metric for v in metric_values(doc(custom=custom))] == ["zeta", "alpha"]


# --------------------------------------------------------------------------- MetricValue
@pytest.mark.parametrize("value", EXPECTED, ids=lambda v: v.metric)
def test_to_json_has_only_the_member_set_and_round_trips(value: MetricValue) -> None:
    shape = value.to_json()
    assert list(shape) == [value.kind]
    assert json.loads(json.dumps(shape)) == shape
    assert MetricValue.from_json(value.metric, shape) == value


@pytest.mark.parametrize(
    "kwargs", [{}, {"count": 1, "number": 1.0}, {"ports": (1,), "cidrs": ("1.1.1.1/32",)}]
)
def test_exactly_one_member(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        MetricValue("m", **kwargs)


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"count": 1, "number": 1},
        {"other": 1},
        {"count": -1},
        {"count": 1.5},
        {"count": True},
        {"number": "1"},
        {"number": math.inf},
        {"ports": 22},
        {"ports": [70000]},
        {"numbers": [1, None]},
        {"strings": [1]},
        {"cidrs": "10.0.0.1/32"},
    ],
)
def test_from_json_rejects_bad_shapes(shape: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MetricValue.from_json("m", shape)
