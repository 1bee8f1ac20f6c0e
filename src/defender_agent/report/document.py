"""Turn a :class:`~defender_agent.model.Report` into a plain document with long or short names.

This is the only place where short names are applied (from
:mod:`.names`); the rest of the code speaks long names. Keys come out in a
fixed order, so the same report always encodes to the same bytes.

>>> from defender_agent.model import Report, PortList, ListeningPort
>>> to_document(Report(report_id=7, listening_tcp_ports=PortList((ListeningPort(22, "eth0"),), 1)),
...             NameStyle.SHORT)
{'hed': {'rid': 7, 'v': '1.0'}, 'met': {'tp': {'pts': [{'pt': 22, 'if': 'eth0'}], 't': 1}}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

from defender_agent.model import ConnectionList, CustomMetric, PortList, Report
from defender_agent.report.names import LONG_TO_SHORT, NameStyle

__all__ = ["to_document"]

if TYPE_CHECKING:
    Document = dict[str, Any]
else:  # Python 3.8 (Greengrass v1 Lambdas) cannot subscript built-in types at run time
    Document = dict


def _present(pairs: dict[str, Any]) -> Document:
    """The pairs whose value is not None (a field left out stays out)."""
    return {key: value for key, value in pairs.items() if value is not None}


def _ports(group: PortList, k: dict[str, str]) -> Document:
    entries = None
    if group.ports is not None:
        entries = []
        for entry in group.ports:  # one dict per entry: this loop runs for every socket
            item: Document = {} if entry.port is None else {k["port"]: entry.port}
            if entry.interface is not None:
                item[k["interface"]] = entry.interface
            entries.append(item)
    return _present({k["ports"]: entries, k["total"]: group.total})


def _connections(group: ConnectionList, k: dict[str, str]) -> Document:
    entries = None
    if group.connections is not None:
        entries = []
        for conn in group.connections:
            item: Document = {k["remote_addr"]: conn.remote_addr}
            if conn.local_port is not None:
                item[k["local_port"]] = conn.local_port
            if conn.local_interface is not None:
                item[k["local_interface"]] = conn.local_interface
            entries.append(item)
    established = _present({k["connections"]: entries, k["total"]: group.total})
    return {k["established_connections"]: established}


def _custom_value(metric: CustomMetric) -> Union[int, float, list[Any]]:
    value = metric.value
    return list(value) if isinstance(value, tuple) else value


def to_document(report: Report, style: NameStyle = NameStyle.LONG) -> Document:
    """Return the report as nested dicts and lists, ready for JSON or CBOR.

    A field that is ``None`` is left out (:mod:`defender_agent.report.decode` reads it
    back as ``None``).
    """
    k: dict[str, str] = (
        LONG_TO_SHORT if style is NameStyle.SHORT else {name: name for name in LONG_TO_SHORT}
    )
    metrics: Document = {}
    if report.listening_tcp_ports is not None:
        metrics[k["listening_tcp_ports"]] = _ports(report.listening_tcp_ports, k)
    if report.listening_udp_ports is not None:
        metrics[k["listening_udp_ports"]] = _ports(report.listening_udp_ports, k)
    if report.network_stats is not None:
        stats = report.network_stats
        metrics[k["network_stats"]] = _present(
            {
                k["bytes_in"]: stats.bytes_in,
                k["bytes_out"]: stats.bytes_out,
                k["packets_in"]: stats.packets_in,
                k["packets_out"]: stats.packets_out,
            }
        )
    if report.tcp_connections is not None:
        metrics[k["tcp_connections"]] = _connections(report.tcp_connections, k)
    document: Document = {
        k["header"]: {k["report_id"]: report.report_id, k["version"]: report.version},
        k["metrics"]: metrics,
    }
    if report.custom_metrics:
        document[k["custom_metrics"]] = {
            m.name: [{m.type.value_key: _custom_value(m)}] for m in report.custom_metrics
        }
    return document
