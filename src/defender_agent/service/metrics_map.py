"""Device Defender metric values from a metrics report document (protocol.md §5.1, §2.6).

A report is stored the way Device Defender Detect sees it: one value per Device Defender
metric name, shaped like the AWS ``MetricValue`` (§5.4: ``count``, ``cidrs``, ``ports``,
``number``, ``numbers``, ``strings``). The mapping of §5.1::

    aws:all-bytes-in, aws:all-bytes-out       network_stats.bytes_in / bytes_out      count
    aws:all-packets-in, aws:all-packets-out   network_stats.packets_in / packets_out  count
    aws:num-listening-tcp-ports               listening_tcp_ports                     count
    aws:num-listening-udp-ports               listening_udp_ports                     count
    aws:num-established-tcp-connections       tcp_connections.established_connections count
    aws:listening-tcp-ports                   listening_tcp_ports.ports[].port        ports
    aws:listening-udp-ports                   listening_udp_ports.ports[].port        ports
    aws:destination-ip-addresses              ...connections[].remote_addr            cidrs
    <custom metric name>                      custom_metrics.<name>[0]                by type

and the choices it leaves open:

* **Counts** (``num-*``) are ``total`` when the report has it, else the length of the list as
  sent (one per entry, as the agents compute ``total``). ``total`` is the only figure that
  survives an agent's cutting of long lists, so it is what Detect most likely uses (§5.1 [INF]).
* **Ports** are the sorted, unique port numbers (a port on two interfaces is one port): the
  port-set operators compare sets (§5.2).
* **Destination addresses** are the IP part of each ``remote_addr`` as a one-address CIDR
  (``/32`` or ``/128``), unique, sorted IPv4 first then by address; IPv4-mapped IPv6 addresses
  count as the IPv4 address they carry (the same destination).
* **Custom metrics**: ``number`` → ``number``; ``number_list`` → ``numbers`` and
  ``string_list`` → ``strings``, both as sent (order and repeats kept: they are data);
  ``ip_list`` → ``cidrs`` like the destination addresses. A value Device Defender neither shows
  nor keeps (§2.6: a number with more than 15 significant digits, a string outside
  ``[A-Za-z0-9:_-/.]``) leaves that metric out of the report's values, unless
  ``drop_unkept=False``.
* **Absent is not zero.** A group, list or counter missing from the report gives no value; an
  empty list gives an empty set (which always conforms, §5.2).

Keys may be long or short (:mod:`defender_agent.report.names`), in any mix. The document is one
the validator accepted; anything else of the wrong type is skipped, never an exception.

>>> [v.to_json() for v in metric_values({"hed": {"rid": 1, "v": "1.0"},
...     "met": {"tp": {"pts": [{"pt": 443}, {"pt": 22}, {"pt": 443, "if": "eth1"}]}}})]
[{'count': 3}, {'ports': [22, 443]}]
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Callable, Final, Optional, Union

from defender_agent.report.names import LONG_TO_SHORT

__all__ = ["MetricValue", "metric_values"]

_MEMBERS: Final = ("count", "cidrs", "ports", "number", "numbers", "strings")


@dataclass(frozen=True)
class MetricValue:
    """One Device Defender metric value: the metric name and exactly one value member.

    Attributes:
        metric: The Device Defender metric name (``aws:…``) or the custom metric name.
        count: A count (≥ 0), for the traffic and ``num-*`` metrics.
        cidrs: CIDR strings, for destination addresses and ``ip-address-list`` metrics.
        ports: Port numbers (0-65535), for the listening-port metrics.
        number: A ``number`` custom metric.
        numbers: A ``number-list`` custom metric.
        strings: A ``string-list`` custom metric.

    Raises:
        ValueError: Not exactly one member is set.
    """

    metric: str
    count: Optional[int] = None
    cidrs: Optional[tuple[str, ...]] = None
    ports: Optional[tuple[int, ...]] = None
    number: Optional[float] = None
    numbers: Optional[tuple[float, ...]] = None
    strings: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        set_ = [name for name in _MEMBERS if getattr(self, name) is not None]
        if len(set_) != 1:
            got = ", ".join(set_) or "none"
            raise ValueError(
                f"{self.metric}: expected exactly one of {', '.join(_MEMBERS)}, got {got}"
            )

    @property
    def kind(self) -> str:
        """The name of the member that is set (``count``, ``cidrs``, …)."""
        return next(name for name in _MEMBERS if getattr(self, name) is not None)

    def to_json(self) -> dict[str, object]:
        """The AWS ``MetricValue`` shape: only the member that is set.

        >>> MetricValue("aws:listening-tcp-ports", ports=(22, 443)).to_json()
        {'ports': [22, 443]}
        """
        value = getattr(self, self.kind)
        return {self.kind: list(value) if isinstance(value, tuple) else value}

    @classmethod
    def from_json(cls, metric: str, doc: Mapping[str, object]) -> MetricValue:
        """The inverse of :meth:`to_json`.

        Raises:
            ValueError: ``doc`` is not a one-member ``MetricValue`` of the right types.
        """
        if len(doc) != 1 or next(iter(doc)) not in _MEMBERS:
            raise ValueError(f"{metric}: not a MetricValue: {dict(doc)!r}")
        ((kind, value),) = doc.items()
        bad = ValueError(f"{metric}: bad {kind} {value!r}")
        if kind == "count":
            if _count(value) is None:
                raise bad
            return cls(metric, count=_count(value))
        if kind == "number":
            if not isinstance(value, (int, float)) or not _is_number(value):
                raise bad
            return cls(metric, number=float(value))
        items = tuple(value) if isinstance(value, list) else ()
        if not isinstance(value, list) or not all(map(_ITEM_CHECKS[kind], items)):
            raise bad
        if kind == "ports":
            return cls(metric, ports=items)
        if kind == "numbers":
            return cls(metric, numbers=tuple(float(n) for n in items))
        if kind == "cidrs":
            return cls(metric, cidrs=items)
        return cls(metric, strings=items)


def _is_number(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value)
    )


_ITEM_CHECKS: Final[Mapping[str, Callable[[object], bool]]] = {
    "cidrs": lambda v: isinstance(v, str),
    "strings": lambda v: isinstance(v, str),
    "ports": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535,
    "numbers": _is_number,
}
_MISSING: Final = object()
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def _get(node: object, long: str) -> object:
    """``node[long]`` or ``node[short]``; ``_MISSING`` when absent, null or not an object."""
    if not isinstance(node, Mapping):
        return _MISSING
    value = node.get(long, _MISSING)
    if value is _MISSING and long in LONG_TO_SHORT:
        value = node.get(LONG_TO_SHORT[long], _MISSING)
    return _MISSING if value is None else value


def _count(value: object) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _cidrs(addresses: Iterable[IPAddress]) -> tuple[str, ...]:
    """One-address CIDRs, unique, IPv4 first, by address; IPv4-mapped IPv6 as IPv4."""
    plain = {
        a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a
        for a in addresses
    }
    ordered = sorted(plain, key=lambda a: (a.version, int(a)))
    return tuple(f"{a}/{a.max_prefixlen}" for a in ordered)


def _ip(text: object) -> Optional[IPAddress]:
    if not isinstance(text, str) or "%" in text:  # no zone ids (Python 3.9+ parses them)
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _remote_ip(remote_addr: object) -> Optional[IPAddress]:
    """The IP of ``a.b.c.d:port`` or ``[v6]:port``.

    >>> _remote_ip("[2001:db8::1]:443"), _remote_ip("10.0.0.1:22"), _remote_ip("nonsense")
    (IPv6Address('2001:db8::1'), IPv4Address('10.0.0.1'), None)
    """
    if not isinstance(remote_addr, str):
        return None
    if remote_addr.startswith("["):
        host, sep, _ = remote_addr[1:].partition("]:")
    else:
        host, sep, _ = remote_addr.rpartition(":")
    return _ip(host) if sep else None


def _ports(group: object, names: tuple[str, str]) -> list[MetricValue]:
    """``num-*`` and the port set of one listening-ports group."""
    if group is _MISSING:
        return []
    count_name, set_name = names
    values = []
    entries = _get(group, "ports")
    entries = entries if isinstance(entries, list) else None
    total = _count(_get(group, "total"))
    if total is None and entries is not None:
        total = len(entries)
    if total is not None:
        values.append(MetricValue(count_name, count=total))
    if entries is not None:
        ports = {_get(entry, "port") for entry in entries}
        valid = sorted(p for p in ports if isinstance(p, int) and not isinstance(p, bool))
        values.append(MetricValue(set_name, ports=tuple(p for p in valid if 0 <= p <= 65535)))
    return values


def _connections(group: object) -> list[MetricValue]:
    established = _get(_get(group, "tcp_connections"), "established_connections")
    if established is _MISSING:
        return []
    values = []
    entries = _get(established, "connections")
    entries = entries if isinstance(entries, list) else None
    total = _count(_get(established, "total"))
    if total is None and entries is not None:
        total = len(entries)
    if total is not None:
        values.append(MetricValue("aws:num-established-tcp-connections", count=total))
    if entries is not None:
        ips = (_remote_ip(_get(entry, "remote_addr")) for entry in entries)
        cidrs = _cidrs(ip for ip in ips if ip is not None)
        values.append(MetricValue("aws:destination-ip-addresses", cidrs=cidrs))
    return values


_STATS: Final = (
    ("bytes_in", "aws:all-bytes-in"),
    ("bytes_out", "aws:all-bytes-out"),
    ("packets_in", "aws:all-packets-in"),
    ("packets_out", "aws:all-packets-out"),
)
_KEPT_STRING: Final = re.compile(r"[A-Za-z0-9:_\-/.]+")


def _kept_number(value: float) -> bool:
    """Whether Device Defender keeps the number: at most 15 significant digits (§2.6)."""
    text = str(abs(value)) if isinstance(value, int) else repr(abs(value)).split("e")[0]
    return len(text.replace(".", "").strip("0")) <= 15


def _custom(name: str, entry: object, drop_unkept: bool) -> Optional[MetricValue]:
    """One custom metric, ``[{"<type>": value}]`` (§2.6); None when it gives no value."""
    if not isinstance(entry, list) or len(entry) != 1 or not isinstance(entry[0], Mapping):
        return None
    item = entry[0]
    if _is_number(number := item.get("number")):
        assert isinstance(number, (int, float))
        return MetricValue(name, number=float(number)) if _keep(drop_unkept, [number]) else None
    if isinstance(numbers := item.get("number_list"), list) and all(map(_is_number, numbers)):
        kept = _keep(drop_unkept, numbers)
        return MetricValue(name, numbers=tuple(float(n) for n in numbers)) if kept else None
    if isinstance(strings := item.get("string_list"), list):
        if not all(isinstance(s, str) for s in strings):
            return None
        kept = not drop_unkept or all(_KEPT_STRING.fullmatch(s) for s in strings)
        return MetricValue(name, strings=tuple(strings)) if kept else None
    if isinstance(ip_list := item.get("ip_list"), list):
        ips = [_ip(text) for text in ip_list]
        return MetricValue(name, cidrs=_cidrs(ip for ip in ips if ip is not None))
    return None


def _keep(drop_unkept: bool, numbers: list[Union[int, float]]) -> bool:
    return not drop_unkept or all(_kept_number(n) for n in numbers)


def metric_values(document: Mapping[str, object], *, drop_unkept: bool = True) -> list[MetricValue]:
    """The Device Defender metric values of one accepted report.

    Args:
        document: The decoded report (long or short names), as the validator accepted it.
        drop_unkept: Leave out the custom metric values Device Defender drops silently
            (§2.6); False keeps them.

    Returns:
        The values in the order of the module table, then the custom metrics in report order.
        A group missing from the report gives no value.
    """
    metrics = _get(document, "metrics")
    values: list[MetricValue] = []
    stats = _get(metrics, "network_stats")
    for field_name, metric in _STATS:
        if (count := _count(_get(stats, field_name))) is not None:
            values.append(MetricValue(metric, count=count))
    tcp = ("aws:num-listening-tcp-ports", "aws:listening-tcp-ports")
    udp = ("aws:num-listening-udp-ports", "aws:listening-udp-ports")
    values += _ports(_get(metrics, "listening_tcp_ports"), tcp)
    values += _ports(_get(metrics, "listening_udp_ports"), udp)
    values += _connections(metrics)
    custom = _get(document, "custom_metrics")
    if isinstance(custom, Mapping):
        for name, entry in custom.items():
            if isinstance(name, str) and (value := _custom(name, entry, drop_unkept)):
                values.append(value)
    return values
