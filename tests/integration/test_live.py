"""The collector on the live host: real loopback sockets, reported exactly, cross-checked with ss."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from defender_agent.custom import CustomMetricsConfig
from defender_agent.cycle import Collector, CollectorConfig
from defender_agent.model import Connection, ListeningPort, Report
from defender_agent.readers import _psutil, _sockdiag
from defender_agent.readers.sockets import SocketSource

pytestmark = pytest.mark.live

HAS_IPV6 = socket.has_ipv6 and Path("/proc/net/tcp6").exists()


@dataclass
class Opened:
    tcp_listeners: dict[int, str] = field(default_factory=dict)  # port -> expected interface
    udp_listeners: dict[int, str] = field(default_factory=dict)
    udp_clients: list[int] = field(default_factory=list)  # local ports of connected UDP
    connections: list[tuple[str, int, int]] = field(
        default_factory=list
    )  # (remote ip, rport, lport)
    sockets: list[socket.socket] = field(default_factory=list)


@pytest.fixture
def opened() -> Iterator[Opened]:
    o = Opened()
    try:
        for family, addr in [(socket.AF_INET, "127.0.0.1")] + (
            [(socket.AF_INET6, "::1")] if HAS_IPV6 else []
        ):
            srv = socket.socket(family, socket.SOCK_STREAM)
            srv.bind((addr, 0))
            srv.listen(16)
            o.sockets.append(srv)
            port = srv.getsockname()[1]
            o.tcp_listeners[port] = "lo"
            for _ in range(3):
                cli = socket.create_connection((addr, port))
                acc, _peer = srv.accept()
                o.sockets += [cli, acc]
                lport = cli.getsockname()[1]
                o.connections.append((addr, port, lport))  # client side
                o.connections.append((addr, lport, port))  # server side
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((addr, 0))
            o.sockets.append(udp)
            o.udp_listeners[udp.getsockname()[1]] = "lo"
            client = socket.socket(family, socket.SOCK_DGRAM)
            client.connect((addr, udp.getsockname()[1]))
            o.sockets.append(client)
            o.udp_clients.append(client.getsockname()[1])
        yield o
    finally:
        for s in o.sockets:
            s.close()


def collect(source: SocketSource) -> Report:
    config = CollectorConfig(
        proc_root=Path("/proc"),
        include_loopback_connections=True,
        list_size=1_000_000,
        socket_source=source,
    )
    collector = Collector(config, state_dir=None)
    collector.cycle()
    report = collector.cycle()
    assert report is not None
    return report


SOURCES: list[SocketSource] = ["proc"]
if _sockdiag.available():
    SOURCES.append("netlink")


@pytest.mark.parametrize("source", SOURCES)
def test_reports_exactly_the_opened_sockets(opened: Opened, source: SocketSource) -> None:
    report = collect(source)
    assert report.listening_tcp_ports and report.listening_udp_ports and report.tcp_connections
    assert report.listening_tcp_ports.ports is not None
    assert report.listening_udp_ports.ports is not None
    assert report.tcp_connections.connections is not None
    tcp = {(p.port, p.interface) for p in report.listening_tcp_ports.ports}
    udp = {(p.port, p.interface) for p in report.listening_udp_ports.ports}
    for port, iface in opened.tcp_listeners.items():
        assert (port, iface) in tcp
    for port, iface in opened.udp_listeners.items():
        assert (port, iface) in udp
    for port in opened.udp_clients:  # connected UDP sockets are not listeners
        assert port not in {p for p, _ in udp}
    ours = set(opened.tcp_listeners) | {lport for _, _, lport in opened.connections}
    seen = [
        (c.remote_ip, c.remote_port, c.local_port)
        for c in report.tcp_connections.connections
        if c.local_port in ours and c.remote_port in ours
    ]
    assert sorted(seen) == sorted(opened.connections)
    assert all(
        c.local_interface == "lo"
        for c in report.tcp_connections.connections
        if c.local_port in ours
    )
    assert report.listening_tcp_ports.total == len(report.listening_tcp_ports.ports)
    assert report.tcp_connections.total == len(report.tcp_connections.connections)


def test_loopback_connections_left_out_by_default(opened: Opened) -> None:
    collector = Collector(
        CollectorConfig(proc_root=Path("/proc"), list_size=1_000_000), state_dir=None
    )
    collector.cycle()
    report = collector.cycle()
    assert report is not None and report.tcp_connections is not None
    assert report.tcp_connections.connections is not None
    assert not any(c.remote_ip in ("127.0.0.1", "::1") for c in report.tcp_connections.connections)


def ss_lines(*args: str) -> list[str]:
    out = subprocess.run(
        ["ss", "-H", *args], capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.splitlines()


def local_port(column: str) -> int:
    return int(column.rsplit(":", 1)[1])


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
@pytest.mark.parametrize("source", SOURCES)
def test_cross_check_with_ss(opened: Opened, source: SocketSource) -> None:
    # Other processes may open or close sockets meanwhile: compare on a quiet retry.
    for _attempt in range(5):
        before_tcp = {local_port(row.split()[3]) for row in ss_lines("-ltn")}
        before_udp = {local_port(row.split()[3]) for row in ss_lines("-lun")}
        report = collect(source)
        after_tcp = {local_port(row.split()[3]) for row in ss_lines("-ltn")}
        after_udp = {local_port(row.split()[3]) for row in ss_lines("-lun")}
        if before_tcp == after_tcp and before_udp == after_udp:
            break
    assert report.listening_tcp_ports and report.listening_udp_ports and report.tcp_connections
    assert report.listening_tcp_ports.ports is not None
    assert report.listening_udp_ports.ports is not None
    assert report.tcp_connections.connections is not None
    assert {p.port for p in report.listening_tcp_ports.ports} == after_tcp
    assert {p.port for p in report.listening_udp_ports.ports} == after_udp - {0}
    ours = set(opened.tcp_listeners)
    ss_est = [row.split() for row in ss_lines("-tn", "state", "established")]
    ss_ours = sorted(
        (local_port(f[2]), local_port(f[3]))
        for f in ss_est
        if local_port(f[2]) in ours or local_port(f[3]) in ours
    )
    mine = sorted(
        (c.local_port, c.remote_port)
        for c in report.tcp_connections.connections
        if c.local_port in ours or c.remote_port in ours
    )
    assert mine == ss_ours and len(mine) == len(opened.connections)


@pytest.mark.skipif(not _psutil.available(), reason="psutil is not installed")
def test_psutil_fallback_agrees_with_proc(opened: Opened) -> None:
    by_proc = collect("proc")
    by_psutil = collect("psutil")
    for report in (by_proc, by_psutil):
        assert report.listening_tcp_ports and report.listening_udp_ports and report.tcp_connections
    ours = set(opened.tcp_listeners) | set(opened.udp_listeners)
    ends = set(opened.tcp_listeners) | {lport for _, _, lport in opened.connections}

    def mine(
        report: Report,
    ) -> tuple[list[ListeningPort], list[ListeningPort], list[Connection]]:
        assert report.listening_tcp_ports and report.listening_udp_ports and report.tcp_connections
        assert report.listening_tcp_ports.ports is not None
        assert report.listening_udp_ports.ports is not None
        assert report.tcp_connections.connections is not None
        return (
            sorted(p for p in report.listening_tcp_ports.ports if p.port in ours),
            sorted(p for p in report.listening_udp_ports.ports if p.port in ours),
            sorted(
                c
                for c in report.tcp_connections.connections
                if c.local_port in ends and c.remote_port in ends
            ),
        )

    assert mine(by_psutil) == mine(by_proc)
    assert len(mine(by_proc)[2]) == len(opened.connections)
    assert by_psutil.network_stats is not None


# --------------------------------------------------------------------------- custom metrics
def own_ipv4() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a source address
        except OSError:
            return ""
        address = probe.getsockname()[0]
    return "" if address.startswith("127.") else str(address)


@pytest.mark.parametrize("source", SOURCES)
def test_remote_ips_is_the_connection_set_of_the_same_cycle(
    source: SocketSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = own_ipv4()
    if not address:
        pytest.skip("no non-loopback IPv4 address to connect to")
    dumps: list[int] = []
    real_dump = _sockdiag.iter_dump

    def counting(*args: Any, **kwargs: Any) -> Iterator[list[Any]]:
        dumps.append(args[0])
        return real_dump(*args, **kwargs)

    monkeypatch.setattr(_sockdiag, "iter_dump", counting)
    enabled = ("remote_ips", "listening_processes", "interface_addresses")
    config = CollectorConfig(
        proc_root=Path("/proc"),
        list_size=1_000_000,
        socket_source=source,
        custom_metrics=CustomMetricsConfig(enabled=enabled),
    )
    collector = Collector(config, state_dir=None)
    collector.cycle()
    with socket.socket() as listener:
        listener.bind((address, 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2]):
            peer, _ = listener.accept()
            with peer:
                dumps.clear()
                report = collector.cycle()
                assert collector.health()["socket_source"] == source
    assert report is not None and report.tcp_connections is not None
    assert report.tcp_connections.connections is not None
    values = {m.name: list(m.value) for m in report.custom_metrics}  # type: ignore[arg-type]
    connections = {c.remote_ip for c in report.tcp_connections.connections}
    assert address in connections
    assert set(values["remote_ips"]) == connections
    assert address in values["interface_addresses"]
    if os.geteuid() == 0:
        assert Path("/proc/self/comm").read_text().strip() in values["listening_processes"]
    # one read of the socket tables per cycle: four dumps (TCP, UDP x IPv4, IPv6) over netlink
    assert len(dumps) == (4 if source == "netlink" else 0)


def test_psutil_source_without_psutil_is_one_line_and_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "psutil.py").write_text("raise ImportError('psutil is blocked by this test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    for argv in (
        ["collect", "--socket-source", "psutil", "-n", "1", "-s", "0"],
        ["run", "--dry-run", "--socket-source", "psutil", "--state-dir", str(tmp_path / "s")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "defender_agent", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stdout == ""
        assert done.stderr.strip().splitlines() == [
            "defender-agent: error: psutil is not installed: pip install 'defender-agent[psutil]'"
        ], argv
