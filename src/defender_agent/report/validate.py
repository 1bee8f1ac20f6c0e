"""A strict validator of Device Defender metrics report documents.

It applies the emulator/validator policy of protocol.md §7 to the report of §2:
the size limit first (§3, §7.2); decoding into a UTF-8 JSON object or a CBOR map
with text keys (§2.1, §7.3); the root keys, the header and the rule that a report
has metrics or custom metrics (§2.2, §2.3, §7.4, §7.5); the four standard metric
groups and their documented children (§2.4, §7.6); and custom metrics (§2.6,
§7.7). Values the service accepts but silently drops (§2.6) are WARNINGs; every
other problem is an ERROR.

The allowed children of each standard object are data (``_ROOT`` and the tables
above it), keyed by long name; short names come from
:mod:`defender_agent.report.names`. What §7 marks [policy] is a knob of
:class:`ValidationPolicy`. The module is pure: no I/O.

>>> validate_payload(b'{"hed": {"rid": 1, "v": "1.0"}, "met": {}}').name_style
<NameStyle.SHORT: 'short'>
>>> print(validate_document({"header": {"report_id": 0, "version": "1.0"}, "metrics": {}})[0])
header.report_id: expected an integer from 1 to 2**63-1, got 0
"""

from __future__ import annotations

import importlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Final, Optional, Union

from defender_agent.errors import ReportDecodeError
from defender_agent.model import Report
from defender_agent.report.decode import decode_report
from defender_agent.report.names import CUSTOM_VALUE_KEYS, LONG_TO_SHORT, SHORT_TO_LONG, NameStyle
from defender_agent.rules import (
    CUSTOM_METRIC_NAME_PATTERN,
    INT64_MAX,
    INT64_MIN,
    MAX_SIGNIFICANT_DIGITS,
    RESERVED_NAME_PREFIX,
    STRING_VALUE_PATTERN,
    is_custom_metric_name,
    is_kept_string,
    parse_ip,
    significant_digits,
    split_remote_addr,
)

if TYPE_CHECKING:
    from dataclasses import dataclass as record
    from dataclasses import field

    #: See :func:`_cbor` (module attributes made on first use).
    CBOR_MODULE: Any
    DECODE_ERRORS: tuple[
        type[ValueError],
        type[TypeError],
        type[ArithmeticError],
        type[LookupError],
        type[Exception],
    ]
else:
    from defender_agent._record import field, record

__all__ = [
    "CBOR_MODULE",
    "DECODE_ERRORS",
    "DEFAULT_POLICY",
    "PayloadFormat",
    "Problem",
    "Severity",
    "ValidationPolicy",
    "ValidationResult",
    "decode_payload",
    "sniff_format",
    "validate_document",
    "validate_payload",
]

_SELF_DESCRIBED_CBOR: Final = b"\xd9\xd9\xf7"  # tag 55799, RFC 8949 §3.4.6
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_JSON_SPACE: Final = b" \t\r\n"
_SNIFFED: Final = 4096  # bytes looked at to tell text from binary


class Severity(str, Enum):
    """How serious a problem is."""

    ERROR = "error"  # the service rejects the report (or IoT Core drops it)
    WARNING = "warning"  # the service accepts the report but silently drops the value (§2.6)


class PayloadFormat(str, Enum):
    """The two report encodings (§2.1), spelled like the topic segment (§1.1)."""

    JSON = "json"
    CBOR = "cbor"


@record(frozen=True)
class Problem:
    """One finding in a report.

    Attributes:
        path: Where, with keys as the document spells them (``met.tc.ec.cs[3].rad``);
            ``$`` is the root.
        message: One line naming what was expected and what was found.
        severity: ERROR or WARNING.
    """

    path: str
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@record(frozen=True)
class ValidationPolicy:
    """The validator's choices where the service's behaviour is unknown (§7, §8)."""

    allow_mixed_names: bool = False  # §2.1 [UNK]: long and short standard keys in one report
    min_report_id: int = 1  # §2.3, §7.5 [policy]: the DOC says "a positive integer"
    max_payload_bytes: int = 131_072  # §3, §7.2: the IoT Core publish payload limit
    accept_null_metrics: bool = True  # §2.6: rustot's "met": null beside cmet is ACCEPTED
    accepted_versions: Optional[frozenset[str]] = None  # §7.5 [policy]: None = any "<int>.<int>"
    reject_unknown_keys: bool = True  # §7.4, §2.8 [policy]; False reports them as WARNINGs
    check_custom_metric_names: bool = True  # §7.7 [policy]: [a-zA-Z0-9:_-]{1,128}, not "aws:"


DEFAULT_POLICY: Final = ValidationPolicy()


@record(frozen=True)
class ValidationResult:
    """The outcome of :func:`validate_payload`.

    Attributes:
        document: The decoded document; None if the payload was not decoded.
        format: The format the payload was decoded (or tried) as; None if not tried.
        name_style: The spelling of the standard keys; None if mixed or undecidable.
        problems: Every problem found, in document order.
        report: The typed report (long names), decoded once when there is no ERROR;
            None otherwise.
    """

    document: Optional[object]
    format: Optional[PayloadFormat]
    name_style: Optional[NameStyle]
    problems: tuple[Problem, ...]
    report: Optional[Report] = None

    @property
    def ok(self) -> bool:
        """Whether there is no ERROR-severity problem."""
        return not self.errors

    @property
    def errors(self) -> tuple[Problem, ...]:
        """The ERROR-severity problems."""
        return tuple(p for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """The WARNING-severity problems."""
        return tuple(p for p in self.problems if p.severity is Severity.WARNING)


@record
class _Walk:
    """One validation: the policy, the report's dominant name style, the findings."""

    policy: ValidationPolicy
    style: Optional[NameStyle]  # None when the report has no standard key at all
    problems: list[Problem] = field(default_factory=list)

    def add(self, path: str, message: str, severity: Severity = Severity.ERROR) -> None:
        self.problems.append(Problem(path or "$", message, severity))

    def name(self, long: str) -> str:
        """A standard key spelled in the report's style (long when undecided)."""
        return LONG_TO_SHORT[long] if self.style is NameStyle.SHORT else long


_Check = Callable[[_Walk, object, str], None]


@record(frozen=True)
class _Obj:
    """A standard object: its allowed children by long name, and the required ones."""

    fields: Mapping[str, _Spec]
    required: frozenset[str] = frozenset()


@record(frozen=True)
class _ListOf:
    """An array whose elements follow ``item``; ``what`` names them in messages."""

    item: _Spec
    what: str


_Spec = Union[_Obj, _ListOf, _Check]


def _pure_decoder() -> Any:  # noqa: ANN401 - a module
    """cbor2 5's pure-Python decoder: ``cbor2._decoder`` (5.5+), ``cbor2.decoder`` (5.4).

    cbor2 5.4 is what greengrasssdk (Greengrass v1 Lambdas, Python 3.8) pins.
    """
    try:
        return importlib.import_module("cbor2._decoder")
    except ImportError:
        return importlib.import_module("cbor2.decoder")


class _Cbor:
    """What the validator takes from cbor2, set up on first use: JSON alone never needs cbor2.

    cbor2 6 (Python 3.10+) rejects duplicate map keys and hash-flooding keys itself and calls
    object_hook(mapping, immutable); cbor2 5 (the newest for Python 3.9) calls
    object_hook(decoder, mapping) and cannot detect duplicate keys: there the last one wins.

    Attributes:
        module: the cbor2 module that decodes payloads (``CBOR_MODULE``): its CBORDecoder,
            CBORDecodeError, CBORTag, CBORSimpleValue and undefined. cbor2 5's C decoder
            corrupts its heap when a long text string (over its 64 KiB read chunk) ends
            early, which a hostile payload under the size limit can do, so with cbor2 5 the
            pure-Python decoder (memory safe, ~10x slower) is used.
        brk: the "break" stop code as a decoded value (cbor2 5's pure-Python decoder), or
            a sentinel.
        errors: what decoding a payload may raise besides RecursionError
            (``DECODE_ERRORS``): cbor2's C decoder wraps the errors of its tag decoders (a
            bad date, decimal, regexp, ...) in CBORDecodeError; the pure-Python one lets
            them through as they are.
        options: the CBORDecoder's keyword arguments.
        kinds: the name of each CBOR type, for messages.
    """

    def __init__(self) -> None:
        import cbor2  # noqa: PLC0415 - see the class docstring

        try:
            cbor2.CBORDecoder(io.BytesIO(b""), allow_duplicate_keys=False)
            cbor6 = True
        except TypeError:
            cbor6 = False
        self.module: Any = cbor2 if cbor6 else _pure_decoder()
        self.brk: object = getattr(self.module, "break_marker", object())
        self.errors: tuple[type[Exception], ...] = (
            ValueError,
            TypeError,
            ArithmeticError,
            LookupError,
            getattr(self.module, "CBORDecodeError", cbor2.CBORDecodeError),  # 5.6's _decoder
        )
        # read_size 1: cbor2 6 reads ahead otherwise, and stream.tell() must be where the
        # data item ends; cbor2 5's pure decoder reads exactly (5.4's refuses read_size)
        self.options: dict[str, object] = (
            {
                "read_size": 1,
                "object_hook": _text_keys,
                "allow_duplicate_keys": False,
                "strict_hashable_types": True,
            }
            if cbor6
            else {"object_hook": _text_keys_v5}
        )
        self.kinds: Mapping[type, str] = {
            list: "array",
            str: "text string",
            bytes: "byte string",
            int: "integer",
            float: "float",
            bool: "boolean",
            type(None): "null",
            type(self.module.undefined): "undefined",
            self.module.CBORTag: "tag",
            self.module.CBORSimpleValue: "simple value",
        }


_CBOR: list[_Cbor] = []


def _cbor() -> _Cbor:
    """cbor2's parts, imported and set up the first time they are needed."""
    if not _CBOR:
        _CBOR.append(_Cbor())
    return _CBOR[0]


def _decode_errors() -> tuple[type[Exception], ...]:
    return _cbor().errors


def __getattr__(name: str) -> object:
    """``CBOR_MODULE`` and ``DECODE_ERRORS`` (see :class:`_Cbor`), made on first use."""
    if name == "CBOR_MODULE":
        return _cbor().module
    if name == "DECODE_ERRORS":
        return _cbor().errors
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _describe(value: object) -> str:
    """A short one-line description of a decoded value, for messages."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # null, true, false
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 256 else f"a {value.bit_length()}-bit integer"
    if isinstance(value, (float, str)):
        return repr(value if not isinstance(value, str) or len(value) <= 60 else value[:60] + "…")
    if isinstance(value, list):
        return f"an array of {len(value)} element{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    cbor = _cbor().module
    if isinstance(value, cbor.CBORTag):
        return f"CBOR tag {value.tag}"
    if isinstance(value, cbor.CBORSimpleValue):
        return f"CBOR simple value {value.value}"
    kinds = {bytes: "a byte string", type(cbor.undefined): "CBOR undefined"}
    return kinds.get(type(value), f"a CBOR {type(value).__name__} value")


def _join(path: str, key: object) -> str:
    """The path of ``key`` inside ``path``; odd keys are quoted: ``cmet["a b"]``."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_:-]+", key):
        return f"{path}.{key}" if path else key
    quoted = json.dumps(key, ensure_ascii=False) if isinstance(key, str) else repr(key)
    return f"{path}[{quoted}]"


def _leaf(expected: str, test: Callable[[object], bool]) -> _Check:
    """A check that reports ``expected ..., got ...`` when ``test`` fails."""

    def check(walk: _Walk, value: object, path: str) -> None:
        if not test(value):
            walk.add(path, f"expected {expected}, got {_describe(value)}")

    return check


def _is_int(value: object, low: int, high: int) -> bool:
    # bool is an int in Python but not in JSON or CBOR; floats are never integers here
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _integer(low: int, high: int = INT64_MAX) -> _Check:
    top = "2**63-1" if high == INT64_MAX else str(high)
    return _leaf(f"an integer from {low} to {top}", lambda v: _is_int(v, low, high))


def _report_id(walk: _Walk, value: object, path: str) -> None:
    _integer(walk.policy.min_report_id)(walk, value, path)


def _version(walk: _Walk, value: object, path: str) -> None:
    accepted = walk.policy.accepted_versions
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]+\.[0-9]+", value):
        walk.add(path, f"expected a 'Major.Minor' version such as '1.0', got {_describe(value)}")
    elif accepted is not None and value not in accepted:
        walk.add(path, f"expected one of the versions {', '.join(sorted(accepted))}, got {value!r}")


def _is_ip(value: object) -> bool:
    """Whether ``value`` is a bare IPv4 or IPv6 address (no port, prefix or zone id)."""
    try:
        return isinstance(value, str) and parse_ip(value) is not None
    except ValueError:
        return False


def _remote_addr(walk: _Walk, value: object, path: str) -> None:
    why = "not a string"
    if isinstance(value, str):
        try:
            split_remote_addr(value)
        except ValueError as exc:
            why = str(exc)
        else:
            return
    expected = "expected 'a.b.c.d:port' or '[ipv6]:port' with a port from 0 to 65535"
    walk.add(path, f"{expected}, got {_describe(value)} ({why})")


def _number(walk: _Walk, value: object, path: str) -> None:
    if not (
        (isinstance(value, float) and math.isfinite(value)) or _is_int(value, INT64_MIN, INT64_MAX)
    ):
        walk.add(path, f"expected a finite number (integers within ±2**63), got {_describe(value)}")
        return
    assert isinstance(value, (int, float))  # narrowing: the test above passed
    if (digits := significant_digits(value)) > MAX_SIGNIFICANT_DIGITS:
        dropped = (
            f"Device Defender keeps at most {MAX_SIGNIFICANT_DIGITS} and drops the value "
            "(protocol §2.6)"
        )
        walk.add(path, f"{value!r} has {digits} significant digits; {dropped}", Severity.WARNING)


def _string_value(walk: _Walk, value: object, path: str) -> None:
    if not isinstance(value, str):
        walk.add(path, f"expected a string, got {_describe(value)}")
    elif not is_kept_string(value):
        what = (
            f"{value!r} has characters outside {STRING_VALUE_PATTERN}" if value else "empty string"
        )
        walk.add(path, f"{what}; Device Defender drops it (protocol §2.6)", Severity.WARNING)


_VALUE_SPECS: Final[Mapping[str, _Spec]] = {  # the one key inside a custom value (§2.6)
    "number": _number,
    "number_list": _ListOf(_number, "numbers"),
    "string_list": _ListOf(_string_value, "strings"),
    "ip_list": _ListOf(
        _leaf("an IPv4 or IPv6 address without port, prefix or zone", _is_ip),
        "IP address strings",
    ),
}
assert frozenset(_VALUE_SPECS) == CUSTOM_VALUE_KEYS, "one spec per custom value key"
_VALUE_KEYS_TEXT: Final = ", ".join(_VALUE_SPECS)


def _custom_value(walk: _Walk, entry: object, path: str) -> None:
    """One custom metric's value, ``[{"<type key>": <value>}]`` (§2.6, §7.7)."""
    if not isinstance(entry, list) or len(entry) != 1:
        walk.add(path, f"expected an array of exactly one object, got {_describe(entry)}")
        return
    item, where = entry[0], f"{path}[0]"
    if not isinstance(item, dict) or not item:
        walk.add(where, f"expected an object with one of {_VALUE_KEYS_TEXT}, got {_describe(item)}")
        return
    if len(known := [key for key in item if key in _VALUE_SPECS]) > 1:
        walk.add(where, f"expected exactly one of {_VALUE_KEYS_TEXT}, got {', '.join(known)}")
    for key, child in item.items():
        if key in _VALUE_SPECS:
            _check(walk, _VALUE_SPECS[key], child, _join(where, key))
        else:
            walk.add(_join(where, key), f"unknown key {key!r}; allowed: {_VALUE_KEYS_TEXT}")


def _custom_metrics(walk: _Walk, value: object, path: str) -> None:
    """The custom metrics block: metric name -> value (§2.6, §7.7)."""
    if not isinstance(value, dict):
        walk.add(path, f"expected an object of custom metrics, got {_describe(value)}")
        return
    for name, entry in value.items():
        where = _join(path, name)
        if not isinstance(name, str) or (
            walk.policy.check_custom_metric_names and not is_custom_metric_name(name)
        ):
            expected = (
                f"a name matching {CUSTOM_METRIC_NAME_PATTERN}, "
                f"not starting with {RESERVED_NAME_PREFIX!r}"
            )
            walk.add(where, f"expected {expected}, got {_describe(name)}")
        _custom_value(walk, entry, where)


# The standard document (§2.2-§2.4), by long name.
_COUNT: Final = _integer(0)
_INTERFACE: Final = _leaf("a non-empty interface name", lambda v: isinstance(v, str) and v != "")
_PORTS: Final = _ListOf(_Obj({"port": _integer(1, 65535), "interface": _INTERFACE}), "objects")
_CONNECTION: Final = _Obj(
    {"remote_addr": _remote_addr, "local_port": _integer(0, 65535), "local_interface": _INTERFACE},
    frozenset({"remote_addr"}),
)
_CONNECTIONS: Final = _Obj({"connections": _ListOf(_CONNECTION, "objects"), "total": _COUNT})
_STATS: Final = dict.fromkeys(("bytes_in", "bytes_out", "packets_in", "packets_out"), _COUNT)
_METRICS: Final = _Obj(
    {
        "listening_tcp_ports": _Obj({"ports": _PORTS, "total": _COUNT}),
        "listening_udp_ports": _Obj({"ports": _PORTS, "total": _COUNT}),
        "network_stats": _Obj(_STATS),
        "tcp_connections": _Obj({"established_connections": _CONNECTIONS}),
    }
)
_HEADER: Final = _Obj(
    {"report_id": _report_id, "version": _version}, frozenset(("report_id", "version"))
)
_ROOT: Final = _Obj(
    {"header": _HEADER, "metrics": _METRICS, "custom_metrics": _custom_metrics},
    frozenset(("header",)),
)


def _long_name(spec: _Obj, key: object) -> Optional[str]:
    """The long name of ``key`` if it is an allowed child of ``spec`` (case-sensitive)."""
    long = key if key in spec.fields else SHORT_TO_LONG.get(key) if isinstance(key, str) else None
    return long if isinstance(long, str) and long in spec.fields else None


def _check(walk: _Walk, spec: _Spec, value: object, path: str) -> None:
    # The recursion follows the schema, so its depth is bounded even for cyclic CBOR.
    if isinstance(spec, _Obj):
        _check_object(walk, spec, value, path)
    elif not isinstance(spec, _ListOf):
        spec(walk, value, path)
    elif not isinstance(value, list):
        walk.add(path, f"expected an array of {spec.what}, got {_describe(value)}")
    else:
        for index, item in enumerate(value):
            _check(walk, spec.item, item, f"{path}[{index}]")


def _check_object(walk: _Walk, spec: _Obj, value: object, path: str) -> None:
    if not isinstance(value, dict):
        walk.add(path, f"expected an object, got {_describe(value)}")
        return
    seen: dict[str, str] = {}  # long name -> the key as written
    for key, child in value.items():
        where, long = _join(path, key), _long_name(spec, key)
        if long is None:
            allowed = ", ".join(walk.name(name) for name in spec.fields)
            severity = Severity.ERROR if walk.policy.reject_unknown_keys else Severity.WARNING
            walk.add(where, f"unknown key {key!r}; allowed: {allowed}", severity)
            continue
        if long in seen:
            walk.add(where, f"{key!r} repeats {seen[long]!r} in the other spelling")
            continue
        seen[long] = key
        style = NameStyle.LONG if key == long else NameStyle.SHORT
        if walk.style and style is not walk.style and not walk.policy.allow_mixed_names:
            mixed = f"{style.value} key {key!r} in a report that uses {walk.style.value} names"
            walk.add(where, f"{mixed}; expected {walk.name(long)!r}")
        if not (child is None and long == "metrics" and walk.policy.accept_null_metrics):
            _check(walk, spec.fields[long], child, where)
    for long in spec.fields:
        if long in spec.required and long not in seen:
            walk.add(path, f"missing required key {walk.name(long)!r}")


def _collect_styles(spec: _Spec, value: object, styles: list[NameStyle]) -> None:
    """Append the spelling of every standard key in ``value``, in document order."""
    if isinstance(spec, _ListOf) and isinstance(value, list):
        for item in value:
            _collect_styles(spec.item, item, styles)
    elif isinstance(spec, _Obj) and isinstance(value, dict):
        for key, child in value.items():
            if (long := _long_name(spec, key)) is not None:
                styles.append(NameStyle.LONG if key == long else NameStyle.SHORT)
                _collect_styles(spec.fields[long], child, styles)


def _validate(doc: object, policy: ValidationPolicy) -> tuple[list[Problem], Optional[NameStyle]]:
    """The problems, and the name style (None if mixed or there is no standard key)."""
    styles: list[NameStyle] = []
    _collect_styles(_ROOT, doc, styles)
    longs, shorts = styles.count(NameStyle.LONG), styles.count(NameStyle.SHORT)
    if longs == shorts:  # a tie, or no key at all: the first key decides
        dominant = styles[0] if styles else None
    else:
        dominant = NameStyle.LONG if longs > shorts else NameStyle.SHORT
    walk = _Walk(policy, dominant)
    if not isinstance(doc, dict):
        walk.add("", f"expected an object at the root, got {_describe(doc)}")
        return walk.problems, None
    _check(walk, _ROOT, doc, "")
    present = {_long_name(_ROOT, key) for key, child in doc.items() if child is not None}
    if not present & {"metrics", "custom_metrics"}:
        either = f"{walk.name('metrics')!r} or {walk.name('custom_metrics')!r}"
        walk.add("", f"expected at least one of {either}")
    return walk.problems, dominant if not (longs and shorts) else None


def validate_document(doc: object, policy: ValidationPolicy = DEFAULT_POLICY) -> list[Problem]:
    """Check a decoded report document against protocol.md §2 and §7.

    Args:
        doc: The decoded JSON object or CBOR map.
        policy: The choices where the protocol leaves the behaviour open.

    Returns:
        Every problem found, in document order; empty when the report is clean.
    """
    return _validate(doc, policy)[0]


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    if len(result := dict(pairs)) != len(pairs):
        twice = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]
        raise ValueError(f"duplicate key {twice[0]!r}")
    return result


def _no_constant(token: str) -> object:
    raise ValueError(f"{token} is not allowed (JSON has no NaN or Infinity)")


def _text_keys(mapping: Mapping[object, object], immutable: bool) -> object:
    if any(not isinstance(key, str) for key in mapping):
        bad = next(key for key in mapping if not isinstance(key, str))
        raise ValueError(f"map key {_describe(bad)} is not a text string")
    return mapping


def _text_keys_v5(_decoder: object, mapping: Mapping[object, object]) -> object:
    return _text_keys(mapping, False)


class _NotJsonOrCborError(ReportDecodeError):
    """A payload whose format was detected is text, but not JSON."""


def _decode(data: bytes, fmt: PayloadFormat) -> object:
    """Decode one JSON value or one CBOR data item; raise ReportDecodeError."""
    try:
        if fmt is PayloadFormat.JSON:
            if data.startswith(_UTF8_BOM):
                raise ReportDecodeError(
                    "payload starts with a UTF-8 byte order mark (BOM): "
                    "JSON sent to Device Defender must not have one"
                )
            text = data.decode("utf-8")
            if not text.strip(" \t\r\n"):
                raise ReportDecodeError("payload is only whitespace")
            return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        if data.startswith(_SELF_DESCRIBED_CBOR):  # cbor2 would decode the rest as immutable
            data = data[len(_SELF_DESCRIBED_CBOR) :]
        stream = io.BytesIO(data)
        cbor = _cbor()
        decoder = cbor.module.CBORDecoder(stream, **cbor.options)
        doc: object = decoder.decode()
        if doc is cbor.brk:  # cbor2 5's pure-Python decoder returns a lone "break" (0xff)
            raise ReportDecodeError("invalid CBOR: a break code (0xff) outside a container")
    except UnicodeDecodeError as exc:
        raise ReportDecodeError(
            f"payload is not UTF-8: invalid byte at offset {exc.start}"
        ) from exc
    except RecursionError as exc:
        raise ReportDecodeError(f"invalid {fmt.name}: nested too deeply") from exc
    except _decode_errors() as exc:  # incl. JSONDecodeError and the hooks
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise ReportDecodeError(" ".join(f"invalid {fmt.name}: {exc}{cause}".split())) from exc
    if stream.tell() != len(data):
        extra = len(data) - stream.tell()
        raise ReportDecodeError(f"invalid CBOR: {extra} trailing byte(s) after the data item")
    return doc


def _is_text(head: bytes) -> bool:
    """Whether ``head`` (the start of a payload) is UTF-8 text: printable, tabs and newlines."""
    head = head[:_SNIFFED]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # an error in the last character may be the cut
        if exc.end != len(head) or exc.reason != "unexpected end of data":
            return False
        text = head[: exc.start].decode("utf-8")
    return text != "" and all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _json_start(head: bytes) -> bool:
    """Whether ``head`` starts like a JSON document: a BOM, or ``{``/``[`` after whitespace."""
    return head.startswith(_UTF8_BOM) or head.lstrip(_JSON_SPACE)[:1] in (b"{", b"[")


def sniff_format(head: bytes) -> PayloadFormat:
    r"""The format a payload (or the start of a file of reports) is in.

    JSON if it starts, after whitespace, with ``{`` or ``[``, or with a UTF-8 byte order
    mark, or is other text (whitespace, a JSON scalar, or text that is not JSON at all,
    which :func:`decode_payload` then calls "not JSON or CBOR"). Anything else is CBOR:
    a CBOR map starts with a byte from 0xa0 to 0xbf (or tag 55799), never UTF-8 text,
    and a CBOR item that starts with ``{`` (0x7b) or ``[`` (0x5b) is a string, never a report.

    >>> sniff_format(b'\xef\xbb\xbf {"hed": {}}').value, sniff_format(b"  []").value
    ('json', 'json')
    >>> sniff_format(b"hello world").value, sniff_format(bytes.fromhex("a1 63 68 65 64 a0")).value
    ('json', 'cbor')
    """
    if _json_start(head) or (head and not head.strip(_JSON_SPACE)) or _is_text(head):
        return PayloadFormat.JSON
    return PayloadFormat.CBOR


_JSON_KINDS: Final[Mapping[type, str]] = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _not_a_report(doc: object, fmt: PayloadFormat) -> str:
    """The message for a payload whose top level is not an object / map.

    >>> _not_a_report([], PayloadFormat.JSON)
    'a JSON array, not a report (a report is a JSON object)'
    """
    kinds = _JSON_KINDS if fmt is PayloadFormat.JSON else _cbor().kinds
    kind = kinds.get(type(doc), type(doc).__name__)
    what = "a JSON object" if fmt is PayloadFormat.JSON else "a CBOR map"
    return f"a {fmt.name} {kind}, not a report (a report is {what})"


def decode_payload(
    data: bytes, fmt: Optional[PayloadFormat] = None
) -> tuple[dict[str, object], PayloadFormat]:
    """Decode a report payload into a document (§2.1, §7.3).

    Args:
        data: The MQTT payload.
        fmt: The format the topic names; None detects it (:func:`sniff_format`).

    Returns:
        The decoded document (a dict) and the format it was decoded as.

    Raises:
        ReportDecodeError: The payload is empty, not UTF-8, invalid JSON (NaN and
            Infinity tokens, duplicate keys and a byte order mark included), invalid CBOR
            (trailing bytes, duplicate and non-text map keys included), nested too deeply,
            text that is neither JSON nor CBOR (when detecting), or its top level is not
            an object/map.
    """
    detected = fmt is None
    fmt = fmt or sniff_format(data)
    if not data:
        raise ReportDecodeError("payload is empty")
    try:
        doc = _decode(data, fmt)
    except ReportDecodeError as exc:
        if detected and fmt is PayloadFormat.JSON and not _json_start(data) and data.strip():
            shown = data[:40].decode("utf-8", "replace") + ("…" if len(data) > 40 else "")
            raise _NotJsonOrCborError(f"not JSON or CBOR: text {shown!r}") from exc
        raise
    if not isinstance(doc, dict):
        raise ReportDecodeError(_not_a_report(doc, fmt))
    return doc, fmt


def validate_payload(
    data: bytes, fmt: Optional[PayloadFormat] = None, policy: ValidationPolicy = DEFAULT_POLICY
) -> ValidationResult:
    """Check the size of a report payload, decode it and validate the document.

    Args:
        data: The MQTT payload.
        fmt: The format the topic names, or None to detect it (see :func:`decode_payload`).
        policy: The choices where the protocol leaves the behaviour open.

    Returns:
        The result. An oversized payload (§7.2) is not decoded; its one problem is the
        size. A payload that does not decode has one problem, at ``$``, and no document.
        A valid payload's result carries the typed :class:`~defender_agent.model.Report`.
    """
    limit = policy.max_payload_bytes
    if len(data) > limit:
        too_big = f"payload is {len(data)} bytes, over the {limit}-byte IoT Core limit"
        return ValidationResult(None, fmt, None, (Problem("$", too_big),))
    given, fmt = fmt, fmt or sniff_format(data)
    try:
        doc, fmt = decode_payload(data, given)
    except ReportDecodeError as exc:
        result_fmt = None if isinstance(exc, _NotJsonOrCborError) else fmt
        return ValidationResult(None, result_fmt, None, (Problem("$", str(exc)),))
    problems, style = _validate(doc, policy)
    report = None
    if not any(problem.severity is Severity.ERROR for problem in problems):
        try:
            report = decode_report(doc)
        except ReportDecodeError as exc:  # the validator let through a shape decode refuses
            problems.append(Problem("$", f"cannot decode the report: {exc}"))
    return ValidationResult(doc, fmt, style, tuple(problems), report)
