"""The saved baseline: what it records, and whether a restarted agent may resume from it.

After each cycle the agent saves the readings the next delta needs, with what
they were read from: the boot (id and boot-time clock), the thing, and the
*source* — proc root, socket source and interface selection. A restarted agent
resumes only from a baseline of the same boot, saved within the resume window,
for the same thing and from the same source; otherwise the delta would mix two
machines' (or two selections') counters into one spike.

A baseline is also checked, not trusted: a boot-time stamp or a
``last_published`` ahead of the boot-time clock (beyond :data:`FUTURE_SKEW_S`)
is an :class:`~defender_agent.state.OutOfRange` reason, which the agent logs
as a warning before it starts fresh (a ``last_published`` far in the future
would otherwise put the next report off for as long, silently).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from defender_agent.cycle import CollectorConfig
from defender_agent.state import OutOfRange

__all__ = ["FUTURE_SKEW_S", "baseline_source", "why_not_resume"]

#: How far (seconds) a saved boot-time value may be ahead of the boot-time clock now.
FUTURE_SKEW_S = 5.0


def baseline_source(config: CollectorConfig) -> dict[str, Any]:
    """What the counters of a baseline are read from, as plain data.

    >>> from pathlib import Path
    >>> baseline_source(CollectorConfig(proc_root=Path("/proc"), socket_source="proc"))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'proc_root': '/proc', 'socket_source': 'proc', 'interfaces_include': ['*'],
     'interfaces_exclude': ['lo'], 'wildcard_interface': None}
    """
    return {
        "proc_root": str(Path(config.proc_root).resolve()),
        "socket_source": config.socket_source,
        "interfaces_include": list(config.interfaces_include),
        "interfaces_exclude": list(config.interfaces_exclude),
        "wildcard_interface": config.wildcard_interface,
    }


def _source_change(saved: object, current: Mapping[str, Any]) -> Optional[str]:
    if not isinstance(saved, Mapping):
        return "it does not record what it was read from"
    for key, value in current.items():
        if saved.get(key) != value:
            return f"it was read with {key} {saved.get(key)!r}, now {value!r}"
    return None


def why_not_resume(
    saved: Mapping[str, Any],
    *,
    boot_id: Optional[str],
    now: float,
    window: float,
    thing_name: str,
    source: Mapping[str, Any],
) -> Optional[str]:
    """Why a saved baseline cannot be resumed, or ``None`` when it can.

    Args:
        saved: the saved baseline document.
        boot_id: this boot's id (``None``: unknown, so never resume).
        now: the boot-time clock now.
        window: how old (seconds) a baseline may be.
        thing_name: the thing this agent reports for.
        source: :func:`baseline_source` of this agent's collector.

    >>> src = {"proc_root": "/proc"}
    >>> doc = {"boot_id": "b1", "boottime": 100.0, "thing_name": "gw", "source": src}
    >>> why_not_resume(doc, boot_id="b1", now=160.0, window=450, thing_name="gw", source=src)
    >>> why_not_resume(doc, boot_id="b2", now=160.0, window=450, thing_name="gw", source=src)
    'the machine rebooted since it was saved'
    >>> why_not_resume(doc, boot_id="b1", now=600.0, window=450, thing_name="gw", source=src)
    'it is 500 s old (resume window 450 s)'
    >>> why_not_resume(doc, boot_id="b1", now=160.0, window=450, thing_name="gw",
    ...                source={"proc_root": "/tmp/fixture"})
    "it was read with proc_root '/proc', now '/tmp/fixture'"
    >>> reason = why_not_resume({**doc, "last_published": 1e12}, boot_id="b1", now=160.0,
    ...                         window=450, thing_name="gw", source=src)
    >>> reason, isinstance(reason, OutOfRange)
    ('last_published 1000000000000.0 is ahead of the boot-time clock (160 s)', True)
    """
    if boot_id is None or saved.get("boot_id") != boot_id:
        return "the machine rebooted since it was saved"
    stamp = saved.get("boottime")
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
        return "it has no boot-time stamp"
    problem = _time_problem("boottime", stamp, now)
    if problem is not None:
        return problem
    age = now - float(stamp)
    if age > window:
        return f"it is {age:.0f} s old (resume window {window:.0f} s)"
    if saved.get("thing_name") != thing_name:
        return f"it was saved for thing {saved.get('thing_name')!r}"
    change = _source_change(saved.get("source"), source)
    if change is not None:
        return change
    last = saved.get("last_published")
    if last is None:
        return None
    if not isinstance(last, (int, float)) or isinstance(last, bool):
        return OutOfRange(f"last_published {last!r} is not a number")
    return _time_problem("last_published", last, now)


def _time_problem(key: str, value: float, now: float) -> Optional[OutOfRange]:
    """A saved boot-time value that is not finite, negative or ahead of the clock.

    >>> _time_problem("boottime", 100.0, now=102.0) is None   # within the skew
    True
    >>> _time_problem("boottime", float("nan"), now=102.0)
    'boottime nan is not a time on the boot-time clock'
    """
    if not math.isfinite(value) or value < 0:
        return OutOfRange(f"{key} {value!r} is not a time on the boot-time clock")
    if value > now + FUTURE_SKEW_S:
        return OutOfRange(f"{key} {value!r} is ahead of the boot-time clock ({now:.0f} s)")
    return None
