"""Report documents, names, encodings and the size limit."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defender_agent.errors import ReportTooLargeError
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
from defender_agent.report.document import to_document
from defender_agent.report.fit import fit_report
from defender_agent.report.names import LONG_TO_SHORT, SHORT_TO_LONG, NameStyle
from defender_agent.report.serialize import ReportFormat, encode_report, pretty_json
from defender_agent.report.validate import validate_document, validate_payload
from tests.conftest import all_keys

FULL = Report(
    report_id=1700000000000,
    listening_tcp_ports=PortList((ListeningPort(22, "eth0"), ListeningPort(80)), 2),
    listening_udp_ports=PortList((ListeningPort(68, "eth0"),), 1),
    tcp_connections=ConnectionList(
        (Connection("203.0.113.7", 8883, 50312, "eth0"), Connection("2001:db8::5", 443, 50400)), 5
    ),
    network_stats=NetworkStats(bytes_in=5120, bytes_out=2048, packets_in=40, packets_out=31),
    custom_metrics=(
        CustomMetric("cpu_usage", CustomMetricType.NUMBER, 12.5),
        CustomMetric("ifaces", CustomMetricType.STRING_LIST, ("eth0", "lo")),
        CustomMetric("peers", CustomMetricType.IP_ADDRESS_LIST, ("192.0.2.1", "2001:db8::1")),
        CustomMetric("temps", CustomMetricType.NUMBER_LIST, (1, 2.5)),
    ),
)


def rename(node: object) -> object:
    """Turn a short-name document into long names (custom metric subtrees stay as they are)."""
    if isinstance(node, dict):
        return {SHORT_TO_LONG.get(k, k): (v if k == "cmet" else rename(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [rename(v) for v in node]
    return node


def test_long_document_matches_the_protocol_example() -> None:
    doc = to_document(FULL, NameStyle.LONG)
    assert doc["header"] == {"report_id": 1700000000000, "version": "1.0"}
    assert doc["metrics"]["tcp_connections"] == {
        "established_connections": {
            "connections": [
                {"remote_addr": "203.0.113.7:8883", "local_port": 50312, "local_interface": "eth0"},
                {"remote_addr": "[2001:db8::5]:443", "local_port": 50400},
            ],
            "total": 5,
        }
    }
    assert doc["metrics"]["listening_tcp_ports"] == {
        "ports": [{"port": 22, "interface": "eth0"}, {"port": 80}],
        "total": 2,
    }
    assert doc["custom_metrics"] == {
        "cpu_usage": [{"number": 12.5}],
        "ifaces": [{"string_list": ["eth0", "lo"]}],
        "peers": [{"ip_list": ["192.0.2.1", "2001:db8::1"]}],
        "temps": [{"number_list": [1, 2.5]}],
    }
    assert list(doc) == ["header", "metrics", "custom_metrics"]
    assert list(doc["metrics"]) == [
        "listening_tcp_ports",
        "listening_udp_ports",
        "network_stats",
        "tcp_connections",
    ]


def test_short_document_is_the_long_one_renamed() -> None:
    short = to_document(FULL, NameStyle.SHORT)
    assert rename(short) == to_document(FULL, NameStyle.LONG)
    assert set(short) == {"hed", "met", "cmet"}
    assert short["cmet"]["cpu_usage"] == [{"number": 12.5}]  # custom names/keys never shortened
    assert short["met"]["tc"]["ec"]["cs"][0] == {
        "rad": "203.0.113.7:8883",
        "lp": 50312,
        "li": "eth0",
    }


def test_every_table_name_is_emitted() -> None:
    assert set(LONG_TO_SHORT) <= all_keys(to_document(FULL, NameStyle.LONG))
    assert set(LONG_TO_SHORT.values()) <= all_keys(to_document(FULL, NameStyle.SHORT))


@pytest.mark.parametrize("short", [False, True])
@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_encodings_round_trip_and_validate(fmt: ReportFormat, short: bool) -> None:
    payload = encode_report(FULL, fmt, short_names=short)
    decoded = json.loads(payload) if fmt == "json" else cbor2.loads(payload)
    assert decoded == to_document(FULL, NameStyle.SHORT if short else NameStyle.LONG)
    result = validate_payload(payload)
    assert result.ok and result.problems == ()
    assert encode_report(FULL, fmt, short_names=short) == payload  # deterministic  # type: ignore[arg-type]


def test_compact_json_and_pretty_json() -> None:
    payload = encode_report(FULL)
    assert b" " not in payload
    assert json.loads(pretty_json(FULL)) == json.loads(payload)


def test_empty_report_is_valid() -> None:
    doc = to_document(Report(report_id=1))
    assert doc == {"header": {"report_id": 1, "version": "1.0"}, "metrics": {}}
    assert validate_document(doc) == []


def test_cbor_is_smaller_than_json() -> None:
    assert len(encode_report(FULL, "cbor", short_names=True)) < len(encode_report(FULL, "json"))


# --------------------------------------------------------------------------- size limit
def many(n: int) -> Report:
    conns = tuple(Connection(f"2001:db8::{i:x}", 443, i % 65535 + 1, "wlan0") for i in range(n))
    ports = tuple(ListeningPort(i + 1, "eth0") for i in range(min(n, 65535)))
    return Report(
        report_id=2**53,
        tcp_connections=ConnectionList(conns, n),
        listening_tcp_ports=PortList(ports, len(ports)),
    )


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=0, max_value=20000),
    st.sampled_from(["json", "cbor"]),
    st.booleans(),
    st.integers(min_value=600, max_value=131072),
)
def test_fit_always_under_the_limit(n: int, fmt: ReportFormat, short: bool, limit: int) -> None:
    report = many(n)
    fitted = fit_report(report, fmt, short_names=short, max_bytes=limit)
    assert len(encode_report(fitted, fmt, short_names=short)) <= limit
    assert fitted.tcp_connections is not None and fitted.tcp_connections.total == n
    # kept entries are a prefix of the original lists (deterministic truncation)
    kept = fitted.tcp_connections.connections
    assert kept is not None and report.tcp_connections is not None
    assert report.tcp_connections.connections is not None
    assert kept == report.tcp_connections.connections[: len(kept)]


def test_fit_leaves_small_reports_alone() -> None:
    assert fit_report(FULL) is FULL


def test_fit_uses_the_space() -> None:
    fitted = fit_report(many(5000), max_bytes=131072)
    size = len(encode_report(fitted))
    assert 120_000 < size <= 131072


def test_fit_gives_up_with_a_clear_error() -> None:
    big = Report(
        report_id=1,
        custom_metrics=(
            CustomMetric(
                "blob", CustomMetricType.STRING_LIST, tuple("x" * 100 for _ in range(2000))
            ),
        ),
    )
    with pytest.raises(ReportTooLargeError, match="does not fit in 4096 bytes"):
        fit_report(big, max_bytes=4096)
