"""The saved baseline: what it records, and whether a restarted agent may resume from it.

After each cycle the agent saves the readings the next delta needs, with what
they were read from: the boot (id and boot-time clock), the thing, and the
*source* — proc root, socket source and interface selection. A restarted agent
resumes only from a baseline of the same boot, saved within the resume window,
for the same thing and from the same source; otherwise the delta would mix two
machines' (or two selections') counters into one spike.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from defender_agent.cycle import CollectorConfig

__all__ = ["baseline_source", "why_not_resume"]


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
    """
    if boot_id is None or saved.get("boot_id") != boot_id:
        return "the machine rebooted since it was saved"
    stamp = saved.get("boottime")
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
        return "it has no boot-time stamp"
    age = now - float(stamp)
    if not 0 <= age <= window:
        return f"it is {age:.0f} s old (resume window {window:.0f} s)"
    if saved.get("thing_name") != thing_name:
        return f"it was saved for thing {saved.get('thing_name')!r}"
    return _source_change(saved.get("source"), source)
