"""Collectors on recorded proc roots: ports, connections, interfaces, counters, CPU."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from defender_agent.custom import CustomMetricsConfig
from defender_agent.cycle import Collector, CollectorConfig
from defender_agent.errors import ConfigError
from defender_agent.model import Connection, ListeningPort
from defender_agent.procfs import ProcFS
from defender_agent.readers import _psutil
from defender_agent.readers._inet import SocketRow
from defender_agent.readers.cpu_usage import CpuTimes, cpu_percent, parse_proc_stat
from defender_agent.readers.interfaces import (
    InterfaceMap,
    parse_fib_trie_local,
    parse_route,
    read_interface_map,
)
from defender_agent.readers.listening_ports import listening_tcp_ports, listening_udp_ports
from defender_agent.readers.network_stats import (
    InterfaceCounters,
    parse_net_dev,
    select_interfaces,
)
from defender_agent.readers.sockets import read_socket_tables, resolve_source
from defender_agent.readers.tcp_connections import established_connections, select_rows
from tests.conftest import proc_fixture


def v4(text: str) -> bytes:
    return socket.inet_aton(text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def tables(name: str):
    procfs = ProcFS(proc_fixture(name))
    return procfs, read_socket_tables(procfs, "proc"), read_interface_map(procfs)


# --------------------------------------------------------------------------- interfaces
def test_interface_map_from_recorded_gateway() -> None:
    imap = read_interface_map(ProcFS(proc_fixture("gateway_dualstack")))
    assert imap.v4 == {v4("192.0.2.10"): "eth0", v4("198.51.100.20"): "wlan0"}
    assert imap.v6[v6("2001:db8::10")] == "eth0"
    assert imap.v6[v6("::1")] == "lo"
    assert set(imap.v6.values()) == {"lo", "eth0", "wlan0"}
    assert imap.lookup(socket.AF_INET, v4("127.0.0.53")) == "lo"
    assert imap.lookup(socket.AF_INET, v4("0.0.0.0")) is None
    assert imap.lookup(socket.AF_INET6, bytes(16)) is None
    assert imap.lookup(socket.AF_INET, v4("203.0.113.9")) is None


def test_interface_map_wildcard_label() -> None:
    imap = read_interface_map(ProcFS(proc_fixture("gateway_dualstack")), wildcard="any")
    assert imap.lookup(socket.AF_INET, bytes(4)) == "any"
    assert imap.lookup(socket.AF_INET6, bytes(16)) == "any"


def test_interface_map_missing_files(tmp_path: Path) -> None:
    imap = read_interface_map(ProcFS(tmp_path))
    assert (imap.v4, imap.v6) == ({}, {})
    assert sorted(imap.missing) == ["net/fib_trie", "net/if_inet6", "net/route"]
    assert imap.lookup(socket.AF_INET, v4("127.0.0.1")) == "lo"


def test_fib_trie_and_route_parsers() -> None:
    root = proc_fixture("gateway_dualstack") / "net"
    local = parse_fib_trie_local((root / "fib_trie").read_text())
    assert local == {v4("127.0.0.1"), v4("192.0.2.10"), v4("198.51.100.20")}
    routes = parse_route((root / "route").read_text())
    assert sorted(routes) == [(0xC0000200, 0xFFFFFF00, "eth0"), (0xC6336400, 0xFFFFFF00, "wlan0")]
    assert parse_route("Iface\tDestination\nbroken line\neth0\tZZ\t0\t0\t0\t0\t0\t00FFFFFF\n") == []


def test_most_specific_route_wins() -> None:
    from defender_agent.readers.interfaces import build_v4_map

    routes = [(0xC0000000, 0xFF000000, "wide0"), (0xC0000200, 0xFFFFFF00, "eth0")]
    assert build_v4_map({v4("192.0.2.10"), v4("192.9.9.9"), v4("10.0.0.1")}, routes) == {
        v4("192.0.2.10"): "eth0",
        v4("192.9.9.9"): "wide0",
    }


# --------------------------------------------------------------------------- listening ports
def test_listening_ports_gateway() -> None:
    _, t, imap = tables("gateway_dualstack")
    assert t.tcp is not None and t.udp is not None and t.missing == {} and t.malformed == {}
    assert listening_tcp_ports(t.tcp, imap) == [
        ListeningPort(22),  # 0.0.0.0 and :: merged, wildcard: no interface
        ListeningPort(80),  # dual-stack ::
        ListeningPort(631, "lo"),  # 127.0.0.1 and ::1 merged
        ListeningPort(1883, "wlan0"),
        ListeningPort(8443, "eth0"),  # 192.0.2.10 and 2001:db8::10 merged
    ]
    # the three connected UDP clients and the connected v6 client are not listeners
    assert listening_udp_ports(t.udp, imap) == [
        ListeningPort(53, "lo"),
        ListeningPort(68),
        ListeningPort(123, "eth0"),
        ListeningPort(5353),
    ]


def test_listening_ports_ipv4_only_and_idle() -> None:
    _, t, imap = tables("ipv4_only")
    assert t.tcp is not None and t.udp is not None and t.missing == {}
    assert [p.port for p in listening_tcp_ports(t.tcp, imap)] == [22, 631, 1883, 8443]
    assert [p.port for p in listening_udp_ports(t.udp, imap)] == [53, 68, 123]
    _, idle, imap = tables("idle_container")
    assert idle.tcp == [] and idle.udp == []


def test_never_null_interface_and_port_zero_skipped() -> None:
    rows = [
        (socket.AF_INET, v4("203.0.113.1"), 5000, bytes(4), 0, 10),
        (socket.AF_INET, bytes(4), 0, bytes(4), 0, 7),
    ]
    assert listening_tcp_ports(rows, InterfaceMap()) == [ListeningPort(5000, None)]
    assert listening_udp_ports(rows[1:], InterfaceMap()) == []


# --------------------------------------------------------------------------- connections
def test_connections_gateway() -> None:
    _, t, imap = tables("gateway_dualstack")
    assert t.tcp is not None
    conns, total = established_connections(t.tcp, imap)
    assert total == len(conns) == 14
    remote = sorted((c.remote_ip, c.remote_port) for c in conns if c.remote_port in (443, 8883))
    assert remote == sorted(
        [("192.0.2.1", 443)] * 3
        + [("192.0.2.1", 8883)] * 4  # three plain + one v4-mapped, shown as IPv4
        + [("2001:db8::1", 443)] * 3
        + [("198.51.100.1", 8883)]
    )
    incoming = [c for c in conns if c.local_port in (22, 80)]
    assert sorted(c.local_port or 0 for c in incoming) == [22, 80, 80]
    assert {c.remote_ip for c in incoming} == {"192.0.2.1"}  # v4-mapped on the dual-stack side
    by_iface = {c.remote_ip: c.local_interface for c in conns}
    assert by_iface == {"192.0.2.1": "eth0", "2001:db8::1": "eth0", "198.51.100.1": "wlan0"}
    assert all(":" not in c.remote_ip or c.remote_addr.startswith("[") for c in conns)
    assert conns == sorted(conns, key=lambda c: (c.remote_ip, c.remote_port, c.local_port))


def test_loopback_connections_optional() -> None:
    _, t, imap = tables("gateway_dualstack")
    assert t.tcp is not None
    conns, total = established_connections(t.tcp, imap, include_loopback=True)
    assert total == 16
    loop = [c for c in conns if c.remote_ip == "127.0.0.1"]
    assert len(loop) == 2 and {c.local_interface for c in loop} == {"lo"}


def test_connections_truncated_deterministically() -> None:
    _, t, imap = tables("many_connections")
    assert t.tcp is not None
    full, total = established_connections(t.tcp, imap)
    assert total == len(full) == 605  # 400 v4 + 200 v6 + wlan0 + v4-mapped + 3 incoming
    few, total2 = established_connections(list(reversed(t.tcp)), imap, limit=10)
    again, _ = established_connections(t.tcp, imap, limit=10)
    assert total2 == 605 and few == again and len(few) == 10
    # every distinct remote address is represented before any address repeats
    assert {c.remote_ip for c in few} == {c.remote_ip for c in full}


def test_select_rows_prefers_distinct_remotes() -> None:
    rows = [
        (socket.AF_INET, v4("192.0.2.10"), 40000 + i, v4(f"203.0.113.{i % 5}"), 443, 1)
        for i in range(50)
    ]
    chosen = select_rows(rows, 7)
    assert len({r[3] for r in chosen}) == 5
    assert select_rows(rows, 7) == select_rows(rows[::-1], 7)
    assert len(select_rows(rows, 3)) == 3 and len({r[3] for r in select_rows(rows, 3)}) == 3
    assert select_rows(rows[:2], 7) == rows[:2]


def test_connection_remote_addr_format() -> None:
    assert Connection("2001:db8::1", 443, 1).remote_addr == "[2001:db8::1]:443"
    assert Connection("192.0.2.1", 0, 1).remote_addr == "192.0.2.1:0"


# --------------------------------------------------------------------------- sources
def test_missing_tables_are_reported(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "udp").write_text("  sl  local_address\n")
    t = read_socket_tables(ProcFS(tmp_path), "proc")
    assert t.tcp is None and t.udp == []
    assert list(t.missing) == ["net/tcp"]


def test_malformed_counts_per_file() -> None:
    _, t, _ = tables("malformed")
    assert t.malformed == {"net/tcp": 4, "net/udp": 1}


def test_auto_source_uses_files_for_a_fixture_root() -> None:
    assert resolve_source("auto", ProcFS(proc_fixture("idle_container"))) == "proc"
    assert resolve_source("proc", ProcFS("/proc")) == "proc"


# --------------------------------------------------------------------------- net/dev
def test_net_dev_recorded() -> None:
    text = (proc_fixture("gateway_dualstack") / "net" / "dev").read_text()
    counters, bad = parse_net_dev(text)
    assert bad == 0
    assert set(counters) == {"lo", "eth0", "wlan0"}
    assert counters["eth0"] == InterfaceCounters(1654, 21, 2090, 27)


def test_net_dev_malformed_and_old_format() -> None:
    counters, bad = parse_net_dev((proc_fixture("malformed") / "net" / "dev").read_text())
    assert bad == 1 and "bad0" not in counters
    # very old kernels printed no space after the colon
    old = "h1\nh2\n  eth0:1234 5 0 0 0 0 0 0 678 9 0 0 0 0 0 0\n"
    assert parse_net_dev(old) == ({"eth0": InterfaceCounters(1234, 5, 678, 9)}, 0)
    assert parse_net_dev("h1\nh2\n eth0: -1 2 0 0 0 0 0 0 3 4 0 0 0 0 0 0\n") == ({}, 1)


def test_select_interfaces() -> None:
    c = InterfaceCounters(1, 1, 1, 1)
    all_ifaces = {"lo": c, "eth0": c, "wlan0": c, "docker0": c, "veth12ab": c}
    assert set(select_interfaces(all_ifaces)) == {"eth0", "wlan0", "docker0", "veth12ab"}
    assert set(select_interfaces(all_ifaces, exclude=["lo", "docker*", "veth*"])) == {
        "eth0",
        "wlan0",
    }
    assert set(select_interfaces(all_ifaces, include=["eth*", "lo"], exclude=[])) == {"eth0", "lo"}


# --------------------------------------------------------------------------- cpu
def test_cpu_usage_from_recorded_samples() -> None:
    root = proc_fixture("gateway_dualstack")
    first = parse_proc_stat((root / "stat").read_text())
    second = parse_proc_stat((root / "stat.next").read_text())
    assert first is not None and second is not None
    usage = cpu_percent(first, second)
    assert usage is not None and 0.0 <= usage <= 100.0


@pytest.mark.parametrize(
    "text", ["", "cpu0 1 2 3 4\n", "cpu  a b c d\n", "cpu  1 2\n", "cpu  1 2 -3 4\n"]
)
def test_proc_stat_malformed(text: str) -> None:
    assert parse_proc_stat(text) is None


def test_cpu_percent_edges() -> None:
    assert cpu_percent(CpuTimes(100, 50), CpuTimes(100, 50)) is None
    assert cpu_percent(CpuTimes(100, 50), CpuTimes(90, 40)) is None  # counters went back
    assert cpu_percent(CpuTimes(100, 50), CpuTimes(200, 150)) == 0.0
    assert cpu_percent(CpuTimes(100, 50), CpuTimes(200, 50)) == 100.0


# --------------------------------------------------------------------------- streaming selection
def reference_choice(rows: list[SocketRow], limit: int) -> list[SocketRow]:
    """The selection rule written plainly over the whole list."""
    from operator import itemgetter

    by_remote = itemgetter(3, 4, 2, 0, 1)
    if len(rows) <= limit:
        return sorted(rows)
    reps: dict[bytes, SocketRow] = {}
    for row in rows:
        if row[3] not in reps or row < reps[row[3]]:
            reps[row[3]] = row
    if len(reps) >= limit:
        return sorted(reps.values(), key=by_remote)[:limit]
    chosen = sorted(reps.values(), key=by_remote)
    rest = sorted(r for r in rows if r not in set(chosen))
    return chosen + rest[: limit - len(chosen)]


@given(
    st.lists(
        st.tuples(
            st.sampled_from([socket.AF_INET]),
            st.sampled_from([v4("192.0.2.10")]),
            st.integers(1, 65535),
            st.sampled_from([v4(f"203.0.113.{i}") for i in range(12)]),
            st.integers(1, 65535),
            st.just(1),
        ),
        unique=True,
        max_size=300,
    ),
    st.integers(1, 40),
    st.integers(1, 50),
)
def test_streaming_selector_matches_the_plain_rule(
    rows: list[SocketRow], limit: int, chunk: int
) -> None:
    from defender_agent.readers.tcp_connections import ConnectionSelector

    selector = ConnectionSelector(limit, include_loopback=True)
    selector.prune_slack = 0  # prune as often as possible
    for i in range(0, len(rows), chunk):
        selector.add(rows[i : i + chunk])
    assert selector.total == len(rows)
    chosen = selector.rows()
    assert sorted(chosen) == sorted(reference_choice(rows, limit))


# --------------------------------------------------------------------------- collector health
def test_health_counts_malformed_lines_per_cycle_and_in_total() -> None:
    collector = Collector(CollectorConfig(proc_root=proc_fixture("malformed")))
    assert collector.health() == {
        "cycles": 0,
        "duration_ms": 0.0,
        "socket_source": None,
        "sources": {},
    }
    collector.cycle()  # the baseline reads net/dev only
    health: Any = collector.health()
    assert health["cycles"] == 1 and list(health["sources"]) == ["net/dev"]
    collector.cycle()
    collector.cycle()
    health = collector.health()
    sources = health["sources"]
    assert health["cycles"] == 3 and health["socket_source"] == "proc"
    assert sorted(sources) == ["interfaces", "net/dev", "sockets"]
    assert sources["net/dev"]["malformed"] == 1
    assert sources["net/dev"]["malformed_total"] == 3
    assert sources["sockets"]["malformed"] == 5  # 4 in net/tcp, 1 in net/udp
    assert sources["sockets"]["malformed_total"] == 10
    assert all(s["missing"] is None for s in sources.values())
    assert all(isinstance(s["duration_ms"], float) for s in sources.values())
    assert json.loads(json.dumps(health)) == health


def test_health_names_missing_files(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "udp").write_text("  sl  local_address\n")
    (tmp_path / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable: 75 kB\n")
    config = CollectorConfig(
        proc_root=tmp_path,
        custom_metrics=CustomMetricsConfig(enabled=("memory_usage", "uptime")),
    )
    collector = Collector(config)
    collector.cycle()
    report = collector.cycle()
    assert report is not None and report.tcp_connections is None
    sources: Any = collector.health()["sources"]
    assert sources["net/dev"]["missing"] == "net/dev: No such file or directory"
    assert sources["sockets"]["missing"] == "net/tcp: No such file or directory"
    assert "net/fib_trie: No such file or directory" in sources["interfaces"]["missing"]
    assert sources["custom/memory_usage"]["missing"] is None
    assert "uptime" in sources["custom/uptime"]["missing"]
    assert [m.name for m in report.custom_metrics] == ["memory_usage"]


def test_psutil_source_refused_without_psutil_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_psutil, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"^psutil is not installed: pip install"):
        Collector(CollectorConfig(socket_source="psutil"))


def test_auto_source_on_a_host_without_proc_is_psutil(tmp_path: Path) -> None:
    assert resolve_source("auto", ProcFS(tmp_path)) == "proc"  # a proc root lacking net/tcp
    live_without_net = ProcFS("/proc")
    live_without_net.path = tmp_path.joinpath  # type: ignore[method-assign]
    assert resolve_source("auto", live_without_net) == "psutil"
