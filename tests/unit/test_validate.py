"""Tests for defender_agent.report.validate: every rule of protocol.md §7 (and §2).

Most rule tests run in four variants, long/short names x JSON/CBOR: the document is
written with long names, renamed to short ones where the variant asks, encoded,
and passed through validate_payload; the expected paths and messages are renamed
the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defender_agent.errors import ReportDecodeError
from defender_agent.report.names import LONG_TO_SHORT, NameStyle
from defender_agent.report.validate import (
    DEFAULT_POLICY,
    PayloadFormat,
    Problem,
    Severity,
    ValidationPolicy,
    ValidationResult,
    decode_payload,
    sniff_format,
    validate_document,
    validate_payload,
)
from tests.conftest import PROTOCOL_EXAMPLE_METRICS

LONG, SHORT = NameStyle.LONG, NameStyle.SHORT
JSON, CBOR = PayloadFormat.JSON, PayloadFormat.CBOR
ERROR, WARNING = Severity.ERROR, Severity.WARNING

HEADER = {"report_id": 1700000000, "version": "1.0"}
CONNS = "metrics.tcp_connections.established_connections.connections"
INT_TOP = "2**63-1"
NUMBER_EXPECTED = "expected a finite number (integers within ±2**63)"
ADDR_EXPECTED = "expected 'a.b.c.d:port' or '[ipv6]:port' with a port from 0 to 65535"
VALUE_KEYS = "number, number_list, string_list, ip_list"
DROPPED = "Device Defender drops it (protocol §2.6)"
KEEPS_15 = "Device Defender keeps at most 15 and drops the value (protocol §2.6)"
NAME_EXPECTED = "expected a name matching [a-zA-Z0-9:_-]{1,128}, not starting with 'aws:'"

# protocol.md §2.7
EXAMPLE: dict[str, Any] = {
    "header": {"report_id": 1700000000, "version": "1.0"},
    "metrics": copy.deepcopy(PROTOCOL_EXAMPLE_METRICS),
    "custom_metrics": {
        "cpu_usage": [{"number": 12.5}],
        "ifaces": [{"string_list": ["eth0", "lo"]}],
    },
}


def rep(metrics: Any = None, custom: Any = None, header: Any = None) -> dict[str, Any]:
    """A report with the given blocks (None leaves a block out; no block at all -> {} metrics)."""
    doc: dict[str, Any] = {"header": copy.deepcopy(HEADER) if header is None else header}
    if metrics is not None:
        doc["metrics"] = metrics
    if custom is not None:
        doc["custom_metrics"] = custom
    if metrics is None and custom is None:
        doc["metrics"] = {}
    return doc


def custom(value: Any, name: str = "m") -> dict[str, Any]:
    return rep(custom={name: value})


def shorten(doc: Any) -> Any:
    """Rename the standard keys to short names; the custom block stays as it is."""
    if isinstance(doc, list):
        return [shorten(item) for item in doc]
    if isinstance(doc, dict):
        return {
            LONG_TO_SHORT.get(k, k): (copy.deepcopy(v) if k == "custom_metrics" else shorten(v))
            for k, v in doc.items()
        }
    return doc


def short_path(path: str) -> str:
    if path.startswith("custom_metrics"):
        return "cmet" + path[len("custom_metrics") :]
    parts = []
    for part in path.split("."):
        name, bracket, rest = part.partition("[")
        parts.append(LONG_TO_SHORT.get(name, name) + bracket + rest)
    return ".".join(parts)


def encode(doc: Any, fmt: PayloadFormat) -> bytes:
    return json.dumps(doc).encode() if fmt is JSON else cbor2.dumps(doc)


@dataclass(frozen=True)
class Variant:
    style: NameStyle
    fmt: PayloadFormat

    def n(self, long: str) -> str:
        return long if self.style is LONG else LONG_TO_SHORT[long]

    def doc(self, long_doc: Any) -> Any:
        return long_doc if self.style is LONG else shorten(long_doc)

    def path(self, long_path: str) -> str:
        return long_path if self.style is LONG else short_path(long_path)

    def run(self, long_doc: Any, policy: ValidationPolicy = DEFAULT_POLICY) -> ValidationResult:
        result = validate_payload(encode(self.doc(long_doc), self.fmt), self.fmt, policy)
        assert result.format is self.fmt
        return result

    def problems(
        self, long_doc: Any, policy: ValidationPolicy = DEFAULT_POLICY
    ) -> list[tuple[str, str, Severity]]:
        return [(p.path, p.message, p.severity) for p in self.run(long_doc, policy).problems]

    def expect(self, long_doc: Any, *expected: tuple[Any, ...], policy: Any = DEFAULT_POLICY):
        """Expected items: (long path, message) or (long path, message, severity)."""
        want = [(self.path(e[0]), e[1], e[2] if len(e) > 2 else ERROR) for e in expected]
        assert self.problems(long_doc, policy) == want


VARIANTS = [Variant(s, f) for s in (LONG, SHORT) for f in (JSON, CBOR)]


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v.style.value}-{v.fmt.value}")
def v(request: pytest.FixtureRequest) -> Variant:
    variant: Variant = request.param
    return variant


def describe(value: Any) -> str:
    """What the validator says it got, for the simple values used in these tests."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float, str)):
        return repr(value)
    if isinstance(value, list):
        return f"an array of {len(value)} element{'' if len(value) == 1 else 's'}"
    return "an object" if value else "an empty object"


# --- the API --------------------------------------------------------------------------------


def test_enum_values():
    assert [s.value for s in Severity] == ["error", "warning"]
    assert [f.value for f in PayloadFormat] == ["json", "cbor"]
    assert Severity("error") is Severity.ERROR
    assert PayloadFormat("cbor") is PayloadFormat.CBOR
    assert json.dumps([Severity.WARNING, PayloadFormat.JSON]) == '["warning", "json"]'  # str enums


def test_problem_str_and_default_severity():
    problem = Problem("header.report_id", "expected an integer")
    assert str(problem) == "header.report_id: expected an integer"
    assert problem.severity is ERROR
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.path = "x"  # type: ignore[misc]


def test_default_policy():
    assert ValidationPolicy() == DEFAULT_POLICY
    assert DEFAULT_POLICY.allow_mixed_names is False
    assert DEFAULT_POLICY.min_report_id == 1
    assert DEFAULT_POLICY.max_payload_bytes == 131072
    assert DEFAULT_POLICY.accept_null_metrics is True
    assert DEFAULT_POLICY.accepted_versions is None
    assert DEFAULT_POLICY.reject_unknown_keys is True
    assert DEFAULT_POLICY.check_custom_metric_names is True


def test_result_properties():
    error, warning = Problem("a", "bad"), Problem("b", "odd", WARNING)
    result = ValidationResult({}, JSON, LONG, (warning, error))
    assert result.errors == (error,)
    assert result.warnings == (warning,)
    assert not result.ok
    assert ValidationResult({}, CBOR, None, (warning,)).ok
    assert ValidationResult({}, CBOR, None, ()).ok


def test_validate_document_matches_validate_payload():
    doc = rep(metrics={"network_stats": {"bytes_in": -1}}, custom={"m": {"number": 1}})
    problems = validate_document(doc)
    assert isinstance(problems, list)
    assert tuple(problems) == validate_payload(json.dumps(doc).encode()).problems
    assert [p.path for p in problems] == ["metrics.network_stats.bytes_in", "custom_metrics.m"]


# --- accepted documents ---------------------------------------------------------------------


def test_protocol_example_accepted(v):
    result = v.run(EXAMPLE)
    assert result.problems == ()
    assert result.ok
    assert result.name_style is v.style
    assert result.document == v.doc(EXAMPLE)


def test_protocol_example_format_is_detected(v):
    result = validate_payload(encode(v.doc(EXAMPLE), v.fmt))
    assert (result.format, result.name_style, result.problems) == (v.fmt, v.style, ())


def test_protocol_example_has_every_standard_name():
    def keys(node: Any) -> set[str]:
        if isinstance(node, list):
            return set().union(*map(keys, node)) if node else set()
        if isinstance(node, dict):
            inner = [keys(c) for k, c in node.items() if k != "custom_metrics"]
            return set(node) | set().union(*inner)
        return set()

    assert keys(EXAMPLE) == set(LONG_TO_SHORT)
    short = shorten(EXAMPLE)
    assert set(short) == {"hed", "met", "cmet"}
    assert short["cmet"] == EXAMPLE["custom_metrics"]


ACCEPTED = {  # protocol.md §2.8 "Accepted", and §2.4 clarifications
    "header and empty metrics": rep(metrics={}),
    "only the established total": rep(
        metrics={"tcp_connections": {"established_connections": {"total": 3}}}
    ),
    "connections with only remote_addr": rep(
        metrics={
            "tcp_connections": {
                "established_connections": {"connections": [{"remote_addr": "198.51.100.1:443"}]}
            }
        }
    ),
    "connections with only local_port and remote_addr": rep(
        metrics={
            "tcp_connections": {
                "established_connections": {
                    "connections": [{"local_port": 50312, "remote_addr": "198.51.100.1:443"}]
                }
            }
        }
    ),
    "ports with only port": rep(metrics={"listening_tcp_ports": {"ports": [{"port": 22}]}}),
    "port object without port": rep(metrics={"listening_udp_ports": {"ports": [{}]}}),
    "header and custom metrics only": rep(custom={"uptime": [{"number": 3600}]}),
    "total greater than the list": rep(
        metrics={"listening_udp_ports": {"ports": [{"port": 68}], "total": 40}}
    ),
    "empty lists and groups": rep(
        metrics={
            "listening_tcp_ports": {},
            "listening_udp_ports": {"ports": [], "total": 0},
            "network_stats": {},
            "tcp_connections": {"established_connections": {"connections": []}},
        }
    ),
    "empty tcp_connections": rep(metrics={"tcp_connections": {}}),
    "cumulative network stats": rep(
        metrics={"network_stats": {"bytes_in": 2**63 - 1, "packets_out": 0}}
    ),
    "metrics and empty custom metrics": rep(metrics={}, custom={}),
    "empty custom metrics alone": rep(custom={}),
}


@pytest.mark.parametrize("doc", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_accepted_evidence(v, doc):
    result = v.run(doc)
    assert result.problems == ()
    assert result.name_style is v.style


# --- rejected documents (§2.8) --------------------------------------------------------------


def test_custom_value_as_object_rejected(v):
    v.expect(
        rep(custom={"my_custom_metric": {"number": 0}}),
        (
            "custom_metrics.my_custom_metric",
            "expected an array of exactly one object, got an object",
        ),
    )


def test_total_directly_under_tcp_connections_rejected(v):
    v.expect(
        rep(metrics={"tcp_connections": {"total": 1}}),
        (
            "metrics.tcp_connections.total",
            f"unknown key {v.n('total')!r}; allowed: {v.n('established_connections')}",
        ),
    )


# --- root -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "got"),
    [([], "an array of 0 elements"), (None, "null"), ("x", "'x'"), (5, "5")],
)
def test_root_must_be_an_object(doc, got):
    assert validate_document(doc) == [Problem("$", f"expected an object at the root, got {got}")]


def test_unknown_root_key(v):
    doc = rep(metrics={})
    doc["timestamp"] = 1
    allowed = ", ".join(v.n(k) for k in ("header", "metrics", "custom_metrics"))
    v.expect(doc, ("timestamp", f"unknown key 'timestamp'; allowed: {allowed}"))


def test_missing_header(v):
    v.expect({"metrics": {}}, ("$", f"missing required key {v.n('header')!r}"))


def test_neither_metrics_nor_custom_metrics(v):
    either = f"{v.n('metrics')!r} or {v.n('custom_metrics')!r}"
    v.expect({"header": HEADER}, ("$", f"expected at least one of {either}"))


def test_empty_document():
    assert validate_document({}) == [
        Problem("$", "missing required key 'header'"),
        Problem("$", "expected at least one of 'metrics' or 'custom_metrics'"),
    ]


def test_keys_are_case_sensitive():
    allowed = "header, metrics, custom_metrics"
    assert validate_document({"Header": HEADER, "metrics": {}}) == [
        Problem("Header", f"unknown key 'Header'; allowed: {allowed}"),
        Problem("$", "missing required key 'header'"),
    ]
    assert validate_document({"hed": {"RID": 1, "v": "1.0"}, "met": {}}) == [
        Problem("hed.RID", "unknown key 'RID'; allowed: rid, v"),
        Problem("hed", "missing required key 'rid'"),
    ]


# --- header ---------------------------------------------------------------------------------


@pytest.mark.parametrize("report_id", [1, 1700000000, 2**63 - 1])
def test_report_id_accepted(v, report_id):
    v.expect(rep(header={"report_id": report_id, "version": "1.0"}))


@pytest.mark.parametrize(
    ("report_id", "got"),
    [
        (0, "0"),
        (-1, "-1"),
        (2**63, "9223372036854775808"),
        (2**64, "18446744073709551616"),
        (True, "true"),
        (False, "false"),
        (1.0, "1.0"),
        (1.5, "1.5"),
        ("1", "'1'"),
        (None, "null"),
        ([1], "an array of 1 element"),
        ({}, "an empty object"),
    ],
)
def test_report_id_rejected(v, report_id, got):
    v.expect(
        rep(header={"report_id": report_id, "version": "1.0"}),
        ("header.report_id", f"expected an integer from 1 to {INT_TOP}, got {got}"),
    )


def test_min_report_id_policy(v):
    zero = rep(header={"report_id": 0, "version": "1.0"})
    v.expect(zero, policy=ValidationPolicy(min_report_id=0))
    v.expect(
        rep(header={"report_id": 4, "version": "1.0"}),
        ("header.report_id", f"expected an integer from 5 to {INT_TOP}, got 4"),
        policy=ValidationPolicy(min_report_id=5),
    )


@pytest.mark.parametrize("version", ["1.0", "2.15", "10.0", "0.0"])
def test_version_accepted(v, version):
    v.expect(rep(header={"report_id": 1, "version": version}))


@pytest.mark.parametrize(
    "version",
    [
        "1",
        "1.0.0",
        "v1.0",
        " 1.0",
        "1.0\n",
        "1.",
        ".1",
        "",
        "1,0",
        "\u0661.\u0660",
        "1.0a",
        1.0,
        1,
        None,
    ],
)
def test_version_rejected(v, version):
    v.expect(
        rep(header={"report_id": 1, "version": version}),
        (
            "header.version",
            f"expected a 'Major.Minor' version such as '1.0', got {describe(version)}",
        ),
    )


def test_accepted_versions_policy(v):
    policy = ValidationPolicy(accepted_versions=frozenset({"1.0", "1.1"}))
    v.expect(rep(header={"report_id": 1, "version": "1.1"}), policy=policy)
    v.expect(
        rep(header={"report_id": 1, "version": "2.0"}),
        ("header.version", "expected one of the versions 1.0, 1.1, got '2.0'"),
        policy=policy,
    )


def test_header_requires_both_keys(v):
    v.expect(
        rep(header={}),
        ("header", f"missing required key {v.n('report_id')!r}"),
        ("header", f"missing required key {v.n('version')!r}"),
    )


def test_header_unknown_key(v):
    header = {**HEADER, "timestamp": 1}
    allowed = f"{v.n('report_id')}, {v.n('version')}"
    v.expect(
        rep(header=header), ("header.timestamp", f"unknown key 'timestamp'; allowed: {allowed}")
    )


@pytest.mark.parametrize("header", [[], "x", None, 1])
def test_header_must_be_an_object(v, header):
    doc = rep()
    doc["header"] = header
    v.expect(doc, ("header", f"expected an object, got {describe(header)}"))


# --- metrics --------------------------------------------------------------------------------


@pytest.mark.parametrize("metrics", [[], "x", 0, True])
def test_metrics_must_be_an_object(v, metrics):
    v.expect(rep(metrics=metrics), ("metrics", f"expected an object, got {describe(metrics)}"))


def test_null_metrics_beside_custom_metrics_accepted(v):
    doc = {"header": HEADER, "metrics": None, "custom_metrics": {"uptime": [{"number": 1}]}}
    result = v.run(doc)
    assert result.problems == ()
    assert result.name_style is v.style


def test_null_metrics_alone_is_no_metrics(v):
    either = f"{v.n('metrics')!r} or {v.n('custom_metrics')!r}"
    v.expect({"header": HEADER, "metrics": None}, ("$", f"expected at least one of {either}"))


def test_null_metrics_policy(v):
    doc = {"header": HEADER, "metrics": None, "custom_metrics": {"uptime": [{"number": 1}]}}
    v.expect(
        doc,
        ("metrics", "expected an object, got null"),
        policy=ValidationPolicy(accept_null_metrics=False),
    )


def test_unknown_metrics_group(v):
    groups = ("listening_tcp_ports", "listening_udp_ports", "network_stats", "tcp_connections")
    allowed = ", ".join(v.n(g) for g in groups)
    v.expect(
        rep(metrics={"listening_sctp_ports": {}, "network_stats": {}}),
        ("metrics.listening_sctp_ports", f"unknown key 'listening_sctp_ports'; allowed: {allowed}"),
    )


GROUPS = ["listening_tcp_ports", "listening_udp_ports"]


def ports(group: str, *items: Any, total: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": list(items)}
    if total is not None:
        body["total"] = total
    return rep(metrics={group: body})


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("port", [1, 22, 65535])
def test_port_accepted(v, group, port):
    v.expect(ports(group, {"port": port, "interface": "eth0"}))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("port", [0, -1, 65536, "22", 22.0, True, None, 2**64])
def test_port_rejected(v, group, port):
    v.expect(
        ports(group, {"port": port}),
        (
            f"metrics.{group}.ports[0].port",
            f"expected an integer from 1 to 65535, got {describe(port)}",
        ),
    )


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("interface", ["eth0", "0.0.0.0", "::", "wlan0 (ß)"])
def test_interface_accepted(v, group, interface):
    v.expect(ports(group, {"port": 22, "interface": interface}))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("interface", ["", 5, None, ["eth0"], False])
def test_interface_rejected(v, group, interface):
    v.expect(
        ports(group, {"port": 22, "interface": interface}),
        (
            f"metrics.{group}.ports[0].interface",
            f"expected a non-empty interface name, got {describe(interface)}",
        ),
    )


@pytest.mark.parametrize("group", GROUPS)
def test_port_list_shape(v, group):
    path = f"metrics.{group}.ports"
    v.expect(
        rep(metrics={group: {"ports": {"port": 22}}}),
        (path, "expected an array of objects, got an object"),
    )
    v.expect(
        ports(group, 22, None, {"port": 22, "foo": 1}),
        (f"{path}[0]", "expected an object, got 22"),
        (f"{path}[1]", "expected an object, got null"),
        (f"{path}[2].foo", f"unknown key 'foo'; allowed: {v.n('port')}, {v.n('interface')}"),
    )


TOTALS = [
    "metrics.listening_tcp_ports.total",
    "metrics.listening_udp_ports.total",
    "metrics.tcp_connections.established_connections.total",
]


def at(path: str, value: Any) -> dict[str, Any]:
    """A report whose standard field at the long ``path`` holds ``value``."""
    doc = rep()
    node = doc
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return doc


@pytest.mark.parametrize("path", TOTALS)
@pytest.mark.parametrize("total", [0, 7, 2**63 - 1])
def test_total_accepted(v, path, total):
    v.expect(at(path, total))


@pytest.mark.parametrize("path", TOTALS)
@pytest.mark.parametrize("total", [-1, 1.5, 3.0, 2**63, None, "3", True])
def test_total_rejected(v, path, total):
    v.expect(
        at(path, total), (path, f"expected an integer from 0 to {INT_TOP}, got {describe(total)}")
    )


STATS = ["bytes_in", "bytes_out", "packets_in", "packets_out"]


@pytest.mark.parametrize("stat", STATS)
@pytest.mark.parametrize("value", [0, 123456789, 2**63 - 1])
def test_network_stat_accepted(v, stat, value):
    v.expect(at(f"metrics.network_stats.{stat}", value))


@pytest.mark.parametrize("stat", STATS)
@pytest.mark.parametrize("value", [-1, 1.0, None, 2**64, "5", False, []])
def test_network_stat_rejected(v, stat, value):
    path = f"metrics.network_stats.{stat}"
    v.expect(
        at(path, value), (path, f"expected an integer from 0 to {INT_TOP}, got {describe(value)}")
    )


def test_network_stats_unknown_key(v):
    allowed = ", ".join(v.n(s) for s in STATS)
    v.expect(
        at("metrics.network_stats.bytes_total", 1),
        ("metrics.network_stats.bytes_total", f"unknown key 'bytes_total'; allowed: {allowed}"),
    )


def conns(*items: Any) -> dict[str, Any]:
    return at(CONNS, list(items))


def test_tcp_connections_shape(v):
    established = "metrics.tcp_connections.established_connections"
    v.expect(at(established, []), (established, "expected an object, got an array of 0 elements"))
    v.expect(at(CONNS, {}), (CONNS, "expected an array of objects, got an empty object"))
    v.expect(
        conns("203.0.113.7:80", {"local_port": 1}, {"remote_addr": "203.0.113.7:80", "pid": 7}),
        (f"{CONNS}[0]", "expected an object, got '203.0.113.7:80'"),
        (f"{CONNS}[1]", f"missing required key {v.n('remote_addr')!r}"),
        (
            f"{CONNS}[2].pid",
            "unknown key 'pid'; allowed: "
            + ", ".join(v.n(k) for k in ("remote_addr", "local_port", "local_interface")),
        ),
    )
    allowed = f"{v.n('connections')}, {v.n('total')}"
    v.expect(
        at(f"{established}.connection", []),
        (f"{established}.connection", f"unknown key 'connection'; allowed: {allowed}"),
    )


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_local_port_accepted(v, port):
    v.expect(conns({"remote_addr": "203.0.113.7:80", "local_port": port}))


@pytest.mark.parametrize("port", [-1, 65536, "80", None, 80.0, True])
def test_local_port_rejected(v, port):
    v.expect(
        conns({"remote_addr": "203.0.113.7:80", "local_port": port}),
        (f"{CONNS}[0].local_port", f"expected an integer from 0 to 65535, got {describe(port)}"),
    )


@pytest.mark.parametrize("interface", ["", None, 0])
def test_local_interface_rejected(v, interface):
    v.expect(
        conns({"remote_addr": "203.0.113.7:80", "local_interface": interface}),
        (
            f"{CONNS}[0].local_interface",
            f"expected a non-empty interface name, got {describe(interface)}",
        ),
    )


@pytest.mark.parametrize(
    "addr",
    [
        "203.0.113.7:8883",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "[2001:db8::5]:443",
        "[::1]:0",
        "[::]:65535",
        "[::ffff:192.0.2.1]:80",
        "[fe80::1]:22",
    ],
)
def test_remote_addr_accepted(v, addr):
    v.expect(conns({"remote_addr": addr}))


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("203.0.113.7", "no port"),
        ("", "no port"),
        ("[::1]443", "no port"),
        ("[::1]", "no port"),
        ("203.0.113.7:", "bad port ''"),
        ("[::1]:", "bad port ''"),
        ("203.0.113.7:65536", "bad port '65536'"),
        ("203.0.113.7:123456", "bad port '123456'"),
        ("203.0.113.7:-1", "bad port '-1'"),
        ("203.0.113.7:+80", "bad port '+80'"),
        ("203.0.113.7: 80", "bad port ' 80'"),
        ("203.0.113.7:80 ", "bad port '80 '"),
        ("203.0.113.7:٨٠", "bad port '٨٠'"),
        ("::1:443", "an IPv6 address must be in brackets"),
        ("2001:db8::5:443", "an IPv6 address must be in brackets"),
        ("[fe80::1%eth0]:443", "'fe80::1%eth0' is not an IPv6 address"),
        ("[203.0.113.7]:80", "'203.0.113.7' is not an IPv6 address"),
        ("[2001:db8::5/64]:80", "'2001:db8::5/64' is not an IPv6 address"),
        ("256.1.1.1:80", "'256.1.1.1' is not an IPv4 address"),
        ("01.2.3.4:80", "'01.2.3.4' is not an IPv4 address"),
        ("1.2.3:80", "'1.2.3' is not an IPv4 address"),
        ("example.com:80", "'example.com' is not an IPv4 address"),
        (" 203.0.113.7:80", "' 203.0.113.7' is not an IPv4 address"),
        (":80", "'' is not an IPv4 address"),
        (8883, "not a string"),
        (None, "not a string"),
    ],
)
def test_remote_addr_rejected(v, addr, why):
    v.expect(
        conns({"remote_addr": addr}),
        (f"{CONNS}[0].remote_addr", f"{ADDR_EXPECTED}, got {describe(addr)} ({why})"),
    )


# --- null anywhere --------------------------------------------------------------------------

NULLS = [
    ("header", "expected an object, got null"),
    ("header.version", "expected a 'Major.Minor' version such as '1.0', got null"),
    ("metrics.listening_tcp_ports", "expected an object, got null"),
    ("metrics.listening_udp_ports.ports", "expected an array of objects, got null"),
    ("metrics.network_stats", "expected an object, got null"),
    ("metrics.network_stats.bytes_out", f"expected an integer from 0 to {INT_TOP}, got null"),
    ("metrics.tcp_connections", "expected an object, got null"),
    ("metrics.tcp_connections.established_connections", "expected an object, got null"),
    (CONNS, "expected an array of objects, got null"),
]


@pytest.mark.parametrize(("path", "message"), NULLS, ids=[p for p, _ in NULLS])
def test_null_is_an_error(v, path, message):
    v.expect(at(path, None), (path, message))


LIST_WHAT = {"number_list": "numbers", "string_list": "strings", "ip_list": "IP address strings"}


def test_null_in_lists_and_custom_metrics(v):
    v.expect(conns(None), (f"{CONNS}[0]", "expected an object, got null"))
    v.expect(
        conns({"remote_addr": "203.0.113.7:80", "local_interface": None}),
        (f"{CONNS}[0].local_interface", "expected a non-empty interface name, got null"),
    )
    doc = rep(metrics={})
    doc["custom_metrics"] = None
    v.expect(doc, ("custom_metrics", "expected an object of custom metrics, got null"))
    v.expect(
        custom(None), ("custom_metrics.m", "expected an array of exactly one object, got null")
    )
    v.expect(
        custom([None]),
        ("custom_metrics.m[0]", f"expected an object with one of {VALUE_KEYS}, got null"),
    )
    v.expect(
        custom([{"number": None}]), ("custom_metrics.m[0].number", f"{NUMBER_EXPECTED}, got null")
    )
    for key, message in [
        ("number_list", f"{NUMBER_EXPECTED}, got null"),
        ("string_list", "expected a string, got null"),
        ("ip_list", "expected an IPv4 or IPv6 address without port, prefix or zone, got null"),
    ]:
        v.expect(custom([{key: [None]}]), (f"custom_metrics.m[0].{key}[0]", message))
        v.expect(
            custom([{key: None}]),
            (f"custom_metrics.m[0].{key}", f"expected an array of {LIST_WHAT[key]}, got null"),
        )


# --- mixed names ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [JSON, CBOR])
def test_mixed_names_rejected(fmt):
    doc = {"header": {"rid": 1, "version": "1.0"}, "metrics": {}}  # rustot's header (§2.1)
    result = validate_payload(encode(doc, fmt))
    assert result.problems == (
        Problem(
            "header.rid", "short key 'rid' in a report that uses long names; expected 'report_id'"
        ),
    )
    assert result.name_style is None


@pytest.mark.parametrize("fmt", [JSON, CBOR])
def test_mixed_names_allowed_by_policy(fmt):
    doc = {"header": {"rid": 1, "version": "1.0"}, "metrics": {}}
    result = validate_payload(encode(doc, fmt), policy=ValidationPolicy(allow_mixed_names=True))
    assert result.problems == ()
    assert result.ok
    assert result.name_style is None


def test_every_mixed_key_is_reported():
    doc = {
        "hed": {"rid": 1, "v": "1.0"},
        "met": {
            "tp": {"ports": [{"pt": 22, "interface": "eth0"}], "t": 1},
            "network_stats": {"bi": 1, "bytes_out": -1},
        },
    }
    assert validate_document(doc) == [
        Problem(
            "met.tp.ports", "long key 'ports' in a report that uses short names; expected 'pts'"
        ),
        Problem(
            "met.tp.ports[0].interface",
            "long key 'interface' in a report that uses short names; expected 'if'",
        ),
        Problem(
            "met.network_stats",
            "long key 'network_stats' in a report that uses short names; expected 'ns'",
        ),
        Problem(
            "met.network_stats.bytes_out",
            "long key 'bytes_out' in a report that uses short names; expected 'bo'",
        ),
        Problem("met.network_stats.bytes_out", f"expected an integer from 0 to {INT_TOP}, got -1"),
    ]


def test_mixed_names_majority_and_tie():
    # three short keys against one long one: the long one is the odd one out
    assert validate_document({"header": {"rid": 1, "v": "1.0"}, "met": {}}) == [
        Problem("header", "long key 'header' in a report that uses short names; expected 'hed'")
    ]
    # two against two: the first key decides
    assert validate_document({"header": {"report_id": 1, "v": "1.0"}, "met": {}}) == [
        Problem("header.v", "short key 'v' in a report that uses long names; expected 'version'"),
        Problem("met", "short key 'met' in a report that uses long names; expected 'metrics'"),
    ]


def test_both_spellings_of_one_key():
    doc = {"header": HEADER, "hed": {"rid": 1, "v": "1.0"}, "metrics": {}}
    expected = [Problem("hed", "'hed' repeats 'header' in the other spelling")]
    assert validate_document(doc, ValidationPolicy(allow_mixed_names=True)) == expected
    assert validate_document(doc) == expected


def test_custom_names_do_not_count_as_standard_keys():
    doc = {"hed": {"rid": 1, "v": "1.0"}, "cmet": {"total": [{"number": 1}], "t": [{"number": 2}]}}
    result = validate_payload(cbor2.dumps(doc))
    assert (result.problems, result.name_style) == ((), SHORT)
    doc = {"header": HEADER, "custom_metrics": {"rid": [{"number": 1}]}}
    result = validate_payload(json.dumps(doc).encode())
    assert (result.problems, result.name_style) == ((), LONG)


# --- reporting everything, unknown-key policy ----------------------------------------------


def test_all_problems_are_reported_in_document_order(v):
    doc = {
        "header": {"report_id": 0, "version": "1", "extra": True},
        "metrics": {
            "listening_tcp_ports": {"ports": [{"port": 0}, {"port": 70000}], "total": -1},
            "tcp_connections": {
                "established_connections": {"connections": [{"remote_addr": "::1:80"}]}
            },
        },
        "custom_metrics": {"aws:cpu": [{"number": True}], "ok": [{"number": 1}]},
    }
    tcp = "metrics.listening_tcp_ports"
    v.expect(
        doc,
        ("header.report_id", f"expected an integer from 1 to {INT_TOP}, got 0"),
        ("header.version", "expected a 'Major.Minor' version such as '1.0', got '1'"),
        (
            "header.extra",
            f"unknown key 'extra'; allowed: {v.n('report_id')}, {v.n('version')}",
        ),
        (f"{tcp}.ports[0].port", "expected an integer from 1 to 65535, got 0"),
        (f"{tcp}.ports[1].port", "expected an integer from 1 to 65535, got 70000"),
        (f"{tcp}.total", f"expected an integer from 0 to {INT_TOP}, got -1"),
        (
            f"{CONNS}[0].remote_addr",
            f"{ADDR_EXPECTED}, got '::1:80' (an IPv6 address must be in brackets)",
        ),
        (
            "custom_metrics.aws:cpu",
            f"{NAME_EXPECTED}, got 'aws:cpu'",
        ),
        ("custom_metrics.aws:cpu[0].number", f"{NUMBER_EXPECTED}, got true"),
    )


def test_unknown_keys_as_warnings_policy(v):
    policy = ValidationPolicy(reject_unknown_keys=False)
    doc = rep(metrics={"listening_tcp_ports": {"ports": [{"port": 22, "pid": 1}]}})
    doc["extra"] = {"anything": [1]}
    result = v.run(doc, policy)
    assert result.ok
    assert [(p.path, p.severity) for p in result.problems] == [
        (v.path("metrics.listening_tcp_ports.ports[0].pid"), WARNING),
        ("extra", WARNING),
    ]
    # custom value keys are not standard keys: still an error (§7.7)
    assert not v.run(custom([{"count": 1}]), policy).ok


# --- custom metrics -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [[], "x", 5, None])
def test_custom_metrics_must_be_an_object(v, value):
    doc = rep(metrics={})
    doc["custom_metrics"] = value
    v.expect(
        doc, ("custom_metrics", f"expected an object of custom metrics, got {describe(value)}")
    )


@pytest.mark.parametrize(
    "name", ["a", "A:b_c-9", "x" * 128, "aws", "AWS:thing", "awsx:y", "cpu_usage", "0"]
)
def test_custom_metric_name_accepted(v, name):
    v.expect(custom([{"number": 1}], name))


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("", 'custom_metrics[""]'),
        ("x" * 129, "custom_metrics." + "x" * 129),
        ("a b", 'custom_metrics["a b"]'),
        ("a.b", 'custom_metrics["a.b"]'),
        ("é", 'custom_metrics["é"]'),
        ("a/b", 'custom_metrics["a/b"]'),
        ("aws:foo", "custom_metrics.aws:foo"),
        ("aws:", "custom_metrics.aws:"),
    ],
)
def test_custom_metric_name_rejected(v, name, path):
    got = repr(name if len(name) <= 60 else name[:60] + "…")
    v.expect(
        custom([{"number": 1}], name),
        (
            path,
            f"expected a name matching [a-zA-Z0-9:_-]{{1,128}}, not starting with 'aws:', got {got}",
        ),
    )
    v.expect(
        custom([{"number": 1}], name), policy=ValidationPolicy(check_custom_metric_names=False)
    )


@pytest.mark.parametrize(
    ("value", "got"),
    [
        ({"number": 0}, "an object"),
        ([], "an array of 0 elements"),
        ([{"number": 1}, {"number": 2}], "an array of 2 elements"),
        (5, "5"),
        ("x", "'x'"),
    ],
)
def test_custom_value_must_be_an_array_of_one(v, value, got):
    v.expect(
        custom(value), ("custom_metrics.m", f"expected an array of exactly one object, got {got}")
    )


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        (5, [("", f"expected an object with one of {VALUE_KEYS}, got 5")]),
        ([], [("", f"expected an object with one of {VALUE_KEYS}, got an array of 0 elements")]),
        ({}, [("", f"expected an object with one of {VALUE_KEYS}, got an empty object")]),
        (
            {"number": 1, "number_list": [1]},
            [("", f"expected exactly one of {VALUE_KEYS}, got number, number_list")],
        ),
        ({"foo": 1}, [(".foo", f"unknown key 'foo'; allowed: {VALUE_KEYS}")]),
        ({"Number": 1}, [(".Number", f"unknown key 'Number'; allowed: {VALUE_KEYS}")]),
        ({"number": 1, "foo": 2}, [(".foo", f"unknown key 'foo'; allowed: {VALUE_KEYS}")]),
        ({"count": 75}, [(".count", f"unknown key 'count'; allowed: {VALUE_KEYS}")]),
    ],
)
def test_custom_value_element(v, element, expected):
    v.expect(custom([element]), *[(f"custom_metrics.m[0]{p}", m) for p, m in expected])


@pytest.mark.parametrize(
    "number",
    [0, -5, 12.5, -0.25, 1e300, 1e-300, 123456789012345, -123456789012345, 10**15, 0.1],
)
def test_number_accepted(v, number):
    result = v.run(custom([{"number": number}]))
    assert result.problems == ()


@pytest.mark.parametrize(
    "number", [True, False, "1", None, [1], {"v": 1}, 2**63, -(2**63) - 1, 2**64]
)
def test_number_rejected(v, number):
    v.expect(
        custom([{"number": number}]),
        ("custom_metrics.m[0].number", f"{NUMBER_EXPECTED}, got {describe(number)}"),
    )


@pytest.mark.parametrize(
    ("number", "got"), [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")]
)
def test_number_not_finite_in_cbor(number, got):
    result = validate_payload(cbor2.dumps(custom([{"number": number}])))
    assert result.problems == (
        Problem("custom_metrics.m[0].number", f"{NUMBER_EXPECTED}, got {got}"),
    )


def test_json_number_overflowing_to_infinity():
    data = b'{"hed": {"rid": 1, "v": "1.0"}, "cmet": {"m": [{"number": 1e400}]}}'
    assert validate_payload(data).problems == (
        Problem("cmet.m[0].number", f"{NUMBER_EXPECTED}, got inf"),
    )


@pytest.mark.parametrize(
    ("number", "digits"),
    [
        (1234567890123456, 16),
        (-1234567890123456, 16),
        (0.1 + 0.2, 17),
        (1.234567890123456, 16),
        (2**63 - 1, 19),
        (-(2**63), 19),
    ],
)
def test_number_with_more_than_15_digits_is_a_warning(v, number, digits):
    message = (
        f"{number!r} has {digits} significant digits; "
        "Device Defender keeps at most 15 and drops the value (protocol §2.6)"
    )
    result = v.run(custom([{"number": number}]))
    assert result.ok
    assert result.problems == (Problem(v.path("custom_metrics.m[0].number"), message, WARNING),)
    assert result.warnings == result.problems


@pytest.mark.parametrize("numbers", [[], [1, -2.5, 3], [0] * 50])
def test_number_list_accepted(v, numbers):
    v.expect(custom([{"number_list": numbers}]))


def test_number_list_rejected(v):
    path = "custom_metrics.m[0].number_list"
    v.expect(custom([{"number_list": 5}]), (path, "expected an array of numbers, got 5"))
    v.expect(
        custom([{"number_list": [1, True, "2", 1234567890123456, 2**64]}]),
        (f"{path}[1]", f"{NUMBER_EXPECTED}, got true"),
        (f"{path}[2]", f"{NUMBER_EXPECTED}, got '2'"),
        (
            f"{path}[3]",
            f"1234567890123456 has 16 significant digits; {KEEPS_15}",
            WARNING,
        ),
        (f"{path}[4]", f"{NUMBER_EXPECTED}, got 18446744073709551616"),
    )


@pytest.mark.parametrize(
    "strings", [[], ["eth0", "wlan0"], ["a:b_c-d/e.f", "value_1", "ABC123", "x" * 300]]
)
def test_string_list_accepted(v, strings):
    v.expect(custom([{"string_list": strings}]))


def test_string_list_rejected(v):
    path = "custom_metrics.m[0].string_list"
    v.expect(custom([{"string_list": "eth0"}]), (path, "expected an array of strings, got 'eth0'"))
    v.expect(
        custom([{"string_list": ["ok", 5, ["x"]]}]),
        (f"{path}[1]", "expected a string, got 5"),
        (f"{path}[2]", "expected a string, got an array of 1 element"),
    )


@pytest.mark.parametrize("string", ["One Fish", "é", "a\nb", "eth0!", "a,b"])
def test_string_with_odd_characters_is_a_warning(v, string):
    message = f"{string!r} has characters outside [A-Za-z0-9:_-/.]; {DROPPED}"
    result = v.run(custom([{"string_list": ["eth0", string]}]))
    assert result.ok
    path = v.path("custom_metrics.m[0].string_list[1]")
    assert result.problems == (Problem(path, message, WARNING),)


def test_empty_string_is_a_warning(v):
    v.expect(
        custom([{"string_list": [""]}]),
        ("custom_metrics.m[0].string_list[0]", f"empty string; {DROPPED}", WARNING),
    )


@pytest.mark.parametrize(
    "ips",
    [[], ["172.0.0.0", "172.0.0.10"], ["2001:db8::1", "::", "::ffff:192.0.2.1", "0.0.0.0"]],
)
def test_ip_list_accepted(v, ips):
    v.expect(custom([{"ip_list": ips}]))


@pytest.mark.parametrize(
    "ip",
    [
        "1.2.3.4:80",
        "[::1]",
        "[::1]:80",
        "10.0.0.0/8",
        "2001:db8::/32",
        "fe80::1%eth0",
        "1.2.3",
        "256.0.0.1",
        "01.2.3.4",
        "",
        " 1.2.3.4",
        "example.com",
        5,
        None,
        True,
    ],
)
def test_ip_list_rejected(v, ip):
    v.expect(
        custom([{"ip_list": ["192.0.2.1", ip]}]),
        (
            "custom_metrics.m[0].ip_list[1]",
            f"expected an IPv4 or IPv6 address without port, prefix or zone, got {describe(ip)}",
        ),
    )


def test_ip_list_must_be_a_list(v):
    v.expect(
        custom([{"ip_list": "172.0.0.1"}]),
        ("custom_metrics.m[0].ip_list", "expected an array of IP address strings, got '172.0.0.1'"),
    )


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [JSON, CBOR])
def test_decode_payload(fmt):
    data = encode(EXAMPLE, fmt)
    assert decode_payload(data) == (EXAMPLE, fmt)
    assert decode_payload(data, fmt) == (EXAMPLE, fmt)


def test_json_detected_after_whitespace():
    data = b" \t\r\n" + json.dumps(EXAMPLE).encode() + b"\n"
    result = validate_payload(data)
    assert (result.format, result.problems, result.document) == (JSON, (), EXAMPLE)


def test_self_described_cbor_accepted():
    result = validate_payload(b"\xd9\xd9\xf7" + cbor2.dumps(EXAMPLE))
    assert (result.format, result.problems, result.document) == (CBOR, (), EXAMPLE)


def decode_error(data: bytes, fmt: PayloadFormat | None = None) -> str:
    with pytest.raises(ReportDecodeError) as info:
        decode_payload(data, fmt)
    message = str(info.value)
    assert "\n" not in message
    result = validate_payload(data, fmt, ValidationPolicy(max_payload_bytes=10**6))
    assert result.problems == (Problem("$", message),)
    assert result.document is None
    assert result.name_style is None
    assert not result.ok
    return message


def test_not_utf8():
    data = b'{"header": "\xff"}'
    assert decode_error(data) == "payload is not UTF-8: invalid byte at offset 12"
    assert validate_payload(data).format is JSON
    assert (
        decode_error(cbor2.dumps(EXAMPLE), JSON) == "payload is not UTF-8: invalid byte at offset 0"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"header": }', "invalid JSON: Expecting value: line 1 column 12 (char 11)"),
        (
            b"{",
            "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (b'{"a": 1} x', "invalid JSON: Extra data: line 1 column 10 (char 9)"),
        (b'{"a": 1}{}', "invalid JSON: Extra data: line 1 column 9 (char 8)"),
        (
            b"{'a': 1}",
            "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
    ],
)
def test_invalid_json(data, message):
    assert decode_error(data) == message


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_tokens_rejected(token):
    data = b'{"header": {"report_id": 1, "version": "1.0"}, "cmet": {"m": [{"number": %s}]}}' % (
        token.encode()
    )
    assert (
        decode_error(data) == f"invalid JSON: {token} is not allowed (JSON has no NaN or Infinity)"
    )


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (
            b'{"header": {"report_id": 1, "report_id": 2, "version": "1.0"}, "metrics": {}}',
            "report_id",
        ),
        (
            b'{"metrics": {}, "header": {"report_id": 1, "version": "1.0"}, "metrics": {}}',
            "metrics",
        ),
        (b'{"cmet": {"m": [{"number": 1, "number": 1}]}, "hed": {}}', "number"),
    ],
)
def test_json_duplicate_keys_rejected(data, key):
    assert decode_error(data) == f"invalid JSON: duplicate key {key!r}"


@pytest.mark.parametrize("fmt", [None, JSON])
def test_json_whitespace_only_and_bom(fmt):
    assert decode_error(b" \r\n\t ", fmt) == "payload is only whitespace"
    bom = "payload starts with a UTF-8 byte order mark (BOM): JSON sent to Device Defender must not"
    assert decode_error(b"\xef\xbb\xbf" + json.dumps(EXAMPLE).encode(), fmt).startswith(bom)
    assert validate_payload(b" ", fmt).format is JSON
    assert validate_payload(b"\xef\xbb\xbf{}", fmt).format is JSON


@pytest.mark.parametrize(
    "data",
    [b"hello world", b"not json at all\n", b"_Aa", "naïve café".encode(), b"NaN"],
)
def test_text_that_is_not_json_is_neither(data):
    result = validate_payload(data)
    shown = data.decode()
    assert result.problems == (Problem("$", f"not JSON or CBOR: text {shown!r}"),)
    assert result.format is None and result.document is None
    assert decode_error(data, JSON).startswith("invalid JSON: ")  # when the format is given
    assert decode_error(data, CBOR).startswith("invalid CBOR: ")


def test_long_text_is_shown_cut():
    result = validate_payload(b"x" * 100)
    assert result.problems[0].message == "not JSON or CBOR: text '" + "x" * 40 + "…'"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": 1}', JSON),
        (b" \n\t[1]", JSON),
        (b"\xef\xbb\xbf{}", JSON),
        (b"   ", JSON),
        (b"hello", JSON),  # text: tried as JSON, then called neither
        (b'"x"', JSON),
        (b"", CBOR),
        (cbor2.dumps(EXAMPLE), CBOR),
        (b"\xd9\xd9\xf7" + cbor2.dumps(EXAMPLE), CBOR),
        (b"\x00", CBOR),
        (b"\xff\xfe", CBOR),
        ("é".encode()[:1], CBOR),  # a lone lead byte with nothing after it is not text
        (b"ab" + "é".encode()[:1], JSON),  # ... but at the end of a longer head it may be the cut
    ],
)
def test_sniff_format(data, expected):
    assert sniff_format(data) is expected


def test_json_huge_integer_literal():
    message = decode_error(b'{"header": {"report_id": ' + b"9" * 5000 + b"}}")
    assert message.startswith("invalid JSON: Exceeds the limit (4300")  # wording varies by Python


@pytest.mark.skipif(
    int(version("cbor2").split(".")[0]) < 6,
    reason="cbor2 5 (the newest for Python 3.9) cannot detect duplicate map keys",
)
def test_cbor_duplicate_keys_rejected():
    data = b"\xa2" + cbor2.dumps("header") + cbor2.dumps(HEADER) + cbor2.dumps("header") + b"\xa0"
    message = decode_error(data)
    assert message.startswith("invalid CBOR: ")
    assert "duplicate map key" in message.lower()


@pytest.mark.parametrize(
    "doc",
    [
        {1: 2},
        {"header": {b"report_id": 1, "version": "1.0"}, "metrics": {}},
        {"header": HEADER, "metrics": {"network_stats": {7: 1}}},
        {"header": HEADER, "custom_metrics": {(1, 2): [{"number": 1}]}},
    ],
)
def test_cbor_non_text_keys_rejected(doc):
    message = decode_error(cbor2.dumps(doc))
    assert message.startswith("invalid CBOR: ")  # cbor2 6 adds "error decoding map: "
    assert "text string" in message


@pytest.mark.parametrize(
    ("extra", "count"),
    [(b"\x00", 1), (b"\xa0", 1), (cbor2.dumps(EXAMPLE), len(cbor2.dumps(EXAMPLE)))],
)
def test_cbor_trailing_bytes_rejected(extra, count):
    message = decode_error(cbor2.dumps(EXAMPLE) + extra)
    assert message == f"invalid CBOR: {count} trailing byte(s) after the data item"


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe\xfd\xfc",
        b"\x1c",
        bytes(range(256)),
        b"\xa2\x61a",  # truncated map
        b"\x9b\x00\x00\x00\x10\x00\x00\x00\x00",  # an array of 2**36 elements, with none
    ],
)
def test_binary_garbage_rejected(data):
    assert decode_error(data).startswith("invalid CBOR: ")
    assert validate_payload(data).format is CBOR


def test_cbor_that_starts_with_a_brace_is_tried_as_json():
    data = b"\x7b\x00\x00\x00\x10\x00\x00\x00\x00"  # CBOR: a text string of 2**36 bytes
    assert decode_error(data).startswith("invalid JSON: ")
    assert validate_payload(data).format is JSON
    assert decode_error(data, CBOR).startswith("invalid CBOR: ")


@pytest.mark.parametrize("fmt", [None, JSON, CBOR])
def test_empty_payload(fmt):
    assert decode_error(b"", fmt) == "payload is empty"
    assert validate_payload(b"", fmt).format is (fmt or CBOR)


def test_json_nested_100000_deep():
    assert decode_error(b"[" * 100_000 + b"]" * 100_000, JSON) == "invalid JSON: nested too deeply"
    inside = b'{"header": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert decode_error(inside) == "invalid JSON: nested too deeply"
    under_limit = b'{"a": ' + b"[" * 65_000 + b"]" * 65_000 + b"}"
    assert len(under_limit) <= 131072
    assert validate_payload(under_limit).problems == (
        Problem("$", "invalid JSON: nested too deeply"),
    )


def test_cbor_nested_100000_deep():
    deep = b"\x81" * 100_000 + b"\x00"
    assert decode_error(deep).startswith("invalid CBOR: ")
    inside = b"\xa1" + cbor2.dumps("header") + deep
    assert decode_error(inside).startswith("invalid CBOR: ")
    assert len(inside) <= 131072
    assert validate_payload(inside).problems[0].message.startswith("invalid CBOR: ")


@pytest.mark.parametrize("fmt", [JSON, CBOR])
def test_moderate_nesting_in_an_unknown_key(fmt):
    doc = rep()
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    doc["extra"] = deep
    result = validate_payload(encode(doc, fmt))
    allowed = "header, metrics, custom_metrics"
    assert result.problems == (Problem("extra", f"unknown key 'extra'; allowed: {allowed}"),)


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b"[1]", JSON, "a JSON array, not a report (a report is a JSON object)"),
        (b" []", None, "a JSON array, not a report (a report is a JSON object)"),
        (b'"x"', JSON, "a JSON string, not a report (a report is a JSON object)"),
        (b'"x"', None, "a JSON string, not a report (a report is a JSON object)"),
        (b"null", JSON, "a JSON null, not a report (a report is a JSON object)"),
        (b"5", None, "a JSON number, not a report (a report is a JSON object)"),
        (b"true", JSON, "a JSON boolean, not a report (a report is a JSON object)"),
        (cbor2.dumps([1]), None, "a CBOR array, not a report (a report is a CBOR map)"),
        (cbor2.dumps(5), None, "a CBOR integer, not a report (a report is a CBOR map)"),
        (cbor2.dumps("x"), CBOR, "a CBOR text string, not a report (a report is a CBOR map)"),
        (cbor2.dumps(b"x"), CBOR, "a CBOR byte string, not a report (a report is a CBOR map)"),
        (cbor2.dumps(None), CBOR, "a CBOR null, not a report (a report is a CBOR map)"),
        (cbor2.dumps(1.5), None, "a CBOR float, not a report (a report is a CBOR map)"),
        (b" ", CBOR, "a CBOR integer, not a report (a report is a CBOR map)"),
    ],
)
def test_top_level_must_be_a_map(data, fmt, message):
    assert decode_error(data, fmt) == message


def test_wrong_format_for_the_payload():
    assert decode_error(json.dumps(EXAMPLE).encode(), CBOR).startswith("invalid CBOR: ")
    assert decode_error(cbor2.dumps(EXAMPLE), JSON).startswith("payload is not UTF-8")


# --- CBOR-only values: tags, undefined, bytes, simple values ------------------------------


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (cbor2.CBORTag(1000, 5), "CBOR tag 1000"),
        (cbor2.undefined, "CBOR undefined"),
        (b"\x01", "a byte string"),
        (cbor2.CBORSimpleValue(16), "CBOR simple value 16"),
        (cbor2.CBORTag(1, 5), "a CBOR datetime value"),
        (cbor2.CBORTag(2, b"\x01" + b"\x00" * 8), "18446744073709551616"),
    ],
)
def test_cbor_special_values_are_type_errors(value, got):
    doc = {"header": {"report_id": value, "version": value}, "metrics": {}}
    result = validate_payload(cbor2.dumps(doc))
    assert result.format is CBOR
    assert result.problems == (
        Problem("header.report_id", f"expected an integer from 1 to {INT_TOP}, got {got}"),
        Problem("header.version", f"expected a 'Major.Minor' version such as '1.0', got {got}"),
    )


def test_cbor_special_values_in_metrics_and_custom_metrics():
    doc = rep(
        metrics={"listening_tcp_ports": {"ports": [{"port": 22, "interface": b"eth0"}]}},
        custom={"m": [{"string_list": [cbor2.undefined]}], "n": [{"number": cbor2.CBORTag(99, 1)}]},
    )
    assert validate_payload(cbor2.dumps(doc)).problems == (
        Problem(
            "metrics.listening_tcp_ports.ports[0].interface",
            "expected a non-empty interface name, got a byte string",
        ),
        Problem("custom_metrics.m[0].string_list[0]", "expected a string, got CBOR undefined"),
        Problem("custom_metrics.n[0].number", f"{NUMBER_EXPECTED}, got CBOR tag 99"),
    )


def test_cyclic_cbor_does_not_hang():
    # {"header": <the map itself>, "metrics": {}} through shared references (tags 28/29)
    data = (
        b"\xd8\x1c\xa2" + cbor2.dumps("header") + b"\xd8\x1d\x00" + cbor2.dumps("metrics") + b"\xa0"
    )
    result = validate_payload(data)
    assert result.problems == (
        Problem("header.header", "unknown key 'header'; allowed: report_id, version"),
        Problem("header.metrics", "unknown key 'metrics'; allowed: report_id, version"),
        Problem("header", "missing required key 'report_id'"),
        Problem("header", "missing required key 'version'"),
    )


def test_non_text_keys_in_a_document_built_in_python():
    doc: dict[str, Any] = {"header": {1: 2, **HEADER}, "metrics": {}, "custom_metrics": {2: []}}
    name = "expected a name matching [a-zA-Z0-9:_-]{1,128}, not starting with 'aws:', got 2"
    assert validate_document(doc) == [
        Problem("header[1]", "unknown key 1; allowed: report_id, version"),
        Problem("custom_metrics[2]", name),
        Problem(
            "custom_metrics[2]",
            "expected an array of exactly one object, got an array of 0 elements",
        ),
    ]


# --- size -----------------------------------------------------------------------------------


def padded_json(size: int) -> bytes:
    data = json.dumps(EXAMPLE).encode()
    return data + b" " * (size - len(data))


@pytest.mark.parametrize("fmt", [None, JSON])
def test_payload_at_the_limit_is_accepted(fmt):
    result = validate_payload(padded_json(131072), fmt)
    assert (result.problems, result.format) == ((), JSON)


@pytest.mark.parametrize("fmt", [None, JSON, CBOR])
def test_oversized_payload_is_not_decoded(fmt):
    data = padded_json(131073)
    result = validate_payload(data, fmt)
    assert result.problems == (
        Problem("$", "payload is 131073 bytes, over the 131072-byte IoT Core limit"),
    )
    assert (result.document, result.format, result.name_style) == (None, fmt, None)
    # not decoded: garbage of the same size gives the same single problem
    assert validate_payload(b"\xff" * 131073, fmt).problems == result.problems


def test_oversized_cbor_and_custom_limit():
    doc = rep(custom={"big": [{"string_list": ["x" * 1000] * 140}]})
    data = cbor2.dumps(doc)
    assert validate_payload(data).problems == (
        Problem("$", f"payload is {len(data)} bytes, over the 131072-byte IoT Core limit"),
    )
    assert validate_payload(data, policy=ValidationPolicy(max_payload_bytes=200_000)).ok
    small = json.dumps(rep()).encode()
    assert validate_payload(small, policy=ValidationPolicy(max_payload_bytes=10)).problems == (
        Problem("$", f"payload is {len(small)} bytes, over the 10-byte IoT Core limit"),
    )


# --- properties -----------------------------------------------------------------------------

_COUNT = st.integers(0, 2**63 - 1)
_IFACE = st.text(min_size=1, max_size=12)
_IP4 = st.ip_addresses(v=4).map(str)
_IP6 = st.ip_addresses(v=6).map(str)
_REMOTE = st.one_of(
    st.builds("{}:{}".format, _IP4, st.integers(0, 65535)),
    st.builds("[{}]:{}".format, _IP6, st.integers(0, 65535)),
)
_PORT_GROUP = st.fixed_dictionaries(
    {},
    optional={
        "ports": st.lists(
            st.fixed_dictionaries(
                {}, optional={"port": st.integers(1, 65535), "interface": _IFACE}
            ),
            max_size=4,
        ),
        "total": _COUNT,
    },
)
_CONNECTION = st.fixed_dictionaries(
    {"remote_addr": _REMOTE},
    optional={"local_port": st.integers(0, 65535), "local_interface": _IFACE},
)
_METRICS = st.fixed_dictionaries(
    {},
    optional={
        "listening_tcp_ports": _PORT_GROUP,
        "listening_udp_ports": _PORT_GROUP,
        "network_stats": st.fixed_dictionaries({}, optional=dict.fromkeys(STATS, _COUNT)),
        "tcp_connections": st.fixed_dictionaries(
            {},
            optional={
                "established_connections": st.fixed_dictionaries(
                    {},
                    optional={"connections": st.lists(_CONNECTION, max_size=4), "total": _COUNT},
                )
            },
        ),
    },
)
_NUMBER = st.one_of(
    st.integers(-(10**15) + 1, 10**15 - 1), st.integers(-(10**6), 10**6).map(lambda n: n / 8)
)
_CUSTOM_VALUE = st.one_of(
    _NUMBER.map(lambda x: [{"number": x}]),
    st.lists(_NUMBER, max_size=4).map(lambda x: [{"number_list": x}]),
    st.lists(st.from_regex(r"[A-Za-z0-9:_\-/.]{1,20}", fullmatch=True), max_size=4).map(
        lambda x: [{"string_list": x}]
    ),
    st.lists(st.ip_addresses().map(str), max_size=4).map(lambda x: [{"ip_list": x}]),
)
_CUSTOM = st.dictionaries(
    st.from_regex(r"[a-zA-Z0-9:_-]{1,128}", fullmatch=True).filter(
        lambda s: not s.startswith("aws:")
    ),
    _CUSTOM_VALUE,
    max_size=4,
)
_HEADER = st.fixed_dictionaries(
    {
        "report_id": st.integers(1, 2**63 - 1),
        "version": st.from_regex(r"[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
    }
)
_DOCUMENT = st.one_of(
    st.fixed_dictionaries({"header": _HEADER, "metrics": _METRICS}),
    st.fixed_dictionaries({"header": _HEADER, "custom_metrics": _CUSTOM}),
    st.fixed_dictionaries({"header": _HEADER, "metrics": _METRICS, "custom_metrics": _CUSTOM}),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENT)
def test_valid_documents_validate_clean_and_round_trip(doc):
    for style in (LONG, SHORT):
        styled = doc if style is LONG else shorten(doc)
        assert validate_document(styled) == []
        for fmt in (JSON, CBOR):
            data = (
                json.dumps(styled, ensure_ascii=False).encode()
                if fmt is JSON
                else cbor2.dumps(styled)
            )
            result = validate_payload(data)
            assert result.problems == ()
            assert (result.format, result.name_style) == (fmt, style)
            assert result.document == styled


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([None, JSON, CBOR]))
def test_any_bytes_give_a_result_not_an_exception(data, fmt):
    result = validate_payload(data, fmt)
    if result.document is None:
        assert len(result.problems) == 1
        assert result.problems[0].path == "$"
    for problem in result.problems:
        assert "\n" not in problem.message


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from([*LONG_TO_SHORT, *LONG_TO_SHORT.values(), "number", "ip_list", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES)
def test_any_document_gives_problems_not_an_exception(doc):
    problems = validate_document(doc)
    assert all("\n" not in p.message for p in problems)
    if isinstance(doc, dict):
        assert validate_payload(cbor2.dumps(doc), CBOR).problems == tuple(problems)


def test_a_long_text_string_cut_short_is_an_error_not_a_crash():
    # cbor2 5's C decoder (Python 3.9) corrupted its heap on this; the pure decoder reads it
    data = cbor2.dumps("y" * 500_000)[:131_072]
    for _ in range(3):
        assert decode_error(data).startswith("invalid CBOR: premature end of stream")
        garbage = [bytes(1000) for _ in range(2000)]  # allocations that a corrupt heap aborts
        assert len(garbage) == 2000


@pytest.mark.parametrize("data", [b"\xc0\x00", b"\xc1\x60", b"\xc4\x82\x01\x60", b"\xd8\x23\x00"])
def test_bad_tag_contents_are_cbor_errors(data):
    assert decode_error(data).startswith("invalid CBOR: ")
