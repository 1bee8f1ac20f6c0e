"""Decoding of ``/proc/net/{tcp,tcp6,udp,udp6}``: the socket tables shared by two collectors.

A line of ``/proc/net/tcp`` looks like this (columns trimmed)::

      sl  local_address rem_address   st tx_queue rx_queue ...
       0: 0100007F:0016 00000000:0000 0A 00000000:00000000 ...

Addresses are the raw 32-bit words of ``struct in_addr`` / ``in6_addr``
printed in the *host's* byte order, so on a little-endian machine
``0100007F`` is ``127.0.0.1``; an IPv6 address is four such words. Ports are
big-endian hex. ``st`` is the kernel TCP state number in hex: ``0A`` is
LISTEN, ``01`` ESTABLISHED. UDP has no states of its own: an unconnected
socket shows ``07`` (CLOSE) with a remote port of 0, a connected one ``01``
(see psutil's ``_pslinux.py`` and the kernel's ``tcp4_seq_show``).

The parser produces :data:`SocketRow` tuples, the same shape the netlink
reader (:mod:`._sockdiag`) returns, so everything after it is shared.
"""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING

__all__ = [
    "ESTABLISHED",
    "LISTEN",
    "SocketRow",
    "decode_hex_address",
    "is_loopback",
    "parse_socket_table",
    "unmap_v4",
]

#: (family, local_ip_packed, local_port, remote_ip_packed, remote_port, state)
if TYPE_CHECKING:
    SocketRow = tuple[int, bytes, int, bytes, int, int]
else:  # Python 3.8 (Greengrass v1 Lambdas) cannot subscript built-in types at run time
    SocketRow = tuple

ESTABLISHED = 1
LISTEN = 10

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_LITTLE_ENDIAN = sys.byteorder == "little"


def decode_hex_address(hex_address: bytes) -> bytes:
    """Turn an address column of /proc/net into the packed network-order address.

    >>> socket.inet_ntop(socket.AF_INET, decode_hex_address(b"0500000A"))  # little-endian host
    '10.0.0.5'
    >>> socket.inet_ntop(socket.AF_INET6,
    ...     decode_hex_address(b"B80D0120000000000000000001000000"))
    '2001:db8::1'

    Raises:
        ValueError: not 8 or 32 hex digits.
    """
    raw = bytes.fromhex(hex_address.decode("ascii"))
    if len(raw) not in (4, 16):
        raise ValueError(f"address of {len(raw)} bytes")
    if not _LITTLE_ENDIAN:
        return raw
    return b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))


def unmap_v4(family: int, packed: bytes) -> tuple[int, bytes]:
    r"""Show an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) as the IPv4 address it maps.

    >>> unmap_v4(socket.AF_INET6, bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1]))[1]
    b'\xc0\x00\x02\x01'
    """
    if family == socket.AF_INET6 and packed[:12] == _V4_MAPPED_PREFIX:
        return socket.AF_INET, packed[12:]
    return family, packed


def is_loopback(family: int, packed: bytes) -> bool:
    """True for 127.0.0.0/8 and ``::1`` (after :func:`unmap_v4`)."""
    if family == socket.AF_INET:
        return packed[0] == 127
    return packed == b"\x00" * 15 + b"\x01"


def parse_socket_table(
    data: bytes,
    family: int,
    states: frozenset[int] | None = None,
    *,
    inodes: set[int] | None = None,
    udp: bool = False,
) -> tuple[list[SocketRow], int]:
    r"""Parse one socket table, keeping the rows whose state is in ``states``.

    Args:
        data: the file's content.
        family: ``AF_INET`` for ``tcp``/``udp``, ``AF_INET6`` for ``tcp6``/``udp6``.
        states: the kernel state numbers to keep; ``None`` keeps every row.
        inodes: when given, the inodes (tenth column) of the listening sockets
            are added to it: TCP rows in LISTEN, UDP rows without a remote
            port, as the listening ports count them.
        udp: whether this is a UDP table (which rows listen).

    Returns:
        The rows, and how many malformed lines were skipped (the header is not
        counted). A malformed line never raises.

    >>> table = (b"  sl  local_address rem_address   st\n"
    ...          b"   0: 0100007F:0016 00000000:0000 0A 0 0 0 0 0 1 1 0\n"
    ...          b"   1: garbage\n")
    >>> listeners: set[int] = set()
    >>> rows, bad = parse_socket_table(table, socket.AF_INET, inodes=listeners)
    >>> rows[0][2], rows[0][5], bad, listeners
    (22, 10, 1, {1})
    """
    wanted = None if states is None else {b"%02X" % s for s in states}
    addresses: dict[bytes, bytes] = {}  # hex -> packed; sockets share few distinct addresses
    rows: list[SocketRow] = []
    append = rows.append
    malformed = 0
    lines = data.split(b"\n")
    for line in lines[1:]:
        parts = line.split(None, 4)
        if len(parts) < 4:
            if parts:
                malformed += 1
            continue
        state = parts[3]
        if wanted is not None and state not in wanted:
            continue
        try:
            local_hex, _, local_port = parts[1].partition(b":")
            remote_hex, _, remote_port = parts[2].partition(b":")
            local = addresses.get(local_hex)
            if local is None:
                local = addresses[local_hex] = decode_hex_address(local_hex)
            remote = addresses.get(remote_hex)
            if remote is None:
                remote = addresses[remote_hex] = decode_hex_address(remote_hex)
            row = (family, local, int(local_port, 16), remote, int(remote_port, 16), int(state, 16))
        except ValueError:
            malformed += 1
            continue
        if len(local) != len(remote) or row[2] > 0xFFFF or row[4] > 0xFFFF:
            malformed += 1
            continue
        append(row)
        if inodes is not None and (row[4] == 0 if udp else row[5] == LISTEN):
            fields = line.split(None, 10)
            if len(fields) > 9 and fields[9].isdigit() and int(fields[9]):
                inodes.add(int(fields[9]))
    return rows, malformed
