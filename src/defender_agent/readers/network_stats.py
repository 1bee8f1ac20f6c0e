"""Per-interface traffic counters from ``/proc/net/dev``.

A line of the file looks like this (receive columns, then transmit)::

      eth0: 9027187     256    0    0    0     0          0         0    13395     151 ...

The collector keeps bytes and packets in each direction per interface; the
report carries their deltas since the previous sample, computed per
interface by :mod:`defender_agent.delta` so that one interface's reset or
wrap cannot turn the sum negative. Loopback is excluded by default; include
and exclude glob patterns select the interfaces (``docker*``, ``veth*``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import NamedTuple

__all__ = ["InterfaceCounters", "parse_net_dev", "select_interfaces"]


class InterfaceCounters(NamedTuple):
    """Counters of one interface since it came up."""

    bytes_in: int
    packets_in: int
    bytes_out: int
    packets_out: int


def parse_net_dev(text: str) -> tuple[dict[str, InterfaceCounters], int]:
    r"""Parse ``/proc/net/dev``.

    Returns:
        interface name → counters, and the number of malformed lines skipped.

    >>> parse_net_dev("Inter-|   Receive\n face |bytes\n"
    ...               "  eth0: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n  bad line\n")
    ({'eth0': InterfaceCounters(bytes_in=100, packets_in=2, bytes_out=300, packets_out=4)}, 1)
    """
    result: dict[str, InterfaceCounters] = {}
    malformed = 0
    for line in text.splitlines()[2:]:
        name, colon, rest = line.partition(":")
        fields = rest.split()
        name = name.strip()
        if not colon or not name or len(fields) < 10:
            if line.strip():
                malformed += 1
            continue
        try:
            counters = InterfaceCounters(
                int(fields[0]), int(fields[1]), int(fields[8]), int(fields[9])
            )
        except ValueError:
            malformed += 1
            continue
        if min(counters) < 0:
            malformed += 1
            continue
        result[name] = counters
    return result, malformed


def select_interfaces(
    counters: Mapping[str, InterfaceCounters],
    include: Iterable[str] = ("*",),
    exclude: Iterable[str] = ("lo",),
) -> dict[str, InterfaceCounters]:
    """Keep the interfaces matching an include pattern and no exclude pattern.

    >>> c = InterfaceCounters(0, 0, 0, 0)
    >>> sorted(select_interfaces({"lo": c, "eth0": c, "docker0": c}, exclude=["lo", "docker*"]))
    ['eth0']
    """
    inc = tuple(include)
    exc = tuple(exclude)
    return {
        name: value
        for name, value in counters.items()
        if any(fnmatchcase(name, p) for p in inc) and not any(fnmatchcase(name, p) for p in exc)
    }
