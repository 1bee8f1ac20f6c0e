"""System CPU usage from the ``cpu`` line of ``/proc/stat``: the seed's ``cpu_usage`` metric.

The line holds cumulative jiffies per mode::

    cpu  4705 356 584 3699 23 23 0 0 0 0
         user nice system idle iowait irq softirq steal guest guest_nice

Usage over an interval is the share of non-idle time between two readings
(idle and iowait count as idle; guest time is already inside user). A single
reading says nothing, so the first sample only sets the baseline — unlike
the public sample, whose first ``cpu_percent()`` is 0.0 or 100.0.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

__all__ = ["CpuTimes", "cpu_percent", "parse_proc_stat"]


class CpuTimes(NamedTuple):
    """Cumulative jiffies: all of them, and the idle ones (idle + iowait)."""

    total: int
    idle: int


def parse_proc_stat(text: str) -> Optional[CpuTimes]:
    r"""Return the aggregate CPU times, or ``None`` when the ``cpu`` line is missing or malformed.

    >>> parse_proc_stat("cpu  4705 356 584 3699 23 23 0 0 0 0\ncpu0 1 2 3 4\n")
    CpuTimes(total=9390, idle=3722)
    """
    for line in text.splitlines():
        if not line.startswith("cpu "):
            continue
        try:
            values = [int(v) for v in line.split()[1:9]]
        except ValueError:
            return None
        if len(values) < 4 or min(values) < 0:
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return CpuTimes(total=sum(values), idle=idle)
    return None


def cpu_percent(previous: CpuTimes, current: CpuTimes) -> Optional[float]:
    """CPU busy percentage between two readings, rounded to 0.01; ``None`` if no time passed.

    >>> cpu_percent(CpuTimes(1000, 800), CpuTimes(1400, 1100))
    25.0
    """
    elapsed = current.total - previous.total
    idle = current.idle - previous.idle
    if elapsed <= 0 or idle < 0:
        return None
    busy = min(max(elapsed - idle, 0), elapsed)
    return round(100.0 * busy / elapsed, 2)
