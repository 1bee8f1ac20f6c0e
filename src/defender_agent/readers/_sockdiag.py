r"""List TCP/UDP sockets by asking the kernel over netlink ``NETLINK_SOCK_DIAG``.

This is the fast path for the live host (what ``ss`` does): one dump request per
(protocol, family) with a state filter, so the kernel sends only the sockets we want
instead of the text of every socket in ``/proc/net/tcp``. Standard library only.

Wire layout (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h). The request is an
``nlmsghdr`` (16 bytes, host byte order: len u32, type u16, flags u16, seq u32, pid u32)
with type ``SOCK_DIAG_BY_FAMILY`` (20) and flags ``NLM_F_REQUEST | NLM_F_DUMP``, followed
by an ``inet_diag_req_v2`` (56 bytes: family u8, protocol u8, ext u8, pad u8, states u32,
and a zeroed 48-byte ``inet_diag_sockid``). The kernel answers with datagrams holding
several messages each, every one starting at a 4-byte aligned offset; a reply is an
``nlmsghdr`` plus an ``inet_diag_msg`` (72 bytes) plus attributes we skip by walking
``nlmsg_len``. The dump ends with ``NLMSG_DONE`` (3, payload: an int, negative errno if
the dump failed) or stops at ``NLMSG_ERROR`` (2, payload: negative errno + our header).

Worked example: one reply message, as captured on x86-64 Linux 6.x, for a socket
listening on 127.0.0.1:8080::

    off  bytes                    field
      0  7c 00 00 00              nlmsg_len = 124 (88 fixed + 36 of attributes)
      4  14 00 02 00              nlmsg_type = 20, nlmsg_flags = 2 (NLM_F_MULTI)
      8  01 00 00 00 81 17 00 00  nlmsg_seq = 1 (ours), nlmsg_pid = our port id
     16  02 0a 00 00              family 2 AF_INET, state 10 LISTEN, timer, retrans
     20  1f 90 00 00              sport 8080, dport 0 (big-endian)
     24  7f 00 00 01 00 .. 00     src, 16 bytes: 127.0.0.1 and 12 zero bytes
     40  00 .. 00                 dst, 16 bytes: 0.0.0.0
     56  00 00 00 00 81 a4 01 00  interface 0, cookie (2 x u32) ...
     68  ...                      expires, rqueue, wqueue, uid, inode (5 x u32)
     88  05 00 08 00 00 00 00 00  attribute INET_DIAG_SHUTDOWN, rta_len 5, padded to 8
     96  08 00 0f 00 00 00 00 00  INET_DIAG_MARK; then CGROUP_ID (12), SOCKOPT (6 + 2)

The next message starts at align4(124) = 124. This one decodes to the row
``(AF_INET, b"\x7f\x00\x00\x01", 8080, b"\x00" * 4, 0, 10)``.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
from collections.abc import Iterator

from defender_agent.readers._inet import SocketRow

__all__ = [
    "SockDiagUnavailable",
    "SocketRow",
    "available",
    "build_request",
    "dump_sockets",
    "iter_dump",
    "listener_inodes",
    "parse_messages",
]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

_RECV_BUFSIZE = 1 << 20
_TIMEOUT_S = 5.0
_HDR = struct.Struct("=IHHII")  # nlmsghdr, host byte order
_HDR_LEN_TYPE = struct.Struct("=IH")  # nlmsg_len, nlmsg_type only
_REQ = struct.Struct("=BBBBI48x")  # inet_diag_req_v2 with a zeroed inet_diag_sockid
# inet_diag_msg up to the addresses: family, state, (timer, retrans), sport, dport, src, dst.
_MSG = struct.Struct("!BB2xHH16s16s")
_INT = struct.Struct("=i")
_INT_U = struct.Struct("=I")
_HDR_LEN = _HDR.size  # 16
_ROW_LEN = _HDR_LEN + 72  # nlmsghdr + inet_diag_msg
_AF_INET = socket.AF_INET
_LISTEN = 10


class SockDiagUnavailable(Exception):  # noqa: N818 - the name reads as the condition
    """Netlink sock_diag cannot be used here; the caller should fall back to /proc."""


def build_request(protocol: int, family: int, states: int, seq: int = 1) -> bytes:
    """Build one ``SOCK_DIAG_BY_FAMILY`` dump request without extensions.

    Args:
        protocol: ``socket.IPPROTO_TCP`` or ``socket.IPPROTO_UDP``.
        family: ``socket.AF_INET`` or ``socket.AF_INET6``.
        states: Bitmask of ``1 << state`` for the kernel TCP states wanted.
        seq: Sequence number echoed in every reply.

    Returns:
        The 72-byte netlink message.

    Raises:
        ValueError: An argument is out of range.
    """
    if protocol not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        raise ValueError(f"protocol must be IPPROTO_TCP or IPPROTO_UDP, not {protocol}")
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"family must be AF_INET or AF_INET6, not {family}")
    if not 0 <= states <= 0xFFFFFFFF:
        raise ValueError(f"states must be a 32-bit mask, not {states}")
    length = _HDR_LEN + _REQ.size
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _HDR.pack(length, SOCK_DIAG_BY_FAMILY, flags, seq, 0) + _REQ.pack(
        family, protocol, 0, 0, states
    )


def _errno_text(code: int) -> str:
    name = errno.errorcode.get(code, str(code))
    return f"{name} ({os.strerror(code)})"


@functools.lru_cache(maxsize=16)
def _uniform_structs(length: int) -> tuple[struct.Struct, struct.Struct, struct.Struct]:
    """Structs spanning one whole reply of ``length`` bytes.

    The header check (nlmsg_len, type, family) and two row layouts: IPv4 (only the
    first 4 bytes of each 16-byte address) and IPv6.
    """
    tail = length - _HDR_LEN - 40
    return (
        struct.Struct(f"=IH10xB{length - 17}x"),
        struct.Struct(f"!16xBB2xHH4s12x4s12x{tail}x"),
        struct.Struct(f"!16xBB2xHH16s16s{tail}x"),
    )


def _parse_uniform(view: memoryview) -> list[SocketRow] | None:
    """Decode a datagram made only of replies of one size and family, in C loops; else ``None``.

    A dump datagram usually holds a few hundred replies of the same length (the same
    attributes for every socket) and, since a dump asks for one family, the same
    family; :meth:`struct.Struct.iter_unpack` decodes those far faster than a Python
    loop. Every header is still checked: any other length, type or family sends the
    datagram to the general loop.
    """
    end = len(view)
    if end < _ROW_LEN:
        return None
    (length,) = _INT_U.unpack_from(view, 0)
    if length < _ROW_LEN or length % 4 or end % length:
        return None
    heads, body4, body6 = _uniform_structs(length)
    kinds = set(heads.iter_unpack(view))
    if len(kinds) != 1:
        return None
    got_length, mtype, family = kinds.pop()
    if got_length != length or mtype != SOCK_DIAG_BY_FAMILY:
        return None
    body = body4 if family == _AF_INET else body6
    return [
        (fam, src, sport, dst, dport, state)
        for fam, state, sport, dport, src, dst in body.iter_unpack(view)
    ]


def parse_messages(buf: bytes | bytearray | memoryview) -> tuple[list[SocketRow], bool]:
    """Decode one netlink datagram of sock_diag replies.

    Args:
        buf: The bytes of one datagram (any number of whole netlink messages).

    Returns:
        The socket rows in kernel order, and whether ``NLMSG_DONE`` ended the dump
        (messages after it are ignored). IPv4 addresses are trimmed to 4 bytes.

    Raises:
        SockDiagUnavailable: ``NLMSG_ERROR`` or a failed ``NLMSG_DONE`` was received,
            or a message is truncated or malformed.
    """
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    fast = _parse_uniform(view)
    if fast is not None:
        return fast, False
    return _parse_general(view)


def _parse_general(view: memoryview) -> tuple[list[SocketRow], bool]:
    """The message-by-message walk behind :func:`parse_messages`."""
    end = len(view)
    off = 0
    rows: list[SocketRow] = []
    append = rows.append
    unpack_hdr = _HDR_LEN_TYPE.unpack_from
    unpack_msg = _MSG.unpack_from
    while off < end:
        if end - off < _HDR_LEN:
            raise SockDiagUnavailable(f"truncated netlink header at offset {off}")
        length, mtype = unpack_hdr(view, off)
        nxt = off + length
        if length < _HDR_LEN or nxt > end:
            raise SockDiagUnavailable(f"bad netlink message length {length} at offset {off}")
        if mtype == SOCK_DIAG_BY_FAMILY:
            if length < _ROW_LEN:
                raise SockDiagUnavailable(f"short inet_diag_msg ({length} bytes) at {off}")
            fam, state, sport, dport, src, dst = unpack_msg(view, off + _HDR_LEN)
            if fam == _AF_INET:
                src = src[:4]
                dst = dst[:4]
            append((fam, src, sport, dst, dport, state))
        elif mtype == NLMSG_DONE:
            if length >= _HDR_LEN + 4:
                (code,) = _INT.unpack_from(view, off + _HDR_LEN)
                if code < 0:
                    raise SockDiagUnavailable(f"sock_diag dump failed: {_errno_text(-code)}")
            return rows, True
        elif mtype == NLMSG_ERROR:
            if length < _HDR_LEN + 4:
                raise SockDiagUnavailable(f"truncated NLMSG_ERROR at offset {off}")
            (code,) = _INT.unpack_from(view, off + _HDR_LEN)
            if code != 0:  # 0 is an acknowledgement, which we never ask for
                raise SockDiagUnavailable(f"sock_diag request refused: {_errno_text(-code)}")
        # Any other type (NLMSG_NOOP, ...) carries nothing for us.
        off = (nxt + 3) & ~3
    return rows, False


@functools.lru_cache(maxsize=16)
def _listener_struct(length: int) -> struct.Struct:
    """nlmsg_type, state, dport and inode of one whole reply of ``length`` bytes."""
    return struct.Struct(f"=4xH11xB4xH60xI{length - _ROW_LEN}x")


_LISTENER = _listener_struct(_ROW_LEN)


def listener_inodes(buf: bytes | bytearray | memoryview, *, udp: bool) -> set[int]:
    """The inodes of the listening sockets among the replies of one datagram.

    Listening means what the listening ports count: state LISTEN for TCP, no
    remote port for UDP. The inode is ``idiag_inode`` (offset 68 of the
    ``inet_diag_msg``). A datagram of replies of one length is read in a C loop;
    any other walks message by message, stopping at anything malformed (which
    :func:`parse_messages` has already reported).

    >>> reply = bytearray(_ROW_LEN)
    >>> _HDR.pack_into(reply, 0, _ROW_LEN, SOCK_DIAG_BY_FAMILY, 2, 1, 0)
    >>> reply[17] = 10                                      # LISTEN
    >>> _INT_U.pack_into(reply, _HDR_LEN + 68, 1122239)
    >>> listener_inodes(bytes(reply) * 2, udp=False)
    {1122239}
    """
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    end = len(view)
    found: set[int] = set()
    if end < _ROW_LEN:
        return found
    (length,) = _INT_U.unpack_from(view, 0)
    if length >= _ROW_LEN and length % 4 == 0 and end % length == 0:
        entries = list(_listener_struct(length).iter_unpack(view))
        if all(entry[0] == SOCK_DIAG_BY_FAMILY for entry in entries):
            _add_listeners(found, entries, udp=udp)
            return found
    entries = []
    off = 0
    while end - off >= _HDR_LEN:
        length, mtype = _HDR_LEN_TYPE.unpack_from(view, off)
        if length < _HDR_LEN or off + length > end:
            break
        if mtype == SOCK_DIAG_BY_FAMILY and length >= _ROW_LEN:
            entries.append(_LISTENER.unpack_from(view, off))
        off = (off + length + 3) & ~3
    _add_listeners(found, entries, udp=udp)
    return found


def _add_listeners(found: set[int], entries: list[tuple[int, ...]], *, udp: bool) -> None:
    if udp:
        found.update(inode for _t, _state, dport, inode in entries if dport == 0 and inode)
    else:
        found.update(inode for _t, state, _dport, inode in entries if state == _LISTEN and inode)


def _open_netlink() -> socket.socket:
    """Open the NETLINK_SOCK_DIAG socket (a seam for tests)."""
    af_netlink: int | None = getattr(socket, "AF_NETLINK", None)  # Linux only
    if af_netlink is None:
        raise SockDiagUnavailable("this platform has no AF_NETLINK sockets")
    return socket.socket(af_netlink, socket.SOCK_RAW, NETLINK_SOCK_DIAG)


def iter_dump(
    protocol: int, family: int, states: int, inodes: set[int] | None = None
) -> Iterator[list[SocketRow]]:
    """Yield the rows of a dump one datagram at a time (a few hundred rows each).

    Consumers that aggregate as they go keep the memory of a cycle bounded however
    many sockets the host has. Arguments and errors as :func:`dump_sockets`; when
    ``inodes`` is given, the inodes of the listening sockets (:func:`listener_inodes`)
    are added to it from the same datagrams.
    """
    udp = protocol == socket.IPPROTO_UDP
    request = build_request(protocol, family, states)
    buf = bytearray(_RECV_BUFSIZE)
    view = memoryview(buf)
    try:
        with _open_netlink() as sock:
            sock.settimeout(_TIMEOUT_S)
            sock.sendto(request, (0, 0))
            done = False
            while not done:
                # MSG_TRUNC makes netlink return the datagram's full length.
                n = sock.recv_into(buf, _RECV_BUFSIZE, socket.MSG_TRUNC)
                if n > _RECV_BUFSIZE:
                    raise SockDiagUnavailable(f"netlink datagram of {n} bytes truncated")
                if n == 0:
                    raise SockDiagUnavailable("netlink socket closed before NLMSG_DONE")
                chunk, done = parse_messages(view[:n])
                if inodes is not None:
                    inodes |= listener_inodes(view[:n], udp=udp)
                if chunk:
                    yield chunk
    except socket.timeout as exc:
        raise SockDiagUnavailable("sock_diag dump timed out") from exc
    except OSError as exc:
        code = _errno_text(exc.errno) if exc.errno else str(exc)
        raise SockDiagUnavailable(f"netlink sock_diag unusable: {code}") from exc


def dump_sockets(protocol: int, family: int, states: int) -> list[SocketRow]:
    """List the host's sockets of one protocol and family in the given states.

    Args:
        protocol: ``socket.IPPROTO_TCP`` or ``socket.IPPROTO_UDP``.
        family: ``socket.AF_INET`` or ``socket.AF_INET6``.
        states: Bitmask of ``1 << state``, e.g. ``1 << 10`` for LISTEN; unconnected
            UDP sockets are in state 7 (CLOSE), connected ones in 1 (ESTABLISHED).

    Returns:
        One row per socket, as ``(family, local_ip, local_port, remote_ip, remote_port,
        state)`` with packed addresses (4 bytes for AF_INET, 16 for AF_INET6).

    Raises:
        SockDiagUnavailable: The kernel cannot be asked here or its answer is unusable.
        ValueError: An argument is out of range.
    """
    rows: list[SocketRow] = []
    for chunk in iter_dump(protocol, family, states):
        rows += chunk
    return rows


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Tell whether sock_diag dumps of TCP and UDP work here (probed once per process).

    The probe asks for no states at all, so the kernel checks the request and loads the
    protocol handlers but sends back no sockets.

    Returns:
        True if both probes end with a clean ``NLMSG_DONE``.
    """
    try:
        dump_sockets(socket.IPPROTO_TCP, socket.AF_INET, 0)
        dump_sockets(socket.IPPROTO_UDP, socket.AF_INET, 0)
    except SockDiagUnavailable:
        return False
    return True
