"""The agent's clocks and its topic name: small pieces the loop and its tests share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from defender_agent.schedule import boottime

__all__ = ["Clock", "report_topic"]


def report_topic(thing_name: str, fmt: str) -> str:
    """The topic reports are published on (protocol.md §1.1).

    >>> report_topic("gw-1", "cbor")
    '$aws/things/gw-1/defender/metrics/cbor'
    """
    return f"$aws/things/{thing_name}/defender/metrics/{fmt}"


@dataclass
class Clock:
    """The agent's clocks, injectable for tests: boot time (schedule) and wall time."""

    boot: Callable[[], float] = boottime
    wall: Callable[[], float] = time.time
