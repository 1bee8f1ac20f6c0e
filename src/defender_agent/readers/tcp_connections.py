"""Established TCP connections, from the socket rows of :mod:`.sockets`.

Each ESTABLISHED socket gives one connection: the remote address and port
(IPv4-mapped IPv6 shown as IPv4), the local port and the interface of the
local address. Connections whose remote end is a loopback address are left
out unless asked for: they never leave the device, and the public sample
reporting them was a bug.

When there are more connections than the report may list, the choice is
deterministic and favours coverage of remote addresses, which is what
``aws:destination-ip-addresses`` behaviors look at: one connection per
distinct remote address first (the smallest row of each), then the smallest
remaining rows. ``total`` is always the true count. Rows are taken in chunks
and only the chosen ones are turned into objects, so the cost for a gateway
with 40 000 sockets stays close to the cost of reading them, and the memory
is bounded by the list size (and the number of distinct remote addresses).
"""

from __future__ import annotations

import heapq
import socket
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Optional

from defender_agent.model import Connection
from defender_agent.readers._inet import ESTABLISHED, SocketRow, unmap_v4
from defender_agent.readers.interfaces import InterfaceMap

__all__ = ["ConnectionSelector", "established_connections", "select_rows"]

_V4_MAPPED_LOOPBACK = b"\x00" * 10 + b"\xff\xff\x7f"
_V6_LOOPBACK = b"\x00" * 15 + b"\x01"
_by_remote = itemgetter(3, 4, 2, 0, 1)


def _remote_is_loopback(remote: bytes) -> bool:
    if len(remote) == 4:
        return remote[0] == 127
    return remote == _V6_LOOPBACK or remote[:13] == _V4_MAPPED_LOOPBACK


class ConnectionSelector:
    """Counts established connections chunk by chunk and keeps only what the report can list.

    Memory stays bounded by the list size and the number of distinct remote addresses,
    not by the number of sockets: per remote address the smallest row (in the rows'
    natural tuple order) is kept, and of all rows only the ``limit`` smallest (pruned
    from time to time). That is enough to choose exactly what :func:`select_rows`
    chooses: the ``k`` smallest rows that are not representatives are always among the
    ``limit`` smallest rows overall.

    Args:
        limit: the most connections to choose; ``None`` keeps all of them.
        include_loopback: count connections to 127.0.0.0/8 and ``::1`` too.
    """

    #: candidates kept beyond 4 x limit before pruning (amortises the pruning's cost)
    prune_slack = 1024

    def __init__(self, limit: Optional[int] = None, *, include_loopback: bool = False) -> None:
        self.limit = limit
        self.include_loopback = include_loopback
        self.total = 0
        self._first: dict[bytes, SocketRow] = {}
        self._candidates: list[SocketRow] = []

    def add(self, rows: Iterable[SocketRow]) -> None:
        """Take in TCP rows (any state: only ESTABLISHED ones count)."""
        rows = rows if isinstance(rows, list) else list(rows)
        # loopback is decided once per distinct remote address, not once per row
        loopback = (
            ()
            if self.include_loopback
            else {r for r in {row[3] for row in rows} if _remote_is_loopback(r)}
        )
        if loopback:
            kept = [row for row in rows if row[5] == ESTABLISHED and row[3] not in loopback]
        else:
            kept = [row for row in rows if row[5] == ESTABLISHED]
        self.total += len(kept)
        candidates = self._candidates
        candidates += kept
        if self.limit is None:
            return
        first = self._first
        remotes = {row[3] for row in kept}
        if len(remotes) <= 4:  # the common case (a cloud endpoint, loopback): min() in C
            for remote in remotes:
                best = (
                    min([row for row in kept if row[3] == remote])
                    if len(remotes) > 1
                    else min(kept)
                )
                current = first.get(remote)
                if current is None or best < current:
                    first[remote] = best
        else:
            get = first.get
            for row in kept:
                current = get(row[3])
                if current is None or row < current:
                    first[row[3]] = row
        if len(candidates) > 4 * self.limit + self.prune_slack:
            self._candidates = heapq.nsmallest(self.limit, candidates)

    def rows(self) -> list[SocketRow]:
        """The chosen rows: one per distinct remote address first, then the smallest others."""
        limit = self.limit
        if limit is None or self.total <= limit:
            return list(self._candidates)
        if len(self._first) >= limit:
            return heapq.nsmallest(limit, self._first.values(), key=_by_remote)
        chosen = sorted(self._first.values(), key=_by_remote)
        taken = set(chosen)
        smallest = heapq.nsmallest(limit, self._candidates)
        chosen += [row for row in smallest if row not in taken][: limit - len(chosen)]
        return chosen

    def connections(self, interfaces: InterfaceMap) -> list[Connection]:
        """The chosen connections as report values, sorted by remote address and ports."""
        local_names: dict[tuple[int, bytes], Optional[str]] = {}
        result: list[Connection] = []
        for family, local, local_port, remote, remote_port, _state in self.rows():
            key = (family, local)
            if key in local_names:
                name = local_names[key]
            else:
                name = local_names[key] = interfaces.lookup(*unmap_v4(family, local))
            remote_family, remote_addr = unmap_v4(family, remote)
            text = socket.inet_ntop(remote_family, remote_addr)
            result.append(Connection(text, remote_port, local_port, name))
        result.sort(
            key=lambda c: (c.remote_ip, c.remote_port, c.local_port, c.local_interface or "")
        )
        return result


def select_rows(rows: Sequence[SocketRow], limit: int) -> list[SocketRow]:
    """Choose ``limit`` rows deterministically, one per distinct remote address first.

    >>> rows = [(2, b"L", p, b"A", 443, 1) for p in (5, 6, 7)] + [(2, b"L", 9, b"B", 443, 1)]
    >>> [(r[3], r[2]) for r in select_rows(rows, 3)]
    [(b'A', 5), (b'B', 9), (b'A', 6)]
    """
    selector = ConnectionSelector(limit, include_loopback=True)
    selector.add(rows)
    return selector.rows()


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
    selector = ConnectionSelector(limit, include_loopback=include_loopback)
    selector.add(rows)
    return selector.connections(interfaces), selector.total
