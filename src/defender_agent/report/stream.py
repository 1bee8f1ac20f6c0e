r"""Cut a file of reports into one payload per report.

``collect -o FILE`` writes a stream: JSON lines (one compact report per line) or a CBOR
sequence (data items one after the other, RFC 8742); ``collect`` on stdout prints indented
JSON documents one after the other; a file may also hold a single report. This module
finds where each report starts and ends, so that each can be checked as if it had
arrived alone (:func:`~defender_agent.report.validate.validate_payload`).

The file is read a chunk at a time, and no more than about one report over the size
limit is held in memory, whatever the size of the file: a report longer than the limit
is measured and skipped, not kept.

* **JSON**: one JSON value after another, separated by optional whitespace; that covers
  JSON lines, indented documents and a single document. A report that does not parse
  ends where the next one starts, at the next line that begins with ``{``.
* **CBOR**: one data item after another. A CBOR sequence has no separator to find the
  next item after a broken one, so the stream ends at the first item that does not
  decode, is over the limit, or is not a map.

>>> import io
>>> stream = io.BytesIO(b'{"a": 1}\n[2]\n{"b":\n{"c": 3}\n')
>>> [piece.payload for piece in ReportStream(stream, limit=100)]
[b'{"a": 1}', b'[2]', b'{"b":\n', b'{"c": 3}']
>>> big = io.BytesIO(b'{"a": "' + b"x" * 200 + b'"}')
>>> [(piece.payload, piece.problem) for piece in ReportStream(big, limit=100)]
[(None, '209 bytes, over the 100-byte limit of one report')]
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Final, Optional

from defender_agent.report.validate import (
    CBOR_MODULE,
    DECODE_ERRORS,
    PayloadFormat,
    sniff_format,
)

__all__ = ["Piece", "ReportStream"]

_CHUNK: Final = 64 * 1024
_SPACE: Final = re.compile(r"[ \t\r\n]*")
_NEXT_REPORT: Final = "\n{"  # a JSON report after a broken one: a line that starts with "{"
_BOM: Final = "\ufeff"


@dataclass(frozen=True)
class Piece:
    """One report of a stream.

    Attributes:
        index: Its position in the stream, from 1.
        payload: Its bytes; None when it is over the limit (or could not be cut out).
        size: Its size in bytes. For a CBOR item over the limit, the bytes from its start
            to the end of the file (the item's own end cannot be found).
        oversized: Whether it is over the limit.
        problem: What is wrong with it beyond what checking the payload finds (it is over
            the limit, or the rest of the stream cannot be read), or None.
    """

    index: int
    payload: Optional[bytes]
    size: int
    oversized: bool = False
    problem: Optional[str] = None


class _Source:
    """A binary file read through a first chunk already taken, counting every byte."""

    def __init__(self, fp: BinaryIO, head: bytes) -> None:
        self._fp = fp
        self._head = head
        self.count = 0  # bytes handed out

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the file."""
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:
            data += self._fp.read(size - len(data))
        self.count += len(data)
        return data

    def drain(self) -> int:
        """Read to the end of the file, keeping nothing; return the number of bytes."""
        total = 0
        while data := self.read(_CHUNK):
            total += len(data)
        return total


def _too_big(size: int, limit: int) -> str:
    return f"{size} bytes, over the {limit}-byte limit of one report"


class _JsonSplitter:
    """JSON values one after another, found with the standard library's raw_decode."""

    def __init__(self, source: _Source, limit: int) -> None:
        self._source = source
        self._limit = limit
        # surrogateescape: bytes that are not UTF-8 survive the round trip, so each payload
        # is the exact bytes of the file and the validator names the bad byte.
        self._utf8 = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._json = json.JSONDecoder()
        self._buf = ""
        self._pos = 0
        self._eof = False

    def _fill(self) -> None:
        if self._eof:
            return
        data = self._source.read(_CHUNK)
        self._eof = not data
        self._buf += self._utf8.decode(data, final=self._eof)

    def _trim(self) -> None:
        if self._pos > _CHUNK:
            self._buf, self._pos = self._buf[self._pos :], 0

    def pieces(self) -> Iterator[Piece]:
        index = 0
        while True:
            space = _SPACE.match(self._buf, self._pos)
            assert space is not None  # the pattern matches the empty string
            self._pos = space.end()
            if self._pos == len(self._buf):
                if self._eof:
                    return
                self._fill()
                continue
            index += 1
            yield self._next(index)
            self._trim()

    def _next(self, index: int) -> Piece:
        start = self._pos
        while True:
            begin = start + 1 if self._buf.startswith(_BOM, start) else start
            try:
                end: Optional[int] = self._json.raw_decode(self._buf, begin)[1]
            except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
                end = None
            if end is not None and (end < len(self._buf) or self._eof):
                self._pos = end
                return self._piece(index, self._buf[start:end], 0)
            if self._eof or len(self._buf) - start > self._limit:
                return self._skip(index, start)
            self._fill()  # the report may go on in the next chunk

    def _skip(self, index: int, start: int) -> Piece:
        """A report that does not parse (or is too long): it ends where the next one starts."""
        dropped = 0  # bytes of it already let go
        while (found := self._buf.find(_NEXT_REPORT, start)) < 0 and not self._eof:
            if len(self._buf) - start > self._limit + 1:  # too long to keep: count, let go
                keep = len(self._buf) - 1  # the last character may be the "\n" of "\n{"
                dropped += len(self._buf[start:keep].encode("utf-8", "surrogateescape"))
                self._buf, start = self._buf[keep:], 0
            self._fill()
        end = found + 1 if found >= 0 else len(self._buf)
        self._pos = end
        return self._piece(index, self._buf[start:end], dropped)

    def _piece(self, index: int, text: str, dropped: int) -> Piece:
        payload = text.encode("utf-8", "surrogateescape")
        size = dropped + len(payload)
        if size > self._limit:
            return Piece(index, None, size, True, _too_big(size, self._limit))
        return Piece(index, payload, size)


class _ItemReader:
    """The file as cbor2 reads one data item: at most ``limit`` bytes, all of them kept."""

    def __init__(self, source: _Source, first: bytes, limit: int) -> None:
        self._source = source
        self._pending = first
        self._limit = limit
        self.item = bytearray()
        self.too_long = False

    def readable(self) -> bool:  # cbor2 checks that it has a file
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int) -> bytes:
        if len(self.item) + size > self._limit:
            # The end of the file, as far as cbor2 knows.
            self.too_long = True
            return b""
        data, self._pending = self._pending[:size], self._pending[size:]
        if len(data) < size:
            data += self._source.read(size - len(data))
        self.item += data
        return data


def _cbor_pieces(source: _Source, limit: int) -> Iterator[Piece]:
    index = 0
    while first := source.read(1):
        index += 1
        reader = _ItemReader(source, first, limit)
        try:
            # read_size=1: cbor2 reads no further than the item, so the next one is intact
            item = CBOR_MODULE.CBORDecoder(reader, read_size=1).decode()
        except (RecursionError, *DECODE_ERRORS):
            if reader.too_long:
                size = len(reader.item) + source.drain()
                why = f"not read further: {size} bytes from its start to the end of the file"
                yield Piece(index, None, size, True, f"over the {limit}-byte limit; {why}")
                return
            item = None  # the payload's own check names the error
        payload = bytes(reader.item)
        if isinstance(item, Mapping):
            yield Piece(index, payload, len(payload))
            continue
        # A broken item or one that is not a report: no way to find where the next begins.
        rest = source.drain()
        after = f"the {rest} bytes after it are not checked" if rest else None
        yield Piece(index, payload, len(payload), problem=after)
        return


class ReportStream:
    """The reports of a file (a stream or a single report), cut apart in order.

    Iterate over it once for one :class:`Piece` per report (none for a file that is empty
    or only whitespace); :attr:`bytes_read` then says how much of the file was read.

    Args:
        fp: The file, open for reading in binary mode.
        limit: The largest report, in bytes (the IoT Core payload limit).
        fmt: The encoding; None detects it from the start of the file.
    """

    def __init__(self, fp: BinaryIO, limit: int, fmt: Optional[PayloadFormat] = None) -> None:
        self._fp = fp
        self._limit = limit
        self._fmt = fmt
        self._source: Optional[_Source] = None
        self._detected: Optional[PayloadFormat] = None

    @property
    def format(self) -> Optional[PayloadFormat]:
        """The encoding given, or the one detected once the iteration has begun."""
        return self._fmt or self._detected

    @property
    def bytes_read(self) -> int:
        """The bytes read from the file so far (all of it, once the iteration has ended)."""
        return self._source.count if self._source else 0

    def __iter__(self) -> Iterator[Piece]:
        head = self._fp.read(_CHUNK)
        self._source = _Source(self._fp, head)
        self._detected = sniff_format(head)
        if self.format is PayloadFormat.JSON:
            yield from _JsonSplitter(self._source, self._limit).pieces()
        else:
            yield from _cbor_pieces(self._source, self._limit)
