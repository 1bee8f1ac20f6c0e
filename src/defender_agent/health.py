"""Healthy or not, from a status document: pure rules for ``status --check`` and ``STATUS=``.

The agent writes ``status.json`` after every cycle and the service writes
``service-status.json`` every few seconds (both in their state directories).
:func:`agent_problem` and :func:`service_problem` read one such document and
return the first reason it is unhealthy, as one line, or ``None``;
:func:`agent_summary` is the one-line ``STATUS=`` text systemd shows.

Rules for the agent, in order:

1. the process is gone (its pid no longer exists);
2. the status was not updated for two intervals plus the grace (the loop is hung
   or the agent stopped);
3. the last cycle failed;
4. the link has been down longer than the allowed disconnection (default: one interval);
5. replies are missing (``agent.resubscribe_after`` reports in a row unanswered);
6. no report was accepted within two intervals plus the grace (``--max-age``
   replaces that limit), counted from the start for an agent that has not had
   one accepted yet. A dry-run agent publishes nothing, so this rule and the
   link rules do not apply to it.

Rules for the service: the process is gone; the status is stale; the broker
link is down longer than allowed; the store is down (a write failed and is being
retried); one store call has run for over a minute (hung); the queue of accepted
reports waiting for the store is at least 90 % full.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = [
    "GRACE_S",
    "SERVICE_STALE_S",
    "STORE_HUNG_S",
    "agent_problem",
    "agent_summary",
    "pid_alive",
    "service_problem",
]

#: Added to two intervals before a report's absence (or a stale status) counts.
GRACE_S = 60.0
#: The service writes its status every few seconds; older than this, it is stale.
SERVICE_STALE_S = 60.0
#: A single store call running longer than this counts as hung.
STORE_HUNG_S = 60.0


def pid_alive(pid: object) -> bool:
    """Whether ``pid`` names a process that exists now.

    >>> import os
    >>> pid_alive(os.getpid()), pid_alive(None), pid_alive(True)
    (True, False, False)
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    return Path(f"/proc/{pid}").exists()


def _number(value: object) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _age(stamp: object, now: float) -> Optional[float]:
    at = _number(stamp)
    return None if at is None else max(0.0, now - at)


def agent_problem(
    status: Mapping[str, Any],
    now: float,
    *,
    max_age: Optional[float] = None,
    max_disconnected: Optional[float] = None,
    alive: Callable[[object], bool] = pid_alive,
) -> Optional[str]:
    """The first reason the agent is unhealthy, as one line; ``None`` when healthy.

    Args:
        status: the agent's ``status.json``.
        now: the wall clock, in seconds since the epoch.
        max_age: the longest time without an accepted report (default two intervals
            plus :data:`GRACE_S`).
        max_disconnected: the longest time the link may be down (default one interval).
        alive: whether a pid is running (injectable for tests).

    >>> ok = {"pid": 1, "interval": 300, "started_at": 0, "updated_at": 900, "connected": True,
    ...       "counters": {"last_accepted_at": 800}, "last_cycle": {"ok": True, "at": 890}}
    >>> agent_problem(ok, 1000, alive=lambda pid: True) is None
    True
    >>> agent_problem({**ok, "counters": {"last_accepted_at": 100}}, 1000, alive=lambda p: True)
    'no report accepted for 900 s (limit 660 s)'
    >>> agent_problem(ok, 1000, max_age=100, alive=lambda pid: True)
    'no report accepted for 200 s (limit 100 s)'
    >>> agent_problem({**ok, "last_cycle": {"ok": False, "error": "publish: boom"}}, 1000,
    ...               alive=lambda pid: True)
    'last cycle failed: publish: boom'
    >>> agent_problem({**ok, "connected": False, "disconnected_since": 500}, 1000,
    ...               alive=lambda pid: True)
    'not connected for 500 s (limit 300 s)'
    >>> agent_problem({**ok, "replies_missing": True, "counters": {"last_accepted_at": 800,
    ...               "unanswered_in_a_row": 3}}, 1000, alive=lambda pid: True)
    'replies missing: 3 reports in a row unanswered'
    >>> agent_problem(ok, 1000, alive=lambda pid: False)
    'agent not running (pid 1 is gone)'
    >>> agent_problem({**ok, "updated_at": 100}, 1000, alive=lambda pid: True)
    'status not updated for 900 s (limit 660 s): the agent loop is stuck or stopped'
    """
    interval = _number(status.get("interval")) or 300.0
    counters = status.get("counters")
    counters = counters if isinstance(counters, Mapping) else {}
    pid = status.get("pid")
    if not alive(pid):
        return f"agent not running (pid {pid} is gone)"
    stale_limit = 2 * interval + GRACE_S
    updated = _age(status.get("updated_at"), now)
    if updated is None or updated > stale_limit:
        shown = "ever" if updated is None else f"for {updated:.0f} s"
        return (
            f"status not updated {shown} (limit {stale_limit:.0f} s): "
            "the agent loop is stuck or stopped"
        )
    last = status.get("last_cycle")
    if isinstance(last, Mapping) and last.get("ok") is False:
        return f"last cycle failed: {last.get('error') or 'unknown error'}"
    if status.get("dry_run"):
        return None
    down_limit = interval if max_disconnected is None else max_disconnected
    down = _age(status.get("disconnected_since"), now)
    if not status.get("connected") and down is not None and down > down_limit:
        return f"not connected for {down:.0f} s (limit {down_limit:.0f} s)"
    if status.get("replies_missing"):
        streak = counters.get("unanswered_in_a_row", "?")
        return f"replies missing: {streak} reports in a row unanswered"
    limit = stale_limit if max_age is None else max_age
    accepted = _age(counters.get("last_accepted_at"), now)
    if accepted is None:
        since_start = _age(status.get("started_at"), now)
        if since_start is not None and since_start > limit:
            return (
                f"no report accepted since the start {since_start:.0f} s ago (limit {limit:.0f} s)"
            )
    elif accepted > limit:
        return f"no report accepted for {accepted:.0f} s (limit {limit:.0f} s)"
    return None


def service_problem(
    status: Mapping[str, Any],
    now: float,
    *,
    max_age: Optional[float] = None,
    max_disconnected: float = 60.0,
    alive: Callable[[object], bool] = pid_alive,
) -> Optional[str]:
    """The first reason the service is unhealthy, as one line; ``None`` when healthy.

    Args:
        status: the service's ``service-status.json``.
        now: the wall clock.
        max_age: how old the status may be (default :data:`SERVICE_STALE_S`).
        max_disconnected: how long the broker link may be down.
        alive: whether a pid is running.

    >>> ok = {"pid": 1, "updated_at": 995, "connected": True, "store_down": False,
    ...       "queue_depth": 3, "queue_max": 1000}
    >>> service_problem(ok, 1000, alive=lambda pid: True) is None
    True
    >>> service_problem({**ok, "store_down": True, "store_error": "disk I/O error"}, 1000,
    ...                 alive=lambda pid: True)
    'store not writable: disk I/O error'
    >>> service_problem({**ok, "store_busy_s": 75.2}, 1000, alive=lambda pid: True)
    'a store call has been running for 75 s (hung?)'
    >>> service_problem({**ok, "queue_depth": 950}, 1000, alive=lambda pid: True)
    'queue of accepted reports 950 of 1000 (the store falls behind)'
    >>> service_problem({**ok, "connected": False, "disconnected_since": 900}, 1000,
    ...                 alive=lambda pid: True)
    'broker not connected for 100 s (limit 60 s)'
    """
    pid = status.get("pid")
    if not alive(pid):
        return f"service not running (pid {pid} is gone)"
    limit = SERVICE_STALE_S if max_age is None else max_age
    updated = _age(status.get("updated_at"), now)
    if updated is None or updated > limit:
        shown = "ever" if updated is None else f"for {updated:.0f} s"
        return f"status not updated {shown} (limit {limit:.0f} s): the service is stuck or stopped"
    down = _age(status.get("disconnected_since"), now)
    if not status.get("connected") and (down is None or down > max_disconnected):
        shown = "yet" if down is None else f"for {down:.0f} s"
        return f"broker not connected {shown} (limit {max_disconnected:.0f} s)"
    if status.get("store_down"):
        return f"store not writable: {status.get('store_error') or 'writes fail'}"
    busy = _number(status.get("store_busy_s"))
    if busy is not None and busy > STORE_HUNG_S:
        return f"a store call has been running for {busy:.0f} s (hung?)"
    depth, room = _number(status.get("queue_depth")), _number(status.get("queue_max"))
    if depth is not None and room and depth >= 0.9 * room:
        return f"queue of accepted reports {depth:.0f} of {room:.0f} (the store falls behind)"
    return None


def agent_summary(status: Mapping[str, Any]) -> str:
    """The agent's state in one line, for systemd's ``STATUS=`` (``systemctl status``).

    >>> agent_summary({"connected": True, "counters": {"sent": 3, "accepted": 2,
    ...     "rejected": {"Throttled": 1}, "last_accepted_at": 0}})
    'connected; sent 3, accepted 2, rejected 1, unanswered 0; last accepted 00:00:00 UTC'
    >>> agent_summary({"dry_run": True, "counters": {"built": 4}})
    'dry run; built 4 reports'
    >>> agent_summary({"connected": False, "counters": {"last_rejection": {"code": "Throttled",
    ...     "at": 60}, "last_accepted_at": 0}, "replies_missing": True})
    ... # doctest: +NORMALIZE_WHITESPACE
    'not connected; sent 0, accepted 0, rejected 0, unanswered 0;
     last rejection Throttled 00:01:00 UTC; replies missing'
    """
    counters = status.get("counters")
    c: Mapping[str, Any] = counters if isinstance(counters, Mapping) else {}
    if status.get("dry_run"):
        return f"dry run; built {c.get('built', 0)} reports"
    rejected = c.get("rejected")
    n_rejected = sum(rejected.values()) if isinstance(rejected, Mapping) else 0
    parts = [
        "connected" if status.get("connected") else "not connected",
        (
            f"sent {c.get('sent', 0)}, accepted {c.get('accepted', 0)}, "
            f"rejected {n_rejected}, unanswered {c.get('unanswered', 0)}"
        ),
    ]
    accepted_at = _number(c.get("last_accepted_at"))
    rejection = c.get("last_rejection")
    rejected_at = _number(rejection.get("at")) if isinstance(rejection, Mapping) else None
    if rejected_at is not None and (accepted_at is None or rejected_at > accepted_at):
        assert isinstance(rejection, Mapping)
        parts.append(f"last rejection {rejection.get('code')} {_clock(rejected_at)}")
    elif accepted_at is not None:
        parts.append(f"last accepted {_clock(accepted_at)}")
    if status.get("replies_missing"):
        parts.append("replies missing")
    return "; ".join(parts)


def _clock(stamp: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(stamp))
