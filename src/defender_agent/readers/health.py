"""How each metric source fared: missing files, malformed lines skipped, time spent.

One :class:`SourceHealth` per source (``net/dev``, ``interfaces``, ``sockets``,
``custom/<metric>``) is updated every time the source is read; its
:meth:`~SourceHealth.as_dict` is what ``status.json`` and
``defender-agent status`` show.

>>> h = SourceHealth()
>>> h.record(missing=None, malformed=3, seconds=0.0021)
>>> h.record(missing="net/tcp: No such file or directory", malformed=0, seconds=0.0004)
>>> h.as_dict()
{'missing': 'net/tcp: No such file or directory', 'malformed': 0, 'malformed_total': 3, 'duration_ms': 0.4}
"""  # noqa: E501 - a doctest output line

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

__all__ = ["SourceHealth", "missing_text"]


class SourceHealth:
    """The health of one metric source as of its last read.

    Attributes:
        missing: why the source (or a file of it) could not be read last time, or ``None``.
        malformed: malformed lines skipped by the last read.
        malformed_total: malformed lines skipped over the life of the process.
        duration_ms: how long the last read took, in milliseconds.
    """

    __slots__ = ("duration_ms", "malformed", "malformed_total", "missing")

    def __init__(self) -> None:
        self.missing: Optional[str] = None
        self.malformed = 0
        self.malformed_total = 0
        self.duration_ms = 0.0

    def record(self, *, missing: Optional[str], malformed: int, seconds: float) -> None:
        """Take the outcome of one read."""
        self.missing = missing
        self.malformed = malformed
        self.malformed_total += malformed
        self.duration_ms = round(seconds * 1000.0, 3)

    def as_dict(self) -> dict[str, object]:
        """The JSON-able form."""
        return {
            "missing": self.missing,
            "malformed": self.malformed,
            "malformed_total": self.malformed_total,
            "duration_ms": self.duration_ms,
        }


def missing_text(missing: Mapping[str, str]) -> Optional[str]:
    """One line naming the unreadable files and why, or ``None`` when there are none.

    >>> missing_text({"net/tcp": "No such file or directory", "net/udp": "Permission denied"})
    'net/tcp: No such file or directory; net/udp: Permission denied'
    >>> missing_text({}) is None
    True
    """
    if not missing:
        return None
    return "; ".join(f"{name}: {reason}" for name, reason in missing.items())
