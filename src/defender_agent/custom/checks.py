"""The rules a custom metric's name and value must follow before they go into a report.

They are the rules of protocol.md §2.6 and §7.7 (kept in :mod:`defender_agent.rules`),
the ones the service applies silently (a value that breaks them is accepted but
dropped), checked here so that a bad value is left out with a warning instead of
vanishing:

* **name**: 1 to 128 characters of ``[a-zA-Z0-9:_-]``, not starting with ``aws:``;
* **number**: finite, an integer within ±2**63, at most 15 significant digits.
  Floats are *rounded* to 15 significant digits first, so ordinary results of
  arithmetic pass (``100 / 3`` is ``33.333333333333336``, 17 digits, and is
  sent as ``33.3333333333333``); an integer is exact and is never rounded:
  one with more than 15 significant digits is refused;
* **string-list**: non-empty strings of ``A-Z a-z 0-9 : _ - / .``;
* **ip-address-list**: bare IPv4 or IPv6 addresses (no port, prefix or zone);
  IPv4-mapped IPv6 addresses are written as the IPv4 address.

Lists are cut to ``list_size`` entries, deterministically (the first ones);
string and IP lists lose their duplicates first (they are sets to Device
Defender's ``in-set`` and ``not-in-cidr-set``), number lists keep them.

Each check returns the clean value, or :class:`Invalid` with a one-line reason.

>>> check_value(CustomMetricType.NUMBER, 100 / 3)
33.3333333333333
>>> check_value(CustomMetricType.STRING_LIST, ["sshd", "sshd", "ntpd"])
('sshd', 'ntpd')
>>> check_value(CustomMetricType.IP_ADDRESS_LIST, ["10.0.0.1:80"])
Invalid(reason="item 0: '10.0.0.1:80' is not an IPv4 or IPv6 address")
"""

from __future__ import annotations

import decimal
import ipaddress
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Optional, Union

from defender_agent.model import CustomMetricType, CustomValue
from defender_agent.rules import (
    INT64_MAX,
    INT64_MIN,
    MAX_SIGNIFICANT_DIGITS,
    STRING_VALUE_PATTERN,
    custom_metric_name_problem,
    is_kept_string,
    parse_ip,
    plain_ip,
    sanitize_string,
    significant_digits,
)

__all__ = [
    "Invalid",
    "check_ip",
    "check_name",
    "check_number",
    "check_string",
    "check_value",
    "parse_type",
    "sanitize_string",
]

_SHOWN: Final = 40  # characters of a bad value quoted in a reason

Number = Union[int, float]


@dataclass(frozen=True)
class Invalid:
    """A value that breaks a rule, with the reason in one line."""

    reason: str


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def check_name(name: object) -> Optional[str]:
    """Return why ``name`` cannot be a custom metric name, or ``None`` when it can.

    >>> check_name("cpu_usage") is None, check_name("aws:cpu"), check_name("a b")
    (True, "'aws:cpu' starts with 'aws:' (reserved for AWS metrics)", "'a b' does not match [a-zA-Z0-9:_-]{1,128}")
    """  # noqa: E501 - a doctest output line
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    problem = custom_metric_name_problem(name)
    return None if problem is None else f"{_show(name)} {problem}"


def parse_type(value: object) -> CustomMetricType:
    """The metric type named by ``value`` (the CreateCustomMetric spelling, or the enum).

    >>> parse_type("ip-address-list")
    <CustomMetricType.IP_ADDRESS_LIST: 'ip-address-list'>

    Raises:
        ValueError: not one of the four types.
    """
    if isinstance(value, CustomMetricType):
        return value
    if isinstance(value, str):
        try:
            return CustomMetricType(value)
        except ValueError:
            pass
    choices = ", ".join(t.value for t in CustomMetricType)
    raise ValueError(f"expected one of {choices}, got {_show(value)}")


def check_number(value: object) -> Union[Number, Invalid]:
    """A finite number for a report: floats rounded to 15 significant digits, integers exact.

    Any real number type is accepted (``numpy.float64``, ``Decimal``, ``Fraction``, ...);
    ``bool`` is not. A float so close to the largest double that rounding it up would
    overflow is rounded to 14 digits instead.

    >>> check_number(12.5), check_number(0.1 + 0.2), check_number(-7)
    (12.5, 0.3, -7)
    >>> check_number(float("nan"))
    Invalid(reason='nan is not a finite number')
    >>> check_number(1234567890123456789)
    Invalid(reason='1234567890123456789 has 19 significant digits; at most 15 are kept by Device Defender')
    """  # noqa: E501 - a doctest output line
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        return Invalid(f"expected a number, got {_show(value)}")
    if isinstance(value, numbers.Integral):
        number: Number = int(value)
        if not INT64_MIN <= number <= INT64_MAX:
            return Invalid(f"{number} is outside the 64-bit integer range")
    else:
        try:
            number = float(value)
        except (OverflowError, ValueError):
            return Invalid(f"{_show(value)} is not a finite number")
        if not math.isfinite(number):
            return Invalid(f"{_show(number)} is not a finite number")
        # Rounding, not refusing: doubles carry 15.95 digits, so almost every computed float
        # has 16 or 17; any decimal of at most 15 digits survives the round trip (DBL_DIG),
        # so the rounded float's shortest repr has at most 15.
        rounded = float(f"{number:.{MAX_SIGNIFICANT_DIGITS}g}")
        if not math.isfinite(rounded):  # 1.7976931348623157e308 rounds up past the largest
            rounded = float(f"{number:.{MAX_SIGNIFICANT_DIGITS - 1}g}")
        number = rounded
    digits = significant_digits(number)
    if digits > MAX_SIGNIFICANT_DIGITS:
        return Invalid(
            f"{number} has {digits} significant digits; "
            f"at most {MAX_SIGNIFICANT_DIGITS} are kept by Device Defender"
        )
    return number


def check_string(value: object) -> Union[str, Invalid]:
    """A string-list value: non-empty, only ``A-Z a-z 0-9 : _ - / .``.

    >>> check_string("eth0"), check_string("One Fish")
    ('eth0', Invalid(reason="'One Fish' has characters outside [A-Za-z0-9:_-/.]"))
    """
    if not isinstance(value, str):
        return Invalid(f"expected a string, got {_show(value)}")
    if not value:
        return Invalid("empty string")
    if not is_kept_string(value):
        return Invalid(f"{_show(value)} has characters outside {STRING_VALUE_PATTERN}")
    return value


def check_ip(value: object) -> Union[str, Invalid]:
    """A bare IPv4 or IPv6 address in its canonical form (IPv4-mapped shown as IPv4).

    >>> check_ip("2001:DB8:0::1"), check_ip("::ffff:192.0.2.1")
    ('2001:db8::1', '192.0.2.1')
    """
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(plain_ip(value))
    if not isinstance(value, str):
        return Invalid(f"expected an IP address string, got {_show(value)}")
    try:
        return str(plain_ip(parse_ip(value)))
    except ValueError as exc:
        return Invalid(f"{_show(value)} {exc}")


def _items(value: object) -> Union[list[object], Invalid]:
    """The elements of a list value; a str/bytes/mapping is not a list, a set is sorted."""
    if isinstance(value, (str, bytes, bytearray, dict)) or not isinstance(value, Iterable):
        return Invalid(f"expected a list, got {type(value).__name__}")
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return Invalid("expected a list, got an unsortable set")
    return list(value)


def check_value(
    metric_type: CustomMetricType, value: object, *, list_size: int = 100
) -> Union[CustomValue, Invalid]:
    """Check and clean a raw value for a metric of ``metric_type``.

    Args:
        metric_type: the metric's type.
        value: a number for ``number``; an iterable of numbers, strings or IP
            addresses for the list types.
        list_size: the most entries a list keeps (the first ones, after
            duplicates are removed from string and IP lists).

    Returns:
        The value ready for :class:`~defender_agent.model.CustomMetric` (lists
        as tuples), or :class:`Invalid` naming the first bad element.
    """
    if metric_type is CustomMetricType.NUMBER:
        return check_number(value)
    items = _items(value)
    if isinstance(items, Invalid):
        return items
    if metric_type is CustomMetricType.NUMBER_LIST:
        numbers_out: list[Number] = []
        for index, item in enumerate(items[:list_size]):
            number = check_number(item)
            if isinstance(number, Invalid):
                return Invalid(f"item {index}: {number.reason}")
            numbers_out.append(number)
        return tuple(numbers_out)
    check = check_string if metric_type is CustomMetricType.STRING_LIST else check_ip
    seen: dict[str, None] = {}  # insertion-ordered set
    for index, item in enumerate(items):
        if len(seen) >= list_size:
            break  # values that are not sent are not judged
        clean = check(item)
        if isinstance(clean, Invalid):
            return Invalid(f"item {index}: {clean.reason}")
        seen[clean] = None
    return tuple(seen)
