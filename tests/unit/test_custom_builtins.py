"""Built-in custom metrics on the recorded custom_host proc root, on inline edge cases, and live."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from defender_agent.custom import CustomMetricsConfig
from defender_agent.custom._base import CycleReadings, MetricError, WarnOnce
from defender_agent.custom.builtins import (
    BUILTINS,
    CpuUsage,
    DiskUsage,
    InterfaceAddresses,
    ListeningProcesses,
    LoadAverage,
    LoggedInUsers,
    MemoryUsage,
    ProcessCount,
    RemoteIps,
    Uptime,
    create_builtin,
)
from defender_agent.custom.checks import Invalid, check_value
from defender_agent.cycle import Collector, CollectorConfig
from defender_agent.model import CustomMetricType
from defender_agent.procfs import ProcFS
from defender_agent.readers.cpu_usage import CpuTimes
from defender_agent.readers.interfaces import InterfaceMap
from defender_agent.readers.loadavg import parse_loadavg
from defender_agent.readers.meminfo import parse_meminfo
from defender_agent.readers.sockets import summarize_sockets
from defender_agent.readers.utmp import parse_utmp

HOST = Path(__file__).parents[1] / "fixtures" / "custom_host"
LISTENERS = [
    "avahi-daemon:_r",
    "chronyd",
    "cupsd",
    "dhclient",
    "mosquitto",
    "nginx",
    "sshd",
    "systemd-resolve",
]


@pytest.fixture
def host() -> ProcFS:
    return ProcFS(HOST)


def procfs_with(tmp_path: Path, files: dict[str, str]) -> ProcFS:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return ProcFS(tmp_path)


# --------------------------------------------------------------------------- the table
def test_every_builtin_is_created_with_its_declared_name_and_type(host: ProcFS) -> None:
    for name, info in BUILTINS.items():
        source = create_builtin(name, host, warn=WarnOnce())
        assert (source.name, source.type) == (name, info.type)
        assert info.display_name
    with pytest.raises(KeyError):
        create_builtin("nope", host, warn=WarnOnce())


# --------------------------------------------------------------------------- cpu_usage
def test_cpu_usage_baseline_then_delta(tmp_path: Path) -> None:
    shutil.copyfile(HOST / "stat", tmp_path / "stat")
    cpu = CpuUsage(ProcFS(tmp_path))
    assert cpu.sample() is None  # the baseline
    shutil.copyfile(HOST / "stat.next", tmp_path / "stat")
    assert cpu.sample() == 0.25  # 1 busy jiffy of 399
    assert cpu.sample() is None  # no time passed since


def test_cpu_usage_from_injected_times(tmp_path: Path) -> None:
    times = iter([CpuTimes(1000, 800), CpuTimes(1400, 1100)])
    cpu = CpuUsage(ProcFS(tmp_path), cpu_times=lambda: next(times))  # no stat file needed
    assert cpu.sample() is None
    assert cpu.sample() == 25.0


def test_cpu_usage_malformed_stat(tmp_path: Path) -> None:
    cpu = CpuUsage(procfs_with(tmp_path, {"stat": "intr 1 2 3\n"}))
    with pytest.raises(MetricError, match="no valid 'cpu' line") as info:
        cpu.sample()
    assert info.value.kind == "parse"


# --------------------------------------------------------------------------- memory, disk
def test_memory_usage_recorded(host: ProcFS) -> None:
    # MemTotal 24684092 kB, MemAvailable 24215120 kB
    assert MemoryUsage(host).sample() == 1.9


def test_memory_usage_without_memavailable(tmp_path: Path) -> None:
    meminfo = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 100 kB\n"
    assert MemoryUsage(procfs_with(tmp_path, {"meminfo": meminfo})).sample() == 75.0


@pytest.mark.parametrize("meminfo", ["", "MemFree: 5 kB\n", "MemTotal: 0 kB\n", "MemTotal: x\n"])
def test_memory_usage_without_total(tmp_path: Path, meminfo: str) -> None:
    with pytest.raises(MetricError, match="no MemTotal"):
        MemoryUsage(procfs_with(tmp_path, {"meminfo": meminfo})).sample()


def test_memory_usage_is_clamped(tmp_path: Path) -> None:
    odd = "MemTotal: 100 kB\nMemAvailable: 150 kB\n"
    assert MemoryUsage(procfs_with(tmp_path, {"meminfo": odd})).sample() == 0.0


def test_parse_meminfo_skips_odd_lines() -> None:
    assert parse_meminfo("MemTotal: 5 kB\nbroken\nKey:\nX: y kB\n") == {"MemTotal": 5}


def fake_statvfs(blocks: int, free: int, avail: int) -> os.statvfs_result:
    return os.statvfs_result((4096, 4096, blocks, free, avail, 100, 50, 50, 0, 255))


def test_disk_usage_as_df_computes_it() -> None:
    seen: list[Path] = []

    def statvfs(path: Path) -> os.statvfs_result:
        seen.append(path)
        # the statvfs of this host's / when the fixture was recorded
        return fake_statvfs(66053021, 60274998, 20819705)

    assert DiskUsage(Path("/data"), statvfs).sample() == 21.72
    assert seen == [Path("/data")]  # the configured path, not under the proc root


def test_disk_usage_full_and_empty() -> None:
    assert DiskUsage(Path("/"), lambda _: fake_statvfs(100, 0, 0)).sample() == 100.0
    assert DiskUsage(Path("/"), lambda _: fake_statvfs(100, 100, 95)).sample() == 0.0
    with pytest.raises(MetricError, match="no usable blocks"):
        DiskUsage(Path("/"), lambda _: fake_statvfs(0, 0, 0)).sample()


def test_disk_usage_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DiskUsage(tmp_path / "absent").sample()


# --------------------------------------------------------------------------- counts and times
def test_process_count_recorded(host: ProcFS) -> None:
    assert ProcessCount(host).sample() == 12  # the pid directories; net/ and files are not


def test_uptime_recorded(host: ProcFS) -> None:
    assert Uptime(host).sample() == 2593.72


@pytest.mark.parametrize("text", ["", "abc 1\n"])
def test_uptime_malformed(tmp_path: Path, text: str) -> None:
    with pytest.raises(MetricError) as info:
        Uptime(procfs_with(tmp_path, {"uptime": text})).sample()
    assert info.value.kind == "parse"


def test_load_average_recorded(host: ProcFS) -> None:
    assert LoadAverage(host).sample() == (0.55, 0.36, 0.36)


@pytest.mark.parametrize("text", ["", "0.1 0.2\n", "a b c 1/2 3\n"])
def test_load_average_malformed(tmp_path: Path, text: str) -> None:
    assert parse_loadavg(text) is None
    with pytest.raises(MetricError):
        LoadAverage(procfs_with(tmp_path, {"loadavg": text})).sample()


# --------------------------------------------------------------------------- logged_in_users
UTMP = struct.Struct("=hxxi32s4s32s256shhi2i4i20x")
USER_PROCESS, LOGIN_PROCESS, DEAD_PROCESS, BOOT_TIME = 7, 6, 8, 2


def utmp_record(ut_type: int, user: bytes, line: bytes = b"pts/0", host: bytes = b"") -> bytes:
    return UTMP.pack(ut_type, 4242, line, line[-4:], user, host, 0, 0, 0, 1700000000, 0, 0, 0, 0, 0)


def test_utmp_record_layout() -> None:
    assert UTMP.size == 384  # glibc's struct utmp on Linux


def test_logged_in_users_from_utmp(tmp_path: Path) -> None:
    data = b"".join(
        [
            utmp_record(BOOT_TIME, b"reboot", b"~"),
            utmp_record(LOGIN_PROCESS, b"LOGIN", b"tty1"),
            utmp_record(USER_PROCESS, b"bob", b"pts/1", b"192.0.2.9"),
            utmp_record(USER_PROCESS, b"alice", b"pts/0"),
            utmp_record(USER_PROCESS, b"alice", b"pts/2"),
            utmp_record(DEAD_PROCESS, b"carol", b"pts/3"),
            utmp_record(USER_PROCESS, b"", b"pts/4"),
            utmp_record(USER_PROCESS, "jörg o'neil".encode(), b"pts/5"),
            utmp_record(USER_PROCESS, b"x" * 32, b"pts/6"),  # a full-width name has no NUL
        ]
    )
    path = tmp_path / "utmp"
    path.write_bytes(data + utmp_record(USER_PROCESS, b"truncated")[:200])
    users = LoggedInUsers(path).sample()
    assert users == ["alice", "bob", "j_rg_o_neil", "x" * 32]
    assert not isinstance(check_value(CustomMetricType.STRING_LIST, users), Invalid)


@pytest.mark.skipif(shutil.which("utmpdump") is None, reason="utmpdump (util-linux) not installed")
def test_logged_in_users_reads_what_util_linux_writes(tmp_path: Path) -> None:
    """An independent oracle for the record layout: utmpdump -r writes binary utmp records."""
    text = "".join(
        f"[{kind}] [0424{i}] [ts/{i}] [{user:<8}] [pts/{i:<8}] [{'192.0.2.9':<20}] "
        f"[{'192.0.2.9':<15}] [2026-11-27T05:49:00,000000+00:00]\n"
        for i, (kind, user) in enumerate([(7, "alice"), (8, "bob"), (7, "carol"), (6, "LOGIN")])
    )
    result = subprocess.run(
        ["utmpdump", "-r"], input=text.encode(), capture_output=True, check=True, timeout=30
    )
    assert len(result.stdout) == 4 * 384
    path = tmp_path / "utmp"
    path.write_bytes(result.stdout)
    assert LoggedInUsers(path).sample() == ["alice", "carol"]


def test_logged_in_users_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "utmp").write_bytes(b"")
    assert LoggedInUsers(tmp_path / "utmp").sample() == []
    assert parse_utmp(b"\0" * 10) == []
    with pytest.raises(FileNotFoundError):
        LoggedInUsers(tmp_path / "absent").sample()


# --------------------------------------------------------------------------- listening_processes
def test_listening_inodes_come_from_the_socket_read(host: ProcFS) -> None:
    summary = summarize_sockets(host, InterfaceMap(), source="proc", limit=0, listeners=True)
    assert summary.status.listener_inodes == {
        *(1122239, 1122242, 1122244, 1122246),  # net/tcp, LISTEN
        *(1122240, 1122241, 1122243, 1122245),  # net/tcp6, LISTEN
        *(1122247, 1122249, 1122250),  # net/udp, no peer
        1122248,  # net/udp6
    }
    plain = summarize_sockets(host, InterfaceMap(), source="proc", limit=0)
    assert plain.status.listener_inodes is None and plain.remote_peers is None


def test_listening_processes_recorded(host: ProcFS, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        assert ListeningProcesses(host, WarnOnce()).sample() == LISTENERS
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_listening_processes_without_sockets(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    procfs = procfs_with(tmp_path, {"net/tcp": header, "1/comm": "init\n"})
    assert ListeningProcesses(procfs, WarnOnce()).sample() == []


def test_listening_processes_without_socket_tables(tmp_path: Path) -> None:
    with pytest.raises(MetricError, match="cannot read net/tcp") as info:
        ListeningProcesses(ProcFS(tmp_path), WarnOnce()).sample()
    assert info.value.kind == "read"


@pytest.fixture
def unreadable_fds(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Make ``<pid>/fd`` of the pids in the returned set raise PermissionError, as for non-root."""
    denied: set[str] = set()
    real_iterdir = Path.iterdir

    def iterdir(self: Path) -> Iterator[Path]:
        if self.name == "fd" and self.parent.name in denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    return denied


def test_listening_processes_partial_without_privilege(
    host: ProcFS, unreadable_fds: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    unreadable_fds.update({"412", "430", "777"})  # sshd, mosquitto, curl belong to others
    metric = ListeningProcesses(host, WarnOnce())
    with caplog.at_level(logging.DEBUG, logger="defender_agent"):
        first = metric.sample()
        second = metric.sample()
    assert first == second == [n for n in LISTENERS if n not in ("sshd", "mosquitto")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # said once
    message = warnings[0].getMessage()
    assert "listening_processes" in message and "3 process(es)" in message
    assert "CAP_SYS_PTRACE" in message


# --------------------------------------------------------------------------- addresses
def test_interface_addresses_recorded(host: ProcFS) -> None:
    assert InterfaceAddresses(host).sample() == [
        "192.0.2.10",
        "198.51.100.20",
        "2001:db8::10",
        "fe80::146e:b7ff:feea:ba93",
        "fe80::a8b1:c1ff:feb3:de27",
    ]


def test_interface_addresses_ipv4_only(tmp_path: Path) -> None:
    shutil.copytree(HOST / "net", tmp_path / "net")
    (tmp_path / "net" / "if_inet6").unlink()
    assert InterfaceAddresses(ProcFS(tmp_path)).sample() == ["192.0.2.10", "198.51.100.20"]


def test_interface_addresses_unreadable(tmp_path: Path) -> None:
    with pytest.raises(MetricError, match="cannot read net/fib_trie or net/if_inet6"):
        InterfaceAddresses(ProcFS(tmp_path)).sample()


def test_remote_ips_recorded(host: ProcFS) -> None:
    # 127.0.0.1 peers are left out; ::ffff:192.0.2.1 is 192.0.2.1
    assert RemoteIps(host).sample() == ["192.0.2.1", "198.51.100.1", "2001:db8::1"]


def test_remote_ips_without_tcp_table(tmp_path: Path) -> None:
    with pytest.raises(MetricError, match=r"cannot read .*net/tcp") as info:
        RemoteIps(ProcFS(tmp_path), "proc").sample()
    assert info.value.kind == "read"


# --------------------------------------------------------------------------- the live host
LIVE = ProcFS("/proc")


def checked(metric_type: CustomMetricType, value: object) -> object:
    clean = check_value(metric_type, value)
    assert not isinstance(clean, Invalid), clean
    return clean


@pytest.mark.live
def test_live_cpu_usage() -> None:
    cpu = CpuUsage(LIVE)
    assert cpu.sample() is None
    end = time.monotonic() + 0.3
    while time.monotonic() < end:  # burn some CPU so that jiffies pass
        pass
    usage = cpu.sample()
    assert usage is not None and 0 <= usage <= 100
    checked(CustomMetricType.NUMBER, usage)


@pytest.mark.live
def test_live_memory_usage() -> None:
    usage = MemoryUsage(LIVE).sample()
    assert 0 < usage < 100
    assert usage == pytest.approx(
        100 - psutil.virtual_memory().available * 100 / psutil.virtual_memory().total, abs=5
    )


@pytest.mark.live
def test_live_disk_usage() -> None:
    usage = DiskUsage(Path("/")).sample()
    assert 0 <= usage <= 100
    assert usage == pytest.approx(psutil.disk_usage("/").percent, abs=1)


@pytest.mark.live
def test_live_process_count() -> None:
    count = ProcessCount(LIVE).sample()
    assert count >= 2
    assert abs(count - len(psutil.pids())) <= 20


@pytest.mark.live
def test_live_uptime() -> None:
    uptime = Uptime(LIVE).sample()
    assert uptime == pytest.approx(time.clock_gettime(time.CLOCK_BOOTTIME), abs=5)


@pytest.mark.live
def test_live_load_average() -> None:
    loads = LoadAverage(LIVE).sample()
    assert len(loads) == 3 and min(loads) >= 0
    assert loads == pytest.approx(os.getloadavg(), abs=0.5)


@pytest.mark.live
def test_live_logged_in_users() -> None:
    utmp = Path("/var/run/utmp")
    if not utmp.exists():  # containers and some minimal systems keep no utmp
        with pytest.raises(FileNotFoundError):
            LoggedInUsers(utmp).sample()
        return
    users = LoggedInUsers(utmp).sample()
    checked(CustomMetricType.STRING_LIST, users)
    assert {u.name for u in psutil.users()} >= set(users) - {"_"}


@pytest.mark.live
def test_live_listening_processes_sees_this_process() -> None:
    comm = Path("/proc/self/comm").read_text().strip()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        names = ListeningProcesses(LIVE, WarnOnce()).sample()
    checked(CustomMetricType.STRING_LIST, names)
    if os.geteuid() == 0:
        assert comm in names
    assert names == sorted(set(names))


@pytest.mark.live
def test_live_interface_addresses() -> None:
    addresses = InterfaceAddresses(LIVE).sample()
    checked(CustomMetricType.IP_ADDRESS_LIST, addresses)
    assert not any(ipaddress.ip_address(a).is_loopback for a in addresses)
    expected = {
        a.address.split("%")[0]
        for nics in psutil.net_if_addrs().values()
        for a in nics
        if a.family in (socket.AF_INET, socket.AF_INET6)
    }
    expected = {a for a in expected if not ipaddress.ip_address(a).is_loopback}
    assert set(addresses) == expected


@pytest.mark.live
def test_live_remote_ips_sees_a_connection_to_an_own_address() -> None:
    own = [a for a in InterfaceAddresses(LIVE).sample() if ipaddress.ip_address(a).version == 4]
    if not own:
        pytest.skip("no non-loopback IPv4 address to connect to")
    with socket.socket() as listener:
        listener.bind((own[0], 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2]) as client:
            peer, _ = listener.accept()
            with peer:
                peers = RemoteIps(LIVE).sample()
                assert client.getpeername()[0] in peers
    checked(CustomMetricType.IP_ADDRESS_LIST, peers)
    assert not any(ipaddress.ip_address(a).is_loopback for a in peers)


# --------------------------------------------------------------------------- in a collection cycle
SOCKET_BUILTINS = ("listening_processes", "interface_addresses", "remote_ips")


def test_socket_builtins_take_the_cycles_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: Counter[str] = Counter()
    real_read = ProcFS.read_bytes

    def counting(self: ProcFS, *parts: str) -> bytes:
        reads["/".join(parts)] += 1
        return real_read(self, *parts)

    monkeypatch.setattr(ProcFS, "read_bytes", counting)
    config = CollectorConfig(
        proc_root=HOST, list_size=1000, custom_metrics=CustomMetricsConfig(enabled=SOCKET_BUILTINS)
    )
    collector = Collector(config)
    collector.cycle()
    reads.clear()
    report = collector.cycle()
    assert report is not None and report.tcp_connections is not None
    assert report.tcp_connections.connections is not None
    for name in ("tcp", "tcp6", "udp", "udp6", "fib_trie", "if_inet6", "route"):
        assert reads[f"net/{name}"] == 1, name
    values = {m.name: list(m.value) for m in report.custom_metrics}  # type: ignore[arg-type]
    assert values["listening_processes"] == LISTENERS
    assert values["remote_ips"] == ["192.0.2.1", "198.51.100.1", "2001:db8::1"]
    assert set(values["remote_ips"]) == {c.remote_ip for c in report.tcp_connections.connections}
    assert values["interface_addresses"] == [
        "192.0.2.10",
        "198.51.100.20",
        "2001:db8::10",
        "fe80::146e:b7ff:feea:ba93",
        "fe80::a8b1:c1ff:feb3:de27",
    ]


def test_socket_builtins_without_the_cycles_tables(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    config = CollectorConfig(
        proc_root=tmp_path, custom_metrics=CustomMetricsConfig(enabled=SOCKET_BUILTINS)
    )
    collector = Collector(config)
    collector.cycle()
    report = collector.cycle()
    assert report is not None and report.custom_metrics == ()
    sources: Any = collector.health()["sources"]
    assert (
        "cannot read net/tcp, tcp6, udp or udp6" in sources["custom/listening_processes"]["missing"]
    )
    assert (
        "cannot read net/fib_trie or net/if_inet6"
        in sources["custom/interface_addresses"]["missing"]
    )
    assert "net/tcp (No such file or directory)" in sources["custom/remote_ips"]["missing"]


def test_socket_builtins_when_the_cycles_read_failed(host: ProcFS) -> None:
    metric = RemoteIps(host)
    metric.readings = CycleReadings(interfaces=None, sockets=None)
    with pytest.raises(MetricError, match="socket tables could not be read this cycle"):
        metric.sample()
    addresses = InterfaceAddresses(host)
    addresses.readings = CycleReadings(interfaces=None, sockets=None)
    with pytest.raises(MetricError, match="interface addresses could not be read this cycle"):
        addresses.sample()
