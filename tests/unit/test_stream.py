"""ReportStream: one payload per report of a JSON or CBOR stream, in bounded memory."""

from __future__ import annotations

import io
import json
from typing import Any, Optional

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defender_agent.report.stream import Piece, ReportStream
from defender_agent.report.validate import PayloadFormat, validate_payload
from tests.conftest import GOLDEN

LIMIT = 131072
JSON, CBOR = PayloadFormat.JSON, PayloadFormat.CBOR


def report(rid: int, short: bool = False) -> dict[str, Any]:
    if short:
        return {"hed": {"rid": rid, "v": "1.0"}, "met": {"ns": {"bi": rid}}}
    return {"header": {"report_id": rid, "version": "1.0"}, "metrics": {"network_stats": {}}}


def compact(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def split(data: bytes, fmt: Optional[PayloadFormat] = None, limit: int = LIMIT) -> list[Piece]:
    return list(ReportStream(io.BytesIO(data), limit, fmt))


def payloads(pieces: list[Piece]) -> list[Optional[bytes]]:
    return [piece.payload for piece in pieces]


class CountingReader(io.BytesIO):
    """Remembers the largest read, to show the stream reads a chunk at a time."""

    largest = 0

    def read(self, size: Optional[int] = -1) -> bytes:
        assert size is not None and size >= 0, "never read the whole file"
        self.largest = max(self.largest, size)
        return super().read(size)


# ------------------------------------------------------------------------------ JSON
def test_json_lines() -> None:
    lines = [compact(report(i)) for i in range(1, 4)]
    pieces = split(b"\n".join(lines) + b"\n")
    assert payloads(pieces) == lines
    assert [piece.index for piece in pieces] == [1, 2, 3]
    assert all(validate_payload(p).ok for p in lines)


def test_indented_documents_one_after_another() -> None:
    texts = [path.read_bytes() for path in sorted(GOLDEN.glob("*.long.json"))]
    pieces = split(b"".join(texts))
    assert [json.loads(p or b"") for p in payloads(pieces)] == [json.loads(t) for t in texts]
    assert [piece.size for piece in pieces] == [len(t.rstrip()) for t in texts]


def test_a_single_document_is_one_piece() -> None:
    text = (GOLDEN / "gateway_dualstack.short.json").read_bytes()
    assert payloads(split(b"\n  " + text + b"\n\n")) == [text.rstrip()]


@pytest.mark.parametrize("data", [b"", b" \n\t\r\n"])
def test_empty_or_whitespace_has_no_piece(data: bytes) -> None:
    stream = ReportStream(io.BytesIO(data), LIMIT)
    assert list(stream) == []
    assert stream.bytes_read == len(data)


def test_a_broken_line_ends_at_the_next_line_that_starts_a_report() -> None:
    good = compact(report(1))
    data = good + b"\n" + good[:-3] + b"\ngarbage\n" + good + b"\n[1]\n" + b"\xff{}\n" + good
    pieces = split(data)
    assert payloads(pieces) == [good, good[:-3] + b"\ngarbage\n", good, b"[1]", b"\xff{}\n", good]
    problems = [validate_payload(p or b"", JSON).problems for p in payloads(pieces)]
    assert [not found for found in problems] == [True, False, True, False, False, True]
    assert problems[4][0].message == "payload is not UTF-8: invalid byte at offset 0"


def test_text_that_is_not_json_is_one_piece() -> None:
    assert payloads(split(b"hello world\n")) == [b"hello world\n"]


def test_a_byte_order_mark_stays_with_the_first_report() -> None:
    bom = b"\xef\xbb\xbf" + compact(report(1))
    pieces = split(bom + b"\n" + compact(report(2)))
    assert payloads(pieces) == [bom, compact(report(2))]
    assert "byte order mark" in validate_payload(bom).problems[0].message


def test_multibyte_characters_split_across_chunks() -> None:
    doc = {"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"é": "ü" * 70_000}}
    data = json.dumps(doc, ensure_ascii=False).encode()
    assert payloads(split(data + b"\n" + data, limit=10**6)) == [data, data]


def test_a_report_over_the_limit_is_measured_not_kept() -> None:
    big = b'{"a":"' + b"x" * 300_000 + b'"}'
    small = compact(report(2))
    pieces = split(big + b"\n" + small + b"\n" + big)
    assert [(p.payload, p.size, p.oversized) for p in pieces] == [
        (None, len(big) + 1, True),
        (small, len(small), False),
        (None, len(big), True),
    ]
    assert pieces[0].problem == f"{len(big) + 1} bytes, over the {LIMIT}-byte limit of one report"


def test_a_report_of_exactly_the_limit_is_kept() -> None:
    doc = compact(report(1))
    padded = doc[:-1] + b"," + b'"p":"' + b"x" * (LIMIT - len(doc) - 7) + b'"}'
    assert len(padded) == LIMIT
    assert payloads(split(padded + b"\n" + padded)) == [padded, padded]


def test_memory_is_bounded_by_the_limit_not_the_file() -> None:
    big = b'{"a":"' + b"x" * (20 * 1024 * 1024) + b'"}'
    reader = CountingReader(big + b"\n" + compact(report(1)))
    stream = ReportStream(reader, LIMIT)
    pieces = list(stream)
    small = len(compact(report(1)))
    assert [(p.payload is None, p.size) for p in pieces] == [(True, len(big) + 1), (False, small)]
    assert reader.largest <= 64 * 1024
    assert stream.bytes_read == len(big) + 1 + small


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(1, 2**63 - 1), max_size=20),
    st.booleans(),
    st.sampled_from(["\n", " ", "\r\n"]),
)
def test_any_json_lines_split_back(ids: list[int], short: bool, separator: str) -> None:
    lines = [compact(report(i, short)) for i in ids]
    assert payloads(split(separator.encode().join(lines))) == lines


# ------------------------------------------------------------------------------ CBOR
def test_cbor_sequence() -> None:
    items = [cbor2.dumps(report(i, short=True)) for i in range(1, 4)]
    pieces = split(b"".join(items))
    assert payloads(pieces) == items
    assert all(validate_payload(item).ok for item in items)


def test_self_described_cbor_items() -> None:
    items = [b"\xd9\xd9\xf7" + cbor2.dumps(report(i)) for i in range(1, 3)]
    assert payloads(split(b"".join(items))) == items


def test_cbor_golden_files_one_after_another() -> None:
    items = [bytes.fromhex(p.read_text()) for p in sorted(GOLDEN.glob("*.cbor.hex"))]
    assert payloads(split(b"".join(items), CBOR)) == items


def test_cbor_stops_at_an_item_that_is_not_a_report() -> None:
    first, second = cbor2.dumps(report(1)), cbor2.dumps([1, 2])
    pieces = split(first + second + cbor2.dumps(report(3)))
    assert payloads(pieces) == [first, second]
    rest = len(cbor2.dumps(report(3)))
    assert pieces[1].problem == f"the {rest} bytes after it are not checked"
    assert "not a report" in validate_payload(second).problems[0].message


def test_cbor_stops_at_an_item_that_does_not_decode() -> None:
    first = cbor2.dumps(report(1))
    pieces = split(first + b"\xff\x00\x00")
    assert payloads(pieces) == [first, b"\xff"]
    assert pieces[1].problem == "the 2 bytes after it are not checked"
    truncated = split(first + first[:-2])
    assert payloads(truncated) == [first, first[:-2]] and truncated[1].problem is None
    assert validate_payload(first[:-2]).problems[0].message.startswith("invalid CBOR: ")


def test_cbor_item_over_the_limit_is_not_kept() -> None:
    big = cbor2.dumps({"hed": {"rid": 1, "v": "1.0"}, "x": "y" * (5 * LIMIT)})
    reader = CountingReader(cbor2.dumps(report(1)) + big)
    stream = ReportStream(reader, LIMIT)
    pieces = list(stream)
    assert pieces[1].payload is None and pieces[1].oversized and pieces[1].size == len(big)
    assert pieces[1].problem == (
        f"over the {LIMIT}-byte limit; not read further: {len(big)} bytes from its start "
        "to the end of the file"
    )
    assert reader.largest <= 64 * 1024
    assert stream.bytes_read == len(reader.getvalue())


@pytest.mark.parametrize("cut", [True, False])
def test_cbor_declared_huge_length_is_read_a_chunk_at_a_time(cut: bool) -> None:
    header = b"\x7b\x00\x00\x00\x10\x00\x00\x00\x00"  # a text string of 2**36 bytes
    reader = CountingReader(header + (b"" if cut else b"x" * (3 * LIMIT)))
    (piece,) = list(ReportStream(reader, LIMIT, CBOR))
    assert reader.largest <= 64 * 1024
    if cut:  # it ends first: a truncated item, for the payload check to name
        assert piece.payload == header and not piece.oversized
        assert validate_payload(header, CBOR).problems[0].message.startswith("invalid CBOR: ")
    else:
        assert piece.oversized and piece.payload is None and piece.size == 3 * LIMIT + 9


def test_the_format_given_wins_over_sniffing() -> None:
    data = compact(report(1))
    (piece,) = split(data, CBOR)  # "{" as CBOR: a text string that is cut short
    assert piece.payload == data and piece.problem is None
    assert validate_payload(data, CBOR).problems[0].message.startswith("invalid CBOR: ")


# ------------------------------------------------------------------------------ any input
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([None, JSON, CBOR]), st.integers(1, 300))
def test_any_bytes_split_without_error_and_within_the_limit(
    data: bytes, fmt: Optional[PayloadFormat], limit: int
) -> None:
    stream = ReportStream(io.BytesIO(data), limit, fmt)
    pieces = list(stream)
    assert stream.bytes_read == len(data)
    assert [piece.index for piece in pieces] == list(range(1, len(pieces) + 1))
    for piece in pieces:
        assert (piece.payload is None) == piece.oversized
        assert piece.payload is None or len(piece.payload) == piece.size <= limit
    kept = b"".join(piece.payload or b"" for piece in pieces)
    assert len(kept) <= len(data)
    if fmt is CBOR or (fmt is None and stream.format is CBOR):
        assert data.startswith(kept)  # a CBOR sequence is cut, never reordered or skipped
