"""The Device Defender name and value rules: one module, and every checker agrees with it."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

import defender_agent
from defender_agent.custom.checks import Invalid, check_ip, check_name, check_string
from defender_agent.report.validate import Severity, validate_document
from defender_agent.rules import (
    IPAddress,
    custom_metric_name_problem,
    is_custom_metric_name,
    is_kept_number,
    is_kept_string,
    parse_ip,
    plain_ip,
    sanitize_string,
    significant_digits,
    split_remote_addr,
)

HEADER = {"report_id": 1, "version": "1.0"}
SRC = Path(defender_agent.__file__).parent


def custom_problems(name: str, entry: object) -> list[tuple[str, Severity]]:
    """The validator's findings for one custom metric."""
    problems = validate_document({"header": HEADER, "custom_metrics": {name: entry}})
    return [(problem.message, problem.severity) for problem in problems]


# ------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize(
    ("number", "digits"),
    [
        (120.50, 4),
        (0.001, 1),
        (-42, 2),
        (10**20, 1),
        (33.333333333333336, 17),
        (1.5e300, 2),
        (0, 0),
    ],
)
def test_significant_digits(number: float, digits: int) -> None:
    assert significant_digits(number) == digits


def test_fifteen_digits_are_kept_sixteen_are_not() -> None:
    assert is_kept_number(123456789012345) and is_kept_number(-1.23456789012345)
    assert not is_kept_number(1234567890123456) and not is_kept_number(0.1 + 0.2)


@given(st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False))
def test_the_validator_warns_exactly_when_a_number_is_not_kept(number: float) -> None:
    warned = any(
        severity is Severity.WARNING for _, severity in custom_problems("n", [{"number": number}])
    )
    assert warned == (not is_kept_number(number))


# ------------------------------------------------------------------------------ strings
@pytest.mark.parametrize("text", ["eth0", "value_1", "a/b.c:d-e_f", "0"])
def test_kept_strings(text: str) -> None:
    assert is_kept_string(text) and sanitize_string(text) == text


@pytest.mark.parametrize("text", ["", "One Fish", "é", "a\n", "a,b", "tab\t"])
def test_strings_that_are_dropped(text: str) -> None:
    assert not is_kept_string(text)
    assert is_kept_string(sanitize_string(text))


@given(st.text(max_size=8))
def test_checks_validator_and_rule_agree_on_strings(text: str) -> None:
    kept = is_kept_string(text)
    assert (check_string(text) == text) == kept
    assert (custom_problems("s", [{"string_list": [text]}]) == []) == kept


# ------------------------------------------------------------------------------ names
@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("cpu_usage", None),
        ("a:b-c_D9", None),
        ("x" * 128, None),
        ("x" * 129, "does not match [a-zA-Z0-9:_-]{1,128}"),
        ("", "does not match [a-zA-Z0-9:_-]{1,128}"),
        ("a b", "does not match [a-zA-Z0-9:_-]{1,128}"),
        ("aws:cpu", "starts with 'aws:' (reserved for AWS metrics)"),
    ],
)
def test_custom_metric_names(name: str, problem: Optional[str]) -> None:
    assert custom_metric_name_problem(name) == problem
    assert is_custom_metric_name(name) == (problem is None)


@given(st.text("abcAZ09:_-. aws", max_size=10))
def test_checks_validator_and_rule_agree_on_names(name: str) -> None:
    good = is_custom_metric_name(name)
    assert (check_name(name) is None) == good
    assert (custom_problems(name, [{"number": 1}]) == []) == good


# ------------------------------------------------------------------------------ addresses
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("fe80::1%eth0", "has a zone id"),
        ("10.0.0.1:80", "is not an IPv4 or IPv6 address"),
        ("10.0.0.0/8", "is not an IPv4 or IPv6 address"),
        ("", "is not an IPv4 or IPv6 address"),
    ],
)
def test_parse_ip_refuses_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        parse_ip(text)
    assert check_ip(text) == Invalid(f"{text!r} {reason}")


@given(st.ip_addresses())
def test_every_address_parses_and_mapped_ones_read_as_ipv4(
    address: IPAddress,
) -> None:
    assert parse_ip(str(address)) == address
    plain = plain_ip(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        assert plain == address.ipv4_mapped
    else:
        assert plain == address
    assert check_ip(str(address)) == str(plain)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7:8883", ("203.0.113.7", 8883)),
        ("[2001:db8::5]:0", ("2001:db8::5", 0)),
        ("[::ffff:192.0.2.1]:65535", ("::ffff:192.0.2.1", 65535)),
    ],
)
def test_split_remote_addr(text: str, expected: tuple[str, int]) -> None:
    assert split_remote_addr(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2001:db8::1:443", "an IPv6 address must be in brackets"),
        ("203.0.113.7", "no port"),
        ("[2001:db8::1]", "no port"),
        ("203.0.113.7:65536", "bad port '65536'"),
        ("203.0.113.7:-1", "bad port '-1'"),
        ("[203.0.113.7]:80", "'203.0.113.7' is not an IPv6 address"),
        ("example.com:80", "'example.com' is not an IPv4 address"),
        ("[fe80::1%eth0]:80", "'fe80::1%eth0' is not an IPv6 address"),
    ],
)
def test_split_remote_addr_says_why_not(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        split_remote_addr(text)
    connection = {"remote_addr": text, "local_port": 1}
    metrics = {"tcp_connections": {"established_connections": {"connections": [connection]}}}
    (problem,) = validate_document({"header": HEADER, "metrics": metrics})
    assert problem.message.endswith(f"({reason})")


# ------------------------------------------------------------------------------ one place
_RULES_IN_CODE = {  # how each rule looks in code -> the other files allowed to have it
    r'r"[A-Za-z0-9:_\-/.]': (),  # the string-list characters, as a regex literal
    r'r"[^A-Za-z0-9:_\-/.]': (),
    # the custom metric name; aws-setup checks a security profile's name, another AWS rule
    'r"[a-zA-Z0-9:_-]{1,128}"': ("cli/aws_setup.py",),
    ".ipv4_mapped": (),  # IPv4-mapped addresses read as IPv4
    '.strip("0")': (),  # counting significant digits
}


@pytest.mark.parametrize(("code", "elsewhere"), _RULES_IN_CODE.items())
def test_the_value_rules_are_written_only_in_rules_py(
    code: str, elsewhere: tuple[str, ...]
) -> None:
    found = sorted(
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if code in path.read_text(encoding="utf-8")
    )
    assert found == sorted(["rules.py", *elsewhere]), json.dumps(found)
