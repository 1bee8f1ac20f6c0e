"""The load averages from ``/proc/loadavg``: the ``load_average`` custom metric's source.

The file is one line: the 1, 5 and 15 minute load averages, then the
runnable/total scheduling entities and the last pid::

    0.44 0.30 0.36 2/93 20402
"""

from __future__ import annotations

from typing import Optional

__all__ = ["parse_loadavg"]


def parse_loadavg(text: str) -> Optional[tuple[float, float, float]]:
    r"""The three load averages of ``loadavg``, or ``None`` when malformed.

    >>> parse_loadavg("0.44 0.30 0.36 2/93 20402\n")
    (0.44, 0.3, 0.36)
    >>> parse_loadavg("0.44 zero\n") is None
    True
    """
    try:
        one, five, fifteen = (float(v) for v in text.split()[:3])
    except ValueError:
        return None
    return one, five, fifteen
