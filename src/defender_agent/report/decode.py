"""Turn a report document the validator accepted into a typed :class:`~defender_agent.model.Report`.

This is the inverse of :func:`~defender_agent.report.document.to_document`: the
document may use long names, short names, or both when the validation policy
allowed a mix (:mod:`.names`); the :class:`Report` always speaks long names.
A field the document leaves out is ``None`` in the report (docs/protocol.md
§2.4 makes almost every field optional); an empty list stays an empty tuple.
Keys the validator let through as warnings (unknown keys) are ignored, and a
``null`` ``metrics`` (§2.6) reads as no metrics.

The value rules (ranges, the string-list character set, ...) are the validator's
job: this module checks only what it needs to build the typed values, so a
document of the wrong shape raises :class:`~defender_agent.errors.ReportDecodeError`
naming the path, with keys as the document spells them. Pure, no I/O.

>>> report = decode_report({"hed": {"rid": 7, "v": "1.0"},
...     "met": {"tc": {"ec": {"cs": [{"rad": "[2001:db8::5]:443", "lp": 50400}], "t": 3}}},
...     "cmet": {"up": [{"number": 12.5}]}})
>>> report.report_id, report.tcp_connections
(7, ConnectionList(connections=(Connection(remote_ip='2001:db8::5', remote_port=443, local_port=50400, local_interface=None),), total=3))
>>> report.custom_metrics
(CustomMetric(name='up', type=<CustomMetricType.NUMBER: 'number'>, value=12.5),)
>>> decode_report({"header": {"report_id": 7, "version": "1.0"},
...     "metrics": {"listening_tcp_ports": {"ports": [{"port": "22"}]}}})
Traceback (most recent call last):
...
defender_agent.errors.ReportDecodeError: metrics.listening_tcp_ports.ports[0].port: expected an integer, got str
"""  # noqa: E501 - doctest output lines

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NoReturn, Optional, Union

from defender_agent.errors import ReportDecodeError
from defender_agent.model import (
    Connection,
    ConnectionList,
    CustomMetric,
    CustomMetricType,
    CustomValue,
    ListeningPort,
    NetworkStats,
    PortList,
    Report,
)
from defender_agent.report.names import LONG_TO_SHORT
from defender_agent.rules import split_remote_addr

__all__ = ["decode_report"]

_TYPES_BY_KEY: Final = {metric_type.value_key: metric_type for metric_type in CustomMetricType}
_MISSING: Final = object()
_Entry = tuple[Mapping[str, object], str]  # an object of an array, and its path


def _fail(path: str, message: str) -> NoReturn:
    raise ReportDecodeError(f"{path or '$'}: {message}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _child(node: Mapping[str, object], long: str, path: str) -> tuple[object, str]:
    """``node``'s value under ``long`` or its short name (``_MISSING`` if neither), and its path."""
    short = LONG_TO_SHORT.get(long)
    if long in node:
        if short is not None and short in node:
            _fail(path, f"both {long!r} and {short!r} are present")
        return node[long], _join(path, long)
    if short is not None and short in node:
        return node[short], _join(path, short)
    return _MISSING, _join(path, long)


def _object(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        _fail(path, f"expected an object, got {_kind(value)}")
    return value


def _list(value: object, path: str) -> Union[list[object], tuple[object, ...]]:
    if not isinstance(value, (list, tuple)):
        _fail(path, f"expected an array, got {_kind(value)}")
    return value


def _int(value: object, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(path, f"expected an integer, got {_kind(value)}")
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_kind(value)}")
    return value


def _number(value: object, path: str) -> Union[int, float]:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        _fail(path, f"expected a number, got {_kind(value)}")
    return value


def _optional_int(node: Mapping[str, object], long: str, path: str) -> Optional[int]:
    value, where = _child(node, long, path)
    return None if value is _MISSING else _int(value, where)


def _optional_str(node: Mapping[str, object], long: str, path: str) -> Optional[str]:
    value, where = _child(node, long, path)
    return None if value is _MISSING else _str(value, where)


def _entries(node: Mapping[str, object], long: str, path: str) -> Optional[list[_Entry]]:
    """The objects of the array under ``long``, each with its path; None when absent."""
    value, where = _child(node, long, path)
    if value is _MISSING:
        return None
    items = _list(value, where)
    return [(_object(item, f"{where}[{i}]"), f"{where}[{i}]") for i, item in enumerate(items)]


def _port_list(value: object, path: str) -> PortList:
    group = _object(value, path)
    entries = _entries(group, "ports", path)
    ports = None
    if entries is not None:
        ports = tuple(
            ListeningPort(
                _optional_int(entry, "port", where), _optional_str(entry, "interface", where)
            )
            for entry, where in entries
        )
    return PortList(ports, _optional_int(group, "total", path))


def _connection(entry: Mapping[str, object], path: str) -> Connection:
    value, where = _child(entry, "remote_addr", path)
    if value is _MISSING:
        _fail(path, "missing 'remote_addr'")
    try:
        remote_ip, remote_port = split_remote_addr(_str(value, where))
    except ValueError as exc:
        _fail(where, f"expected 'a.b.c.d:port' or '[ipv6]:port', got {value!r} ({exc})")
    local_port = _optional_int(entry, "local_port", path)
    local_interface = _optional_str(entry, "local_interface", path)
    return Connection(remote_ip, remote_port, local_port, local_interface)


def _connection_list(value: object, path: str) -> Optional[ConnectionList]:
    established, where = _child(_object(value, path), "established_connections", path)
    if established is _MISSING:
        return None
    group = _object(established, where)
    entries = _entries(group, "connections", where)
    connections = None
    if entries is not None:
        connections = tuple(_connection(entry, entry_path) for entry, entry_path in entries)
    return ConnectionList(connections, _optional_int(group, "total", where))


def _network_stats(value: object, path: str) -> NetworkStats:
    stats = _object(value, path)
    return NetworkStats(
        bytes_in=_optional_int(stats, "bytes_in", path),
        bytes_out=_optional_int(stats, "bytes_out", path),
        packets_in=_optional_int(stats, "packets_in", path),
        packets_out=_optional_int(stats, "packets_out", path),
    )


def _custom_value(key: str, value: object, path: str) -> CustomValue:
    if key == "number":
        return _number(value, path)
    items = _list(value, path)
    if key == "number_list":
        return tuple(_number(item, f"{path}[{i}]") for i, item in enumerate(items))
    return tuple(_str(item, f"{path}[{i}]") for i, item in enumerate(items))


def _custom_metric(name: object, value: object, path: str) -> CustomMetric:
    if not isinstance(name, str):
        _fail(path, f"expected a text metric name, got {_kind(name)}")
    where = _join(path, name)
    entry = _list(value, where)
    if len(entry) != 1:
        _fail(where, f"expected an array of exactly one object, got {len(entry)} elements")
    item = _object(entry[0], f"{where}[0]")
    keys = [key for key in item if key in _TYPES_BY_KEY]
    if len(keys) != 1:
        expected = ", ".join(_TYPES_BY_KEY)
        _fail(f"{where}[0]", f"expected exactly one of {expected}, got {len(keys)}")
    (key,) = keys
    custom_value = _custom_value(key, item[key], f"{where}[0].{key}")
    return CustomMetric(name, _TYPES_BY_KEY[key], custom_value)


def _group(metrics: Optional[Mapping[str, object]], long: str, path: str) -> tuple[object, str]:
    if metrics is None:
        return _MISSING, path
    return _child(metrics, long, path)


def decode_report(document: Mapping[str, object]) -> Report:
    """The typed report of a validated document (long, short or mixed names).

    Args:
        document: The decoded JSON object or CBOR map, as the validator accepted it.

    Returns:
        The report; :func:`~defender_agent.report.document.to_document` of it gives the
        document back (with a group or list the document left out still left out).

    Raises:
        ReportDecodeError: A value the report needs has the wrong type or is missing;
            the message names its path.
    """
    header_value, header_path = _child(document, "header", "")
    if header_value is _MISSING:
        _fail("", "missing 'header'")
    header = _object(header_value, header_path)
    report_id, id_path = _child(header, "report_id", header_path)
    version, version_path = _child(header, "version", header_path)
    if report_id is _MISSING or version is _MISSING:
        _fail(header_path, "expected both 'report_id' and 'version'")

    metrics_value, metrics_path = _child(document, "metrics", "")
    metrics = None
    if metrics_value is not _MISSING and metrics_value is not None:
        metrics = _object(metrics_value, metrics_path)
    tcp, tcp_path = _group(metrics, "listening_tcp_ports", metrics_path)
    udp, udp_path = _group(metrics, "listening_udp_ports", metrics_path)
    stats, stats_path = _group(metrics, "network_stats", metrics_path)
    connections, connections_path = _group(metrics, "tcp_connections", metrics_path)

    custom_value, custom_path = _child(document, "custom_metrics", "")
    custom: tuple[CustomMetric, ...] = ()
    if custom_value is not _MISSING:
        custom = tuple(
            _custom_metric(name, value, custom_path)
            for name, value in _object(custom_value, custom_path).items()
        )

    return Report(
        report_id=_int(report_id, id_path),
        version=_str(version, version_path),
        listening_tcp_ports=None if tcp is _MISSING else _port_list(tcp, tcp_path),
        listening_udp_ports=None if udp is _MISSING else _port_list(udp, udp_path),
        tcp_connections=(
            None if connections is _MISSING else _connection_list(connections, connections_path)
        ),
        network_stats=None if stats is _MISSING else _network_stats(stats, stats_path),
        custom_metrics=custom,
    )
