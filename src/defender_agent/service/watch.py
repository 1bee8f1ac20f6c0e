"""The service's health, written down and told to systemd, while it runs.

:func:`supervise` is what ``defender-agent service`` does once it answers reports:
every few seconds (and at least twice per ``WatchdogSec``) it writes
``service-status.json`` to the service's state directory (read by
``defender-agent status --service [--check]``), sends systemd ``READY=1`` once the
broker is connected and ``STATUS=`` with the counters, and pings the watchdog —
unless a call into the store has been running for longer than ``WatchdogSec`` (a
database lock held forever, a hung file system): then the pings stop and systemd
restarts the service. A store that is *down* (its calls fail and are retried) is
not hung: it is reported in the status, and a restart would not help.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Optional

from defender_agent.errors import StateError
from defender_agent.sdnotify import Notifier
from defender_agent.service.runner import DeviceDefenderService
from defender_agent.state import StateDir

__all__ = ["STATUS_NAME", "WRITE_EVERY_S", "summary", "supervise"]

log = logging.getLogger(__name__)

#: The state document the service writes (``service-status.json``).
STATUS_NAME = "service-status"
#: How often the status file is written (and the watchdog looked at, when it is slower).
WRITE_EVERY_S = 5.0


def summary(health: dict[str, object], accepted: int, stored: int) -> str:
    """The one-line ``STATUS=`` text.

    >>> summary({"connected": True, "queue_depth": 0, "store_down": False}, 5, 5)
    'broker connected; accepted 5, stored 5, queue 0'
    >>> summary({"connected": False, "queue_depth": 2, "store_down": True}, 5, 3)
    'broker NOT connected; accepted 5, stored 3, queue 2; store DOWN'
    """
    text = "broker connected" if health.get("connected") else "broker NOT connected"
    text += f"; accepted {accepted}, stored {stored}, queue {health.get('queue_depth', 0)}"
    if health.get("store_down"):
        text += "; store DOWN"
    return text


def supervise(
    service: DeviceDefenderService,
    stop: threading.Event,
    state: Optional[StateDir],
    notifier: Optional[Notifier] = None,
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Until ``stop`` is set: write the status, notify systemd, ping its watchdog."""
    notifier = notifier or Notifier.from_environment()
    ping_every = notifier.watchdog_interval
    hung_after = 2 * ping_every if ping_every is not None else None  # WatchdogSec
    step = WRITE_EVERY_S if ping_every is None else min(WRITE_EVERY_S, ping_every)
    started = clock()
    down_since: Optional[float] = None
    failed: Optional[str] = None
    hung_logged = False
    try:
        while True:
            health = service.health()
            now = clock()
            if health["connected"]:
                down_since = None
            elif down_since is None:
                down_since = now
            stats = service.stats()
            if health["connected"]:
                notifier.ready(summary(health, stats.accepted, stats.stored))
            notifier.status(summary(health, stats.accepted, stats.stored))
            busy = health.get("store_busy_s")
            hung = hung_after is not None and isinstance(busy, float) and busy > hung_after
            if not hung:
                notifier.ping()
                hung_logged = False
            elif not hung_logged:
                hung_logged = True
                log.error(
                    "a store call has been running for %.0f s: no watchdog ping (systemd "
                    "restarts the service)",
                    busy,
                )
            if state is not None:
                failed = _write(
                    state,
                    {
                        "pid": os.getpid(),
                        "started_at": started,
                        "updated_at": now,
                        "disconnected_since": down_since,
                        "accepted": stats.accepted,
                        "stored": stats.stored,
                        "store_errors": stats.store_errors,
                        **health,
                    },
                    failed,
                )
            if stop.wait(step):
                return
    finally:
        notifier.stopping()
        notifier.close()


def _write(state: StateDir, doc: dict[str, object], failed: Optional[str]) -> Optional[str]:
    """Save the status; a failure is logged once (until a write works again)."""
    try:
        state.save(STATUS_NAME, doc)
    except StateError as exc:
        if str(exc) != failed:
            log.warning("service status not saved: %s", exc)
        return str(exc)
    if failed is not None:
        log.info("service status saved again")
    return None
