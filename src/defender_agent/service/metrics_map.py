"""Device Defender metric values from a decoded metrics report (docs/protocol.md §5.1, §2.6).

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
  ``[A-Za-z0-9:_-/.]``; :mod:`defender_agent.rules`) leaves that metric out of the report's
  values, unless ``drop_unkept=False``.
* **Absent is not zero.** A group, list or counter missing from the report gives no value; an
  empty list gives an empty set (which always conforms, §5.2).

The input is the typed :class:`~defender_agent.model.Report` the validator decoded
(:attr:`~defender_agent.report.validate.ValidationResult.report`): long or short names made no
difference by then, and the payload is never decoded a second time.

>>> from defender_agent.model import ListeningPort, PortList, Report
>>> ports = (ListeningPort(443), ListeningPort(22), ListeningPort(443, "eth1"))
>>> report = Report(report_id=1, listening_tcp_ports=PortList(ports, None))
>>> [v.to_json() for v in metric_values(report)]
[{'count': 3}, {'ports': [22, 443]}]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Callable, Final, Optional

from defender_agent.model import (
    ConnectionList,
    CustomMetric,
    CustomMetricType,
    NetworkStats,
    PortList,
    Report,
)
from defender_agent.rules import is_kept_number, is_kept_string, parse_ip, plain_ip

if TYPE_CHECKING:
    from dataclasses import dataclass as record
else:
    from defender_agent._record import record

__all__ = ["MetricValue", "metric_values"]

_MEMBERS: Final = ("count", "cidrs", "ports", "number", "numbers", "strings")


@record(frozen=True)
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

    def __init__(  # noqa: PLR0917 - the dataclass's constructor: fields in order
        self,
        metric: str,
        count: Optional[int] = None,
        cidrs: Optional[tuple[str, ...]] = None,
        ports: Optional[tuple[int, ...]] = None,
        number: Optional[float] = None,
        numbers: Optional[tuple[float, ...]] = None,
        strings: Optional[tuple[str, ...]] = None,
    ) -> None:
        # written out (a record, not a dataclass): the service's writer makes ~11 per report
        d = self.__dict__
        d["metric"], d["count"], d["cidrs"], d["ports"] = metric, count, cidrs, ports
        d["number"], d["numbers"], d["strings"] = number, numbers, strings
        members = (count, cidrs, ports, number, numbers, strings)
        if sum(member is not None for member in members) != 1:
            set_ = [name for name, member in zip(_MEMBERS, members) if member is not None]
            got = ", ".join(set_) or "none"
            raise ValueError(f"{metric}: expected exactly one of {', '.join(_MEMBERS)}, got {got}")

    @property
    def kind(self) -> str:
        """The name of the member that is set (``count``, ``cidrs``, …)."""
        return next(name for name in _MEMBERS if getattr(self, name) is not None)

    def to_json(self) -> dict[str, object]:
        """The AWS ``MetricValue`` shape: only the member that is set.

        >>> MetricValue("aws:listening-tcp-ports", ports=(22, 443)).to_json()
        {'ports': [22, 443]}
        """
        kind = self.kind
        value = getattr(self, kind)
        return {kind: list(value) if isinstance(value, tuple) else value}

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
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad
            return cls(metric, count=value)
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


def _count(value: Optional[int]) -> Optional[int]:
    return value if value is not None and value >= 0 else None


def _total(total: Optional[int], entries: Optional[tuple[object, ...]]) -> Optional[int]:
    """``total`` when the report has it, else the length of the list as sent, else None."""
    count = _count(total)
    return len(entries) if count is None and entries is not None else count


def _cidrs(texts: Iterable[str]) -> tuple[str, ...]:
    """One-address CIDRs of the addresses, unique, IPv4 first, by address; IPv4-mapped as IPv4.

    Text that is no IP address is skipped (the validator has refused it already).

    >>> _cidrs(["2001:db8::1", "10.0.0.2", "::ffff:9.9.9.9", "10.0.0.2", "nonsense"])
    ('9.9.9.9/32', '10.0.0.2/32', '2001:db8::1/128')
    """
    found = {cidr for text in texts if (cidr := _cidr(text)) is not None}
    return tuple(text for _version, _address, text in sorted(found))


@functools.lru_cache(maxsize=4096)  # devices report the same peers again and again
def _cidr(text: str) -> Optional[tuple[int, int, str]]:
    """``(IP version, address, one-address CIDR)`` of an address text; None when it is none."""
    try:
        address = plain_ip(parse_ip(text))
    except ValueError:
        return None
    return address.version, int(address), f"{address}/{address.max_prefixlen}"


def _ports(group: Optional[PortList], count_name: str, set_name: str) -> list[MetricValue]:
    """``num-*`` and the port set of one listening-ports group."""
    if group is None:
        return []
    values = []
    if (total := _total(group.total, group.ports)) is not None:
        values.append(MetricValue(count_name, count=total))
    if group.ports is not None:
        ports = {p.port for p in group.ports if p.port is not None and 0 <= p.port <= 65535}
        values.append(MetricValue(set_name, ports=tuple(sorted(ports))))
    return values


def _connections(group: Optional[ConnectionList]) -> list[MetricValue]:
    if group is None:
        return []
    values = []
    if (total := _total(group.total, group.connections)) is not None:
        values.append(MetricValue("aws:num-established-tcp-connections", count=total))
    if group.connections is not None:
        cidrs = _cidrs(c.remote_ip for c in group.connections)
        values.append(MetricValue("aws:destination-ip-addresses", cidrs=cidrs))
    return values


def _stats(stats: Optional[NetworkStats]) -> list[MetricValue]:
    if stats is None:
        return []
    pairs = (
        ("aws:all-bytes-in", stats.bytes_in),
        ("aws:all-bytes-out", stats.bytes_out),
        ("aws:all-packets-in", stats.packets_in),
        ("aws:all-packets-out", stats.packets_out),
    )
    return [MetricValue(name, count=c) for name, value in pairs if (c := _count(value)) is not None]


def _custom(metric: CustomMetric, drop_unkept: bool) -> Optional[MetricValue]:
    """One custom metric's value (§2.6); None when Device Defender would not keep it."""
    name, value = metric.name, metric.value
    if metric.type is CustomMetricType.IP_ADDRESS_LIST:
        assert isinstance(value, tuple)
        return MetricValue(name, cidrs=_cidrs(str(text) for text in value))
    if metric.type is CustomMetricType.STRING_LIST:
        assert isinstance(value, tuple)
        strings = tuple(str(text) for text in value)
        kept = not drop_unkept or all(map(is_kept_string, strings))
        return MetricValue(name, strings=strings) if kept else None
    raw = value if isinstance(value, tuple) else (value,)
    numbers = [n for n in raw if isinstance(n, (int, float)) and _is_number(n)]
    if len(numbers) != len(raw):
        return None  # not a finite number (the validator has refused it already)
    if drop_unkept and not all(map(is_kept_number, numbers)):
        return None
    if metric.type is CustomMetricType.NUMBER:
        return MetricValue(name, number=float(numbers[0]))
    return MetricValue(name, numbers=tuple(float(n) for n in numbers))


def metric_values(report: Report, *, drop_unkept: bool = True) -> list[MetricValue]:
    """The Device Defender metric values of one accepted report.

    Args:
        report: The report, as the validator decoded it.
        drop_unkept: Leave out the custom metric values Device Defender drops silently
            (§2.6); False keeps them.

    Returns:
        The values in the order of the module table, then the custom metrics in report order.
        A group missing from the report gives no value.
    """
    values = _stats(report.network_stats)
    tcp, udp = report.listening_tcp_ports, report.listening_udp_ports
    values += _ports(tcp, "aws:num-listening-tcp-ports", "aws:listening-tcp-ports")
    values += _ports(udp, "aws:num-listening-udp-ports", "aws:listening-udp-ports")
    values += _connections(report.tcp_connections)
    for metric in report.custom_metrics:
        if (value := _custom(metric, drop_unkept)) is not None:
            values.append(value)
    return values
