"""Keep an encoded report under the message size limit, whatever the number of sockets.

IoT Core drops any publish over 128 KB without a Device Defender reply
(protocol.md §3, §4.3), so a report that would be larger is trimmed before
it is sent: the longest list is cut in proportion to the excess (keeping its
first, deterministically chosen entries) until the encoding fits. ``total`` keeps
the true counts, so the Detect count metrics are unaffected.
"""

from __future__ import annotations

import dataclasses

from defender_agent.errors import ReportTooLargeError
from defender_agent.model import Report
from defender_agent.report.serialize import ReportFormat, encode_report

__all__ = ["fit_report"]

_LISTS = (
    ("listening_tcp_ports", "ports"),
    ("listening_udp_ports", "ports"),
    ("tcp_connections", "connections"),
)


def _longest(report: Report) -> tuple[str, str, int]:
    best = ("", "", 0)
    for group_name, list_name in _LISTS:
        group = getattr(report, group_name)
        if group is not None and len(getattr(group, list_name)) > best[2]:
            best = (group_name, list_name, len(getattr(group, list_name)))
    return best


def fit_report(
    report: Report,
    fmt: ReportFormat = "json",
    *,
    short_names: bool = False,
    max_bytes: int = 131072,
) -> Report:
    """Return ``report``, or a copy with shorter lists whose encoding is at most ``max_bytes``.

    Raises:
        ReportTooLargeError: even with every list empty the report does not fit.

    >>> from defender_agent.model import Connection, ConnectionList
    >>> conns = tuple(Connection("198.51.100.1", 443, p) for p in range(1, 2001))
    >>> big = Report(report_id=1, tcp_connections=ConnectionList(conns, 2000))
    >>> small = fit_report(big, max_bytes=4096)
    >>> len(small.tcp_connections.connections), small.tcp_connections.total
    (74, 2000)
    """
    while (size := len(encode_report(report, fmt, short_names=short_names))) > max_bytes:
        group_name, list_name, length = _longest(report)
        if length == 0:
            raise ReportTooLargeError(
                f"the report does not fit in {max_bytes} bytes even with empty lists"
            )
        group = getattr(report, group_name)
        # Cut in proportion to the excess (entries are of similar size), at least by one.
        keep = min(length - 1, int(length * max_bytes / size * 0.95))
        shorter = dataclasses.replace(group, **{list_name: getattr(group, list_name)[:keep]})
        report = dataclasses.replace(report, **{group_name: shorter})
    return report
