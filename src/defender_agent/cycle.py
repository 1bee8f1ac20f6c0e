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

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from defender_agent.custom import CustomMetrics, CustomMetricsConfig
from defender_agent.delta import network_delta
from defender_agent.model import (
    ConnectionList,
    ListeningPort,
    NetworkStats,
    PortList,
    Report,
)
from defender_agent.procfs import ProcFS, default_proc_root
from defender_agent.readers import _psutil
from defender_agent.readers.cpu_usage import CpuTimes
from defender_agent.readers.interfaces import InterfaceMap, read_interface_map
from defender_agent.readers.network_stats import (
    InterfaceCounters,
    parse_net_dev,
    select_interfaces,
)
from defender_agent.readers.sockets import SocketSource, resolve_source, summarize_sockets
from defender_agent.state import ReportIdSequence, StateDir

__all__ = ["Collector", "CollectorConfig", "Snapshot"]

log = logging.getLogger(__name__)

DEFAULT_LIST_SIZE = 100


@dataclass(frozen=True)
class CollectorConfig:
    """What to collect and how to shape the report.

    Attributes:
        proc_root: the proc filesystem to read (``PROCFS_PATH`` or ``/proc`` by default).
        list_size: the most entries per list (ports, connections); ``total``
            keeps the true count.
        include_custom_metrics: add the ``cpu_usage`` custom metric (the sample's).
        custom_metrics: the custom metrics to collect (built-ins, exec, plugins).
        include_loopback_connections: report connections to 127.0.0.0/8 and ``::1``.
        interfaces_include: glob patterns of interfaces counted in ``network_stats``.
        interfaces_exclude: glob patterns of interfaces left out of ``network_stats``.
        wildcard_interface: the interface label for ports bound to ``0.0.0.0``/``::``;
            ``None`` leaves the key out.
        socket_source: ``auto`` (netlink for the live /proc, the files for
            another proc root, psutil where there is no /proc), ``proc``,
            ``netlink`` or ``psutil`` (the fallback, which also supplies the
            counters, interface addresses and CPU times).
    """

    proc_root: Path = field(default_factory=default_proc_root)
    list_size: int = DEFAULT_LIST_SIZE
    include_custom_metrics: bool = False
    include_loopback_connections: bool = False
    interfaces_include: tuple[str, ...] = ("*",)
    interfaces_exclude: tuple[str, ...] = ("lo",)
    wildcard_interface: Optional[str] = None
    socket_source: SocketSource = "auto"
    custom_metrics: CustomMetricsConfig = field(default_factory=CustomMetricsConfig)


@dataclass
class Snapshot:
    """The raw readings of one cycle that the next cycle needs for its deltas."""

    interfaces: Optional[dict[str, InterfaceCounters]] = None
    monotonic: float = 0.0


class Collector:
    """Collects Device Defender metrics and builds reports.

    Args:
        config: what to collect.
        state_dir: where report ids are persisted; ``None`` keeps them in memory.
        clock: wall clock for report ids (injectable for tests).
    """

    def __init__(
        self,
        config: Optional[CollectorConfig] = None,
        state_dir: Optional[Path] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or CollectorConfig()
        self.procfs = ProcFS(self.config.proc_root)
        self._ids = ReportIdSequence(StateDir(state_dir) if state_dir else None, clock)
        self._psutil = resolve_source(self.config.socket_source, self.procfs) == "psutil"
        self._previous: Optional[Snapshot] = None
        custom = self.config.custom_metrics
        if self.config.include_custom_metrics:
            custom = custom.enable("cpu_usage")
        custom = dataclasses.replace(custom, list_size=self.config.list_size)
        cpu_times = _psutil.cpu_times if self._psutil else None
        self._custom = (
            None if custom.empty else CustomMetrics(custom, self.procfs, cpu_times=cpu_times)
        )
        self._warned: set[str] = set()
        #: file → malformed lines skipped, summed over the process's life
        self.malformed: dict[str, int] = {}

    # ------------------------------------------------------------------ helpers
    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key in self._warned:
            log.debug(message, *args)
        else:
            self._warned.add(key)
            log.warning(message, *args)

    def _count_malformed(self, name: str, count: int) -> None:
        if count:
            self.malformed[name] = self.malformed.get(name, 0) + count
            self._warn_once(
                f"malformed:{name}",
                "skipped %d malformed line(s) in %s",
                count,
                self.procfs.path(name),
            )

    def _read(self, *parts: str) -> Optional[str]:
        try:
            return self.procfs.read_text(*parts)
        except OSError as exc:
            path = self.procfs.path(*parts)
            self._warn_once(
                f"missing:{path}",
                "cannot read %s (%s); leaving out its metrics",
                path,
                exc.strerror or exc,
            )
            return None

    # ------------------------------------------------------------------ reading
    def _read_snapshot(self) -> Snapshot:
        snap = Snapshot(monotonic=time.monotonic())
        try:
            self._read_counters(snap)
        except Exception:  # a collector bug drops its group from this report, never the cycle
            log.exception("reading the traffic counters failed; leaving them out")
            snap.interfaces = None
        return snap

    def _read_counters(self, snap: Snapshot) -> None:
        if self._psutil:
            snap.interfaces = select_interfaces(
                _psutil.interface_counters(),
                self.config.interfaces_include,
                self.config.interfaces_exclude,
            )
            return
        dev = self._read("net", "dev")
        if dev is not None:
            counters, bad = parse_net_dev(dev)
            self._count_malformed("net/dev", bad)
            snap.interfaces = select_interfaces(
                counters, self.config.interfaces_include, self.config.interfaces_exclude
            )

    def _sockets(
        self,
    ) -> tuple[Optional[PortList], Optional[PortList], Optional[ConnectionList]]:
        cfg = self.config
        interfaces: InterfaceMap = (
            _psutil.interface_map(cfg.wildcard_interface)
            if self._psutil
            else read_interface_map(self.procfs, cfg.wildcard_interface)
        )
        summary = summarize_sockets(
            self.procfs,
            interfaces,
            source=cfg.socket_source,
            include_loopback=cfg.include_loopback_connections,
            limit=cfg.list_size,
        )
        for name, reason in summary.status.missing.items():
            path = self.procfs.path(name)
            self._warn_once(
                f"missing:{path}", "cannot read %s (%s); leaving out its metrics", path, reason
            )
        for name, count in summary.status.malformed.items():
            self._count_malformed(name, count)
        tcp_ports = udp_ports = connections = None
        if summary.tcp_ports is not None:
            tcp_ports = _port_list(summary.tcp_ports, cfg.list_size)
        if summary.udp_ports is not None:
            udp_ports = _port_list(summary.udp_ports, cfg.list_size)
        if summary.connections is not None:
            connections = ConnectionList(tuple(summary.connections), summary.connections_total)
        return tcp_ports, udp_ports, connections

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
        snap = self._read_snapshot()
        previous, self._previous = self._previous, snap
        if previous is None:
            if self._custom is not None:
                self._custom.baseline()
            return None
        try:
            tcp_ports, udp_ports, connections = self._sockets()
        except Exception:  # a collector bug drops its groups from this report, never the cycle
            log.exception("reading the socket tables failed; leaving out ports and connections")
            tcp_ports = udp_ports = connections = None
        stats: Optional[NetworkStats] = None
        if previous.interfaces is not None and snap.interfaces is not None:
            stats = network_delta(previous.interfaces, snap.interfaces)
        custom = self._custom.collect() if self._custom is not None else []
        return Report(
            report_id=self._ids.next(),
            listening_tcp_ports=tcp_ports,
            listening_udp_ports=udp_ports,
            tcp_connections=connections,
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

    def import_baseline(self, data: object) -> bool:
        """Take a baseline saved by :meth:`export_baseline` (after a restart on the same boot).

        Returns:
            Whether it was usable; a malformed one is ignored (the next cycle
            then takes a fresh baseline).
        """
        if not isinstance(data, dict):
            return False
        try:
            raw_ifaces = data.get("interfaces")
            interfaces = (
                None
                if raw_ifaces is None
                else {
                    str(k): InterfaceCounters(*(int(x) for x in v)) for k, v in raw_ifaces.items()
                }
            )
            raw_cpu = data.get("cpu")
            cpu = None if raw_cpu is None else CpuTimes(*(int(x) for x in raw_cpu))
        except (TypeError, ValueError, AttributeError):
            return False
        if interfaces is not None and any(min(c) < 0 for c in interfaces.values()):
            return False
        if cpu is not None and self._custom is not None:
            self._custom.import_state({"cpu_usage": list(cpu)})
        self._previous = Snapshot(interfaces=interfaces, monotonic=time.monotonic())
        return True


def _port_list(ports: list[ListeningPort], limit: int) -> PortList:
    return PortList(tuple(ports[:limit]), len(ports))
