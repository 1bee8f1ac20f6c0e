"""Turn a report document the validator accepted into a typed :class:`~defender_agent.model.Report`.

This is the inverse of :func:`~defender_agent.report.document.to_document`: the
document may use long names, short names, or both when the validation policy
allowed a mix (:mod:`.names`); the :class:`Report` always speaks long names.
A field the document leaves out is ``None`` in the report (docs/protocol.md
§2.4 makes almost every field optional); an empty list stays an empty tuple.
Keys the validator let through as warnings (unknown keys) are ignored, and a
``null`` ``metrics`` (§2.6) reads as no metrics.

The value rules (ranges, the string-list character set, whether an address is one, ...)
are the validator's
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

__all__ = ["decode_report", "read_report_id"]

_TYPES_BY_KEY: Final = {metric_type.value_key: metric_type for metric_type in CustomMetricType}
_MISSING: Final = object()


def _fail(path: str, message: str) -> NoReturn:
    raise ReportDecodeError(f"{path or '$'}: {message}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


# Paths are only built for a message: decoding a valid report builds none.
def _value(node: Mapping[str, object], long: str, path: str) -> object:
    """``node``'s value under ``long`` or its short name; ``_MISSING`` if neither."""
    short = LONG_TO_SHORT[long]
    if long in node:
        if short in node:
            _fail(path, f"both {long!r} and {short!r} are present")
        return node[long]
    return node.get(short, _MISSING)


def _where(node: Mapping[str, object], long: str, path: str) -> str:
    """The path of ``node``'s child ``long``, spelt as in the document."""
    return _join(path, long if long in node else LONG_TO_SHORT[long])


def _object(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        _fail(path, f"expected an object, got {_kind(value)}")
    return value


def _list(value: object, path: str) -> Union[list[object], tuple[object, ...]]:
    if not isinstance(value, (list, tuple)):
        _fail(path, f"expected an array, got {_kind(value)}")
    return value


def _int(value: object, path: str) -> int:
    if type(value) is not int:  # bool is a subclass of int, not an integer here
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
    value = _value(node, long, path)
    if value is _MISSING:
        return None
    if type(value) is int:  # the fast path: no path is built
        return value
    return _int(value, _where(node, long, path))


def _optional_str(node: Mapping[str, object], long: str, path: str) -> Optional[str]:
    value = _value(node, long, path)
    if value is _MISSING:
        return None
    if isinstance(value, str):
        return value
    return _str(value, _where(node, long, path))


def _entries(
    node: Mapping[str, object], long: str, path: str
) -> Optional[tuple[str, list[Mapping[str, object]]]]:
    """The path of the array under ``long`` and its objects; None when absent."""
    value = _value(node, long, path)
    if value is _MISSING:
        return None
    where = _where(node, long, path)
    items = _list(value, where)
    if not all(isinstance(item, Mapping) for item in items):
        i, item = next((i, item) for i, item in enumerate(items) if not isinstance(item, Mapping))
        _object(item, f"{where}[{i}]")
    return where, items  # type: ignore[return-value]  # all of them are mappings


def _listening_port(entry: Mapping[str, object], path: str) -> ListeningPort:
    return ListeningPort(
        _optional_int(entry, "port", path), _optional_str(entry, "interface", path)
    )


def _port_list(value: object, path: str) -> PortList:
    group = _object(value, path)
    found = _entries(group, "ports", path)
    ports = None
    if found is not None:
        where, entries = found
        ports = tuple(_listening_port(entry, f"{where}[{i}]") for i, entry in enumerate(entries))
    return PortList(ports, _optional_int(group, "total", path))


def _connection(entry: Mapping[str, object], path: str) -> Connection:
    value = _value(entry, "remote_addr", path)
    if type(value) is not str:
        if value is _MISSING:
            _fail(path, "missing 'remote_addr'")
        _str(value, _where(entry, "remote_addr", path))
    try:
        remote_ip, remote_port = split_remote_addr(value, check_address=False)  # type: ignore[arg-type]
    except ValueError as exc:
        expected = f"expected 'a.b.c.d:port' or '[ipv6]:port', got {value!r}"
        _fail(_where(entry, "remote_addr", path), f"{expected} ({exc})")
    local_port = _optional_int(entry, "local_port", path)
    local_interface = _optional_str(entry, "local_interface", path)
    return Connection(remote_ip, remote_port, local_port, local_interface)


def _connection_list(value: object, path: str) -> Optional[ConnectionList]:
    group_value = _object(value, path)
    established = _value(group_value, "established_connections", path)
    if established is _MISSING:
        return None
    where = _where(group_value, "established_connections", path)
    group = _object(established, where)
    found = _entries(group, "connections", where)
    connections = None
    if found is not None:
        list_path, entries = found
        connections = tuple(
            _connection(entry, f"{list_path}[{i}]") for i, entry in enumerate(entries)
        )
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
    """A metrics group (``_MISSING`` when absent) and its path."""
    if metrics is None:
        return _MISSING, path
    value = _value(metrics, long, path)
    return value, "" if value is _MISSING else _where(metrics, long, path)


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
    header_value = _value(document, "header", "")
    if header_value is _MISSING:
        _fail("", "missing 'header'")
    header_path = _where(document, "header", "")
    header = _object(header_value, header_path)
    report_id = _value(header, "report_id", header_path)
    version = _value(header, "version", header_path)
    if report_id is _MISSING or version is _MISSING:
        _fail(header_path, "expected both 'report_id' and 'version'")

    metrics_value = _value(document, "metrics", "")
    metrics = None
    if metrics_value is not _MISSING and metrics_value is not None:
        metrics = _object(metrics_value, _where(document, "metrics", ""))
    metrics_path = _where(document, "metrics", "")
    tcp, tcp_path = _group(metrics, "listening_tcp_ports", metrics_path)
    udp, udp_path = _group(metrics, "listening_udp_ports", metrics_path)
    stats, stats_path = _group(metrics, "network_stats", metrics_path)
    connections, connections_path = _group(metrics, "tcp_connections", metrics_path)

    custom_value = _value(document, "custom_metrics", "")
    custom: tuple[CustomMetric, ...] = ()
    if custom_value is not _MISSING:
        custom_path = _where(document, "custom_metrics", "")
        custom = tuple(
            _custom_metric(name, value, custom_path)
            for name, value in _object(custom_value, custom_path).items()
        )

    return Report(
        report_id=_int(report_id, _where(header, "report_id", header_path)),
        version=_str(version, _where(header, "version", header_path)),
        listening_tcp_ports=None if tcp is _MISSING else _port_list(tcp, tcp_path),
        listening_udp_ports=None if udp is _MISSING else _port_list(udp, udp_path),
        tcp_connections=(
            None if connections is _MISSING else _connection_list(connections, connections_path)
        ),
        network_stats=None if stats is _MISSING else _network_stats(stats, stats_path),
        custom_metrics=custom,
    )


def read_report_id(document: object) -> Optional[int]:
    """The report id of any decoded document, valid or not: for a reply's ``reportId``.

    ``header.report_id`` (or ``hed.rid``) when it is an integer, else None; never raises.

    >>> read_report_id({"hed": {"rid": 7}, "met": "nonsense"}), read_report_id([1])
    (7, None)
    >>> read_report_id({"header": {"report_id": True}})
    """
    if not isinstance(document, Mapping):
        return None
    header = next((document[key] for key in ("header", "hed") if key in document), None)
    if not isinstance(header, Mapping):
        return None
    value = next((header[key] for key in ("report_id", "rid") if key in header), None)
    return value if type(value) is int else None
