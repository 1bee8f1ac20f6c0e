"""The agent's clocks and its topic name: small pieces the loop and its tests share.

Everything the agent does with time goes through one :class:`Clock`: reading
the boot-time and wall clocks, waiting (every sleep of the schedule and of the
connect loop is a :meth:`Clock.wait` on the stop event), and starting its
connector thread. A test swaps in a simulated clock whose time advances
instantly when every thread of the agent is waiting, so the schedule is tested
without sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from defender_agent.schedule import boottime

__all__ = ["Clock", "report_topic"]


def report_topic(thing_name: str, fmt: str) -> str:
    """The topic reports are published on (protocol.md §1.1).

    >>> report_topic("gw-1", "cbor")
    '$aws/things/gw-1/defender/metrics/cbor'
    """
    return f"$aws/things/{thing_name}/defender/metrics/{fmt}"


class Clock:
    """The agent's clocks, waits and threads; each part injectable for tests.

    Args:
        boot: seconds on the boot-time clock (the schedule; monotonic).
        wall: seconds since the epoch (timestamps in the status file).

    >>> import threading
    >>> clock = Clock(boot=lambda: 5.0)
    >>> clock.boot(), clock.wait(threading.Event(), 0)
    (5.0, False)
    """

    def __init__(
        self,
        boot: Callable[[], float] = boottime,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.boot = boot
        self.wall = wall

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` have passed; whether it is set."""
        return event.wait(max(0.0, seconds))

    def start_thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        """Start a daemon thread of the agent (a simulated clock keeps track of them)."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread
