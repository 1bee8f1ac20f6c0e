"""decode_report: from a validated document (long, short or mixed names) to the typed Report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defender_agent.errors import ReportDecodeError
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
from defender_agent.report.decode import decode_report
from defender_agent.report.document import to_document
from defender_agent.report.names import LONG_TO_SHORT, NameStyle
from defender_agent.report.serialize import encode_document
from defender_agent.report.validate import PayloadFormat, ValidationPolicy, validate_payload
from tests.conftest import GOLDEN, PROTOCOL_EXAMPLE_METRICS

JSON = PayloadFormat.JSON
HEADER = {"report_id": 1700000000000, "version": "1.0"}
GOLDEN_JSON = sorted(GOLDEN.glob("*.json"))
STYLES = pytest.mark.parametrize("style", list(NameStyle), ids=lambda s: s.value)


def short(node: Any) -> Any:
    """The document with every standard key in its short spelling (custom metrics untouched)."""
    if isinstance(node, dict):
        return {
            LONG_TO_SHORT.get(k, k): (v if k == "custom_metrics" else short(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [short(v) for v in node]
    return node


def styled(document: dict[str, Any], style: NameStyle) -> dict[str, Any]:
    return short(document) if style is NameStyle.SHORT else document


# ------------------------------------------------------------------------------ golden files
def test_there_are_golden_files_in_both_spellings() -> None:
    names = {path.name.split(".")[1] for path in GOLDEN_JSON}
    assert names == {"long", "short"} and len(GOLDEN_JSON) >= 10


@pytest.mark.parametrize("path", GOLDEN_JSON, ids=lambda p: p.name)
def test_golden_reports_round_trip(path: Path) -> None:
    document = json.loads(path.read_text())
    style = NameStyle.SHORT if ".short." in path.name else NameStyle.LONG
    report = decode_report(document)
    assert to_document(report, style) == document
    assert decode_report(to_document(report, style)) == report
    other = NameStyle.LONG if style is NameStyle.SHORT else NameStyle.SHORT
    assert decode_report(to_document(report, other)) == report


@pytest.mark.parametrize("path", GOLDEN_JSON, ids=lambda p: p.name)
def test_golden_cbor_decodes_to_the_same_report(path: Path) -> None:
    hex_path = path.with_name(path.name.replace(".json", ".cbor.hex"))
    from_cbor = decode_report(cbor2.loads(bytes.fromhex(hex_path.read_text())))
    assert from_cbor == decode_report(json.loads(path.read_text()))


@pytest.mark.parametrize("path", GOLDEN_JSON, ids=lambda p: p.name)
def test_the_validator_hands_out_the_decoded_report(path: Path) -> None:
    result = validate_payload(path.read_bytes(), PayloadFormat.JSON)
    assert result.ok
    assert result.report == decode_report(json.loads(path.read_text()))


# ------------------------------------------------------------------------------ generated
_TEXT = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._:", min_size=1, max_size=12)
_OPT_COUNT = st.none() | st.integers(0, 2**63 - 1)
_IPS = st.ip_addresses().map(str)
_NUMBERS = st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)

_PORT_LISTS = st.builds(
    PortList,
    st.none()
    | st.lists(
        st.builds(ListeningPort, st.none() | st.integers(1, 65535), st.none() | _TEXT), max_size=5
    ).map(tuple),
    _OPT_COUNT,
)
_CONNECTION_LISTS = st.builds(
    ConnectionList,
    st.none()
    | st.lists(
        st.builds(
            Connection,
            _IPS,
            st.integers(0, 65535),
            st.none() | st.integers(0, 65535),
            st.none() | _TEXT,
        ),
        max_size=5,
    ).map(tuple),
    _OPT_COUNT,
)
_STATS = st.builds(NetworkStats, _OPT_COUNT, _OPT_COUNT, _OPT_COUNT, _OPT_COUNT)
_NAMES = st.from_regex(r"[a-zA-Z0-9:_-]{1,24}", fullmatch=True).filter(
    lambda name: not name.startswith("aws:")
)
_VALUES = {
    CustomMetricType.NUMBER: _NUMBERS,
    CustomMetricType.NUMBER_LIST: st.lists(_NUMBERS, max_size=4).map(tuple),
    CustomMetricType.STRING_LIST: st.lists(
        st.text("AZaz09:_-/.", min_size=1, max_size=8), max_size=4
    ).map(tuple),
    CustomMetricType.IP_ADDRESS_LIST: st.lists(_IPS, max_size=4).map(tuple),
}


@st.composite
def _custom_metrics(draw: st.DrawFn) -> tuple[CustomMetric, ...]:
    names = draw(st.lists(_NAMES, unique=True))
    metrics = []
    for name in names:
        metric_type = draw(st.sampled_from(CustomMetricType))
        metrics.append(CustomMetric(name, metric_type, draw(_VALUES[metric_type])))
    return tuple(metrics)


REPORTS = st.builds(
    Report,
    report_id=st.integers(1, 2**63 - 1),
    version=st.sampled_from(["1.0", "1.1", "2.0"]),
    listening_tcp_ports=st.none() | _PORT_LISTS,
    listening_udp_ports=st.none() | _PORT_LISTS,
    tcp_connections=st.none() | _CONNECTION_LISTS,
    network_stats=st.none() | _STATS,
    custom_metrics=_custom_metrics(),
)


@settings(max_examples=200, deadline=None)
@given(REPORTS, st.sampled_from(NameStyle))
def test_generated_reports_round_trip(report: Report, style: NameStyle) -> None:
    assert decode_report(to_document(report, style)) == report


@settings(max_examples=100, deadline=None)
@given(REPORTS, st.sampled_from(NameStyle), st.sampled_from(PayloadFormat))
def test_generated_reports_round_trip_through_the_validator(
    report: Report, style: NameStyle, fmt: PayloadFormat
) -> None:
    payload = encode_document(to_document(report, style), "json" if fmt is JSON else "cbor")
    result = validate_payload(payload, fmt, ValidationPolicy(max_payload_bytes=10**7))
    assert result.errors == ()
    assert result.report == report


# ------------------------------------------------------------------------------ shapes
@STYLES
def test_the_protocol_example(style: NameStyle) -> None:
    document = styled({"header": HEADER, "metrics": PROTOCOL_EXAMPLE_METRICS}, style)
    assert decode_report(document) == Report(
        report_id=1700000000000,
        listening_tcp_ports=PortList((ListeningPort(22, "eth0"),), 1),
        listening_udp_ports=PortList((ListeningPort(68, "eth0"),), 1),
        tcp_connections=ConnectionList(
            (Connection("203.0.113.7", 8883, 50312, "eth0"), Connection("2001:db8::5", 443, 50400)),
            2,
        ),
        network_stats=NetworkStats(bytes_in=5120, bytes_out=2048, packets_in=40, packets_out=31),
    )


@STYLES
def test_left_out_is_none_and_empty_is_empty(style: NameStyle) -> None:
    document = styled(
        {
            "header": HEADER,
            "metrics": {
                "listening_tcp_ports": {"total": 3},
                "listening_udp_ports": {"ports": [{"port": 1}, {}]},
                "tcp_connections": {"established_connections": {"connections": []}},
                "network_stats": {"bytes_out": 0},
            },
        },
        style,
    )
    report = decode_report(document)
    assert report.listening_tcp_ports == PortList(None, 3)
    assert report.listening_udp_ports == PortList((ListeningPort(1), ListeningPort(None)), None)
    assert report.tcp_connections == ConnectionList((), None)
    assert report.network_stats == NetworkStats(None, 0, None, None)
    assert to_document(report, style) == document


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({}, Report(1700000000000)),
        ({"tcp_connections": {}}, Report(1700000000000)),
        (
            {"tcp_connections": {"established_connections": {}}},
            Report(1700000000000, tcp_connections=ConnectionList(None, None)),
        ),
        ({"network_stats": {}}, Report(1700000000000, network_stats=NetworkStats(*[None] * 4))),
    ],
)
def test_empty_groups(metrics: dict[str, Any], expected: Report) -> None:
    assert decode_report({"header": HEADER, "metrics": metrics}) == expected


def test_custom_only_reports_with_and_without_null_metrics() -> None:
    custom = {"up": [{"number": 1}]}
    expected = Report(1, custom_metrics=(CustomMetric("up", CustomMetricType.NUMBER, 1),))
    header = {"rid": 1, "v": "1.0"}
    assert decode_report({"hed": header, "cmet": custom}) == expected
    assert decode_report({"hed": header, "met": None, "cmet": custom}) == expected  # rustot


def test_custom_metric_types_come_from_the_value_key() -> None:
    document = {
        "header": HEADER,
        "custom_metrics": {
            "n": [{"number": -2.5}],
            "nl": [{"number_list": [1, 2.5, 1]}],
            "sl": [{"string_list": ["eth0", "One Fish"]}],  # a warning, not an error: kept
            "ips": [{"ip_list": ["192.0.2.1", "2001:DB8::1"]}],  # as sent, not canonicalised
        },
    }
    assert decode_report(document).custom_metrics == (
        CustomMetric("n", CustomMetricType.NUMBER, -2.5),
        CustomMetric("nl", CustomMetricType.NUMBER_LIST, (1, 2.5, 1)),
        CustomMetric("sl", CustomMetricType.STRING_LIST, ("eth0", "One Fish")),
        CustomMetric("ips", CustomMetricType.IP_ADDRESS_LIST, ("192.0.2.1", "2001:DB8::1")),
    )


def test_mixed_names_and_ignored_unknown_keys() -> None:
    document = {
        "hed": {"report_id": 5, "v": "1.0"},  # S19's header
        "metrics": {"tp": {"ports": [{"pt": 22, "interface": "lo"}], "t": 1}, "extra": 1},
        "later": True,
    }
    policy = ValidationPolicy(allow_mixed_names=True, reject_unknown_keys=False)
    result = validate_payload(json.dumps(document).encode(), policy=policy)
    assert result.ok and result.warnings
    expected = Report(5, listening_tcp_ports=PortList((ListeningPort(22, "lo"),), 1))
    assert result.report == expected == decode_report(document)


def test_an_invalid_payload_has_no_report() -> None:
    result = validate_payload(b'{"header": {"report_id": 0, "version": "1.0"}, "metrics": {}}')
    assert not result.ok and result.report is None
    assert validate_payload(b"nonsense").report is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "$: missing 'header'"),
        ({"hed": []}, "hed: expected an object, got list"),
        ({"hed": {"rid": 1}}, "hed: expected both 'report_id' and 'version'"),
        ({"hed": {"rid": True, "v": "1.0"}}, "hed.rid: expected an integer, got bool"),
        ({"hed": {"rid": 1, "v": 1.0}}, "hed.v: expected a string, got float"),
        (
            {"hed": {"rid": 1, "report_id": 2, "v": "1.0"}},
            "hed: both 'report_id' and 'rid' are present",
        ),
        ({"hed": {"rid": 1, "v": "1.0"}, "met": [1]}, "met: expected an object, got list"),
        (
            {"hed": {"rid": 1, "v": "1.0"}, "met": {"tp": {"pts": {}}}},
            "met.tp.pts: expected an array, got dict",
        ),
        (
            {"hed": {"rid": 1, "v": "1.0"}, "met": {"up": {"pts": [{"pt": 1}, 5]}}},
            "met.up.pts[1]: expected an object, got int",
        ),
        (
            {"hed": {"rid": 1, "v": "1.0"}, "met": {"up": {"t": -1.5}}},
            "met.up.t: expected an integer, got float",
        ),
        (
            {"hed": {"rid": 1, "v": "1.0"}, "met": {"tc": {"ec": {"cs": [{"lp": 1}]}}}},
            "met.tc.ec.cs[0]: missing 'remote_addr'",
        ),
        (
            {"hed": {"rid": 1, "v": "1.0"}, "met": {"tc": {"ec": {"cs": [{"rad": "::1:80"}]}}}},
            (
                "met.tc.ec.cs[0].rad: expected 'a.b.c.d:port' or '[ipv6]:port', got '::1:80' "
                "(an IPv6 address must be in brackets)"
            ),
        ),
        (
            {"header": HEADER, "metrics": {"tcp_connections": {"established_connections": 3}}},
            "metrics.tcp_connections.established_connections: expected an object, got int",
        ),
        (
            {"header": HEADER, "metrics": {"network_stats": {"bytes_in": "5"}}},
            "metrics.network_stats.bytes_in: expected an integer, got str",
        ),
        (
            {"header": HEADER, "custom_metrics": None},
            "custom_metrics: expected an object, got null",
        ),
        (
            {"header": HEADER, "custom_metrics": {"a": {"number": 1}}},
            "custom_metrics.a: expected an array, got dict",
        ),
        (
            {"header": HEADER, "custom_metrics": {"a": [{"number": 1}, {"number": 2}]}},
            "custom_metrics.a: expected an array of exactly one object, got 2 elements",
        ),
        (
            {"header": HEADER, "custom_metrics": {"a": [{"number": 1, "string_list": []}]}},
            (
                "custom_metrics.a[0]: expected exactly one of number, number_list, string_list, "
                "ip_list, got 2"
            ),
        ),
        (
            {"header": HEADER, "custom_metrics": {"a": [{"number_list": [1, "2"]}]}},
            "custom_metrics.a[0].number_list[1]: expected a number, got str",
        ),
        (
            {"header": HEADER, "custom_metrics": {"a": [{"ip_list": [None]}]}},
            "custom_metrics.a[0].ip_list[0]: expected a string, got null",
        ),
    ],
)
def test_wrong_shapes_name_the_path(document: dict[str, Any], message: Optional[str]) -> None:
    with pytest.raises(ReportDecodeError) as caught:
        decode_report(document)
    assert str(caught.value) == message
