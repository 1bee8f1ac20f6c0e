"""A latency histogram with fixed buckets: cheap to observe, safe between threads.

The service times its store commits (and Detect its evaluations) with one of these;
``/metrics`` exports a snapshot as a Prometheus histogram. Bucket bounds are upper bounds
in seconds, the last bucket is ``+Inf``; counts in a snapshot are cumulative, as Prometheus
wants them.

>>> h = Latency((0.01, 0.1))
>>> for seconds in (0.005, 0.05, 0.5):
...     h.observe(seconds)
>>> snap = h.snapshot()
>>> snap.buckets, snap.count, round(snap.total, 3)
(((0.01, 1), (0.1, 2), (inf, 3)), 3, 0.555)
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_BOUNDS", "Latency", "LatencySnapshot"]

#: Upper bounds (seconds): 1 ms to 10 s, about three per decade.
DEFAULT_BOUNDS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass(frozen=True)
class LatencySnapshot:
    """Cumulative bucket counts ``((upper bound, count), ...)``, the count and the sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    total: float


class Latency:
    """Observations counted into fixed buckets (no samples kept: constant memory)."""

    def __init__(self, bounds: Sequence[float] = DEFAULT_BOUNDS) -> None:
        self._bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self._bounds) + 1)
        self._total = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Count one observation (a negative one counts as 0)."""
        seconds = max(0.0, seconds)
        index = bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            self._counts[index] += 1
            self._total += seconds

    def snapshot(self) -> LatencySnapshot:
        """The cumulative counts now."""
        with self._lock:
            counts, total = list(self._counts), self._total
        running, buckets = 0, []
        for bound, count in zip((*self._bounds, math.inf), counts):
            running += count
            buckets.append((bound, running))
        return LatencySnapshot(tuple(buckets), running, total)
