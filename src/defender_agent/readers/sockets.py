"""The socket tables, read from ``/proc/net/{tcp,udp}{,6}`` or over netlink sock_diag.

Both sources give :data:`~._inet.SocketRow` tuples. /proc works under any
proc root (fixtures, ``/host-proc``); netlink asks the kernel for just the
sockets in the wanted states, which is much cheaper on a host with many
sockets, but only describes the network namespace of this process, so it is
used only for the live ``/proc`` (``source="auto"``).

A table that cannot be read is reported in :attr:`SocketTables.missing`,
and the metric groups built from it are left out of the report. ``tcp6`` and
``udp6`` are optional: a host without IPv6 has neither.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Literal, Optional, TypeVar

from defender_agent.logs import get_logger
from defender_agent.model import Connection, ListeningPort
from defender_agent.procfs import ProcFS
from defender_agent.readers import _psutil, _sockdiag
from defender_agent.readers._inet import ESTABLISHED, LISTEN, SocketRow, parse_socket_table
from defender_agent.readers.interfaces import InterfaceMap
from defender_agent.readers.listening_ports import PortSet
from defender_agent.readers.tcp_connections import ConnectionSelector

__all__ = [
    "SocketSource",
    "SocketSummary",
    "SocketTables",
    "read_socket_tables",
    "resolve_source",
    "summarize_sockets",
]

log = get_logger(__name__)

SocketSource = Literal["auto", "proc", "netlink", "psutil"]
ResolvedSource = Literal["proc", "netlink", "psutil"]

_TCP_STATES = frozenset({ESTABLISHED, LISTEN})
T = TypeVar("T")
_UDP_UNCONNECTED = 7  # TCP_CLOSE: how the kernel shows a UDP socket with no peer


class SocketTables:
    """The rows of one read.

    Attributes:
        tcp: TCP rows in LISTEN or ESTABLISHED state, both families; ``None``
            when ``net/tcp`` could not be read.
        udp: UDP rows (all of them from /proc, the unconnected ones from
            netlink); ``None`` when ``net/udp`` could not be read.
        malformed: file name → number of malformed lines skipped.
        missing: file name → why it could not be read (only required files).
        source: the source actually used.
        listener_inodes: the inodes of the listening sockets, when asked for
            (``/proc`` and netlink).
        listener_pids: the pids owning listening sockets, when asked for (psutil).
    """

    __slots__ = (
        "listener_inodes",
        "listener_pids",
        "malformed",
        "missing",
        "source",
        "tcp",
        "udp",
    )

    def __init__(self, *, listener_inodes: Optional[set[int]] = None) -> None:
        # a plain class, not a dataclass: creating one costs a command's start-up ~1 ms
        self.tcp: Optional[list[SocketRow]] = None
        self.udp: Optional[list[SocketRow]] = None
        self.malformed: dict[str, int] = {}
        self.missing: dict[str, str] = {}
        self.source = "proc"
        self.listener_inodes = listener_inodes
        self.listener_pids: Optional[set[int]] = None


def resolve_source(requested: SocketSource, procfs: ProcFS) -> ResolvedSource:
    """Pick the source for ``auto``.

    netlink for the live ``/proc`` when the kernel offers sock_diag; the files
    for any other proc root; psutil where the live ``/proc`` has no ``net/tcp``
    (not Linux). Whether psutil is installed is the caller's check: the
    :class:`~defender_agent.cycle.Collector` refuses to start without it.
    """
    if requested != "auto":
        return requested
    try:
        live = procfs.root.resolve() == Path("/proc").resolve()
    except OSError:
        live = False
    if not procfs.path("net", "tcp").exists():
        return "psutil" if live else "proc"
    return "netlink" if live and _sockdiag.available() else "proc"


def _proc_chunks(procfs: ProcFS, status: SocketTables) -> Iterator[tuple[str, list[SocketRow]]]:
    for proto, states in (("tcp", _TCP_STATES), ("udp", None)):
        for name, family, required in (
            (proto, socket.AF_INET, True),
            (proto + "6", socket.AF_INET6, False),
        ):
            try:
                data = procfs.read_bytes("net", name)
            except OSError as exc:
                if required:
                    status.missing[f"net/{name}"] = exc.strerror or str(exc)
                else:
                    log.debug("%s not readable (no IPv6?): %s", name, exc)
                continue
            rows, bad = parse_socket_table(
                data, family, states, inodes=status.listener_inodes, udp=proto == "udp"
            )
            del data
            if bad:
                status.malformed[f"net/{name}"] = bad
            yield proto, rows


def _netlink_chunks(status: SocketTables) -> Iterator[tuple[str, list[SocketRow]]]:
    tcp_states = (1 << ESTABLISHED) | (1 << LISTEN)
    udp_states = 1 << _UDP_UNCONNECTED
    for proto, number, states in (
        ("tcp", socket.IPPROTO_TCP, tcp_states),
        ("udp", socket.IPPROTO_UDP, udp_states),
    ):
        for family in (socket.AF_INET, socket.AF_INET6):
            for chunk in _sockdiag.iter_dump(number, family, states, status.listener_inodes):
                yield proto, chunk


def _chunks(
    procfs: ProcFS, resolved: ResolvedSource, status: SocketTables
) -> Iterator[tuple[str, list[SocketRow]]]:
    """Yield ``("tcp"|"udp", rows)`` chunks, recording missing and malformed files in ``status``."""
    status.source = resolved
    if resolved == "psutil":
        if status.listener_inodes is not None:
            status.listener_inodes = None
            status.listener_pids = set()
        tcp, udp = _psutil.socket_rows(status.listener_pids)
        yield "tcp", tcp
        yield "udp", udp
    elif resolved == "netlink":
        yield from _netlink_chunks(status)
    else:
        yield from _proc_chunks(procfs, status)


def _with_fallback(
    procfs: ProcFS,
    source: SocketSource,
    consume: Callable[[Iterator[tuple[str, list[SocketRow]]], SocketTables], T],
    listeners: bool = False,
) -> T:
    resolved = resolve_source(source, procfs)
    status = SocketTables(listener_inodes=set() if listeners else None)
    try:
        return consume(_chunks(procfs, resolved, status), status)
    except _sockdiag.SockDiagUnavailable as exc:
        log.debug("netlink sock_diag failed, reading /proc instead: %s", exc)
    status = SocketTables(listener_inodes=set() if listeners else None)
    return consume(_chunks(procfs, "proc", status), status)


def read_socket_tables(procfs: ProcFS, source: SocketSource = "auto") -> SocketTables:
    """Read the whole TCP and UDP socket tables from the chosen source.

    Netlink failures fall back to /proc for that read, with a debug message.
    """

    def consume(
        chunks: Iterator[tuple[str, list[SocketRow]]], status: SocketTables
    ) -> SocketTables:
        tcp: list[SocketRow] = []
        udp: list[SocketRow] = []
        for proto, rows in chunks:
            (tcp if proto == "tcp" else udp).extend(rows)
        status.tcp = None if "net/tcp" in status.missing else tcp
        status.udp = None if "net/udp" in status.missing else udp
        return status

    return _with_fallback(procfs, source, consume)


class SocketSummary:
    """What the report needs from the socket tables, gathered without keeping them.

    Attributes:
        tcp_ports: listening TCP ports (``None``: ``net/tcp`` unreadable).
        udp_ports: listening UDP ports (``None``: ``net/udp`` unreadable).
        connections: the chosen established connections (``None``: ``net/tcp`` unreadable).
        connections_total: how many established connections there are.
        status: the source used, the missing and malformed files, and the
            listeners' inodes or pids when asked for.
        remote_peers: when asked for, the packed remote address (4 or 16
            bytes, as the source gives it) of every established TCP
            connection, loopback included (``None``: not asked for, or
            ``net/tcp`` unreadable).
    """

    __slots__ = (
        "connections",
        "connections_total",
        "remote_peers",
        "status",
        "tcp_ports",
        "udp_ports",
    )

    def __init__(
        self,
        *,
        tcp_ports: Optional[list[ListeningPort]],
        udp_ports: Optional[list[ListeningPort]],
        connections: Optional[list[Connection]],
        connections_total: int,
        status: SocketTables,
        remote_peers: Optional[set[bytes]] = None,
    ) -> None:
        self.tcp_ports = tcp_ports
        self.udp_ports = udp_ports
        self.connections = connections
        self.connections_total = connections_total
        self.status = status
        self.remote_peers = remote_peers


def summarize_sockets(
    procfs: ProcFS,
    interfaces: InterfaceMap,
    *,
    source: SocketSource = "auto",
    include_loopback: bool = False,
    limit: Optional[int] = None,
    remote_peers: bool = False,
    listeners: bool = False,
) -> SocketSummary:
    """Stream the socket tables into listening ports and chosen connections.

    Rows arrive a datagram (netlink) or a file (/proc) at a time and are folded into
    the result at once, so a cycle's memory does not grow with the number of sockets.
    ``remote_peers`` and ``listeners`` also gather, from the same read, what the
    ``remote_ips`` and ``listening_processes`` custom metrics need.
    """

    def consume(
        chunks: Iterator[tuple[str, list[SocketRow]]], status: SocketTables
    ) -> SocketSummary:
        tcp_ports = PortSet(interfaces)
        udp_ports = PortSet(interfaces)
        selector = ConnectionSelector(limit, include_loopback=include_loopback)
        peers: Optional[set[bytes]] = set() if remote_peers else None
        for proto, rows in chunks:
            if proto == "tcp":
                tcp_ports.add_tcp(rows)
                selector.add(rows)
                if peers is not None:
                    peers.update([row[3] for row in rows if row[5] == ESTABLISHED])
            else:
                udp_ports.add_udp(rows)
        tcp_ok = "net/tcp" not in status.missing
        udp_ok = "net/udp" not in status.missing
        return SocketSummary(
            tcp_ports=tcp_ports.ports() if tcp_ok else None,
            udp_ports=udp_ports.ports() if udp_ok else None,
            connections=selector.connections(interfaces) if tcp_ok else None,
            connections_total=selector.total,
            status=status,
            remote_peers=peers if tcp_ok else None,
        )

    return _with_fallback(procfs, source, consume, listeners)
