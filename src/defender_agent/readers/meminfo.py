"""Memory figures from ``/proc/meminfo``: the ``memory_usage`` custom metric's source.

Each line is a name, a colon and a value, in kB for most::

    MemTotal:        8041292 kB
    MemAvailable:    5623396 kB
    HugePages_Total:       0
"""

from __future__ import annotations

__all__ = ["parse_meminfo"]


def parse_meminfo(text: str) -> dict[str, int]:
    r"""The ``Key: value kB`` lines of ``meminfo``, in kB; lines without a number are skipped.

    >>> parse_meminfo("MemTotal:  1000 kB\nMemAvailable:   250 kB\nHugePages_Total: 0\n")
    {'MemTotal': 1000, 'MemAvailable': 250, 'HugePages_Total': 0}
    >>> parse_meminfo("MemTotal: 5 kB\nbroken\nKey:\nX: y kB\n")
    {'MemTotal': 5}
    """
    result: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and fields:
            try:
                result[key.strip()] = int(fields[0])
            except ValueError:
                continue
    return result
