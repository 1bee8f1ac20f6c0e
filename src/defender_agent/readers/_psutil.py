"""The fallback for systems without /proc (macOS, the BSDs): the same readings through psutil.

psutil is an optional dependency (``pip install defender-agent[psutil]``). It
gives the same socket rows, interface counters, interface addresses and CPU
times that the /proc collectors produce, so everything downstream is shared.
It is slower (it maps sockets to processes, which Device Defender does not
need) and, on macOS, lists other users' sockets only when run as root.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from defender_agent.errors import CollectorError
from defender_agent.readers._inet import ESTABLISHED, LISTEN, SocketRow
from defender_agent.readers.cpu_usage import CpuTimes
from defender_agent.readers.interfaces import InterfaceMap
from defender_agent.readers.network_stats import InterfaceCounters

__all__ = [
    "NOT_INSTALLED",
    "available",
    "cpu_times",
    "interface_counters",
    "interface_map",
    "process_names",
    "socket_rows",
]

_UDP_UNCONNECTED = 7

#: The one-line error when psutil is needed but cannot be imported.
NOT_INSTALLED = "psutil is not installed: pip install 'defender-agent[psutil]'"


def _psutil() -> Any:  # noqa: ANN401 - psutil is optional and imported lazily
    try:
        import psutil  # noqa: PLC0415
    except ImportError as exc:
        raise CollectorError(NOT_INSTALLED) from exc
    return psutil


def available() -> bool:
    """True when psutil can be imported."""
    try:
        _psutil()
    except CollectorError:
        return False
    return True


def _packed(family: int, text: str) -> bytes:
    return socket.inet_pton(family, text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%en0")


def socket_rows(
    listener_pids: Optional[set[int]] = None,
) -> tuple[list[SocketRow], list[SocketRow]]:
    """Return (TCP rows in LISTEN/ESTABLISHED, UDP rows) like the /proc parser's.

    When ``listener_pids`` is given, the pids owning listening sockets (TCP in
    LISTEN, UDP without a peer) are added to it, where psutil may see them.
    """
    ps = _psutil()
    tcp: list[SocketRow] = []
    udp: list[SocketRow] = []
    for conn in ps.net_connections(kind="inet"):
        family = int(conn.family)
        if not conn.laddr:
            continue
        any_addr = bytes(4 if family == socket.AF_INET else 16)
        local = _packed(family, conn.laddr.ip)
        remote, rport = (
            (_packed(family, conn.raddr.ip), conn.raddr.port) if conn.raddr else (any_addr, 0)
        )
        if conn.type == socket.SOCK_STREAM:
            state = {"LISTEN": LISTEN, "ESTABLISHED": ESTABLISHED}.get(conn.status)
            if state is not None:
                tcp.append((family, local, conn.laddr.port, remote, rport, state))
            listening = state == LISTEN
        elif conn.type == socket.SOCK_DGRAM:
            state = ESTABLISHED if rport else _UDP_UNCONNECTED
            udp.append((family, local, conn.laddr.port, remote, rport, state))
            listening = not rport
        else:
            continue
        if listener_pids is not None and listening and conn.pid:
            listener_pids.add(int(conn.pid))
    return tcp, udp


def process_names(pids: set[int]) -> tuple[list[str], int]:
    """The names of processes ``pids``, and how many could not be read (permission denied).

    Processes that exited meanwhile are left out silently.
    """
    ps = _psutil()
    names: list[str] = []
    denied = 0
    for pid in sorted(pids):
        try:
            names.append(ps.Process(pid).name())
        except ps.AccessDenied:
            denied += 1
        except ps.NoSuchProcess:
            continue
    return names, denied


def interface_map(wildcard: Optional[str]) -> InterfaceMap:
    """Local addresses → interface names, from ``psutil.net_if_addrs()``."""
    ps = _psutil()
    result = InterfaceMap(wildcard=wildcard)
    for name, addrs in ps.net_if_addrs().items():
        for addr in addrs:
            if addr.family == socket.AF_INET:
                packed = _packed(socket.AF_INET, addr.address)
                result.v4.setdefault(packed, name)
                result.local_v4.add(packed)
            elif addr.family == socket.AF_INET6:
                result.v6.setdefault(_packed(socket.AF_INET6, addr.address), name)
    return result


def interface_counters() -> dict[str, InterfaceCounters]:
    """Per-interface counters from ``psutil.net_io_counters(pernic=True)`` (raw, no wrap fix-up)."""
    ps = _psutil()
    return {
        name: InterfaceCounters(c.bytes_recv, c.packets_recv, c.bytes_sent, c.packets_sent)
        for name, c in ps.net_io_counters(pernic=True, nowrap=False).items()
    }


def cpu_times() -> CpuTimes:
    """Aggregate CPU times in the same shape as :func:`.cpu_usage.parse_proc_stat` (as ticks)."""
    times = _psutil().cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    fields = [getattr(times, name) for name in times._fields if name not in ("guest", "guest_nice")]
    scale = 100  # seconds → centiseconds, integers like jiffies
    return CpuTimes(total=round(sum(fields) * scale), idle=round(idle * scale))
