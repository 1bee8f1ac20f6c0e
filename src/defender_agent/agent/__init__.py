"""The agent: collect on a fixed cadence, publish to Device Defender, act on the replies.

One loop thread keeps the schedule; a connector thread gets the first
connection with exponential backoff and jitter (forever, never busy); the
MQTT client reconnects by itself after that. The schedule never waits for the
network and never stops on an error:

* a report that cannot be published (link down, no PUBACK) is dropped and
  counted; the next one replaces it — stale reports are never replayed;
* a collector failure drops that group from one report;
* any other failure of a cycle (collecting, encoding, validating, publishing,
  saving) is one ERROR line naming the stage, counted in ``status.json``
  (``cycle_errors``, ``last_cycle_error``), and the next cycle runs on time;
* a ``Throttled`` rejection holds the next report a full interval.

The first cycle runs after a random start splay of at most one interval (it
takes the baseline); the first report follows one interval later.

Restart safety: after each cycle the collector's baseline (interface counters,
CPU times), the boot id, the boot-time clock and the source of the readings
(proc root, socket source, interface selection) are saved atomically in the
state directory. An agent restarted on the same boot within ``resume_window``
(default 1.5 intervals), for the same thing and source, reuses that baseline —
a correct delta at once, and reports stay at least an interval apart;
otherwise it says why in one line and starts fresh (baseline first, first
report one interval later), never a spike.

One agent owns a state directory at a time (a lock held while :meth:`Agent.run`
runs); a second one refuses to start, naming the first one's pid.

Modules: :mod:`.clock` (the clocks, waits and threads, injectable for tests),
:mod:`.baseline` (what a saved baseline records, whether to resume it),
:mod:`.loop` (the :class:`Agent`).

``python -m defender_agent.agent`` (the public sample's spelling) runs ``agent/__main__.py``.
"""

from __future__ import annotations

from defender_agent.agent.clock import Clock, report_topic
from defender_agent.agent.loop import Agent

__all__ = ["Agent", "Clock", "report_topic"]
