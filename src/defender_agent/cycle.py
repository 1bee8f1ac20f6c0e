"""One collection cycle: read every metric source, compute deltas, build the report.

The cycle is the hot path of the agent, so it reads each /proc file once,
builds objects only for what goes into the report, and keeps its cost linear
in the number of sockets.

>>> from pathlib import Path
>>> collector = Collector(CollectorConfig(proc_root=Path("/proc")))
>>> collector.cycle() is None      # the first call takes the baseline
True
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from defender_agent._record import replace
from defender_agent.config.sections import CollectorConfig
from defender_agent.custom._base import CycleReadings
from defender_agent.delta import WRAP_WINDOW, network_delta
from defender_agent.errors import ConfigError
from defender_agent.logs import get_logger
from defender_agent.model import (
    ConnectionList,
    CustomMetric,
    ListeningPort,
    NetworkStats,
    PortList,
    Report,
)
from defender_agent.procfs import ProcFS
from defender_agent.readers import _psutil
from defender_agent.readers.cpu_usage import CpuTimes
from defender_agent.readers.health import SourceHealth, missing_text
from defender_agent.readers.interfaces import InterfaceMap, read_interface_map
from defender_agent.readers.network_stats import (
    InterfaceCounters,
    parse_net_dev,
    select_interfaces,
)
from defender_agent.readers.sockets import resolve_source, summarize_sockets
from defender_agent.state import OutOfRange, ReportIdSequence, StateDir

if TYPE_CHECKING:
    from defender_agent.custom.registry import CustomMetrics

__all__ = ["Collector", "CollectorConfig", "Snapshot"]

log = get_logger(__name__)

#: The largest value a saved counter may have (the kernel's counters are 64-bit).
MAX_COUNTER = 2**64 - 1
_WRAP32 = 1 << 32


class Snapshot:
    """The raw readings of one cycle that the next cycle needs for its deltas."""

    __slots__ = ("interfaces", "monotonic")

    def __init__(
        self, interfaces: Optional[dict[str, InterfaceCounters]] = None, monotonic: float = 0.0
    ) -> None:
        self.interfaces = interfaces
        self.monotonic = monotonic


class Collector:
    """Collects Device Defender metrics and builds reports.

    Args:
        config: what to collect.
        state_dir: where report ids are persisted; ``None`` keeps them in memory.
        clock: wall clock for report ids (injectable for tests).

    Raises:
        ConfigError: the socket source is psutil (asked for, or ``auto`` on a
            host without /proc) and psutil is not installed.
    """

    def __init__(
        self,
        config: Optional[CollectorConfig] = None,
        state_dir: Optional[Path] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or CollectorConfig()
        self.procfs = ProcFS(self.config.proc_root)
        self._source = resolve_source(self.config.socket_source, self.procfs)
        if self._source == "psutil" and not _psutil.available():
            raise ConfigError(_psutil.NOT_INSTALLED)
        self._psutil = self._source == "psutil"
        self._ids = ReportIdSequence(StateDir(state_dir) if state_dir else None, clock)
        self._previous: Optional[Snapshot] = None
        custom = self.config.custom_metrics
        if self.config.include_custom_metrics:
            custom = custom.enable("cpu_usage")
        custom = replace(custom, list_size=self.config.list_size)
        cpu_times = _psutil.cpu_times if self._psutil else None
        self._custom: Optional[CustomMetrics] = None
        if not custom.empty:  # the metrics' modules are imported only when there are some
            from defender_agent.custom.registry import CustomMetrics  # noqa: PLC0415

            self._custom = CustomMetrics(
                custom, self.procfs, cpu_times=cpu_times, socket_source=self._source
            )
        self._needs = frozenset() if self._custom is None else self._custom.needs
        self._warned: set[str] = set()
        self._health: dict[str, SourceHealth] = {}
        self._cycles = 0
        self._cycle_ms = 0.0
        self._used_source: Optional[str] = None

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, object]:
        """How the metric sources fared, as JSON-able data (for ``status.json``).

        Returns:
            ``cycles`` run so far, ``duration_ms`` of the last one,
            ``socket_source`` actually used by the last socket read (``netlink``,
            ``proc`` or ``psutil``; ``None`` before the first one), and
            ``sources``: per source (``net/dev``, ``interfaces``, ``sockets``,
            ``custom/<metric>``) as of its last read, ``missing`` (why it or one
            of its files could not be read, or ``None``), ``malformed`` lines
            skipped by that read and ``malformed_total`` over the process's
            life, and ``duration_ms``.
        """
        sources = {name: h.as_dict() for name, h in self._health.items()}
        if self._custom is not None:
            for name, h in self._custom.health().items():
                sources[f"custom/{name}"] = h.as_dict()
        return {
            "cycles": self._cycles,
            "duration_ms": self._cycle_ms,
            "socket_source": self._used_source,
            "sources": sources,
        }

    def _record(
        self, name: str, started: float, missing: Optional[str] = None, malformed: int = 0
    ) -> None:
        health = self._health.get(name)
        if health is None:
            health = self._health[name] = SourceHealth()
        health.record(missing=missing, malformed=malformed, seconds=time.perf_counter() - started)

    # ------------------------------------------------------------------ helpers
    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key in self._warned:
            log.debug(message, *args)
        else:
            self._warned.add(key)
            log.warning(message, *args)

    def _warn_malformed(self, name: str, count: int) -> None:
        if count:
            self._warn_once(
                f"malformed:{name}",
                "skipped %d malformed line(s) in %s",
                count,
                self.procfs.path(name),
            )

    def _warn_missing(self, name: str, reason: str) -> None:
        path = self.procfs.path(name)
        self._warn_once(
            f"missing:{path}", "cannot read %s (%s); leaving out its metrics", path, reason
        )

    # ------------------------------------------------------------------ reading
    def _read_snapshot(self) -> Snapshot:
        snap = Snapshot(monotonic=time.monotonic())
        started = time.perf_counter()
        try:
            self._read_counters(snap, started)
        except Exception as exc:  # a bug drops its group from this report, never the cycle
            log.exception("reading the traffic counters failed; leaving them out")
            snap.interfaces = None
            self._record("net/dev", started, f"{type(exc).__name__}: {exc}")
        return snap

    def _read_counters(self, snap: Snapshot, started: float) -> None:
        cfg = self.config
        if self._psutil:
            counters = _psutil.interface_counters()
            snap.interfaces = select_interfaces(
                counters, cfg.interfaces_include, cfg.interfaces_exclude
            )
            self._record("net/dev", started)
            return
        try:
            dev = self.procfs.read_text("net", "dev")
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._warn_missing("net/dev", reason)
            self._record("net/dev", started, f"net/dev: {reason}")
            return
        counters, bad = parse_net_dev(dev)
        self._warn_malformed("net/dev", bad)
        snap.interfaces = select_interfaces(
            counters, cfg.interfaces_include, cfg.interfaces_exclude
        )
        self._record("net/dev", started, None, bad)

    def _sockets(self, readings: dict[str, Any]) -> None:
        """Read the interface map and the socket tables into ``readings``.

        The groups go in as ``tcp_ports``, ``udp_ports`` and ``connections``;
        what the custom metrics take from the same read as ``interfaces`` and
        ``summary``.
        """
        cfg = self.config
        started = time.perf_counter()
        interfaces: InterfaceMap = (
            _psutil.interface_map(cfg.wildcard_interface)
            if self._psutil
            else read_interface_map(self.procfs, cfg.wildcard_interface)
        )
        readings["interfaces"] = interfaces
        self._record("interfaces", started, missing_text(interfaces.missing))
        started = time.perf_counter()
        summary = summarize_sockets(
            self.procfs,
            interfaces,
            source=self._source,
            include_loopback=cfg.include_loopback_connections,
            limit=cfg.list_size,
            remote_peers="remote_peers" in self._needs,
            listeners="listeners" in self._needs,
        )
        readings["summary"] = summary
        status = summary.status
        self._used_source = status.source
        for name, reason in status.missing.items():
            self._warn_missing(name, reason)
        for name, count in status.malformed.items():
            self._warn_malformed(name, count)
        self._record(
            "sockets", started, missing_text(status.missing), sum(status.malformed.values())
        )
        if summary.tcp_ports is not None:
            readings["tcp_ports"] = _port_list(summary.tcp_ports, cfg.list_size)
        if summary.udp_ports is not None:
            readings["udp_ports"] = _port_list(summary.udp_ports, cfg.list_size)
        if summary.connections is not None:
            readings["connections"] = ConnectionList(
                tuple(summary.connections), summary.connections_total
            )

    # ------------------------------------------------------------------ cycle
    def cycle(self) -> Optional[Report]:
        """Run one collection cycle.

        Returns:
            The report, or ``None`` for the very first cycle, which only takes
            the baseline that deltas need (nothing is reported until a delta
            exists, as in the public sample). Lists hold at most ``list_size``
            entries; :func:`~defender_agent.report.fit.encode_fitted` encodes
            it within the message size limit.
        """
        started = time.perf_counter()
        try:
            return self._cycle()
        finally:
            self._cycles += 1
            self._cycle_ms = round((time.perf_counter() - started) * 1000.0, 3)

    def _cycle(self) -> Optional[Report]:
        snap = self._read_snapshot()
        previous, self._previous = self._previous, snap
        if previous is None:
            if self._custom is not None:
                self._custom.baseline()
            return None
        started = time.perf_counter()
        readings: dict[str, Any] = {}
        try:
            self._sockets(readings)
        except Exception as exc:  # a bug drops its groups from this report, never the cycle
            log.exception("reading the socket tables failed; leaving out ports and connections")
            readings = {"interfaces": readings.get("interfaces")}
            self._record("sockets", started, f"{type(exc).__name__}: {exc}")
        stats: Optional[NetworkStats] = None
        if previous.interfaces is not None and snap.interfaces is not None:
            stats = network_delta(previous.interfaces, snap.interfaces)
        custom: list[CustomMetric] = []
        if self._custom is not None:
            custom = self._custom.collect(
                CycleReadings(readings.get("interfaces"), readings.get("summary"))
            )
        return Report(
            report_id=self._ids.next(),
            listening_tcp_ports=readings.get("tcp_ports"),
            listening_udp_ports=readings.get("udp_ports"),
            tcp_connections=readings.get("connections"),
            network_stats=stats,
            custom_metrics=tuple(custom),
        )

    # ------------------------------------------------------------------ baseline
    def export_baseline(self) -> Optional[dict[str, Any]]:
        """The readings the next delta needs, as plain data for the state file."""
        prev = self._previous
        if prev is None:
            return None
        return {
            "interfaces": None
            if prev.interfaces is None
            else {name: list(counters) for name, counters in prev.interfaces.items()},
            "cpu": self._custom.export_state().get("cpu_usage") if self._custom else None,
        }

    def baseline_problem(self, data: object) -> Optional[OutOfRange]:
        """Why a saved baseline's counters are not to be trusted, or ``None``.

        A counter beyond 64 bits, or above the same interface's counter read now
        (other than a 32-bit wrap), would make the first delta after the restart a
        spike: the file was corrupted or tampered with, or the counters were reset.
        A malformed baseline is :meth:`import_baseline`'s to refuse.
        """
        parsed = _parse_baseline(data)
        if parsed is None:
            return None
        interfaces, cpu = parsed
        for name, counters in (interfaces or {}).items():
            for field, value in zip(InterfaceCounters._fields, counters):
                if value > MAX_COUNTER:
                    return OutOfRange(f"interface {name} {field} {value} is beyond 64 bits")
        for field, value in zip(CpuTimes._fields, cpu or ()):
            if value > MAX_COUNTER:
                return OutOfRange(f"cpu {field} {value} is beyond 64 bits")
        if not interfaces:
            return None
        now = self._read_snapshot().interfaces or {}
        for name, counters in interfaces.items():
            current = now.get(name)
            if current is None:
                continue
            for field, saved, read in zip(InterfaceCounters._fields, counters, current):
                if saved > read and not _wrapped32(saved, read):
                    return OutOfRange(
                        f"interface {name} {field} {saved} is above the current reading {read}"
                    )
        return None

    def import_baseline(self, data: object) -> bool:
        """Take a baseline saved by :meth:`export_baseline` (after a restart on the same boot).

        Returns:
            Whether it was usable; a malformed one is ignored (the next cycle
            then takes a fresh baseline). Check :meth:`baseline_problem` first.
        """
        parsed = _parse_baseline(data)
        if parsed is None:
            return False
        interfaces, cpu = parsed
        if cpu is not None and self._custom is not None:
            self._custom.import_state({"cpu_usage": list(cpu)})
        self._previous = Snapshot(interfaces=interfaces, monotonic=time.monotonic())
        return True


def _parse_baseline(
    data: object,
) -> Optional[tuple[Optional[dict[str, InterfaceCounters]], Optional[CpuTimes]]]:
    """The interface counters and CPU times of a saved baseline; ``None`` when malformed.

    >>> _parse_baseline({"interfaces": {"eth0": [1, 2, 3, 4]}, "cpu": None})
    ({'eth0': InterfaceCounters(bytes_in=1, packets_in=2, bytes_out=3, packets_out=4)}, None)
    >>> _parse_baseline({"interfaces": {"eth0": [1, -2, 3, 4]}}) is None
    True
    """
    if not isinstance(data, dict):
        return None
    try:
        raw_ifaces = data.get("interfaces")
        interfaces = (
            None
            if raw_ifaces is None
            else {str(k): InterfaceCounters(*(int(x) for x in v)) for k, v in raw_ifaces.items()}
        )
        raw_cpu = data.get("cpu")
        cpu = None if raw_cpu is None else CpuTimes(*(int(x) for x in raw_cpu))
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None
    if interfaces is not None and any(min(c) < 0 for c in interfaces.values()):
        return None
    if cpu is not None and min(cpu) < 0:
        return None
    return interfaces, cpu


def _wrapped32(previous: int, current: int) -> bool:
    """Whether a decrease is a 32-bit counter wrap (as :func:`~defender_agent.delta.counter_delta`).

    >>> _wrapped32(2**32 - 10, 5), _wrapped32(5_000_000, 1_200)
    (True, False)
    """
    return _WRAP32 - WRAP_WINDOW <= previous < _WRAP32 and current < WRAP_WINDOW


def _port_list(ports: list[ListeningPort], limit: int) -> PortList:
    return PortList(tuple(ports[:limit]), len(ports))
