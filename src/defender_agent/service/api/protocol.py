"""AWS's restJson1 protocol for the IoT operations we serve, from botocore's model.

:data:`~.model.MODEL` (generated from botocore's ``service-2.json``) gives each operation
its HTTP method and ``requestUri``; each input member its place (``uri``,
``querystring``, ``header`` or the JSON body) and its wire name; and the shapes to check
a request against. This module turns a request's parts into the operation's input
(typed: query integers as ``int``, booleans as ``bool``, timestamps as epoch seconds) and
checks it as AWS does (required members, types, enums, lengths and ranges), naming the
member in the message; and it turns an output into the JSON body.

>>> r = ROUTES["ListSecurityProfiles"]
>>> r.method, r.path
('GET', '/security-profiles')
>>> ROUTES["ListThingsInThingGroup"].path
'/thing-groups/{thingGroupName}/things'
>>> parse_input("ListSecurityProfiles", {}, [("maxResults", "5")], {}, b"")
{'maxResults': 5}
>>> parse_input("ListSecurityProfiles", {}, [("maxResults", "0")], {}, b"")
Traceback (most recent call last):
...
defender_agent.service.api.errors.ApiError: maxResults: 0 is below the minimum 1
"""

from __future__ import annotations

import calendar
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Optional

from defender_agent.service.api.errors import ApiError
from defender_agent.service.api.model import MODEL

__all__ = ["ROUTES", "Route", "check", "dumps", "parse_input", "parse_timestamp"]

_SHAPES: Final[dict[str, Any]] = MODEL["shapes"]
_INVALID: Final = "InvalidRequestException"


@dataclass(frozen=True)
class Route:
    """One operation's HTTP binding."""

    name: str
    method: str
    path: str  # aiohttp's pattern: {name} segments (a greedy {name+} as {name:.*})
    status: int


def _route(name: str, op: Mapping[str, Any]) -> Route:
    uri = str(op["http"]["requestUri"]).split("?", 1)[0]
    path = re.sub(r"\{(\w+)\+\}", r"{\1:.*}", uri)
    return Route(name, str(op["http"]["method"]), path, int(op["http"].get("responseCode", 200)))


#: Every operation served, by name.
ROUTES: Final[dict[str, Route]] = {
    name: _route(name, op) for name, op in MODEL["operations"].items()
}


def _input_shape(operation: str) -> Optional[Mapping[str, Any]]:
    ref = MODEL["operations"][operation].get("input")
    return None if ref is None else _SHAPES[ref["shape"]]


def parse_timestamp(text: str) -> float:
    """A query-string timestamp (ISO 8601, as botocore sends it, or epoch seconds).

    >>> parse_timestamp("2026-12-07T01:02:03Z"), parse_timestamp("2026-12-07T01:02:03.5Z")
    (1796605323.0, 1796605323.5)
    >>> parse_timestamp("1796605323")
    1796605323.0
    >>> parse_timestamp("nan")
    Traceback (most recent call last):
    ...
    ValueError: 'nan' is not a finite time
    """
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"{text!r} is not a finite time")
        return seconds
    main, _, frac = text.rstrip("Z").partition(".")
    main = main.replace("+00:00", "")
    try:
        seconds = float(calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    return seconds + (float("0." + frac) if frac.isdigit() else 0.0)


def _scalar(shape: Mapping[str, Any], text: str, where: str) -> Any:  # noqa: ANN401
    kind = shape["type"]
    try:
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("double", "float"):
            return float(text)
        if kind == "boolean" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind == "boolean":
            raise ApiError(_INVALID, f"{where}: {text!r} is not true or false")
        if kind == "timestamp":
            return parse_timestamp(text)
    except ValueError:
        raise ApiError(_INVALID, f"{where}: {text!r} is not a valid {kind}") from None
    return text


def parse_input(
    operation: str,
    path_params: Mapping[str, str],
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    *,
    checked_elsewhere: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The operation's input from the request's parts, checked against the model.

    ``checked_elsewhere`` names top-level members the caller checks itself (``behaviors``:
    Detect's own rules, so that ``ValidateSecurityProfileBehaviors`` reports exactly what
    ``CreateSecurityProfile`` refuses).

    Raises:
        ApiError: ``InvalidRequestException`` naming the member (malformed JSON too).
    """
    shape = _input_shape(operation)
    if shape is None:
        return {}
    values: dict[str, Any] = {}
    query_items: dict[str, list[str]] = {}
    for key, value in query:
        query_items.setdefault(key, []).append(value)
    lower_headers = {k.lower(): v for k, v in headers.items()}
    body_members: dict[str, Mapping[str, Any]] = {}
    for name, ref in shape["members"].items():
        member = _SHAPES[ref["shape"]]
        location = ref.get("location")
        wire = ref.get("locationName", name)
        if location == "uri":
            if wire in path_params:
                values[name] = _scalar(member, path_params[wire], name)
        elif location == "querystring":
            got = query_items.get(wire)
            if got is None:
                continue
            if member["type"] == "list":
                item = _SHAPES[member["member"]["shape"]]
                values[name] = [_scalar(item, v, name) for v in got]
            else:
                values[name] = _scalar(member, got[-1], name)
        elif location == "header":
            if wire.lower() in lower_headers:
                values[name] = _scalar(member, lower_headers[wire.lower()], name)
        else:
            body_members[wire] = ref
    if body_members and body.strip():
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(_INVALID, f"the request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError(_INVALID, "the request body is nested too deeply") from None
        if not isinstance(doc, dict):
            raise ApiError(_INVALID, "the request body must be a JSON object")
        for wire, value in doc.items():
            if wire in body_members:
                values[wire] = value
    problems = check(shape, values, "", skip=checked_elsewhere)
    if problems:
        raise ApiError(_INVALID, "; ".join(problems[:10]))
    return values


def _type_problem(kind: str, value: object) -> bool:
    if kind == "string":
        return not isinstance(value, str)
    if kind in ("integer", "long"):
        return isinstance(value, bool) or not isinstance(value, int)
    if kind in ("double", "float", "timestamp"):
        return isinstance(value, bool) or not isinstance(value, (int, float))
    if kind == "boolean":
        return not isinstance(value, bool)
    if kind == "list":
        return not isinstance(value, list)
    if kind in ("map", "structure"):
        return not isinstance(value, dict)
    return False


def check(
    shape: Mapping[str, Any],
    value: Any,  # noqa: ANN401 - decoded JSON
    where: str,
    *,
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    """Every problem of ``value`` against ``shape`` (AWS's constraints), naming the member.

    >>> check(_SHAPES["Behavior"], {"name": "b", "criteria": {"durationSeconds": "x"}}, "b")
    ["b.criteria.durationSeconds: expected integer, not 'x'"]
    """
    kind = shape["type"]
    here = where or "request"
    if value is None:
        return []
    if _type_problem(kind, value):
        shown = json.dumps(value)[:60] if not isinstance(value, str) else repr(value[:60])
        return [f"{here}: expected {kind}, not {shown}"]
    problems: list[str] = []
    if kind in ("double", "float", "timestamp") and not math.isfinite(float(value)):
        problems.append(f"{here}: must be a finite number")
    if kind == "string":
        assert isinstance(value, str)
        if "enum" in shape and value not in shape["enum"]:
            problems.append(f"{here}: {value!r} is not one of {', '.join(shape['enum'])}")
        if "pattern" in shape and not _full_match(shape["pattern"], value):
            problems.append(f"{here}: {value!r} does not match {shape['pattern']}")
    if kind in ("string", "list", "map"):
        size = len(value)
        if "min" in shape and size < shape["min"]:
            problems.append(f"{here}: length {size} is below the minimum {shape['min']}")
        if "max" in shape and size > shape["max"]:
            problems.append(f"{here}: length {size} is above the maximum {shape['max']}")
    if kind in ("integer", "long"):
        if "min" in shape and value < shape["min"]:
            problems.append(f"{where}: {value} is below the minimum {shape['min']}")
        if "max" in shape and value > shape["max"]:
            problems.append(f"{where}: {value} is above the maximum {shape['max']}")
    if kind == "list":
        item = _SHAPES[shape["member"]["shape"]]
        for i, v in enumerate(value):
            problems += check(item, v, f"{where}[{i}]")
    elif kind == "map":
        key_shape = _SHAPES[shape["key"]["shape"]]
        value_shape = _SHAPES[shape["value"]["shape"]]
        for k, v in value.items():
            problems += check(key_shape, k, f"{where}.{k}")
            problems += check(value_shape, v, f"{where}.{k}")
    elif kind == "structure":
        assert isinstance(value, dict)
        members = shape["members"]
        dot = f"{where}." if where else ""
        for name in shape.get("required", ()):
            if value.get(name) is None:
                problems.append(f"{dot}{name}: is required")
        for name, v in value.items():
            if name not in members:
                if shape.get("union") or where:
                    problems.append(f"{dot}{name}: is not a member of {here}")
                continue
            if name not in skip:
                problems += check(_SHAPES[members[name]["shape"]], v, f"{dot}{name}")
        if shape.get("union") and sum(v is not None for v in value.values()) > 1:
            problems.append(f"{here}: set only one of {', '.join(members)}")
    return problems


_PATTERNS: dict[str, Optional[re.Pattern[str]]] = {}


def _full_match(pattern: str, text: str) -> bool:
    compiled = _PATTERNS.get(pattern, re.compile(r"(?!x)x"))
    if pattern not in _PATTERNS:
        try:
            compiled = re.compile(pattern)
        except re.error:  # a Java-only construct: not checked here
            compiled = None
        _PATTERNS[pattern] = compiled
    return compiled is None or compiled.fullmatch(text) is not None


def dumps(doc: Mapping[str, Any]) -> bytes:
    """An output's JSON body (times are already epoch seconds; None members left out)."""
    return json.dumps(
        {k: v for k, v in doc.items() if v is not None}, separators=(",", ":")
    ).encode()
