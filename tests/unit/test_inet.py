"""The /proc/net socket-table parser, on recorded fixtures and on generated lines."""

from __future__ import annotations

import socket
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from defender_agent.readers._inet import (
    ESTABLISHED,
    LISTEN,
    decode_hex_address,
    is_loopback,
    parse_socket_table,
    unmap_v4,
)
from tests.conftest import proc_fixture


def proc_hex(packed: bytes) -> str:
    """Render a packed address as the kernel does in /proc/net (host-order 32-bit words)."""
    words = [packed[i : i + 4] for i in range(0, len(packed), 4)]
    if sys.byteorder == "little":
        words = [w[::-1] for w in words]
    return b"".join(words).hex().upper()


HEADER = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def line(i: int, local: bytes, lport: int, remote: bytes, rport: int, state: int) -> bytes:
    return (
        f"{i:4d}: {proc_hex(local)}:{lport:04X} {proc_hex(remote)}:{rport:04X} {state:02X} "
        "00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n"
    ).encode()


@pytest.mark.parametrize(
    ("hex_address", "text"),
    [
        (b"0100007F", "127.0.0.1"),
        (b"0A0200C0", "192.0.2.10"),
        (b"00000000", "0.0.0.0"),
        (b"B80D0120000000000000000010000000", "2001:db8::10"),
        (b"0000000000000000FFFF00000A0200C0", "::ffff:192.0.2.10"),
        (b"00000000000000000000000001000000", "::1"),
    ],
)
def test_decode_hex_address(hex_address: bytes, text: str) -> None:
    if sys.byteorder != "little":
        pytest.skip("the examples are little-endian renderings")
    packed = decode_hex_address(hex_address)
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    assert socket.inet_ntop(family, packed) == text


@pytest.mark.parametrize("bad", [b"0100007", b"ZZ00007F", b"", b"0100007F00"])
def test_decode_hex_address_rejects(bad: bytes) -> None:
    with pytest.raises(ValueError):
        decode_hex_address(bad)


def test_unmap_and_loopback() -> None:
    mapped = bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])
    family, packed = unmap_v4(socket.AF_INET6, mapped)
    assert (family, packed) == (socket.AF_INET, bytes([127, 0, 0, 1]))
    assert is_loopback(family, packed)
    assert is_loopback(socket.AF_INET6, bytes(15) + b"\x01")
    assert not is_loopback(socket.AF_INET6, bytes(16))
    assert unmap_v4(socket.AF_INET6, bytes(16)) == (socket.AF_INET6, bytes(16))


def test_recorded_tcp_table() -> None:
    data = (proc_fixture("gateway_dualstack") / "net" / "tcp").read_bytes()
    rows, bad = parse_socket_table(data, socket.AF_INET)
    assert bad == 0
    assert len(rows) == len(data.strip().split(b"\n")) - 1
    listen = sorted(r[2] for r in rows if r[5] == LISTEN)
    assert listen == [22, 631, 1883, 8443]
    assert all(len(r[1]) == 4 and len(r[3]) == 4 for r in rows)


def test_state_filter() -> None:
    data = (proc_fixture("gateway_dualstack") / "net" / "tcp6").read_bytes()
    everything, _ = parse_socket_table(data, socket.AF_INET6)
    listening, bad = parse_socket_table(data, socket.AF_INET6, frozenset({LISTEN}))
    assert bad == 0
    assert listening == [r for r in everything if r[5] == LISTEN]
    assert {r[2] for r in listening} == {22, 80, 631, 8443}


def test_malformed_lines_are_counted_not_raised() -> None:
    root = proc_fixture("malformed")
    rows, bad = parse_socket_table((root / "net" / "tcp").read_bytes(), socket.AF_INET)
    good, zero = parse_socket_table(
        (proc_fixture("gateway_dualstack") / "net" / "tcp").read_bytes(), socket.AF_INET
    )
    assert zero == 0
    assert bad == 4
    assert rows == good[:-1]  # every recorded row but the cut one
    udp_rows, udp_bad = parse_socket_table((root / "net" / "udp").read_bytes(), socket.AF_INET)
    assert udp_bad == 1
    assert len(udp_rows) == 6


def test_empty_and_header_only() -> None:
    assert parse_socket_table(b"", socket.AF_INET) == ([], 0)
    assert parse_socket_table(HEADER, socket.AF_INET) == ([], 0)
    assert parse_socket_table(b"\n\n\n", socket.AF_INET) == ([], 0)


addresses_v4 = st.binary(min_size=4, max_size=4)
addresses_v6 = st.binary(min_size=16, max_size=16)
ports = st.integers(min_value=0, max_value=0xFFFF)
states = st.integers(min_value=1, max_value=12)


@given(st.lists(st.tuples(addresses_v4, ports, addresses_v4, ports, states), max_size=40))
def test_parser_round_trips_v4(sockets: list[tuple[bytes, int, bytes, int, int]]) -> None:
    data = HEADER + b"".join(line(i, *s) for i, s in enumerate(sockets))
    rows, bad = parse_socket_table(data, socket.AF_INET)
    assert bad == 0
    assert rows == [(socket.AF_INET, *s) for s in sockets]


@given(
    st.lists(st.tuples(addresses_v6, ports, addresses_v6, ports, states), max_size=40),
    st.frozensets(states),
)
def test_parser_round_trips_v6_with_filter(
    sockets: list[tuple[bytes, int, bytes, int, int]], wanted: frozenset[int]
) -> None:
    data = HEADER + b"".join(line(i, *s) for i, s in enumerate(sockets))
    rows, bad = parse_socket_table(data, socket.AF_INET6, wanted)
    assert bad == 0
    assert rows == [(socket.AF_INET6, *s) for s in sockets if s[4] in wanted]


@given(st.binary(max_size=2000))
def test_parser_never_raises_on_garbage(data: bytes) -> None:
    rows, bad = parse_socket_table(HEADER + data, socket.AF_INET)
    assert bad >= 0
    for row in rows:
        assert 0 <= row[2] <= 0xFFFF and 0 <= row[4] <= 0xFFFF
        assert len(row[1]) == len(row[3]) in (4, 16)


def test_states_constants() -> None:
    assert (ESTABLISHED, LISTEN) == (1, 10)


def test_listener_inodes_tcp_listen_and_udp_without_peer() -> None:
    header = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    tcp = header + (
        b"   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 101 1\n"
        b"   1: 0100007F:9C40 0100007F:0016 01 00000000:00000000 00:00000000 00000000 0 0 102 1\n"
        b"   2: 0100007F:0017 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 0 1\n"
    )
    inodes: set[int] = set()
    rows, bad = parse_socket_table(tcp, socket.AF_INET, inodes=inodes)
    assert (len(rows), bad, inodes) == (3, 0, {101})  # an inode of 0 names no socket
    udp = header + (
        b"   0: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 201 2\n"
        b"   1: 0100007F:A000 0100007F:0035 01 00000000:00000000 00:00000000 00000000 0 0 202 2\n"
    )
    inodes = set()
    parse_socket_table(udp, socket.AF_INET, inodes=inodes, udp=True)
    assert inodes == {201}
    rows, _ = parse_socket_table(udp, socket.AF_INET)  # not asked for: nothing gathered
    assert len(rows) == 2
