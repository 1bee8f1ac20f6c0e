"""The agent: collect on a fixed cadence, publish to Device Defender, act on the replies.

One loop thread keeps the schedule; a connector thread gets the first
connection with exponential backoff and jitter (forever, never busy); the
MQTT client reconnects by itself after that. The schedule never waits for the
network and never stops on an error:

* a report that cannot be published (link down, no PUBACK) is dropped and
  counted; the next one replaces it — stale reports are never replayed;
* a collector failure drops that group from one report;
* a ``Throttled`` rejection holds the next report a full interval.

Restart safety: after each cycle the collector's baseline (interface counters,
CPU times), the boot id and the boot-time clock are saved atomically in the
state directory. An agent restarted on the same boot within
``resume_window`` (default 1.5 intervals) reuses that baseline — a correct
delta at once, and reports stay at least an interval apart; after a reboot or
a long gap it starts fresh (baseline first, first report one interval later).

``python -m defender_agent.agent`` (the public sample's spelling) runs ``agent/__main__.py``.
"""

from __future__ import annotations

from defender_agent.agent.clock import Clock, report_topic
from defender_agent.agent.loop import Agent

__all__ = ["Agent", "Clock", "report_topic"]
