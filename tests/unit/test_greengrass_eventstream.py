"""The fake nucleus's event-stream framing: what awscrt sends and checks, byte for byte."""

from __future__ import annotations

import struct
import zlib

import pytest

from tests.gg_infra import eventstream as es


def test_round_trip_of_every_header_kind_the_fake_sends() -> None:
    headers: dict[str, es.HeaderValue] = {
        ":message-type": es.APPLICATION_MESSAGE,
        ":message-flags": es.TERMINATE_STREAM,
        ":stream-id": 7,
        ":content-type": "application/json",
        "flag": True,
        "off": False,
        "blob": b"\x00\x01",
    }
    frame = es.encode(headers, b"{}")
    assert es.decode(frame) == (headers, b"{}", len(frame))
    assert es.decode(frame + b"next") == (headers, b"{}", len(frame))  # the rest stays


def test_a_partial_message_waits_for_more() -> None:
    frame = es.encode({":message-type": es.PING}, b"x" * 100)
    assert es.decode(frame[:11]) is None
    assert es.decode(frame[:-1]) is None


def test_prelude_and_message_crcs_are_checked() -> None:
    frame = bytearray(es.encode({":message-type": es.PING}, b"payload"))
    bad_payload = bytes(frame[:-5]) + b"X" + bytes(frame[-4:])
    with pytest.raises(es.FrameError, match="message CRC"):
        es.decode(bad_payload)
    bad_prelude = bytearray(frame)
    bad_prelude[11] ^= 0xFF
    with pytest.raises(es.FrameError, match="prelude CRC"):
        es.decode(bytes(bad_prelude))


def test_impossible_lengths_are_refused() -> None:
    prelude = struct.pack(">II", 8, 100)
    frame = prelude + struct.pack(">I", zlib.crc32(prelude)) + b"\x00" * 4
    with pytest.raises(es.FrameError, match="impossible lengths"):
        es.decode(frame)
