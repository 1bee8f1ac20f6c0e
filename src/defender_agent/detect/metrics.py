"""A report's datapoint for one metric, and the ``MetricValue`` JSON of a datapoint.

The report feeds the metrics as docs/protocol.md §5.1 maps them (the same choices as
:mod:`defender_agent.service.metrics_map`, which stores them):

====================================  ===============================================  ==========
metric                                from the report                                  datapoint
====================================  ===============================================  ==========
``aws:all-bytes-in`` / ``-out``       ``network_stats.bytes_in`` / ``bytes_out``       ``int``
``aws:all-packets-in`` / ``-out``     ``network_stats.packets_in`` / ``packets_out``   ``int``
``aws:num-listening-tcp-ports``       ``listening_tcp_ports.total``, else list length  ``int``
``aws:num-listening-udp-ports``       ``listening_udp_ports.total``, else list length  ``int``
``aws:num-established-tcp-conn...``   ``tcp_connections...total``, else list length    ``int``
``aws:listening-tcp-ports``           the ``port`` of each entry                       ``Ports``
``aws:listening-udp-ports``           the ``port`` of each entry                       ``Ports``
``aws:destination-ip-addresses``      the IP part of each ``remote_addr``              ``Addresses``
custom ``number``                     ``custom_metrics.NAME[0].number``                ``float``
custom ``number-list``                ``...number_list``                               ``Numbers``
custom ``string-list``                ``...string_list``                               ``Strings``
custom ``ip-address-list``            ``...ip_list``                                   ``Addresses``
====================================  ===============================================  ==========

``Ports``, ``Addresses``, ``Numbers`` and ``Strings`` are frozensets (a set operator compares
sets: order and repeats do not matter) of their own type, so that even an empty one knows
its ``MetricValue`` member. Addresses are :mod:`ipaddress` objects; an IPv4-mapped IPv6
address is the IPv4 address it carries (the same destination).

**Absent is no datapoint.** :func:`datapoint` is None when the report does not carry the
metric: the group, list or counter is missing, a traffic counter is negative, or the custom
metric's value is one Device Defender neither shows nor keeps (a number with more than 15
significant digits, a string outside ``[A-Za-z0-9:_-/.]``; docs/protocol.md §2.6). An empty
list is a datapoint: an empty set, which conforms to every set behavior.

>>> from defender_agent.model import ListeningPort, PortList, Report
>>> report = Report(report_id=1, listening_tcp_ports=PortList((ListeningPort(443),), 5))
>>> datapoint(report, "aws:num-listening-tcp-ports"), datapoint(report, "aws:listening-tcp-ports")
(5, Ports({443}))
>>> datapoint(report, "aws:all-bytes-out") is None
True
>>> metric_value_json(Ports({443, 22})), metric_value_json(Addresses())
({'ports': [22, 443]}, {'cidrs': []})
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Iterable
from typing import Any, Callable, Final, Optional, Union

from defender_agent.model import CustomMetricType, PortList, Report
from defender_agent.rules import IPAddress, is_kept_number, is_kept_string, parse_ip, plain_ip

__all__ = [
    "Addresses",
    "Datapoint",
    "Numbers",
    "Ports",
    "Strings",
    "datapoint",
    "datapoints",
    "metric_value_json",
]


class Ports(frozenset[int]):
    """Listening port numbers (``MetricValue.ports``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        inner = ", ".join(map(str, sorted(self)))
        return f"Ports({{{inner}}})" if self else "Ports()"


class Addresses(frozenset[IPAddress]):
    """IP addresses (``MetricValue.cidrs``, one-address CIDRs)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Addresses({sorted(map(str, self)) if self else ''})"


class Numbers(frozenset[float]):
    """A ``number-list`` custom metric's values (``MetricValue.numbers``)."""

    __slots__ = ()


class Strings(frozenset[str]):
    """A ``string-list`` custom metric's values (``MetricValue.strings``)."""

    __slots__ = ()


Datapoint = Union[int, float, Ports, Addresses, Numbers, Strings]


def _count(value: Optional[int]) -> Optional[int]:
    return value if value is not None and value >= 0 else None


def _total(total: Optional[int], entries: Optional[tuple[object, ...]]) -> Optional[int]:
    """``total`` when it is a count, else the number of entries sent, else None."""
    if total is not None and total >= 0:
        return total
    return None if entries is None else len(entries)


def _addresses(texts: Iterable[str]) -> Addresses:
    """The addresses of the texts (text that is no address is skipped: the validator refused it).

    >>> _addresses(["::ffff:10.0.0.1", "10.0.0.1", "2001:db8::1", "x"])
    Addresses(['10.0.0.1', '2001:db8::1'])
    """
    return Addresses(a for a in map(_address, texts) if a is not None)


@functools.lru_cache(maxsize=8192)  # a device's destinations repeat from report to report
def _address(text: str) -> Optional[IPAddress]:
    try:
        return plain_ip(parse_ip(text))
    except ValueError:
        return None


def _ports(group: Optional[PortList]) -> Optional[Ports]:
    if group is None or group.ports is None:
        return None
    return Ports(p.port for p in group.ports if p.port is not None and 0 <= p.port <= 65535)


def _port_count(group: Optional[PortList]) -> Optional[int]:
    return None if group is None else _total(group.total, group.ports)


def _stat(name: str) -> Callable[[Report], Optional[int]]:
    def read(report: Report) -> Optional[int]:
        stats = report.network_stats
        return None if stats is None else _count(getattr(stats, name))

    return read


def _connections(report: Report) -> Optional[int]:
    group = report.tcp_connections
    return None if group is None else _total(group.total, group.connections)


def _destinations(report: Report) -> Optional[Addresses]:
    group = report.tcp_connections
    if group is None or group.connections is None:
        return None
    return _addresses(c.remote_ip for c in group.connections)


_READERS: Final[dict[str, Callable[[Report], Optional[Datapoint]]]] = {
    "aws:all-bytes-in": _stat("bytes_in"),
    "aws:all-bytes-out": _stat("bytes_out"),
    "aws:all-packets-in": _stat("packets_in"),
    "aws:all-packets-out": _stat("packets_out"),
    "aws:num-listening-tcp-ports": lambda r: _port_count(r.listening_tcp_ports),
    "aws:num-listening-udp-ports": lambda r: _port_count(r.listening_udp_ports),
    "aws:num-established-tcp-connections": _connections,
    "aws:listening-tcp-ports": lambda r: _ports(r.listening_tcp_ports),
    "aws:listening-udp-ports": lambda r: _ports(r.listening_udp_ports),
    "aws:destination-ip-addresses": _destinations,
}


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _custom(report: Report, name: str) -> Optional[Datapoint]:
    metric = next((m for m in report.custom_metrics if m.name == name), None)
    if metric is None:
        return None
    value = metric.value
    if metric.type is CustomMetricType.NUMBER:
        if not _finite(value) or not is_kept_number(value):  # type: ignore[arg-type]
            return None
        return float(value)  # type: ignore[arg-type]
    items = value if isinstance(value, tuple) else (value,)
    if metric.type is CustomMetricType.NUMBER_LIST:
        if not all(_finite(n) and is_kept_number(n) for n in items):  # type: ignore[arg-type]
            return None
        return Numbers(float(n) for n in items)
    if metric.type is CustomMetricType.STRING_LIST:
        strings = [str(s) for s in items]
        return Strings(strings) if all(map(is_kept_string, strings)) else None
    return _addresses(str(s) for s in items)


def datapoint(report: Report, metric: str) -> Optional[Datapoint]:
    """The report's datapoint for ``metric`` (see the module's table); None when absent.

    Cloud-side ``aws:*`` metrics are never in a report: None.

    >>> from defender_agent.model import CustomMetric, CustomMetricType as T, Report
    >>> r = Report(report_id=1, custom_metrics=(CustomMetric("users", T.STRING_LIST, ("a", "b")),
    ...     CustomMetric("batt", T.NUMBER, 80), CustomMetric("odd", T.STRING_LIST, ("a b",))))
    >>> datapoint(r, "users") == {"a", "b"}, datapoint(r, "batt"), datapoint(r, "odd")
    (True, 80.0, None)
    """
    reader = _READERS.get(metric)
    if reader is not None:
        return reader(report)
    if metric.startswith("aws:"):
        return None
    return _custom(report, metric)


def datapoints(report: Report, metrics: Iterable[str]) -> dict[str, Datapoint]:
    """:func:`datapoint` of each metric the report carries (the engine's one pass per report).

    >>> from defender_agent.model import NetworkStats, Report
    >>> r = Report(report_id=1, network_stats=NetworkStats(1, 2, 3, None))
    >>> datapoints(r, ["aws:all-bytes-out", "aws:all-packets-out", "aws:num-disconnects"])
    {'aws:all-bytes-out': 2}
    """
    found: dict[str, Datapoint] = {}
    for metric in metrics:
        if metric not in found and (value := datapoint(report, metric)) is not None:
            found[metric] = value
    return found


@functools.lru_cache(maxsize=4096)  # a device's destinations repeat; formatting is slow
def _cidrs(addresses: Addresses) -> tuple[str, ...]:
    """One-address CIDRs, IPv4 first, by address."""
    ordered = sorted(addresses, key=lambda a: (a.version, int(a)))
    return tuple(f"{a}/{a.max_prefixlen}" for a in ordered)


def metric_value_json(value: object) -> dict[str, Any]:
    """The AWS ``MetricValue`` shape of a datapoint: one member, lists sorted.

    ``int`` -> ``count``, ``float`` -> ``number``, :class:`Ports` -> ``ports``,
    :class:`Addresses` (or any set of addresses) -> ``cidrs`` (one-address CIDRs, IPv4 first),
    :class:`Numbers` -> ``numbers``, :class:`Strings` -> ``strings``. A plain set is judged by
    its members (an empty plain set is ``strings``).

    Raises:
        TypeError: not a datapoint.

    >>> metric_value_json(3), metric_value_json(2.5), metric_value_json(Numbers({2.0, 1.0}))
    ({'count': 3}, {'number': 2.5}, {'numbers': [1.0, 2.0]})
    >>> metric_value_json(Addresses({ipaddress.ip_address("2001:db8::1"),
    ...                              ipaddress.ip_address("10.0.0.1")}))
    {'cidrs': ['10.0.0.1/32', '2001:db8::1/128']}
    """
    if isinstance(value, bool):
        raise TypeError("a boolean is not a datapoint")
    if isinstance(value, int):
        return {"count": value}
    if isinstance(value, float):
        return {"number": value}
    if not isinstance(value, (frozenset, set)):
        raise TypeError(f"not a datapoint: {type(value).__name__}")
    if isinstance(value, Ports):
        return {"ports": sorted(value)}
    if isinstance(value, Numbers):
        return {"numbers": sorted(value)}
    if isinstance(value, Strings):
        return {"strings": sorted(value)}
    if isinstance(value, Addresses):
        return {"cidrs": list(_cidrs(value))}
    items = list(value)
    if items and all(isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) for a in items):
        return {"cidrs": list(_cidrs(Addresses(items)))}
    if items and all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        return {"ports": sorted(items)}
    if items and all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in items):
        return {"numbers": sorted(float(i) for i in items)}
    if all(isinstance(i, str) for i in items):
        return {"strings": sorted(items)}
    raise TypeError("a set of mixed values is not a datapoint")
