"""Established TCP connections, from the socket rows of :mod:`.sockets`.

Each ESTABLISHED socket gives one connection: the remote address and port
(IPv4-mapped IPv6 shown as IPv4), the local port and the interface of the
local address. Connections whose remote end is a loopback address are left
out unless asked for: they never leave the device, and the public sample
reporting them was a bug (pitfalls.md B18).

When there are more connections than the report may list, the choice is
deterministic and favours coverage of remote addresses, which is what
``aws:destination-ip-addresses`` behaviors look at: one connection per
distinct remote address first (the smallest rows), then the remaining rows in
their natural order. ``total`` is always the true count. Only the chosen rows
are turned into objects, so the cost for a gateway with 40 000 sockets stays
close to the cost of reading them.
"""

from __future__ import annotations

import heapq
import socket
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Optional

from defender_agent.collectors._inet import ESTABLISHED, SocketRow, unmap_v4
from defender_agent.collectors.interfaces import InterfaceMap
from defender_agent.model import Connection

__all__ = ["established_connections", "select_rows"]

_V4_MAPPED_LOOPBACK = b"\x00" * 10 + b"\xff\xff\x7f"
_V6_LOOPBACK = b"\x00" * 15 + b"\x01"
_by_remote = itemgetter(3, 4, 2, 0, 1)


def _remote_is_loopback(remote: bytes) -> bool:
    if len(remote) == 4:
        return remote[0] == 127
    return remote == _V6_LOOPBACK or remote[:13] == _V4_MAPPED_LOOPBACK


def select_rows(rows: Sequence[SocketRow], limit: int) -> list[SocketRow]:
    """Choose ``limit`` rows deterministically, one per distinct remote address first.

    >>> rows = [(2, b"L", p, b"A", 443, 1) for p in (5, 6, 7)] + [(2, b"L", 9, b"B", 443, 1)]
    >>> [(r[3], r[2]) for r in select_rows(rows, 3)]
    [(b'A', 5), (b'B', 9), (b'A', 6)]
    """
    if len(rows) <= limit:
        return list(rows)
    first: dict[bytes, SocketRow] = {}
    for row in rows:
        current = first.get(row[3])
        if current is None or _by_remote(row) < _by_remote(current):
            first[row[3]] = row
    if len(first) >= limit:
        return heapq.nsmallest(limit, first.values(), key=_by_remote)
    chosen = sorted(first.values(), key=_by_remote)
    taken = set(chosen)
    rest = (row for row in rows if row not in taken)
    chosen.extend(heapq.nsmallest(limit - len(chosen), rest, key=_by_remote))
    return chosen


def established_connections(
    rows: Iterable[SocketRow],
    interfaces: InterfaceMap,
    *,
    include_loopback: bool = False,
    limit: Optional[int] = None,
) -> tuple[list[Connection], int]:
    r"""Return up to ``limit`` established connections (sorted) and the true count.

    >>> rows = [(socket.AF_INET6, bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 2]), 50312,
    ...          bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 7]), 8883, 1)]
    >>> eth0 = InterfaceMap(v4={bytes([192, 0, 2, 2]): "eth0"})
    >>> conns, total = established_connections(rows, eth0)
    >>> conns[0].remote_addr, conns[0].local_port, conns[0].local_interface, total
    ('203.0.113.7:8883', 50312, 'eth0', 1)
    """
    if include_loopback:
        kept = [row for row in rows if row[5] == ESTABLISHED]
    else:
        kept = [row for row in rows if row[5] == ESTABLISHED and not _remote_is_loopback(row[3])]
    total = len(kept)
    if limit is not None and total > limit:
        kept = select_rows(kept, limit)
    local_names: dict[tuple[int, bytes], Optional[str]] = {}
    result: list[Connection] = []
    for family, local, local_port, remote, remote_port, _state in kept:
        key = (family, local)
        if key in local_names:
            name = local_names[key]
        else:
            name = local_names[key] = interfaces.lookup(*unmap_v4(family, local))
        remote_family, remote_addr = unmap_v4(family, remote)
        text = socket.inet_ntop(remote_family, remote_addr)
        result.append(Connection(text, remote_port, local_port, name))
    result.sort(key=lambda c: (c.remote_ip, c.remote_port, c.local_port, c.local_interface or ""))
    return result, total
