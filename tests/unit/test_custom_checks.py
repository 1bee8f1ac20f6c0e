"""Custom metric name and value rules (protocol.md §2.6): clean values, or one-line reasons."""

from __future__ import annotations

import ipaddress
import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from defender_agent.custom.checks import (
    Invalid,
    check_ip,
    check_name,
    check_number,
    check_string,
    check_value,
    parse_type,
    sanitize_string,
)
from defender_agent.model import CustomMetric, CustomMetricType, Report
from defender_agent.report.document import to_document
from defender_agent.report.names import NameStyle
from defender_agent.report.validate import validate_document
from defender_agent.rules import significant_digits

N = CustomMetricType.NUMBER
NL = CustomMetricType.NUMBER_LIST
SL = CustomMetricType.STRING_LIST
IPL = CustomMetricType.IP_ADDRESS_LIST


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "name",
    [
        "cpu_usage",
        "a",
        "x" * 128,
        "batteryPercentage",
        "my:metric-1_2",
        "AWS:upper-is-not-reserved",
    ],
)
def test_good_names(name: str) -> None:
    assert check_name(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "does not match"),
        ("x" * 129, "does not match"),
        ("a b", "does not match"),
        ("a.b", "does not match"),
        ("café", "does not match"),
        ("aws:cpu", "starts with 'aws:'"),
        (42, "expected a string, got int"),
        (None, "expected a string, got NoneType"),
    ],
)
def test_bad_names(name: object, reason: str) -> None:
    why = check_name(name)
    assert why is not None and reason in why
    assert "\n" not in why


def test_long_bad_name_is_shortened_in_the_reason() -> None:
    why = check_name("!" * 500)
    assert why is not None and len(why) < 100


# --------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (-7, -7),
        (12.5, 12.5),
        (100 / 3, 33.3333333333333),  # 33.333333333333336: 17 digits, rounded to 15
        (0.1 + 0.2, 0.3),
        (2 / 3, 0.666666666666667),
        (123456789012345, 123456789012345),  # 15 digits: exact
        (10**18, 10**18),  # one significant digit
        (2**63 - 1 - (2**63 - 1) % 10**4, 9223372036854770000),  # 15 significant after zeros
        (1e300, 1e300),
        (-1.5e-300, -1.5e-300),
        (-0.0, -0.0),
        (Decimal("2.5"), 2.5),
        (Fraction(1, 4), 0.25),
    ],
)
def test_numbers_are_cleaned(value: object, expected: float) -> None:
    result = check_number(value)
    assert not isinstance(result, Invalid)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (-math.inf, "not a finite number"),
        (1234567890123456, "16 significant digits"),
        (2**63, "outside the 64-bit integer range"),
        (-(2**63) - 1, "outside the 64-bit integer range"),
        (True, "expected a number"),
        ("42", "expected a number"),
        (None, "expected a number"),
        (complex(1, 2), "expected a number"),
        (Decimal("1e400"), "not a finite number"),
    ],
)
def test_bad_numbers(value: object, reason: str) -> None:
    result = check_number(value)
    assert isinstance(result, Invalid)
    assert reason in result.reason


def test_the_boundary_integers_are_judged_by_their_digits() -> None:
    low = check_number(-(2**63))  # in range, but 19 significant digits
    assert isinstance(low, Invalid) and "19 significant digits" in low.reason
    assert check_number(-(10**18)) == -(10**18)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_float_is_rounded_to_at_most_15_digits(value: float) -> None:
    result = check_number(value)
    assert isinstance(result, float)
    assert significant_digits(result) <= 15
    assert result == pytest.approx(value, rel=1e-14, abs=0)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_cleaned_floats_pass_the_validator(value: float) -> None:
    cleaned = check_number(value)
    assert isinstance(cleaned, float)
    report = Report(report_id=1, custom_metrics=(CustomMetric("x", N, cleaned),))
    assert validate_document(to_document(report)) == []


# --------------------------------------------------------------------------- strings and IPs
@pytest.mark.parametrize("value", ["eth0", "value_1", "a/b.c:d-e_f", "ABC", "0"])
def test_good_strings(value: str) -> None:
    assert check_string(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("One Fish", "characters outside"),
        ("", "empty string"),
        ("tab\there", "characters outside"),
        ("naïve", "characters outside"),
        ("a,b", "characters outside"),
        (7, "expected a string"),
    ],
)
def test_bad_strings(value: object, reason: str) -> None:
    result = check_string(value)
    assert isinstance(result, Invalid) and reason in result.reason


def test_sanitize_string() -> None:
    assert sanitize_string("avahi-daemon: r") == "avahi-daemon:_r"
    assert sanitize_string("(sd-pam)") == "_sd-pam_"
    assert sanitize_string("") == "_"
    assert isinstance(check_string(sanitize_string("anything at all ✓")), str)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:DB8::0:1", "2001:db8::1"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("::1", "::1"),
        (ipaddress.ip_address("198.51.100.3"), "198.51.100.3"),
    ],
)
def test_good_ips(value: object, expected: str) -> None:
    assert check_ip(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("192.0.2.1:80", "not an IPv4 or IPv6 address"),
        ("10.0.0.0/8", "not an IPv4 or IPv6 address"),
        ("fe80::1%eth0", "zone id"),
        ("[2001:db8::1]", "not an IPv4 or IPv6 address"),
        ("256.1.1.1", "not an IPv4 or IPv6 address"),
        ("", "not an IPv4 or IPv6 address"),
        (3232235521, "expected an IP address string"),
    ],
)
def test_bad_ips(value: object, reason: str) -> None:
    result = check_ip(value)
    assert isinstance(result, Invalid) and reason in result.reason


# --------------------------------------------------------------------------- whole values
def test_number_lists_keep_order_and_duplicates_and_are_capped() -> None:
    assert check_value(NL, [3, 1.5, 3, 100 / 3]) == (3, 1.5, 3, 33.3333333333333)
    assert check_value(NL, range(500), list_size=100) == tuple(range(100))
    assert check_value(NL, []) == ()


def test_string_and_ip_lists_lose_duplicates_then_are_capped() -> None:
    assert check_value(SL, ["b", "a", "b", "c"], list_size=2) == ("b", "a")
    assert check_value(IPL, ["192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1"]) == (
        "192.0.2.1",
        "2001:db8::1",
    )
    assert check_value(SL, {"z", "a"}) == ("a", "z")  # sets are sorted: deterministic
    assert check_value(SL, (s for s in ["gen"])) == ("gen",)


def test_values_past_the_cap_are_not_judged() -> None:
    assert check_value(SL, ["ok", "not ok"], list_size=1) == ("ok",)
    assert check_value(NL, [1, float("nan")], list_size=1) == (1,)


@pytest.mark.parametrize(
    ("metric_type", "value", "reason"),
    [
        (NL, [1, "2"], "item 1: expected a number"),
        (NL, [1, float("nan")], "item 1: nan is not a finite number"),
        (SL, ["ok", "not ok"], "item 1: 'not ok' has characters outside"),
        (IPL, ["192.0.2.1", "host.example"], "item 1: 'host.example' is not"),
        (SL, "abc", "expected a list, got str"),
        (SL, b"abc", "expected a list, got bytes"),
        (NL, 5, "expected a list, got int"),
        (SL, {"a": 1}, "expected a list, got dict"),
        (SL, {1, "a"}, "unsortable set"),
        (N, [1], "expected a number"),
    ],
)
def test_bad_values(metric_type: CustomMetricType, value: object, reason: str) -> None:
    result = check_value(metric_type, value)
    assert isinstance(result, Invalid)
    assert reason in result.reason
    assert "\n" not in result.reason


def test_parse_type() -> None:
    assert parse_type("number-list") is NL
    assert parse_type(IPL) is IPL
    for bad in ("ip_list", "Number", "", None, 1):
        with pytest.raises(ValueError, match="expected one of number, number-list"):
            parse_type(bad)


@pytest.mark.parametrize("style", list(NameStyle))
def test_checked_values_of_all_four_types_pass_the_validator(style: NameStyle) -> None:
    raw = {
        ("n", N): 100 / 3,
        ("nl", NL): [0.1 + 0.2, -5, 1e-7 / 3],
        ("sl", SL): ["eth0", "value_1", "a/b.c:d-e"],
        ("ipl", IPL): ["192.0.2.1", "2001:DB8::1", "::ffff:198.51.100.2"],
    }
    metrics = []
    for (name, metric_type), value in raw.items():
        clean = check_value(metric_type, value)
        assert not isinstance(clean, Invalid)
        metrics.append(CustomMetric(name, metric_type, clean))
    document = to_document(Report(report_id=5, custom_metrics=tuple(metrics)), style)
    assert validate_document(document) == []
