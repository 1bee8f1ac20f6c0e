"""What every custom metric source shares: the failure type, the source contract, warn-once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

from defender_agent.logs import get_logger
from defender_agent.model import CustomMetricType

if TYPE_CHECKING:
    from defender_agent.readers.interfaces import InterfaceMap
    from defender_agent.readers.sockets import SocketSummary

__all__ = ["CycleReadings", "MetricError", "Source", "WarnOnce"]

log = get_logger("defender_agent.custom")


class MetricError(Exception):
    """A metric has no value this cycle; the metric is left out of the report.

    Attributes:
        kind: a short word for the kind of failure (``timeout``, ``exit``,
            ``output``, ``read``, ``invalid``, ...); warnings are given once
            per metric and kind.
        reason: one line naming what went wrong.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class Source(Protocol):
    """A custom metric source: a name, a type, and a sample per cycle."""

    name: str
    type: CustomMetricType

    def sample(self) -> Optional[object]:
        """Return this cycle's raw value, or ``None`` when there is none yet (a baseline).

        Raises:
            MetricError: the value cannot be had this cycle.
            OSError: a file could not be read.
        """


class WarnOnce:
    """Log a WARNING the first time a (metric, kind) pair comes up, DEBUG afterwards."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def __call__(self, metric: str, kind: str, message: str, *args: object) -> None:
        """Log ``message % args``, prefixed with the metric's name."""
        key = (metric, kind)
        level = 10 if key in self._seen else 30  # logging.DEBUG, logging.WARNING
        self._seen.add(key)
        log.log(level, "custom metric %s: %s", metric, message % args if args else message)


class CycleReadings:
    """What a collection cycle read, for the built-ins that are computed from it.

    Attributes:
        interfaces: the cycle's address → interface map (``None``: it failed).
        sockets: the cycle's socket summary, with the remote peers and the
            listeners gathered when a metric needs them (``None``: it failed).
    """

    __slots__ = ("interfaces", "sockets")

    def __init__(
        self, interfaces: Optional[InterfaceMap] = None, sockets: Optional[SocketSummary] = None
    ) -> None:
        self.interfaces = interfaces
        self.sockets = sockets
