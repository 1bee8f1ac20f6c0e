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
| ``listening_processes`` | string-list | ``net/{tcp,udp}{,6}``, ``<pid>/fd``, ``<pid>/comm`` | names of the processes that own listening sockets |
| ``interface_addresses`` | ip-address-list | ``net/fib_trie``, ``net/if_inet6`` | the host's own addresses (not loopback) |
| ``remote_ips`` | ip-address-list | the TCP socket tables | peers of established connections (not loopback) |

Everything under /proc is read through the :class:`~defender_agent.procfs.ProcFS`
of the collector (so ``--proc-root`` and ``PROCFS_PATH`` apply); the two
sources that are not in /proc, the file system of ``disk_usage`` and the utmp
file, have their own configurable path. Percentages are rounded to 0.01.

String values are made to fit the string-list alphabet (protocol.md §2.6):
a character outside ``A-Z a-z 0-9 : _ - / .`` becomes ``_`` (the comm of
avahi is ``avahi-daemon: r``, sent as ``avahi-daemon:_r``). Lists are
sorted, so their cut to ``list_size`` is deterministic.
"""  # noqa: E501 - a table

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Final, Optional

from defender_agent.custom._base import MetricError, Source, WarnOnce
from defender_agent.custom.checks import sanitize_string
from defender_agent.model import CustomMetricType
from defender_agent.procfs import ProcFS
from defender_agent.readers._inet import ESTABLISHED, is_loopback, unmap_v4
from defender_agent.readers.cpu_usage import CpuTimes, cpu_percent, parse_proc_stat
from defender_agent.readers.interfaces import parse_fib_trie_local, parse_if_inet6
from defender_agent.readers.sockets import SocketSource, read_socket_tables

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
    "create_builtin",
    "parse_listening_inodes",
    "parse_loadavg",
    "parse_meminfo",
    "parse_utmp",
]

log = logging.getLogger(__name__)

_N = CustomMetricType.NUMBER
_NL = CustomMetricType.NUMBER_LIST
_SL = CustomMetricType.STRING_LIST
_IPL = CustomMetricType.IP_ADDRESS_LIST


@dataclass(frozen=True)
class BuiltinInfo:
    """A built-in metric: its name (also its report name), type and display name."""

    name: str
    type: CustomMetricType
    display_name: str


BUILTINS: Final[dict[str, BuiltinInfo]] = {
    info.name: info
    for info in (
        BuiltinInfo("cpu_usage", _N, "CPU usage (%)"),
        BuiltinInfo("memory_usage", _N, "Memory usage (%)"),
        BuiltinInfo("disk_usage", _N, "Disk usage (%)"),
        BuiltinInfo("process_count", _N, "Number of processes"),
        BuiltinInfo("uptime", _N, "Uptime (s)"),
        BuiltinInfo("load_average", _NL, "Load average (1, 5, 15 min)"),
        BuiltinInfo("logged_in_users", _SL, "Logged-in users"),
        BuiltinInfo("listening_processes", _SL, "Processes with listening sockets"),
        BuiltinInfo("interface_addresses", _IPL, "Interface addresses"),
        BuiltinInfo("remote_ips", _IPL, "Remote IPs of established TCP connections"),
    )
}


def _percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2)


def _is_pid(name: str) -> bool:
    return name.isascii() and name.isdigit()


# --------------------------------------------------------------------------- numbers
class CpuUsage:
    """``cpu_usage``: CPU busy % between two samples of the ``cpu`` line of ``stat``.

    The first sample is the baseline and yields no value (pitfalls.md B19).

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


def parse_meminfo(text: str) -> dict[str, int]:
    r"""The ``Key: value kB`` lines of ``meminfo``, in kB.

    >>> parse_meminfo("MemTotal:  1000 kB\nMemAvailable:   250 kB\nHugePages_Total: 0\n")
    {'MemTotal': 1000, 'MemAvailable': 250, 'HugePages_Total': 0}
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


def parse_loadavg(text: str) -> Optional[tuple[float, float, float]]:
    r"""The three load averages of ``loadavg``, or ``None`` when malformed.

    >>> parse_loadavg("0.44 0.30 0.36 2/93 20402\n")
    (0.44, 0.3, 0.36)
    """
    try:
        one, five, fifteen = (float(v) for v in text.split()[:3])
    except ValueError:
        return None
    return one, five, fifteen


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
# glibc's struct utmp on Linux (x86, x86_64, arm, arm64, ...): 384 bytes, native byte order.
# ut_type, pad, ut_pid, ut_line[32], ut_id[4], ut_user[32], ut_host[256], ut_exit (2 shorts),
# ut_session, ut_tv (2 int32), ut_addr_v6[4], __unused[20].
_UTMP: Final = struct.Struct("=hxxi32s4s32s256shhi2i4i20x")
_USER_PROCESS: Final = 7
_MAX_UTMP_BYTES: Final = 4 * 1024 * 1024


def parse_utmp(data: bytes) -> list[str]:
    """The user names of the ``USER_PROCESS`` records of a utmp file, sorted, without duplicates.

    A truncated last record is ignored; names are made to fit the string-list alphabet.

    >>> record = _UTMP.pack(7, 42, b"pts/0", b"ts/0", b"alice", b"", 0, 0, 0, 0, 0, 0, 0, 0, 0)
    >>> parse_utmp(record * 2 + record[:100])
    ['alice']
    """
    names: set[str] = set()
    for fields in _UTMP.iter_unpack(data[: len(data) - len(data) % _UTMP.size]):
        ut_type, user = fields[0], fields[4]
        name = user.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        if ut_type == _USER_PROCESS and name:
            names.add(sanitize_string(name))
    return sorted(names)


class LoggedInUsers:
    """``logged_in_users``: who is logged in, from the utmp file (``/var/run/utmp``)."""

    name = "logged_in_users"
    type = _SL

    def __init__(self, path: Path) -> None:
        self._path = path

    def sample(self) -> list[str]:
        """The names of the logged-in users."""
        with self._path.open("rb") as handle:
            return parse_utmp(handle.read(_MAX_UTMP_BYTES))


# --------------------------------------------------------------------------- sockets
_TCP_LISTEN: Final = "0A"
_UDP_UNCONNECTED: Final = "07"


def parse_listening_inodes(text: str, *, udp: bool) -> set[int]:
    r"""Socket inodes of the listeners in a ``net/{tcp,udp}{,6}`` table.

    Listeners are what the listening-ports collector counts: TCP sockets in
    LISTEN, UDP sockets bound with no peer (state 07, remote port 0). The
    inode is the tenth column.

    >>> parse_listening_inodes(
    ...     "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    ...     "timeout inode\n"
    ...     "   2: 00000000:0016 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0  "
    ...     "      0 1122239 2 00000000f40ae291 100 0 0 10 0\n", udp=False)
    {1122239}
    """
    inodes: set[int] = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        if udp:
            if parts[3] != _UDP_UNCONNECTED or not parts[2].endswith(":0000"):
                continue
        elif parts[3] != _TCP_LISTEN:
            continue
        try:
            inode = int(parts[9])
        except ValueError:
            continue
        if inode:
            inodes.add(inode)
    return inodes


class ListeningProcesses:
    """``listening_processes``: the names (``comm``) of the processes that own listening sockets.

    The listening sockets' inodes come from ``net/{tcp,udp}{,6}``; each
    process's ``fd/`` links (``socket:[<inode>]``) say which it holds. Reading
    another user's ``fd/`` takes root or ``CAP_SYS_PTRACE``: without it, the
    processes that can be read are reported, and a warning says once how many
    could not.
    """

    name = "listening_processes"
    type = _SL

    def __init__(self, procfs: ProcFS, warn: WarnOnce) -> None:
        self._procfs = procfs
        self._warn = warn

    def _listening_inodes(self) -> set[int]:
        inodes: set[int] = set()
        readable = 0
        for table in ("tcp", "tcp6", "udp", "udp6"):
            try:
                text = self._procfs.read_text("net", table)
            except OSError:  # tcp6/udp6 are missing without IPv6; all four missing is checked below
                continue
            readable += 1
            inodes |= parse_listening_inodes(text, udp=table.startswith("udp"))
        if not readable:
            raise MetricError(
                "read", f"cannot read net/tcp, tcp6, udp or udp6 in {self._procfs.path()}"
            )
        return inodes

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

    def sample(self) -> list[str]:
        """The sorted names of the processes with listening sockets (those that could be read)."""
        inodes = self._listening_inodes()
        names: set[str] = set()
        denied = 0
        if inodes:
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
        if denied:
            self._warn(
                self.name,
                "partial",
                "permission denied to the open files of %d process(es) (reading them all takes "
                "root or CAP_SYS_PTRACE in their namespace); reporting the listeners of the rest",
                denied,
            )
        return sorted(names)


def _ntop(family: int, packed: bytes) -> str:
    return socket.inet_ntop(family, packed)


def _sorted_addresses(addresses: Iterable[tuple[int, bytes]]) -> list[str]:
    """Unique addresses, IPv4 first, each family in numeric order, as text."""
    unique = sorted(set(addresses), key=lambda a: (a[0] != socket.AF_INET, a[1]))
    return [_ntop(family, packed) for family, packed in unique]


class InterfaceAddresses:
    """``interface_addresses``: the host's own IPv4 and IPv6 addresses, loopback excluded.

    IPv4: the ``/32 host LOCAL`` leaves of ``net/fib_trie``; IPv6: ``net/if_inet6``
    (link-local addresses included: they are the host's too).
    """

    name = "interface_addresses"
    type = _IPL

    def __init__(self, procfs: ProcFS) -> None:
        self._procfs = procfs

    def sample(self) -> list[str]:
        """The addresses, IPv4 first, each family sorted."""
        found: list[tuple[int, bytes]] = []
        readable = False
        try:
            found += [(socket.AF_INET, a) for a in parse_fib_trie_local(self._read("fib_trie"))]
            readable = True
        except OSError as exc:
            log.debug("no IPv4 addresses: %s", exc)
        try:
            found += [(socket.AF_INET6, a) for a in parse_if_inet6(self._read("if_inet6"))]
            readable = True
        except OSError as exc:
            log.debug("no IPv6 addresses (IPv6 disabled?): %s", exc)
        if not readable:
            raise MetricError(
                "read", f"cannot read net/fib_trie or net/if_inet6 in {self._procfs.path()}"
            )
        return _sorted_addresses(a for a in found if not is_loopback(*a))

    def _read(self, name: str) -> str:
        return self._procfs.read_text("net", name)


class RemoteIps:
    """``remote_ips``: the remote addresses of established TCP connections, loopback excluded.

    IPv4-mapped IPv6 peers are shown as IPv4, as in ``tcp_connections``. The
    tables come from the same source as the collector's (netlink sock_diag for
    the live /proc, the files for another proc root).
    """

    name = "remote_ips"
    type = _IPL

    def __init__(self, procfs: ProcFS, source: SocketSource = "auto") -> None:
        self._procfs = procfs
        self._source: SocketSource = source

    def sample(self) -> list[str]:
        """The distinct peers, IPv4 first, each family sorted."""
        tables = read_socket_tables(self._procfs, self._source)
        if tables.tcp is None:
            why = tables.missing.get("net/tcp", "unreadable")
            raise MetricError("read", f"cannot read {self._procfs.path('net', 'tcp')} ({why})")
        peers = (unmap_v4(row[0], row[3]) for row in tables.tcp if row[5] == ESTABLISHED)
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
) -> Source:
    """Create the built-in metric ``name`` (one of :data:`BUILTINS`).

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
        "listening_processes": lambda: ListeningProcesses(procfs, warn),
        "interface_addresses": lambda: InterfaceAddresses(procfs),
        "remote_ips": lambda: RemoteIps(procfs),
    }
    assert factories.keys() == BUILTINS.keys(), "one factory per built-in"
    return factories[name]()
