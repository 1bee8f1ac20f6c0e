"""The event-stream message format (the framing under Greengrass IPC), written for the test fake.

A message is a 12-byte prelude — total length (u32), headers length (u32), the
CRC32 of those 8 bytes — then typed headers, the payload, and the CRC32 of
everything before it. A header is its name length (u8), the name, a type byte and
the value. awscrt implements the client side; this module is the server side.

>>> frame = encode({":message-type": 4, "operation": "x"}, b'{"a":1}')
>>> decode(frame)
({':message-type': 4, 'operation': 'x'}, b'{"a":1}', 56)
"""

from __future__ import annotations

import struct
import zlib
from typing import Optional, Union

__all__ = [
    "APPLICATION_ERROR",
    "APPLICATION_MESSAGE",
    "CONNECT",
    "CONNECTION_ACCEPTED",
    "CONNECT_ACK",
    "PING",
    "PING_RESPONSE",
    "TERMINATE_STREAM",
    "FrameError",
    "HeaderValue",
    "decode",
    "encode",
]

# :message-type values
APPLICATION_MESSAGE = 0
APPLICATION_ERROR = 1
PING = 2
PING_RESPONSE = 3
CONNECT = 4
CONNECT_ACK = 5
# :message-flags bits
CONNECTION_ACCEPTED = 1
TERMINATE_STREAM = 2

HeaderValue = Union[bool, int, str, bytes]

_PRELUDE = struct.Struct(">II")
_MAX_MESSAGE = 16 * 1024 * 1024


class FrameError(ValueError):
    """A malformed message (bad CRC, lengths, or header type)."""


def _encode_header(name: str, value: HeaderValue) -> bytes:
    raw = name.encode()
    head = struct.pack(">B", len(raw)) + raw
    if isinstance(value, bool):
        return head + bytes([0 if value else 1])
    if isinstance(value, int):
        return head + struct.pack(">Bi", 4, value)
    if isinstance(value, bytes):
        return head + struct.pack(">BH", 6, len(value)) + value
    data = value.encode()
    return head + struct.pack(">BH", 7, len(data)) + data


def encode(headers: dict[str, HeaderValue], payload: bytes = b"") -> bytes:
    """One message: ints are sent as int32, str as string, bytes as byte buffers."""
    block = b"".join(_encode_header(name, value) for name, value in headers.items())
    total = 12 + len(block) + len(payload) + 4
    prelude = _PRELUDE.pack(total, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + block + payload
    return body + struct.pack(">I", zlib.crc32(body))


_FIXED = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


def _decode_headers(block: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    at = 0
    while at < len(block):
        size = block[at]
        name = block[at + 1 : at + 1 + size].decode()
        at += 1 + size
        kind = block[at]
        at += 1
        value: HeaderValue
        if kind in (0, 1):
            value = kind == 0
        elif kind in _FIXED:
            fmt = _FIXED[kind]
            (value,) = struct.unpack_from(fmt, block, at)
            at += struct.calcsize(fmt)
        elif kind in (6, 7):
            (length,) = struct.unpack_from(">H", block, at)
            data = block[at + 2 : at + 2 + length]
            value = data.decode() if kind == 7 else data
            at += 2 + length
        elif kind == 9:
            value = block[at : at + 16]
            at += 16
        else:
            raise FrameError(f"unknown header type {kind}")
        headers[name] = value
    return headers


def decode(buffer: bytes) -> Optional[tuple[dict[str, HeaderValue], bytes, int]]:
    """The first whole message in ``buffer`` as (headers, payload, bytes used), or ``None``.

    Raises:
        FrameError: a CRC does not match or a length is impossible.
    """
    if len(buffer) < 12:
        return None
    total, headers_len = _PRELUDE.unpack_from(buffer)
    (prelude_crc,) = struct.unpack_from(">I", buffer, 8)
    if zlib.crc32(buffer[:8]) != prelude_crc:
        raise FrameError("prelude CRC mismatch")
    if total < 16 + headers_len or total > _MAX_MESSAGE:
        raise FrameError(f"impossible lengths: total {total}, headers {headers_len}")
    if len(buffer) < total:
        return None
    (message_crc,) = struct.unpack_from(">I", buffer, total - 4)
    if zlib.crc32(buffer[: total - 4]) != message_crc:
        raise FrameError("message CRC mismatch")
    headers = _decode_headers(buffer[12 : 12 + headers_len])
    return headers, bytes(buffer[12 + headers_len : total - 4]), total
