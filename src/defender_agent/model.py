"""Typed domain values: what the collectors produce and what a report carries.

Only long field names appear here; short names are applied when a report is
serialized (:mod:`defender_agent.report.document`).

A field the protocol makes optional (docs/protocol.md §2.4) is ``Optional`` here and
``None`` when a received report leaves it out (:mod:`defender_agent.report.decode`); the
agent's own readers always fill them.

The classes are frozen records (:mod:`defender_agent._record`): dataclasses in every
respect (``dataclasses.replace`` included) but cheap to create at start-up, with a
hand-written ``__init__`` for the ones built per socket or per received entry.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    from dataclasses import dataclass as record
else:
    from defender_agent._record import record

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


@record(frozen=True, order=True)
class ListeningPort:
    """A port a socket listens on (TCP LISTEN, or an unconnected bound UDP socket).

    ``interface`` is the name of the interface the bound address belongs to,
    the configured wildcard label for ``0.0.0.0``/``::`` binds, or ``None``
    when it cannot be told (the key is then left out of the report, never
    ``null``). ``port`` is ``None`` only in a received report whose entry has none.
    """

    port: Optional[int]
    interface: Optional[str] = None

    def __init__(self, port: Optional[int], interface: Optional[str] = None) -> None:
        d = self.__dict__
        d["port"] = port
        d["interface"] = interface


@record(frozen=True, order=True)
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

    def __init__(
        self,
        remote_ip: str,
        remote_port: int,
        local_port: Optional[int],
        local_interface: Optional[str] = None,
    ) -> None:
        d = self.__dict__
        d["remote_ip"] = remote_ip
        d["remote_port"] = remote_port
        d["local_port"] = local_port
        d["local_interface"] = local_interface

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


@record(frozen=True)
class PortList:
    """The listening ports of one protocol: a (possibly truncated) list and the true count.

    Either is ``None`` only in a received report that leaves it out.
    """

    ports: Optional[tuple[ListeningPort, ...]]
    total: Optional[int]

    def __init__(self, ports: Optional[tuple[ListeningPort, ...]], total: Optional[int]) -> None:
        d = self.__dict__
        d["ports"] = ports
        d["total"] = total


@record(frozen=True)
class ConnectionList:
    """Established connections: a (possibly truncated) list and the true count.

    Either is ``None`` only in a received report that leaves it out.
    """

    connections: Optional[tuple[Connection, ...]]
    total: Optional[int]

    def __init__(self, connections: Optional[tuple[Connection, ...]], total: Optional[int]) -> None:
        d = self.__dict__
        d["connections"] = connections
        d["total"] = total


@record(frozen=True)
class NetworkStats:
    """Traffic since the previous sample (deltas, never negative).

    A field is ``None`` only in a received report that leaves it out.
    """

    bytes_in: Optional[int]
    bytes_out: Optional[int]
    packets_in: Optional[int]
    packets_out: Optional[int]

    def __init__(
        self,
        bytes_in: Optional[int],
        bytes_out: Optional[int],
        packets_in: Optional[int],
        packets_out: Optional[int],
    ) -> None:
        d = self.__dict__
        d["bytes_in"] = bytes_in
        d["bytes_out"] = bytes_out
        d["packets_in"] = packets_in
        d["packets_out"] = packets_out


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

if TYPE_CHECKING:
    CustomValue = Union[int, float, tuple[Union[int, float], ...], tuple[str, ...]]
else:  # Python 3.8 (Greengrass v1 Lambdas) cannot subscript built-in types at run time
    CustomValue = Union[int, float, tuple]


@record(frozen=True)
class CustomMetric:
    """One custom metric value, ready for a report."""

    name: str
    type: CustomMetricType
    value: CustomValue

    def __init__(self, name: str, type: CustomMetricType, value: CustomValue) -> None:
        d = self.__dict__
        d["name"] = name
        d["type"] = type
        d["value"] = value


@record(frozen=True)
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
    custom_metrics: tuple[CustomMetric, ...] = ()

    def __init__(  # noqa: PLR0917 - the dataclass's constructor: fields in order
        self,
        report_id: int,
        version: str = "1.0",
        listening_tcp_ports: Optional[PortList] = None,
        listening_udp_ports: Optional[PortList] = None,
        tcp_connections: Optional[ConnectionList] = None,
        network_stats: Optional[NetworkStats] = None,
        custom_metrics: tuple[CustomMetric, ...] = (),
    ) -> None:
        d = self.__dict__
        d["report_id"] = report_id
        d["version"] = version
        d["listening_tcp_ports"] = listening_tcp_ports
        d["listening_udp_ports"] = listening_udp_ports
        d["tcp_connections"] = tcp_connections
        d["network_stats"] = network_stats
        d["custom_metrics"] = custom_metrics
