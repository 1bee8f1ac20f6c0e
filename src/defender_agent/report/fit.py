"""Keep an encoded report under the message size limit, whatever the number of sockets.

IoT Core drops any publish over 128 KB without a Device Defender reply
(protocol.md §3, §4.3), so a report that would be larger is trimmed before
it is sent: the longest list is cut in proportion to the excess (keeping its
first, deterministically chosen entries) until the encoding fits. ``total``
keeps the true counts, so the Detect count metrics are unaffected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from defender_agent._record import replace
from defender_agent.errors import ReportTooLargeError
from defender_agent.model import Report
from defender_agent.report.document import to_document
from defender_agent.report.names import NameStyle
from defender_agent.report.serialize import ReportFormat, encode_document

if TYPE_CHECKING:
    from dataclasses import dataclass as record
else:
    from defender_agent._record import record

__all__ = ["MAX_PAYLOAD_BYTES", "EncodedReport", "encode_fitted", "fit_report"]

#: IoT Core's largest publish payload (protocol.md §3).
MAX_PAYLOAD_BYTES = 131072

_LISTS = (
    ("listening_tcp_ports", "ports"),
    ("listening_udp_ports", "ports"),
    ("tcp_connections", "connections"),
)


@record(frozen=True)
class EncodedReport:
    """A report ready to leave: the (possibly trimmed) report, its document and its bytes."""

    report: Report
    document: dict[str, Any]
    payload: bytes


def _longest(report: Report) -> tuple[str, str, int]:
    best = ("", "", 0)
    for group_name, list_name in _LISTS:
        entries = getattr(getattr(report, group_name), list_name, None) or ()
        if len(entries) > best[2]:
            best = (group_name, list_name, len(entries))
    return best


def encode_fitted(
    report: Report,
    fmt: ReportFormat = "json",
    *,
    short_names: bool = False,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> EncodedReport:
    """Encode ``report``, trimming its lists first if the encoding would exceed ``max_bytes``.

    The document and the payload are built once here, so the caller can validate
    the document and publish the payload without encoding again.

    Raises:
        ReportTooLargeError: even with every list empty the report does not fit.

    >>> from defender_agent.model import Connection, ConnectionList
    >>> conns = tuple(Connection("198.51.100.1", 443, p) for p in range(1, 2001))
    >>> big = Report(report_id=1, tcp_connections=ConnectionList(conns, 2000))
    >>> small = encode_fitted(big, max_bytes=4096)
    >>> len(small.payload) <= 4096, len(small.report.tcp_connections.connections)
    (True, 74)
    >>> small.document["metrics"]["tcp_connections"]["established_connections"]["total"]
    2000
    """
    style = NameStyle.SHORT if short_names else NameStyle.LONG
    while True:
        document = to_document(report, style)
        payload = encode_document(document, fmt)
        size = len(payload)
        if size <= max_bytes:
            return EncodedReport(report, document, payload)
        group_name, list_name, length = _longest(report)
        if length == 0:
            raise ReportTooLargeError(
                f"the report does not fit in {max_bytes} bytes even with empty lists"
            )
        group = getattr(report, group_name)
        # Cut in proportion to the excess (entries are of similar size), at least by one.
        keep = min(length - 1, int(length * max_bytes / size * 0.95))
        shorter = replace(group, **{list_name: getattr(group, list_name)[:keep]})
        report = replace(report, **{group_name: shorter})


def fit_report(
    report: Report,
    fmt: ReportFormat = "json",
    *,
    short_names: bool = False,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> Report:
    """Return ``report``, or a copy with shorter lists whose encoding is at most ``max_bytes``."""
    return encode_fitted(report, fmt, short_names=short_names, max_bytes=max_bytes).report
