"""The built-in custom metrics, each enabled by name in ``[custom_metrics] enabled``.

| name | type | reads | value |
| --- | --- | --- | --- |
| ``cpu_usage`` | number | ``stat`` | CPU busy % since the previous sample (the first one is a baseline) |
| ``memory_usage`` | number | ``meminfo`` | % of ``MemTotal`` not ``MemAvailable`` |
| ``disk_usage`` | number | ``statvfs(disk_usage_path)`` | % used of the file system, as ``df`` |
| ``process_count`` | number | ``<pid>/`` entries | number of processes |
| ``uptime`` | number | ``uptime`` | seconds since boot |
| ``load_average`` | number-list | ``loadavg`` | the 1, 5 and 15 minute load averages |
| ``logged_in_users`` | string-list | utmp (``/var/run/utmp``) | names of logged-in users |
| ``listening_processes`` | string-list | the cycle's socket read, ``<pid>/fd``, ``<pid>/comm`` | names of the processes that own listening sockets |
| ``interface_addresses`` | ip-address-list | the cycle's interface map (``net/fib_trie``, ``net/if_inet6``) | the host's own addresses (not loopback) |
| ``remote_ips`` | ip-address-list | the cycle's socket read | peers of established connections (not loopback) |

Everything under /proc is read through the :class:`~defender_agent.procfs.ProcFS`
of the collector (so ``--proc-root`` and ``PROCFS_PATH`` apply); the two
sources that are not in /proc, the file system of ``disk_usage`` and the utmp
file, have their own configurable path. Percentages are rounded to 0.01.

The last three take what the collection cycle already read (its socket
summary and interface map, from the configured socket source) through
:class:`~defender_agent.custom._base.CycleReadings`, so a cycle reads the
socket tables once; used on their own (no readings given), they make that
read themselves.

String values are made to fit the string-list alphabet (protocol.md §2.6):
a character outside ``A-Z a-z 0-9 : _ - / .`` becomes ``_`` (the comm of
avahi is ``avahi-daemon: r``, sent as ``avahi-daemon:_r``). Lists are
sorted, so their cut to ``list_size`` is deterministic.
"""  # noqa: E501 - a table

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Callable, Optional

from defender_agent.custom._base import CycleReadings, MetricError, Source, WarnOnce
from defender_agent.custom.checks import sanitize_string
from defender_agent.custom.settings import BUILTINS, BuiltinInfo
from defender_agent.model import CustomMetricType
from defender_agent.procfs import ProcFS
from defender_agent.readers import _psutil
from defender_agent.readers._inet import is_loopback, unmap_v4
from defender_agent.readers.cpu_usage import CpuTimes, cpu_percent, parse_proc_stat
from defender_agent.readers.interfaces import InterfaceMap, read_interface_map
from defender_agent.readers.loadavg import parse_loadavg
from defender_agent.readers.meminfo import parse_meminfo
from defender_agent.readers.sockets import SocketSource, SocketSummary, summarize_sockets
from defender_agent.readers.utmp import MAX_UTMP_BYTES, parse_utmp

__all__ = [
    "BUILTINS",
    "BuiltinInfo",
    "CpuUsage",
    "DiskUsage",
    "InterfaceAddresses",
    "ListeningProcesses",
    "LoadAverage",
    "LoggedInUsers",
    "MemoryUsage",
    "ProcessCount",
    "RemoteIps",
    "Uptime",
    "UsesReadings",
    "create_builtin",
]

log = logging.getLogger(__name__)

_N = CustomMetricType.NUMBER
_NL = CustomMetricType.NUMBER_LIST
_SL = CustomMetricType.STRING_LIST
_IPL = CustomMetricType.IP_ADDRESS_LIST


def _percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2)


def _is_pid(name: str) -> bool:
    return name.isascii() and name.isdigit()


# --------------------------------------------------------------------------- numbers
class CpuUsage:
    """``cpu_usage``: CPU busy % between two samples of the ``cpu`` line of ``stat``.

    The first sample is the baseline and yields no value.

    Args:
        procfs: the proc filesystem.
        cpu_times: where CPU times come from instead of ``stat`` (the psutil
            fallback on systems without /proc).
    """

    name = "cpu_usage"
    type = _N

    def __init__(self, procfs: ProcFS, cpu_times: Optional[Callable[[], CpuTimes]] = None) -> None:
        self._procfs = procfs
        self._cpu_times = cpu_times
        self.previous: Optional[CpuTimes] = None

    def _read(self) -> CpuTimes:
        if self._cpu_times is not None:
            return self._cpu_times()
        times = parse_proc_stat(self._procfs.read_text("stat"))
        if times is None:
            raise MetricError("parse", f"no valid 'cpu' line in {self._procfs.path('stat')}")
        return times

    def sample(self) -> Optional[float]:
        """CPU busy % since the previous sample; ``None`` for the baseline or if no time passed."""
        current = self._read()
        previous, self.previous = self.previous, current
        if previous is None:
            return None
        return cpu_percent(previous, current)


class MemoryUsage:
    """``memory_usage``: the share of memory not available to new programs, in %.

    ``MemAvailable`` (Linux 3.14+) is the kernel's own estimate; older kernels
    get ``MemFree + Buffers + Cached``.
    """

    name = "memory_usage"
    type = _N

    def __init__(self, procfs: ProcFS) -> None:
        self._procfs = procfs

    def sample(self) -> float:
        """Memory in use, % of ``MemTotal``."""
        info = parse_meminfo(self._procfs.read_text("meminfo"))
        total = info.get("MemTotal", 0)
        if total <= 0:
            raise MetricError("parse", f"no MemTotal in {self._procfs.path('meminfo')}")
        available = info.get("MemAvailable")
        if available is None:
            available = sum(info.get(key, 0) for key in ("MemFree", "Buffers", "Cached"))
        return _percent(min(max(total - available, 0), total), total)


class DiskUsage:
    """``disk_usage``: % used of the file system holding ``path``, computed as ``df`` does.

    ``used / (used + available to unprivileged users)``, so the blocks reserved
    for root count as unavailable. The path is on the agent's own file system
    view, not under the proc root.
    """

    name = "disk_usage"
    type = _N

    def __init__(
        self, path: Path, statvfs: Callable[[Path], os.statvfs_result] = os.statvfs
    ) -> None:
        self._path = path
        self._statvfs = statvfs

    def sample(self) -> float:
        """% used of the file system of the configured path."""
        st = self._statvfs(self._path)
        used = st.f_blocks - st.f_bfree
        usable = used + st.f_bavail
        if used < 0 or usable <= 0:
            raise MetricError("invalid", f"{self._path}: the file system has no usable blocks")
        return _percent(used, usable)


class ProcessCount:
    """``process_count``: the number of ``<pid>`` directories in the proc root."""

    name = "process_count"
    type = _N

    def __init__(self, procfs: ProcFS) -> None:
        self._procfs = procfs

    def sample(self) -> int:
        """How many processes there are."""
        with os.scandir(self._procfs.path()) as entries:
            return sum(1 for entry in entries if _is_pid(entry.name) and entry.is_dir())


class Uptime:
    """``uptime``: seconds since boot, the first field of ``uptime``."""

    name = "uptime"
    type = _N

    def __init__(self, procfs: ProcFS) -> None:
        self._procfs = procfs

    def sample(self) -> float:
        """Seconds since boot."""
        text = self._procfs.read_text("uptime")
        try:
            return float(text.split()[0])
        except (IndexError, ValueError):
            raise MetricError("parse", f"{self._procfs.path('uptime')}: {text[:40]!r}") from None


class LoadAverage:
    """``load_average``: the 1, 5 and 15 minute load averages (a number-list of three)."""

    name = "load_average"
    type = _NL

    def __init__(self, procfs: ProcFS) -> None:
        self._procfs = procfs

    def sample(self) -> tuple[float, float, float]:
        """The three load averages."""
        text = self._procfs.read_text("loadavg")
        loads = parse_loadavg(text)
        if loads is None:
            raise MetricError("parse", f"{self._procfs.path('loadavg')}: {text[:40]!r}")
        return loads


# --------------------------------------------------------------------------- logged_in_users
class LoggedInUsers:
    """``logged_in_users``: who is logged in, from the utmp file (``/var/run/utmp``)."""

    name = "logged_in_users"
    type = _SL

    def __init__(self, path: Path) -> None:
        self._path = path

    def sample(self) -> list[str]:
        """The names of the logged-in users."""
        with self._path.open("rb") as handle:
            names = parse_utmp(handle.read(MAX_UTMP_BYTES))
        return sorted({sanitize_string(name) for name in names})


# --------------------------------------------------------------------------- the cycle's readings
class UsesReadings:
    """A built-in computed from the cycle's readings rather than from a read of its own.

    The registry sets :attr:`readings` before :meth:`sample` and clears it
    after; without readings (the metric used on its own), :meth:`_sockets` and
    :meth:`_interfaces` read what is needed from ``procfs``.

    Args:
        procfs: the proc filesystem.
        source: the socket source of a read of its own.
    """

    #: what this metric needs gathered from the socket read (see :class:`CycleReadings`)
    needs: frozenset[str] = frozenset()

    def __init__(self, procfs: ProcFS, source: SocketSource = "auto") -> None:
        self._procfs = procfs
        self._source: SocketSource = source
        self.readings: Optional[CycleReadings] = None

    def _interfaces(self) -> InterfaceMap:
        if self.readings is None:
            return read_interface_map(self._procfs)
        if self.readings.interfaces is None:
            raise MetricError("read", "the interface addresses could not be read this cycle")
        return self.readings.interfaces

    def _sockets(self) -> SocketSummary:
        if self.readings is None:
            return summarize_sockets(
                self._procfs,
                InterfaceMap(),
                source=self._source,
                limit=0,
                remote_peers="remote_peers" in self.needs,
                listeners="listeners" in self.needs,
            )
        if self.readings.sockets is None:
            raise MetricError("read", "the socket tables could not be read this cycle")
        return self.readings.sockets


class ListeningProcesses(UsesReadings):
    """``listening_processes``: the names (``comm``) of the processes that own listening sockets.

    The listening sockets' inodes come from the cycle's socket read (the
    ``inode`` column of ``net/{tcp,udp}{,6}``, or ``idiag_inode`` over
    netlink); each process's ``fd/`` links (``socket:[<inode>]``) say which it
    holds. Reading another user's ``fd/`` takes root or ``CAP_SYS_PTRACE``:
    without it, the processes that can be read are reported, and a warning
    says once how many could not. With the psutil source, psutil names the
    owners.
    """

    name = "listening_processes"
    type = _SL
    needs = frozenset({"listeners"})

    def __init__(self, procfs: ProcFS, warn: WarnOnce, source: SocketSource = "auto") -> None:
        super().__init__(procfs, source)
        self._warn = warn

    def _owns_listener(self, pid: str, inodes: set[int]) -> bool:
        """Whether process ``pid`` holds one of ``inodes``; PermissionError propagates."""
        for fd in self._procfs.path(pid, "fd").iterdir():
            try:
                target = str(fd.readlink())
            except PermissionError:
                raise
            except OSError:  # closed meanwhile, the process exited, or not a link at all
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                try:
                    if int(target[8:-1]) in inodes:
                        return True
                except ValueError:
                    continue
        return False

    def _names_by_inode(self, inodes: set[int]) -> tuple[set[str], int]:
        names: set[str] = set()
        denied = 0
        if not inodes:
            return names, denied
        with os.scandir(self._procfs.path()) as entries:
            pids = [entry.name for entry in entries if _is_pid(entry.name)]
        for pid in pids:
            try:
                if not self._owns_listener(pid, inodes):
                    continue
                comm = self._procfs.read_text(pid, "comm").strip()
            except PermissionError:
                denied += 1
                continue
            except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
                continue  # the process exited while it was being read
            names.add(sanitize_string(comm))
        return names, denied

    def sample(self) -> list[str]:
        """The sorted names of the processes with listening sockets (those that could be read)."""
        summary = self._sockets()
        status = summary.status
        if summary.tcp_ports is None and summary.udp_ports is None:
            raise MetricError(
                "read", f"cannot read net/tcp, tcp6, udp or udp6 in {self._procfs.path()}"
            )
        if status.listener_pids is not None:
            found, denied = _psutil.process_names(status.listener_pids)
            names = {sanitize_string(name) for name in found}
        elif status.listener_inodes is not None:
            names, denied = self._names_by_inode(status.listener_inodes)
        else:  # pragma: no cover - the readings were gathered without listeners
            raise MetricError("error", "the socket read did not gather the listeners")
        if denied:
            self._warn(
                self.name,
                "partial",
                "permission denied to the open files of %d process(es) (reading them all takes "
                "root or CAP_SYS_PTRACE in their namespace); reporting the listeners of the rest",
                denied,
            )
        return sorted(names)


def _sorted_addresses(addresses: Iterable[tuple[int, bytes]]) -> list[str]:
    """Unique addresses, IPv4 first, each family in numeric order, as text."""
    unique = sorted(set(addresses), key=lambda a: (a[0] != socket.AF_INET, a[1]))
    return [socket.inet_ntop(family, packed) for family, packed in unique]


class InterfaceAddresses(UsesReadings):
    """``interface_addresses``: the host's own IPv4 and IPv6 addresses, loopback excluded.

    From the cycle's interface map: IPv4, the ``/32 host LOCAL`` leaves of
    ``net/fib_trie``; IPv6, ``net/if_inet6`` (link-local addresses included:
    they are the host's too); or psutil's interface addresses.
    """

    name = "interface_addresses"
    type = _IPL

    def sample(self) -> list[str]:
        """The addresses, IPv4 first, each family sorted."""
        interfaces = self._interfaces()
        if "net/fib_trie" in interfaces.missing and "net/if_inet6" in interfaces.missing:
            raise MetricError(
                "read", f"cannot read net/fib_trie or net/if_inet6 in {self._procfs.path()}"
            )
        found = [(socket.AF_INET, a) for a in interfaces.local_v4]
        found += [(socket.AF_INET6, a) for a in interfaces.v6]
        return _sorted_addresses(a for a in found if not is_loopback(*a))


class RemoteIps(UsesReadings):
    """``remote_ips``: the remote addresses of established TCP connections, loopback excluded.

    From the cycle's socket read, so from the collector's socket source, and
    the same connections ``tcp_connections`` counts. IPv4-mapped IPv6 peers
    are shown as IPv4, as there.
    """

    name = "remote_ips"
    type = _IPL
    needs = frozenset({"remote_peers"})

    def sample(self) -> list[str]:
        """The distinct peers, IPv4 first, each family sorted."""
        summary = self._sockets()
        if summary.remote_peers is None:
            why = summary.status.missing.get("net/tcp", "unreadable")
            raise MetricError("read", f"cannot read {self._procfs.path('net', 'tcp')} ({why})")
        peers = (
            unmap_v4(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
            for packed in summary.remote_peers
        )
        return _sorted_addresses(p for p in peers if not is_loopback(*p))


# --------------------------------------------------------------------------- factory
def create_builtin(
    name: str,
    procfs: ProcFS,
    *,
    warn: WarnOnce,
    disk_usage_path: Path = Path("/"),
    utmp_path: Path = Path("/var/run/utmp"),
    cpu_times: Optional[Callable[[], CpuTimes]] = None,
    socket_source: SocketSource = "auto",
) -> Source:
    """Create the built-in metric ``name`` (one of :data:`BUILTINS`).

    ``socket_source`` is where the socket-based metrics read when used on their
    own; in a collection cycle they take the cycle's readings.

    Raises:
        KeyError: not a built-in name.
    """
    factories: dict[str, Callable[[], Source]] = {
        "cpu_usage": lambda: CpuUsage(procfs, cpu_times),
        "memory_usage": lambda: MemoryUsage(procfs),
        "disk_usage": lambda: DiskUsage(disk_usage_path),
        "process_count": lambda: ProcessCount(procfs),
        "uptime": lambda: Uptime(procfs),
        "load_average": lambda: LoadAverage(procfs),
        "logged_in_users": lambda: LoggedInUsers(utmp_path),
        "listening_processes": lambda: ListeningProcesses(procfs, warn, socket_source),
        "interface_addresses": lambda: InterfaceAddresses(procfs, socket_source),
        "remote_ips": lambda: RemoteIps(procfs, socket_source),
    }
    assert factories.keys() == BUILTINS.keys(), "one factory per built-in"
    return factories[name]()
