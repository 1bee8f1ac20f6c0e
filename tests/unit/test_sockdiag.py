"""Tests of the netlink sock_diag reader: pure parser tests, then live tests on loopback."""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from defender_agent.readers import _sockdiag
from defender_agent.readers._sockdiag import (
    SockDiagUnavailable,
    SocketRow,
    build_request,
    dump_sockets,
    parse_messages,
)

ESTABLISHED = 1
CLOSE = 7
LISTEN = 10
ALL_STATES = 0xFFFFFFFF
TCP = socket.IPPROTO_TCP
UDP = socket.IPPROTO_UDP
AF4 = socket.AF_INET
AF6 = socket.AF_INET6
LO4 = socket.inet_pton(AF4, "127.0.0.1")
LO6 = socket.inet_pton(AF6, "::1")
ANY4 = bytes(4)
ANY6 = bytes(16)
MAPPED_LO4 = bytes(10) + b"\xff\xff" + LO4

# --------------------------------------------------------------------------- builders


def nlmsg(mtype: int, payload: bytes, *, pad: bool = True, length: int | None = None) -> bytes:
    """One netlink message; ``length`` overrides nlmsg_len, ``pad`` aligns to 4."""
    real = 16 + len(payload) if length is None else length
    raw = struct.pack("=IHHII", real, mtype, 2, 1, 0) + payload
    return raw + bytes(-len(raw) % 4) if pad else raw


def attr(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + bytes(-len(raw) % 4)


def diag(fam: int, state: int, sport: int, dport: int, src: bytes, dst: bytes) -> bytes:
    """An inet_diag_msg (72 bytes), addresses padded to 16 bytes as the kernel does."""
    head = struct.pack("!BBBBHH16s16s", fam, state, 0, 0, sport, dport, src, dst)
    return head + struct.pack("=I2I5I", 1, 0xDEAD, 0xBEEF, 0, 0, 0, 1000, 4242)


def row_msg(row: SocketRow, attrs: bytes = b"") -> bytes:
    fam, src, sport, dst, dport, state = row
    return nlmsg(20, diag(fam, state, sport, dport, src, dst) + attrs)


def done(code: int = 0) -> bytes:
    return nlmsg(3, struct.pack("=i", code))


def error(code: int) -> bytes:
    return nlmsg(2, struct.pack("=i", code) + build_request(TCP, AF4, 1)[:16])


ROW4: SocketRow = (AF4, LO4, 8080, ANY4, 0, LISTEN)
ROW6: SocketRow = (AF6, MAPPED_LO4, 443, socket.inet_pton(AF6, "2001:db8::7"), 51000, ESTABLISHED)
KERNEL_ATTRS = (  # shutdown (1 byte), mark, cgroup id, sockopt (2 bytes): as seen on Linux 6.x
    attr(8, b"\x00") + attr(15, bytes(4)) + attr(21, bytes(8)) + attr(22, b"\x52\x00")
)

# --------------------------------------------------------------------------- request


def test_request_layout() -> None:
    req = build_request(UDP, AF6, 1 << CLOSE, seq=7)
    assert len(req) == 72
    assert struct.unpack_from("=IHHII", req) == (72, 20, 0x301, 7, 0)
    assert struct.unpack_from("=BBBBI", req, 16) == (AF6, UDP, 0, 0, 1 << CLOSE)
    assert req[24:] == bytes(48)


@pytest.mark.parametrize(
    ("protocol", "family", "states"),
    [(socket.IPPROTO_SCTP, AF4, 1), (TCP, socket.AF_UNIX, 1), (TCP, AF4, -1), (UDP, AF6, 1 << 32)],
)
def test_request_rejects_bad_arguments(protocol: int, family: int, states: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        build_request(protocol, family, states)


# --------------------------------------------------------------------------- parser


def test_parse_ipv4_row_trims_addresses_to_four_bytes() -> None:
    assert parse_messages(row_msg(ROW4)) == ([ROW4], False)


def test_parse_ipv6_row_passes_addresses_through() -> None:
    assert parse_messages(row_msg(ROW6)) == ([ROW6], False)


def test_parse_walks_variable_attributes_and_done() -> None:
    rows = [ROW4, ROW6, (AF4, LO4, 1, LO4, 65535, ESTABLISHED), (AF6, LO6, 53, ANY6, 0, CLOSE)]
    attrs = [KERNEL_ATTRS, b"", attr(8, b"\x03"), attr(11, b"\x01") + attr(22, b"\x00\x00\x00")]
    buf = b"".join(row_msg(r, a) for r, a in zip(rows, attrs)) + done()
    assert parse_messages(buf) == (rows, True)
    assert parse_messages(bytearray(buf)) == (rows, True)
    assert parse_messages(memoryview(buf)) == (rows, True)


def test_parse_aligns_unpadded_lengths() -> None:
    # nlmsg_len 93 (88 + a 5-byte attribute) is followed by 3 bytes of padding.
    odd = nlmsg(20, diag(AF4, LISTEN, 22, 0, LO4, ANY4) + struct.pack("=HHB", 5, 8, 0))
    assert struct.unpack_from("=I", odd)[0] == 93
    assert len(odd) == 96
    assert parse_messages(odd + row_msg(ROW6)) == ([(AF4, LO4, 22, ANY4, 0, LISTEN), ROW6], False)


def test_parse_stops_at_done_and_ignores_the_rest() -> None:
    assert parse_messages(row_msg(ROW4) + done() + b"\xff" * 7) == ([ROW4], True)


def test_parse_skips_noop_messages() -> None:
    assert parse_messages(nlmsg(1, b"") + row_msg(ROW4)) == ([ROW4], False)


def test_parse_empty_buffer() -> None:
    assert parse_messages(b"") == ([], False)


def test_done_carrying_an_errno_raises() -> None:
    with pytest.raises(SockDiagUnavailable, match="ENOENT"):
        parse_messages(done(-errno.ENOENT))


def test_nlmsg_error_raises_with_the_errno() -> None:
    with pytest.raises(SockDiagUnavailable, match="EPERM"):
        parse_messages(row_msg(ROW4) + error(-errno.EPERM))


def test_nlmsg_error_zero_is_an_ack_and_ignored() -> None:
    assert parse_messages(error(0) + row_msg(ROW4) + done()) == ([ROW4], True)


@pytest.mark.parametrize(
    "buf",
    [
        pytest.param(row_msg(ROW4)[:10], id="header-cut"),
        pytest.param(row_msg(ROW4)[:60], id="row-cut"),
        pytest.param(row_msg(ROW4, KERNEL_ATTRS)[:-4], id="attributes-cut"),
        pytest.param(row_msg(ROW4) + row_msg(ROW6)[:20], id="second-message-cut"),
        pytest.param(nlmsg(20, diag(AF4, 1, 1, 1, LO4, LO4)[:40]), id="row-shorter-than-88"),
        pytest.param(nlmsg(20, b"", length=0) + row_msg(ROW4), id="zero-length"),
        pytest.param(nlmsg(2, b"\x01\x00", pad=False), id="error-cut"),
    ],
)
def test_truncated_or_malformed_messages_raise(buf: bytes) -> None:
    with pytest.raises(SockDiagUnavailable):
        parse_messages(buf)


addresses4 = st.binary(min_size=4, max_size=4)
addresses6 = st.binary(min_size=16, max_size=16)
ports = st.integers(0, 65535)
states = st.integers(0, 255)
rows4 = st.tuples(st.just(AF4), addresses4, ports, addresses4, ports, states)
rows6 = st.tuples(st.just(AF6), addresses6, ports, addresses6, ports, states)
attr_blobs = st.lists(
    st.tuples(st.integers(1, 30), st.binary(max_size=13)).map(lambda t: attr(*t)), max_size=4
).map(b"".join)


@given(st.lists(st.tuples(st.one_of(rows4, rows6), attr_blobs), max_size=30))
def test_parse_round_trips_built_rows(items: list[tuple[SocketRow, bytes]]) -> None:
    buf = b"".join(row_msg(r, a) for r, a in items) + done()
    assert parse_messages(buf) == ([r for r, _ in items], True)


@given(st.binary(max_size=400))
def test_parse_garbage_raises_only_sockdiag_unavailable(buf: bytes) -> None:
    with contextlib.suppress(SockDiagUnavailable):
        parse_messages(buf)


@given(st.integers(0, 400))
def test_parse_any_truncation_raises_only_sockdiag_unavailable(cut: int) -> None:
    buf = row_msg(ROW4, KERNEL_ATTRS) + row_msg(ROW6) + done()
    with contextlib.suppress(SockDiagUnavailable):
        parse_messages(buf[:cut])


# --------------------------------------------------------------------------- dump_sockets, faked


class FakeNetlink:
    """Stands in for the netlink socket: hands out queued datagrams."""

    def __init__(self, datagrams: list[bytes], *, claimed: int | None = None) -> None:
        self.datagrams = list(datagrams)
        self.claimed = claimed
        self.sent: list[bytes] = []
        self.closed = False

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def settimeout(self, value: float) -> None:
        assert value > 0

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        assert address == (0, 0)
        self.sent.append(data)
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int, flags: int) -> int:
        assert flags & socket.MSG_TRUNC
        data = self.datagrams.pop(0)
        buf[: len(data)] = data
        return len(data) if self.claimed is None else self.claimed


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    _sockdiag.available.cache_clear()
    yield
    _sockdiag.available.cache_clear()


def test_dump_reads_multipart_replies_until_done(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNetlink([row_msg(ROW4) * 2, row_msg(ROW4, KERNEL_ATTRS), done()])
    monkeypatch.setattr(_sockdiag, "_open_netlink", lambda: fake)
    assert dump_sockets(TCP, AF4, 1 << LISTEN) == [ROW4] * 3
    assert fake.sent == [build_request(TCP, AF4, 1 << LISTEN)]
    assert fake.closed


@pytest.mark.parametrize(
    ("fake", "message"),
    [
        (FakeNetlink([row_msg(ROW4), error(-errno.EINVAL)]), "EINVAL"),
        (FakeNetlink([done(-errno.ENOENT)]), "ENOENT"),
        (FakeNetlink([row_msg(ROW4)], claimed=(1 << 20) + 1), "truncated"),
        (FakeNetlink([b""]), "closed"),
    ],
)
def test_dump_failures_raise_and_close(
    monkeypatch: pytest.MonkeyPatch, fake: FakeNetlink, message: str
) -> None:
    monkeypatch.setattr(_sockdiag, "_open_netlink", lambda: fake)
    with pytest.raises(SockDiagUnavailable, match=message):
        dump_sockets(TCP, AF4, 1)
    assert fake.closed


@pytest.mark.parametrize("code", [errno.EAFNOSUPPORT, errno.EPERM, errno.EPROTONOSUPPORT])
def test_unusable_netlink_makes_it_unavailable(
    monkeypatch: pytest.MonkeyPatch, fresh_cache: None, code: int
) -> None:
    def refuse() -> socket.socket:
        raise OSError(code, "refused")

    monkeypatch.setattr(_sockdiag, "_open_netlink", refuse)
    with pytest.raises(SockDiagUnavailable, match=errno.errorcode[code]):
        dump_sockets(UDP, AF6, 1)
    assert _sockdiag.available() is False


def test_platform_without_netlink_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    monkeypatch.delattr(socket, "AF_NETLINK", raising=False)
    with pytest.raises(SockDiagUnavailable, match="no AF_NETLINK"):
        dump_sockets(TCP, AF4, 1)
    assert _sockdiag.available() is False


# --------------------------------------------------------------------------- live, loopback


@pytest.fixture
def live() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("netlink sock_diag is Linux only")
    if not _sockdiag.available():
        pytest.skip("netlink sock_diag is not usable here (no AF_NETLINK, EPERM or no module)")


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(AF6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback here")
_NO_LINGER = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT left behind


class Loopback:
    """Opens loopback sockets and closes every one of them at the end of the test."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.listeners: dict[int, socket.socket] = {}

    def open(self, family: int, kind: int) -> socket.socket:
        sock = self.stack.enter_context(socket.socket(family, kind))
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
        return sock

    def listen(self, family: int, host: str, *, v6only: bool = True) -> int:
        sock = self.open(family, socket.SOCK_STREAM)
        if family == AF6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((host, 0))
        sock.listen(8)
        port: int = sock.getsockname()[1]
        self.listeners[port] = sock
        return port

    def connect(self, family: int, host: str, port: int) -> int:
        """Connect a client to the listener on ``port`` and accept it; return the client port."""
        client = self.open(family, socket.SOCK_STREAM)
        client.connect((host, port))
        accepted = self.stack.enter_context(self.listeners[port].accept()[0])
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
        cport: int = client.getsockname()[1]
        return cport

    def udp(self, family: int, host: str) -> tuple[socket.socket, int]:
        sock = self.open(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return sock, port


@pytest.fixture
def net() -> Iterator[Loopback]:
    with contextlib.ExitStack() as stack:
        yield Loopback(stack)


def mine(rows: list[SocketRow], *ports: int) -> list[SocketRow]:
    """The rows whose local port is ours and whose remote port is ours or 0."""
    return sorted(r for r in rows if r[2] in ports and (r[4] in ports or r[4] == 0))


@pytest.mark.live
@pytest.mark.usefixtures("live")
def test_live_zero_state_mask_returns_nothing() -> None:
    assert dump_sockets(TCP, AF4, 0) == []


@pytest.mark.live
@pytest.mark.usefixtures("live")
def test_live_tcp_listener_ipv4(net: Loopback) -> None:
    port = net.listen(AF4, "127.0.0.1")
    assert mine(dump_sockets(TCP, AF4, 1 << LISTEN), port) == [(AF4, LO4, port, ANY4, 0, LISTEN)]
    assert mine(dump_sockets(TCP, AF4, 1 << ESTABLISHED), port) == []
    assert mine(dump_sockets(TCP, AF6, ALL_STATES), port) == []


@pytest.mark.live
@needs_ipv6
@pytest.mark.usefixtures("live")
def test_live_tcp_listeners_ipv6(net: Loopback) -> None:
    lo = net.listen(AF6, "::1")
    dual = net.listen(AF6, "::", v6only=False)
    assert mine(dump_sockets(TCP, AF6, 1 << LISTEN), lo, dual) == sorted(
        [(AF6, LO6, lo, ANY6, 0, LISTEN), (AF6, ANY6, dual, ANY6, 0, LISTEN)]
    )
    assert mine(dump_sockets(TCP, AF4, ALL_STATES), lo, dual) == []  # dual-stack is AF_INET6


@pytest.mark.live
@pytest.mark.usefixtures("live")
def test_live_established_pair_ipv4(net: Loopback) -> None:
    port = net.listen(AF4, "127.0.0.1")
    cport = net.connect(AF4, "127.0.0.1", port)
    assert mine(dump_sockets(TCP, AF4, 1 << ESTABLISHED), port, cport) == sorted(
        [(AF4, LO4, port, LO4, cport, ESTABLISHED), (AF4, LO4, cport, LO4, port, ESTABLISHED)]
    )
    assert mine(dump_sockets(TCP, AF4, 1 << LISTEN), port, cport) == [
        (AF4, LO4, port, ANY4, 0, LISTEN)
    ]


@pytest.mark.live
@needs_ipv6
@pytest.mark.usefixtures("live")
def test_live_established_pairs_ipv6_and_v4_mapped(net: Loopback) -> None:
    port = net.listen(AF6, "::", v6only=False)
    c6 = net.connect(AF6, "::1", port)
    c4 = net.connect(AF4, "127.0.0.1", port)
    assert mine(dump_sockets(TCP, AF6, 1 << ESTABLISHED), port, c6, c4) == sorted(
        [
            (AF6, LO6, port, LO6, c6, ESTABLISHED),
            (AF6, LO6, c6, LO6, port, ESTABLISHED),
            (AF6, MAPPED_LO4, port, MAPPED_LO4, c4, ESTABLISHED),  # the accepted v4 peer
        ]
    )
    assert mine(dump_sockets(TCP, AF4, 1 << ESTABLISHED), port, c6, c4) == [
        (AF4, LO4, c4, LO4, port, ESTABLISHED)  # the v4 client itself
    ]


@pytest.mark.live
@pytest.mark.parametrize(
    ("family", "host", "loopback", "anywhere"),
    [
        pytest.param(AF4, "127.0.0.1", LO4, ANY4, id="ipv4"),
        pytest.param(AF6, "::1", LO6, ANY6, id="ipv6", marks=needs_ipv6),
    ],
)
@pytest.mark.usefixtures("live")
def test_live_udp_unconnected_and_connected(
    net: Loopback, family: int, host: str, loopback: bytes, anywhere: bytes
) -> None:
    _, p1 = net.udp(family, host)
    connected, p2 = net.udp(family, host)
    connected.connect((host, p1))
    both = (1 << CLOSE) | (1 << ESTABLISHED)
    assert mine(dump_sockets(UDP, family, both), p1, p2) == sorted(
        [(family, loopback, p1, anywhere, 0, CLOSE), (family, loopback, p2, loopback, p1, 1)]
    )
    assert mine(dump_sockets(UDP, family, 1 << CLOSE), p1, p2) == [
        (family, loopback, p1, anywhere, 0, CLOSE)
    ]


SS_STATES = {
    "ESTAB": 1,
    "SYN-SENT": 2,
    "SYN-RECV": 3,
    "FIN-WAIT-1": 4,
    "FIN-WAIT-2": 5,
    "TIME-WAIT": 6,
    "UNCONN": 7,
    "CLOSE-WAIT": 8,
    "LAST-ACK": 9,
    "LISTEN": 10,
    "CLOSING": 11,
}


def _port(endpoint: str) -> int:
    port = endpoint.rsplit(":", 1)[1]
    return 0 if port == "*" else int(port)


@pytest.mark.live
@pytest.mark.usefixtures("live")
def test_live_agrees_with_ss(net: Loopback) -> None:
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) is not installed")
    ours = [net.listen(AF4, "127.0.0.1")]
    ours.append(net.connect(AF4, "127.0.0.1", ours[0]))
    expected = 3  # listener, client, accepted
    if _ipv6_loopback_works():
        dual = net.listen(AF6, "::", v6only=False)
        ours += [dual, net.connect(AF6, "::1", dual), net.connect(AF4, "127.0.0.1", dual)]
        expected += 5
    rows = dump_sockets(TCP, AF4, ALL_STATES) + dump_sockets(TCP, AF6, ALL_STATES)
    from_netlink = collections.Counter((r[2], r[4], r[5]) for r in mine(rows, *ours))
    output = subprocess.run([ss, "-Htan"], capture_output=True, text=True, check=True).stdout
    from_ss: collections.Counter[tuple[int, int, int]] = collections.Counter()
    for line in output.splitlines():
        state, _recvq, _sendq, local, peer = line.split()[:5]
        lport, rport = _port(local), _port(peer)
        if lport in ours and (rport in ours or rport == 0):
            from_ss[lport, rport, SS_STATES[state]] += 1
    assert from_netlink == from_ss
    assert sum(from_ss.values()) == expected


# --------------------------------------------------------------------------- uniform fast path


@given(
    st.one_of(st.lists(rows4, min_size=1, max_size=60), st.lists(rows6, min_size=1, max_size=60))
)
def test_uniform_datagrams_take_the_fast_path_with_the_same_rows(rows: list[SocketRow]) -> None:
    buf = b"".join(row_msg(r, KERNEL_ATTRS) for r in rows)
    fast = _sockdiag._parse_uniform(memoryview(buf))
    assert fast is not None  # every reply has the same length: decoded in C loops
    assert fast == _sockdiag._parse_general(memoryview(buf))[0] == rows
    assert parse_messages(buf) == (rows, False)


def test_fast_path_declines_mixed_lengths_types_and_done() -> None:
    mixed = row_msg(ROW4, KERNEL_ATTRS) + row_msg(ROW4)
    assert _sockdiag._parse_uniform(memoryview(mixed)) is None
    families = row_msg(ROW4) + row_msg(ROW6)  # same length, two families
    assert len(row_msg(ROW4)) == len(row_msg(ROW6))
    assert _sockdiag._parse_uniform(memoryview(families)) is None
    assert parse_messages(families) == ([ROW4, ROW6], False)
    assert parse_messages(mixed) == ([ROW4, ROW4], False)
    with_done = row_msg(ROW4) + done()
    assert _sockdiag._parse_uniform(memoryview(with_done)) is None
    assert parse_messages(with_done) == ([ROW4], True)
    noop = nlmsg(1, bytes(72))  # same length as a reply, another type
    same_size = row_msg(ROW4) + noop
    assert len(row_msg(ROW4)) == len(noop)
    assert _sockdiag._parse_uniform(memoryview(same_size)) is None
    assert parse_messages(same_size) == ([ROW4], False)


def test_iter_dump_yields_per_datagram(monkeypatch: pytest.MonkeyPatch) -> None:
    class Fake:
        def __init__(self) -> None:
            self.replies = [row_msg(ROW4) * 3, row_msg(ROW6, KERNEL_ATTRS), done()]

        def __enter__(self) -> Fake:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def settimeout(self, _t: float) -> None:
            pass

        def sendto(self, _data: bytes, _addr: object) -> int:
            return 0

        def recv_into(self, buf: bytearray, _n: int, _flags: int) -> int:
            data = self.replies.pop(0)
            buf[: len(data)] = data
            return len(data)

    monkeypatch.setattr(_sockdiag, "_open_netlink", Fake)
    assert list(_sockdiag.iter_dump(TCP, AF4, ALL_STATES)) == [[ROW4] * 3, [ROW6]]


# --------------------------------------------------------------------------- listeners' inodes
def with_inode(row: SocketRow, inode: int, attrs: bytes = b"") -> bytes:
    """A reply for ``row`` whose idiag_inode is ``inode``."""
    msg = bytearray(row_msg(row, attrs))
    struct.pack_into("=I", msg, 16 + 68, inode)
    return bytes(msg)


UDP_BOUND: SocketRow = (AF4, ANY4, 5353, ANY4, 0, CLOSE)
UDP_PEER: SocketRow = (AF4, LO4, 40000, LO4, 53, ESTABLISHED)


def test_listener_inodes_tcp_and_udp_both_paths() -> None:
    tcp = with_inode(ROW4, 11) + with_inode(ROW6, 12) + with_inode(ROW4, 0)
    assert _sockdiag.listener_inodes(tcp, udp=False) == {11}  # inode 0: none to match
    general = with_inode(ROW4, 11, KERNEL_ATTRS) + with_inode(ROW4, 13) + done()
    assert _sockdiag.listener_inodes(general, udp=False) == {11, 13}
    udp = with_inode(UDP_BOUND, 21) + with_inode(UDP_PEER, 22)
    assert _sockdiag.listener_inodes(udp, udp=True) == {21}
    assert _sockdiag.listener_inodes(udp + done(), udp=True) == {21}
    assert _sockdiag.listener_inodes(b"", udp=True) == set()


@given(st.binary(max_size=400))
def test_listener_inodes_never_raise_on_garbage(buf: bytes) -> None:
    assert isinstance(_sockdiag.listener_inodes(buf, udp=False), set)


def test_iter_dump_gathers_listener_inodes(monkeypatch: pytest.MonkeyPatch) -> None:
    replies = [with_inode(ROW4, 31) * 2 + with_inode(ROW6, 32), with_inode(ROW4, 33) + done()]

    class Fake:
        def __enter__(self) -> Fake:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def settimeout(self, _t: float) -> None:
            pass

        def sendto(self, _data: bytes, _addr: object) -> int:
            return 0

        def recv_into(self, buf: bytearray, _n: int, _flags: int) -> int:
            data = replies.pop(0)
            buf[: len(data)] = data
            return len(data)

    monkeypatch.setattr(_sockdiag, "_open_netlink", Fake)
    inodes: set[int] = set()
    chunks = list(_sockdiag.iter_dump(TCP, AF4, ALL_STATES, inodes))
    assert chunks == [[ROW4, ROW4, ROW6], [ROW4]]
    assert inodes == {31, 33}


@pytest.mark.live
@pytest.mark.usefixtures("live")
def test_live_listener_inodes_agree_with_proc(net: Loopback) -> None:
    from defender_agent.procfs import ProcFS
    from defender_agent.readers.interfaces import InterfaceMap
    from defender_agent.readers.sockets import summarize_sockets

    port = net.listen(AF4, "127.0.0.1")
    client_port = net.connect(AF4, "127.0.0.1", port)
    udp, _ = net.udp(AF4, "127.0.0.1")
    listener_inode = os.fstat(net.listeners[port].fileno()).st_ino
    udp_inode = os.fstat(udp.fileno()).st_ino
    found: dict[str, set[int]] = {}
    for source in ("netlink", "proc"):
        summary = summarize_sockets(
            ProcFS("/proc"), InterfaceMap(), source=source, limit=0, listeners=True
        )
        assert summary.status.source == source
        inodes = summary.status.listener_inodes
        assert inodes is not None and {listener_inode, udp_inode} <= inodes
        found[source] = inodes
    assert client_port
    # other processes may open or close listeners meanwhile: ours are in both, and most agree
    assert len(found["netlink"] ^ found["proc"]) <= 4
