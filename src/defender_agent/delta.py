"""Counter deltas that are never negative: resets, 32-bit wraps, interfaces that come and go.

The kernel's interface counters only go up, except when they do not: a
driver reload or some link resets set them back to zero, and drivers with
32-bit counters wrap at 2**32. A delta is therefore computed per counter and
per interface:

* the counter went up: the difference;
* it went down from near the top of the 32-bit range to near zero: a 32-bit
  wrap, so ``2**32 - previous + current``;
* it went down otherwise: a reset, so ``current`` (what was counted since the
  reset; an undercount at worst, never a spike).

An interface that appears since the previous sample only sets its baseline;
its first delta comes with the next sample (its counters may have been
counting elsewhere, e.g. a NIC moved into this network namespace). An
interface that vanished is dropped. The first sample of all has no delta.

>>> counter_delta(100, 250)
150
>>> counter_delta(2**32 - 10, 5)     # 32-bit wrap
15
>>> counter_delta(5_000_000, 1_200)  # reset
1200
"""

from __future__ import annotations

from collections.abc import Mapping

from defender_agent.model import NetworkStats
from defender_agent.readers.network_stats import InterfaceCounters

__all__ = ["WRAP_WINDOW", "counter_delta", "network_delta"]

_WRAP32 = 1 << 32
#: A decrease is taken for a 32-bit wrap only when the previous value was within this much of
#: 2**32 and the new one is below it (1 GiB; a larger jump is indistinguishable from a reset).
WRAP_WINDOW = 1 << 30


def counter_delta(previous: int, current: int) -> int:
    """Return how much a monotonic counter advanced from ``previous`` to ``current`` (>= 0)."""
    if current >= previous:
        return current - previous
    if _WRAP32 - WRAP_WINDOW <= previous < _WRAP32 and current < WRAP_WINDOW:
        return _WRAP32 - previous + current
    return max(current, 0)


def network_delta(
    previous: Mapping[str, InterfaceCounters], current: Mapping[str, InterfaceCounters]
) -> NetworkStats:
    """Sum the per-interface deltas of the interfaces present in both samples.

    >>> a = {"eth0": InterfaceCounters(100, 1, 50, 1)}
    >>> b = {"eth0": InterfaceCounters(300, 3, 20, 2), "ppp0": InterfaceCounters(9, 9, 9, 9)}
    >>> network_delta(a, b)
    NetworkStats(bytes_in=200, bytes_out=20, packets_in=2, packets_out=1)
    """
    bytes_in = packets_in = bytes_out = packets_out = 0
    for name, cur in current.items():
        prev = previous.get(name)
        if prev is None:
            continue
        bytes_in += counter_delta(prev.bytes_in, cur.bytes_in)
        packets_in += counter_delta(prev.packets_in, cur.packets_in)
        bytes_out += counter_delta(prev.bytes_out, cur.bytes_out)
        packets_out += counter_delta(prev.packets_out, cur.packets_out)
    return NetworkStats(
        bytes_in=bytes_in, bytes_out=bytes_out, packets_in=packets_in, packets_out=packets_out
    )
