"""Listening TCP and UDP ports, from the socket rows of :mod:`.sockets`.

A TCP socket listens when its state is LISTEN. A UDP socket listens when it is
bound to a port and has no remote peer (remote port 0) — the rule osquery
uses; connected client sockets (a DNS lookup, an NTP query) are not
listeners, and counting them would make the port set change from report to
report.

Entries are merged on ``(port, interface)``: the same port bound on IPv4 and
IPv6 (or by several SO_REUSEPORT sockets) is one entry. The result is sorted,
so reports are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable

from defender_agent.model import ListeningPort
from defender_agent.readers._inet import LISTEN, SocketRow, unmap_v4
from defender_agent.readers.interfaces import InterfaceMap

__all__ = ["PortSet", "listening_tcp_ports", "listening_udp_ports"]


class PortSet:
    """Listening ports gathered across chunks of rows, merged on ``(port, interface)``."""

    def __init__(self, interfaces: InterfaceMap) -> None:
        self._interfaces = interfaces
        self._seen: set[tuple[int, str | None]] = set()

    def add(self, rows: Iterable[SocketRow]) -> None:
        """Add rows that are already known to be listeners."""
        for family, local, local_port, _remote, _remote_port, _state in rows:
            if local_port:
                fam, addr = unmap_v4(family, local)
                self._seen.add((local_port, self._interfaces.lookup(fam, addr)))

    def add_tcp(self, rows: Iterable[SocketRow]) -> None:
        """Add the LISTEN rows among TCP rows."""
        self.add([row for row in rows if row[5] == LISTEN])

    def add_udp(self, rows: Iterable[SocketRow]) -> None:
        """Add the bound, unconnected rows (remote port 0) among UDP rows."""
        self.add([row for row in rows if row[4] == 0])

    def ports(self) -> list[ListeningPort]:
        """The ports, sorted by number, then interface."""
        return [
            ListeningPort(port, name)
            for port, name in sorted(self._seen, key=lambda item: (item[0], item[1] or ""))
        ]


def listening_tcp_ports(rows: Iterable[SocketRow], interfaces: InterfaceMap) -> list[ListeningPort]:
    """Return the sorted, merged listening TCP ports among ``rows``.

    >>> import socket
    >>> rows = [(socket.AF_INET, bytes(4), 22, bytes(4), 0, 10),
    ...         (socket.AF_INET6, bytes(16), 22, bytes(16), 0, 10),
    ...         (socket.AF_INET, bytes([127, 0, 0, 1]), 631, bytes(4), 0, 10),
    ...         (socket.AF_INET, bytes([127, 0, 0, 1]), 40000, bytes([127, 0, 0, 1]), 22, 1)]
    >>> listening_tcp_ports(rows, InterfaceMap())
    [ListeningPort(port=22, interface=None), ListeningPort(port=631, interface='lo')]
    """
    ports = PortSet(interfaces)
    ports.add_tcp(rows)
    return ports.ports()


def listening_udp_ports(rows: Iterable[SocketRow], interfaces: InterfaceMap) -> list[ListeningPort]:
    """Return the sorted, merged listening UDP ports: bound sockets without a remote peer.

    >>> import socket
    >>> rows = [(socket.AF_INET, bytes(4), 68, bytes(4), 0, 7),
    ...         (socket.AF_INET, bytes([192, 0, 2, 2]), 41000, bytes([192, 0, 2, 53]), 53, 1)]
    >>> listening_udp_ports(rows, InterfaceMap(wildcard="any"))
    [ListeningPort(port=68, interface='any')]
    """
    ports = PortSet(interfaces)
    ports.add_udp(rows)
    return ports.ports()
