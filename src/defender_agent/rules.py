"""The Device Defender rules for names and values, in one place.

Every module that checks a thing name, a metric name or a metric value takes the rule
from here: the agent's configuration, the custom metrics' checks before sending, the
report validator and the service's responder and storage. The rules and their sources
are described in ``docs/protocol.md`` (§1.2 thing names, §2.4 addresses, §2.6 custom
metric values, §7.7 custom metric names).

The functions only tell whether a value follows a rule (or parse it); the wording of a
message and what to do about a broken rule (refuse, warn, leave out) is the caller's.

>>> significant_digits(120.50), is_kept_number(1234567890123456), is_kept_string("eth0")
(4, False, True)
>>> split_remote_addr("[2001:db8::5]:443")
('2001:db8::5', 443)
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Final, Optional, Union

__all__ = [
    "CUSTOM_METRIC_NAME_PATTERN",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_SIGNIFICANT_DIGITS",
    "RESERVED_NAME_PREFIX",
    "STRING_VALUE_PATTERN",
    "IPAddress",
    "custom_metric_name_problem",
    "is_custom_metric_name",
    "is_kept_number",
    "is_kept_string",
    "parse_ip",
    "plain_ip",
    "sanitize_string",
    "significant_digits",
    "split_remote_addr",
    "validate_thing_name",
]

#: The integers a report may carry: signed 64-bit.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

#: Device Defender keeps numbers of at most this many significant digits (§2.6).
MAX_SIGNIFICANT_DIGITS: Final = 15

#: The characters of a string-list value Device Defender keeps (§2.6), as shown in messages.
STRING_VALUE_PATTERN: Final = "[A-Za-z0-9:_-/.]"
_STRING_VALUE: Final = re.compile(r"[A-Za-z0-9:_\-/.]+")
_NOT_STRING_CHAR: Final = re.compile(r"[^A-Za-z0-9:_\-/.]")

#: A custom metric name (§7.7), as shown in messages.
CUSTOM_METRIC_NAME_PATTERN: Final = "[a-zA-Z0-9:_-]{1,128}"
_CUSTOM_METRIC_NAME: Final = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
#: Names starting with this are AWS's own metrics, never custom ones.
RESERVED_NAME_PREFIX: Final = "aws:"

_PORT: Final = re.compile(r"[0-9]{1,5}")

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def validate_thing_name(name: str, *, max_bytes: int = 128) -> str:
    """Check a thing name as Device Defender does (docs/protocol.md §1.2); return it.

    1 to 128 bytes of UTF-8 (``max_bytes``: the service's policy may say otherwise),
    no control characters, and none of ``+ # /``, which would change the meaning of
    the MQTT topic.

    >>> validate_thing_name("gateway-01")
    'gateway-01'
    >>> validate_thing_name("a/b")
    Traceback (most recent call last):
    ...
    ValueError: must not contain '/', '+' or '#'
    """
    size = len(name.encode("utf-8"))
    if not 1 <= size <= max_bytes:
        raise ValueError(f"must be 1 to {max_bytes} bytes of UTF-8, got {size}")
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in name):
        raise ValueError("must not contain control characters")
    if any(ch in name for ch in "/+#"):
        raise ValueError("must not contain '/', '+' or '#'")
    return name


def custom_metric_name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot be a custom metric name (to follow the name in a message), or None.

    >>> custom_metric_name_problem("cpu_usage") is None
    True
    >>> custom_metric_name_problem("aws:cpu"), custom_metric_name_problem("a b")
    ("starts with 'aws:' (reserved for AWS metrics)", 'does not match [a-zA-Z0-9:_-]{1,128}')
    """
    if not _CUSTOM_METRIC_NAME.fullmatch(name):
        return f"does not match {CUSTOM_METRIC_NAME_PATTERN}"
    if name.startswith(RESERVED_NAME_PREFIX):
        return f"starts with {RESERVED_NAME_PREFIX!r} (reserved for AWS metrics)"
    return None


def is_custom_metric_name(name: str) -> bool:
    """Whether ``name`` may name a custom metric (§7.7).

    >>> is_custom_metric_name("cpu_usage"), is_custom_metric_name("aws:cpu")
    (True, False)
    """
    return custom_metric_name_problem(name) is None


def significant_digits(number: Union[int, float]) -> int:
    """Digits of precision, without leading and trailing zeros (as Device Defender counts them).

    A float counts the digits of its shortest ``repr``, so ``100 / 3`` has 17.

    >>> significant_digits(120.50), significant_digits(0.001), significant_digits(10**20)
    (4, 1, 1)
    >>> significant_digits(-42), significant_digits(100 / 3), significant_digits(1.5e300)
    (2, 17, 2)
    """
    text = str(abs(number)) if isinstance(number, int) else repr(abs(number)).split("e")[0]
    return len(text.replace(".", "").strip("0"))


def is_kept_number(number: Union[int, float]) -> bool:
    """Whether Device Defender keeps the number: at most 15 significant digits (§2.6).

    >>> is_kept_number(33.3333333333333), is_kept_number(100 / 3)
    (True, False)
    """
    return significant_digits(number) <= MAX_SIGNIFICANT_DIGITS


def is_kept_string(text: str) -> bool:
    """Whether Device Defender keeps a string-list value: non-empty, ``[A-Za-z0-9:_-/.]`` only.

    >>> is_kept_string("/dev/sda1"), is_kept_string("One Fish"), is_kept_string("")
    (True, False, False)
    """
    return _STRING_VALUE.fullmatch(text) is not None


def sanitize_string(text: str) -> str:
    """Replace the characters a string-list value may not have by ``_`` (for built-in values).

    >>> sanitize_string("avahi-daemon: r"), sanitize_string("")
    ('avahi-daemon:_r', '_')
    """
    return _NOT_STRING_CHAR.sub("_", text) or "_"


@functools.lru_cache(maxsize=4096)  # reports repeat their peers; ipaddress is slow to parse
def parse_ip(text: str) -> IPAddress:
    """A bare IPv4 or IPv6 address: no port, prefix length or zone id.

    Raises:
        ValueError: not such an address; the message is the reason, written to follow
            the text in a message (``'fe80::1%eth0' has a zone id``).

    >>> parse_ip("2001:DB8::1"), parse_ip("192.0.2.1")
    (IPv6Address('2001:db8::1'), IPv4Address('192.0.2.1'))
    >>> parse_ip("fe80::1%eth0")
    Traceback (most recent call last):
    ...
    ValueError: has a zone id
    """
    if "%" in text:  # ipaddress accepts IPv6 zone ids since Python 3.9; reports may not
        raise ValueError("has a zone id")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("is not an IPv4 or IPv6 address") from None


def plain_ip(address: IPAddress) -> IPAddress:
    """The address, an IPv4-mapped IPv6 address as the IPv4 address it carries.

    >>> plain_ip(parse_ip("::ffff:192.0.2.1")), plain_ip(parse_ip("2001:db8::1"))
    (IPv4Address('192.0.2.1'), IPv6Address('2001:db8::1'))
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def split_remote_addr(text: str, *, check_address: bool = True) -> tuple[str, int]:
    """Split a connection's ``remote_addr``, ``a.b.c.d:port`` or ``[ipv6]:port`` (§2.4).

    Args:
        text: The ``remote_addr`` value.
        check_address: Whether to check that the address is an IPv4 address (no brackets)
            or an IPv6 one (in brackets); False when it has been checked already.

    Returns:
        The address as written (without brackets) and the port (0 to 65535).

    Raises:
        ValueError: not that form; the message says why.

    >>> split_remote_addr("203.0.113.7:8883")
    ('203.0.113.7', 8883)
    >>> split_remote_addr("2001:db8::1:443")
    Traceback (most recent call last):
    ...
    ValueError: an IPv6 address must be in brackets
    """
    bracketed = text.startswith("[")
    host, sep, port = text[1:].partition("]:") if bracketed else text.rpartition(":")
    if not bracketed and ":" in host:
        raise ValueError("an IPv6 address must be in brackets")
    if not sep:
        raise ValueError("no port")
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"bad port {port!r}")
    version = 6 if bracketed else 4
    try:
        if not check_address or parse_ip(host).version == version:
            return host, int(port)
    except ValueError:
        pass
    raise ValueError(f"{host!r} is not an IPv{version} address")
