"""Typed domain values: what the collectors produce and what a report carries.

Only long field names appear here; short names are applied when a report is
serialized (:mod:`defender_agent.report.document`).

A field the protocol makes optional (docs/protocol.md §2.4) is ``Optional`` here and
``None`` when a received report leaves it out (:mod:`defender_agent.report.decode`); the
agent's own readers always fill them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Union

__all__ = [
    "Connection",
    "ConnectionList",
    "CustomMetric",
    "CustomMetricType",
    "ListeningPort",
    "NetworkStats",
    "PortList",
    "Report",
]


@dataclass(frozen=True, order=True)
class ListeningPort:
    """A port a socket listens on (TCP LISTEN, or an unconnected bound UDP socket).

    ``interface`` is the name of the interface the bound address belongs to,
    the configured wildcard label for ``0.0.0.0``/``::`` binds, or ``None``
    when it cannot be told (the key is then left out of the report, never
    ``null``). ``port`` is ``None`` only in a received report whose entry has none.
    """

    port: Optional[int]
    interface: Optional[str] = None


@dataclass(frozen=True, order=True)
class Connection:
    """An established TCP connection.

    ``remote_ip`` is the textual address (the agent shows IPv4-mapped IPv6
    addresses as IPv4; a received report keeps the text as sent);
    :attr:`remote_addr` renders it with the port. ``local_port`` is ``None``
    only in a received report whose entry has none.
    """

    remote_ip: str
    remote_port: int
    local_port: Optional[int]
    local_interface: Optional[str] = None

    @property
    def remote_addr(self) -> str:
        """``a.b.c.d:port`` or ``[v6]:port``.

        >>> Connection("2001:db8::5", 443, 50400).remote_addr
        '[2001:db8::5]:443'
        >>> Connection("203.0.113.7", 8883, 50312).remote_addr
        '203.0.113.7:8883'
        """
        if ":" in self.remote_ip:
            return f"[{self.remote_ip}]:{self.remote_port}"
        return f"{self.remote_ip}:{self.remote_port}"


@dataclass(frozen=True)
class PortList:
    """The listening ports of one protocol: a (possibly truncated) list and the true count.

    Either is ``None`` only in a received report that leaves it out.
    """

    ports: Optional[tuple[ListeningPort, ...]]
    total: Optional[int]


@dataclass(frozen=True)
class ConnectionList:
    """Established connections: a (possibly truncated) list and the true count.

    Either is ``None`` only in a received report that leaves it out.
    """

    connections: Optional[tuple[Connection, ...]]
    total: Optional[int]


@dataclass(frozen=True)
class NetworkStats:
    """Traffic since the previous sample (deltas, never negative).

    A field is ``None`` only in a received report that leaves it out.
    """

    bytes_in: Optional[int]
    bytes_out: Optional[int]
    packets_in: Optional[int]
    packets_out: Optional[int]


class CustomMetricType(str, enum.Enum):
    """The four custom metric types of CreateCustomMetric, with their report value key."""

    NUMBER = "number"
    NUMBER_LIST = "number-list"
    STRING_LIST = "string-list"
    IP_ADDRESS_LIST = "ip-address-list"

    @property
    def value_key(self) -> str:
        """The key that carries the value inside the report's one-element array.

        >>> CustomMetricType.IP_ADDRESS_LIST.value_key
        'ip_list'
        """
        return _VALUE_KEYS[self]


_VALUE_KEYS = {
    CustomMetricType.NUMBER: "number",
    CustomMetricType.NUMBER_LIST: "number_list",
    CustomMetricType.STRING_LIST: "string_list",
    CustomMetricType.IP_ADDRESS_LIST: "ip_list",
}

CustomValue = Union[int, float, tuple[Union[int, float], ...], tuple[str, ...]]


@dataclass(frozen=True)
class CustomMetric:
    """One custom metric value, ready for a report."""

    name: str
    type: CustomMetricType
    value: CustomValue


@dataclass(frozen=True)
class Report:
    """A Device Defender metrics report (long names only).

    A group that is ``None`` is left out of the document; ``custom_metrics``
    is left out when empty.
    """

    report_id: int
    version: str = "1.0"
    listening_tcp_ports: Optional[PortList] = None
    listening_udp_ports: Optional[PortList] = None
    tcp_connections: Optional[ConnectionList] = None
    network_stats: Optional[NetworkStats] = None
    custom_metrics: tuple[CustomMetric, ...] = field(default=())
