"""Time for the agent: the boot-time clock, the boot id, backoff delays.

Reports follow a fixed cadence on ``CLOCK_BOOTTIME`` (monotonic, counts
suspend, and is shared by every process of one boot, so a restarted agent can
tell how long ago its previous report was). The boot id tells a restart of
the agent from a reboot of the machine.
"""

from __future__ import annotations

import random
import time
from typing import Optional

from defender_agent.procfs import ProcFS

__all__ = ["RECONNECT_CAP_S", "RESET_AFTER_S", "backoff_delay", "boot_id", "boottime"]

#: The longest delay between connection attempts: a broker that comes back is found
#: within this long (a cap of minutes let a flapping broker's short up-times go by).
RECONNECT_CAP_S = 30.0
#: A connection that held this long starts the next outage's backoff from the beginning.
RESET_AFTER_S = 10.0


def boottime() -> float:
    """Seconds since boot, including suspend (monotonic where CLOCK_BOOTTIME is missing)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None:  # pragma: no cover - not Linux
        return time.monotonic()
    return time.clock_gettime(clock)


def boot_id(procfs: Optional[ProcFS] = None) -> Optional[str]:
    """The kernel's random boot id (``sys/kernel/random/boot_id``), or ``None`` if unreadable."""
    try:
        return (procfs or ProcFS()).read_text("sys", "kernel", "random", "boot_id").strip() or None
    except OSError:
        return None


def backoff_delay(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = RECONNECT_CAP_S,
    rng: Optional[random.Random] = None,
) -> float:
    """Delay before connection attempt ``attempt + 1``: exponential, capped, with jitter.

    Half of the exponential step is fixed and half is random ("equal jitter"), so a
    fleet that lost its link together does not retry in lock-step, and the delay is
    never zero (no busy loop).

    >>> [round(backoff_delay(n, rng=random.Random(1)), 2) for n in range(4)]
    [0.57, 1.13, 2.27, 4.54]
    >>> 15 <= backoff_delay(50, rng=random.Random(1)) <= 30
    True
    """
    step = min(cap, base * (2.0 ** min(attempt, 30)))
    return step / 2 + (rng or random).uniform(0, step / 2)
