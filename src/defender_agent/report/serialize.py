"""Encode reports as compact JSON or CBOR, and pretty JSON for people.

JSON is compact (no spaces) and ASCII-safe; CBOR is the same tree as a CBOR
map with text keys and integer numbers (protocol.md §2.1). Both encodings of
one report are deterministic.

>>> from defender_agent.model import Report
>>> encode_report(Report(report_id=1), "json")
b'{"header":{"report_id":1,"version":"1.0"},"metrics":{}}'
>>> len(encode_report(Report(report_id=1), "cbor", short_names=True))
22
"""

from __future__ import annotations

import json
from typing import Any, Literal

from defender_agent.model import Report
from defender_agent.report.document import to_document
from defender_agent.report.names import NameStyle

__all__ = ["ReportFormat", "encode_document", "encode_report", "pretty_json"]

ReportFormat = Literal["json", "cbor"]


def encode_document(document: dict[str, Any], fmt: ReportFormat = "json") -> bytes:
    """Encode an already built document."""
    if fmt == "cbor":
        import cbor2  # noqa: PLC0415 - only for CBOR (collect's JSON start-up skips it)

        return bytes(cbor2.dumps(document))
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii")


def encode_report(
    report: Report, fmt: ReportFormat = "json", *, short_names: bool = False
) -> bytes:
    """Encode a report in ``fmt`` with long or short names."""
    style = NameStyle.SHORT if short_names else NameStyle.LONG
    return encode_document(to_document(report, style), fmt)


def pretty_json(report: Report, *, short_names: bool = False) -> str:
    """Indented JSON for a terminal (what ``defender-agent collect`` prints)."""
    style = NameStyle.SHORT if short_names else NameStyle.LONG
    return json.dumps(to_document(report, style), indent=2, allow_nan=False)
