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

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from defender_agent.collectors import _psutil, _sockdiag
from defender_agent.collectors._inet import ESTABLISHED, LISTEN, SocketRow, parse_socket_table
from defender_agent.procfs import ProcFS

__all__ = ["SocketSource", "SocketTables", "read_socket_tables", "resolve_source"]

log = logging.getLogger(__name__)

SocketSource = Literal["auto", "proc", "netlink", "psutil"]
ResolvedSource = Literal["proc", "netlink", "psutil"]

_TCP_STATES = frozenset({ESTABLISHED, LISTEN})
_UDP_UNCONNECTED = 7  # TCP_CLOSE: how the kernel shows a UDP socket with no peer


@dataclass
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
    """

    tcp: Optional[list[SocketRow]] = None
    udp: Optional[list[SocketRow]] = None
    malformed: dict[str, int] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    source: str = "proc"


def resolve_source(requested: SocketSource, procfs: ProcFS) -> ResolvedSource:
    """Pick the source for ``auto``.

    netlink for the live ``/proc`` when the kernel offers sock_diag; the files
    for any other proc root; psutil where there is no ``net/tcp`` at all (not
    Linux) and psutil is installed.
    """
    if requested != "auto":
        return requested
    if not procfs.path("net", "tcp").exists():
        return "psutil" if _psutil.available() else "proc"
    try:
        live = procfs.root.resolve() == Path("/proc").resolve()
    except OSError:
        live = False
    return "netlink" if live and _sockdiag.available() else "proc"


def _read_proc(procfs: ProcFS, tables: SocketTables) -> None:
    for proto, states in (("tcp", _TCP_STATES), ("udp", None)):
        rows: Optional[list[SocketRow]] = []
        for name, family, required in (
            (proto, socket.AF_INET, True),
            (proto + "6", socket.AF_INET6, False),
        ):
            try:
                data = procfs.read_bytes("net", name)
            except OSError as exc:
                if required:
                    tables.missing[f"net/{name}"] = exc.strerror or str(exc)
                    rows = None
                else:
                    log.debug("%s not readable (no IPv6?): %s", name, exc)
                continue
            parsed, bad = parse_socket_table(data, family, states)
            if bad:
                tables.malformed[f"net/{name}"] = bad
            if rows is not None:
                rows.extend(parsed)
        setattr(tables, proto, rows)


def _read_netlink(tables: SocketTables) -> None:
    tcp_states = (1 << ESTABLISHED) | (1 << LISTEN)
    tables.tcp = _sockdiag.dump_sockets(socket.IPPROTO_TCP, socket.AF_INET, tcp_states)
    tables.tcp += _sockdiag.dump_sockets(socket.IPPROTO_TCP, socket.AF_INET6, tcp_states)
    udp_states = 1 << _UDP_UNCONNECTED
    tables.udp = _sockdiag.dump_sockets(socket.IPPROTO_UDP, socket.AF_INET, udp_states)
    tables.udp += _sockdiag.dump_sockets(socket.IPPROTO_UDP, socket.AF_INET6, udp_states)


def read_socket_tables(procfs: ProcFS, source: SocketSource = "auto") -> SocketTables:
    """Read the TCP and UDP socket tables from the chosen source.

    Netlink failures fall back to /proc for that read, with a debug message.
    """
    tables = SocketTables()
    resolved = resolve_source(source, procfs)
    if resolved == "psutil":
        tables.tcp, tables.udp = _psutil.socket_rows()
        tables.source = "psutil"
        return tables
    if resolved == "netlink":
        try:
            _read_netlink(tables)
        except _sockdiag.SockDiagUnavailable as exc:
            log.debug("netlink sock_diag failed, reading /proc instead: %s", exc)
            tables = SocketTables()
        else:
            tables.source = "netlink"
            return tables
    _read_proc(procfs, tables)
    return tables
