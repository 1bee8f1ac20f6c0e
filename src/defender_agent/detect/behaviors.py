"""Security-profile behaviors: AWS's validation rules, and the typed form the engine evaluates.

A behavior is AWS's ``Behavior`` structure (botocore's IoT model) as a JSON object::

    {"name": "ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443]}}}

:func:`validate_behaviors` checks a whole ``behaviors`` list the way Device Defender does and
returns one message per problem, each naming the field (``behaviors[2].criteria.value: ...``);
``CreateSecurityProfile``, ``UpdateSecurityProfile`` and ``ValidateSecurityProfileBehaviors``
share it, so the last answers exactly what the first two refuse. The rules:

* ``behaviors`` is a list of at most 100 objects; names are unique.
* ``name``: 1 to 128 characters of ``[a-zA-Z0-9:_-]``.
* ``metric``: one of the ten device-side metrics of :data:`METRIC_TYPES`, a custom metric
  that exists (``custom_metric_types``), or one of AWS's cloud-side metrics
  (:data:`CLOUD_METRIC_TYPES`, such as ``aws:num-messages-sent``). A cloud-side metric is
  measured by AWS's broker, never by a report: this service accepts and stores such a
  behavior (so one profile file fits AWS and the local service) but **never evaluates it**.
  ``metricDimension`` (``dimensionName``, ``operator`` ``IN``/``NOT_IN``) is allowed with
  cloud-side metrics only.
* ``criteria`` is optional: a behavior without it only retains the metric. With it, exactly
  one of three forms:

  - *static*: ``comparisonOperator`` and ``value``;
  - *statistical*: ``comparisonOperator`` and ``statisticalThreshold.statistic`` (``p0``,
    ``p0.1``, ``p0.01``, ``p1``, ``p10``, ``p50``, ``p90``, ``p99``, ``p99.9``, ``p99.99``,
    ``p100``); only for ``count`` and ``number`` metrics, and the traffic deltas and
    cloud-side counts need ``durationSeconds``;
  - *ML*: ``mlDetectionConfig.confidenceLevel`` (``LOW``, ``MEDIUM``, ``HIGH``) and no
    operator, value, threshold or duration; only for the seven ML metrics
    (:data:`ML_METRICS`, plus AWS's cloud-side ML metrics) and custom ``number`` metrics.

* The operator fits the metric's kind and ``value`` has exactly the one member that fits:

  - ``count`` metrics (the traffic deltas and the ``num-*`` counts): ``less-than``,
    ``less-than-equals``, ``greater-than``, ``greater-than-equals``; member ``count``;
  - custom ``number``: the same operators; member ``number``;
  - ``ports`` (listening ports): ``in-port-set``, ``not-in-port-set``; member ``ports``;
  - ``cidrs`` (destination addresses, custom ``ip-address-list``): ``in-cidr-set``,
    ``not-in-cidr-set``; member ``cidrs``;
  - custom ``number-list`` / ``string-list``: ``in-set``, ``not-in-set``; member
    ``numbers`` / ``strings``.

  ``count`` is a whole number 0..2**63-1; ``ports`` 0..65535; each CIDR 2 to 43 characters of
  ``[a-fA-F0-9:./]`` and a valid IPv4 or IPv6 network (host bits may be set: ``10.0.0.1/8``
  means ``10.0.0.0/8``; a bare address is a one-address network); ``number``/``numbers``
  finite numbers; ``strings`` strings. Lists may be empty.
* ``durationSeconds`` is 300, 600, 900, 1800 or 3600, and only with ``count`` and ``number``
  metrics (never with list metrics).
* ``consecutiveDatapointsToAlarm`` / ``consecutiveDatapointsToClear``: 1 to 10 (default 1).
* ``suppressAlerts``, ``exportMetric``: booleans.
* Unknown keys anywhere and values of the wrong JSON type are errors; nothing raises.

>>> validate_behaviors([{"name": "p", "metric": "aws:listening-tcp-ports",
...     "criteria": {"comparisonOperator": "in-port-set", "value": {"count": 2}}}], {})
["behaviors[0].criteria.value: aws:listening-tcp-ports takes 'ports', not 'count'"]

:func:`parse_behavior` turns a valid behavior into a :class:`Behavior` with typed values:

>>> b = parse_behavior({"name": "ports", "metric": "aws:listening-tcp-ports",
...     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443, 22]}}})
>>> b.kind, b.operator, sorted(b.value), b.to_alarm, b.criteria_type
('static', 'in-port-set', [22, 443], 1, 'STATIC')
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Optional, Union

from defender_agent.rules import CUSTOM_METRIC_NAME_PATTERN, plain_ip

__all__ = [
    "CLOUD_METRIC_TYPES",
    "COUNT_OPERATORS",
    "DELTA_METRICS",
    "DURATIONS",
    "MAX_BEHAVIORS",
    "METRIC_TYPES",
    "ML_METRICS",
    "STATISTICS",
    "Behavior",
    "BehaviorValue",
    "IPNetwork",
    "metric_kind",
    "parse_behavior",
    "parse_behaviors",
    "parse_cidr",
    "validate_behaviors",
]

#: Device-side metrics (fed by reports, docs/protocol.md §5.1) -> their kind.
METRIC_TYPES: Final[Mapping[str, str]] = {
    "aws:all-bytes-in": "count",
    "aws:all-bytes-out": "count",
    "aws:all-packets-in": "count",
    "aws:all-packets-out": "count",
    "aws:num-listening-tcp-ports": "count",
    "aws:num-listening-udp-ports": "count",
    "aws:num-established-tcp-connections": "count",
    "aws:listening-tcp-ports": "ports",
    "aws:listening-udp-ports": "ports",
    "aws:destination-ip-addresses": "cidrs",
}

#: The device-side metrics whose report values are amounts since the previous report.
DELTA_METRICS: Final = frozenset(
    {"aws:all-bytes-in", "aws:all-bytes-out", "aws:all-packets-in", "aws:all-packets-out"}
)

#: Cloud-side metrics (measured by AWS's broker): accepted and stored, never evaluated here.
CLOUD_METRIC_TYPES: Final[Mapping[str, str]] = {
    "aws:message-byte-size": "count",
    "aws:num-messages-sent": "count",
    "aws:num-messages-received": "count",
    "aws:num-authorization-failures": "count",
    "aws:source-ip-address": "cidrs",
    "aws:num-connection-attempts": "count",
    "aws:num-disconnects": "count",
    "aws:disconnect-duration": "count",
}

#: The device-side metrics ML Detect supports (besides custom ``number`` metrics).
ML_METRICS: Final = frozenset(name for name, kind in METRIC_TYPES.items() if kind == "count")
_CLOUD_ML: Final = frozenset(
    {
        "aws:message-byte-size",
        "aws:num-messages-sent",
        "aws:num-messages-received",
        "aws:num-authorization-failures",
        "aws:num-connection-attempts",
        "aws:num-disconnects",
    }
)

MAX_BEHAVIORS: Final = 100
DURATIONS: Final = frozenset({300, 600, 900, 1800, 3600})
STATISTICS: Final = (
    "p0",
    "p0.1",
    "p0.01",
    "p1",
    "p10",
    "p50",
    "p90",
    "p99",
    "p99.9",
    "p99.99",
    "p100",
)
COUNT_OPERATORS: Final = frozenset(
    {"less-than", "less-than-equals", "greater-than", "greater-than-equals"}
)
_CONFIDENCE: Final = ("LOW", "MEDIUM", "HIGH")
_ALL_OPERATORS: Final = (
    "less-than",
    "less-than-equals",
    "greater-than",
    "greater-than-equals",
    "in-cidr-set",
    "not-in-cidr-set",
    "in-port-set",
    "not-in-port-set",
    "in-set",
    "not-in-set",
)

# A metric's kind is the MetricValue member it takes; custom metric types map onto them.
_CUSTOM_KINDS: Final[Mapping[str, str]] = {
    "number": "number",
    "number-list": "numbers",
    "string-list": "strings",
    "ip-address-list": "cidrs",
}
_OPERATORS: Final[Mapping[str, frozenset[str]]] = {
    "count": COUNT_OPERATORS,
    "number": COUNT_OPERATORS,
    "ports": frozenset({"in-port-set", "not-in-port-set"}),
    "cidrs": frozenset({"in-cidr-set", "not-in-cidr-set"}),
    "numbers": frozenset({"in-set", "not-in-set"}),
    "strings": frozenset({"in-set", "not-in-set"}),
}
_MEMBERS: Final = ("count", "cidrs", "ports", "number", "numbers", "strings")
_BEHAVIOR_KEYS: Final = frozenset(
    {"name", "metric", "metricDimension", "criteria", "suppressAlerts", "exportMetric"}
)
_CRITERIA_KEYS: Final = frozenset(
    {
        "comparisonOperator",
        "value",
        "durationSeconds",
        "consecutiveDatapointsToAlarm",
        "consecutiveDatapointsToClear",
        "statisticalThreshold",
        "mlDetectionConfig",
    }
)
_NAME: Final = re.compile(CUSTOM_METRIC_NAME_PATTERN)  # behavior names: the same rule
_CIDR: Final = re.compile(r"[a-fA-F0-9:./]{2,43}")
_MAX_LONG: Final = 2**63 - 1

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
BehaviorValue = Union[
    int, float, frozenset[int], frozenset[float], frozenset[str], tuple[IPNetwork, ...]
]


def metric_kind(metric: str, custom_metric_types: Mapping[str, str]) -> Optional[str]:
    """The MetricValue member a metric takes; None when the metric is unknown.

    >>> metric_kind("aws:listening-udp-ports", {}), metric_kind("batt", {"batt": "number"})
    ('ports', 'number')
    >>> metric_kind("nope", {}) is None
    True
    """
    kind = METRIC_TYPES.get(metric) or CLOUD_METRIC_TYPES.get(metric)
    if kind is None and not metric.startswith("aws:"):
        kind = _CUSTOM_KINDS.get(custom_metric_types.get(metric, ""))
    return kind


# ------------------------------------------------------------------ validation
def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _shown(value: object) -> str:
    """A value for a message, cut short (it came from the network)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _int_in(value: object, low: int, high: int) -> bool:
    return _is_int(value) and low <= value <= high  # type: ignore[operator]


def parse_cidr(text: str) -> IPNetwork:
    """One ``cidrs`` entry as a network; an IPv4-mapped IPv6 network as its IPv4 network.

    Raises:
        ValueError: not 2..43 characters of ``[a-fA-F0-9:./]`` or not a network.

    >>> parse_cidr("10.0.0.1/8"), parse_cidr("::ffff:192.0.2.0/120"), parse_cidr("2001:db8::/32")
    (IPv4Network('10.0.0.0/8'), IPv4Network('192.0.2.0/24'), IPv6Network('2001:db8::/32'))
    """
    if not _CIDR.fullmatch(text):
        raise ValueError("must be 2 to 43 characters of [a-fA-F0-9:./]")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError("is not an IPv4 or IPv6 network") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = plain_ip(network.network_address)
        if isinstance(mapped, ipaddress.IPv4Address):
            return ipaddress.IPv4Network((int(mapped), network.prefixlen - 96))
    return network


class _Checker:
    """Collects the messages for one ``behaviors`` list."""

    def __init__(self, custom_metric_types: Mapping[str, str]) -> None:
        self.custom = custom_metric_types
        self.errors: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def unknown_keys(self, where: str, doc: Mapping[Any, Any], known: frozenset[str]) -> None:
        for key in doc:
            if key not in known:
                self.add(where, f"unknown field {_shown(key)}")

    def behavior(self, where: str, raw: object) -> Optional[str]:
        """Check one behavior; its name when it has a valid one."""
        if not isinstance(raw, Mapping):
            self.add(where, f"must be an object, not {_type_name(raw)}")
            return None
        self.unknown_keys(where, raw, _BEHAVIOR_KEYS)
        name = raw.get("name")
        if "name" not in raw:
            self.add(f"{where}.name", "is required")
        elif not isinstance(name, str):
            self.add(f"{where}.name", f"must be a string, not {_type_name(name)}")
            name = None
        elif not _NAME.fullmatch(name):
            self.add(f"{where}.name", f"{_shown(name)} must be 1 to 128 of [a-zA-Z0-9:_-]")
            name = None
        for flag in ("suppressAlerts", "exportMetric"):
            if flag in raw and not isinstance(raw[flag], bool):
                self.add(f"{where}.{flag}", f"must be a boolean, not {_type_name(raw[flag])}")
        metric = raw.get("metric")
        kind: Optional[str] = None
        if "metric" not in raw:
            self.add(f"{where}.metric", "is required")
        elif not isinstance(metric, str):
            self.add(f"{where}.metric", f"must be a string, not {_type_name(metric)}")
            metric = None
        else:
            kind = metric_kind(metric, self.custom)
            if kind is None:
                known = "an aws:* metric" if metric.startswith("aws:") else "a custom metric"
                self.add(f"{where}.metric", f"{_shown(metric)} is not {known} that exists")
        if "metricDimension" in raw:
            self.dimension(f"{where}.metricDimension", raw["metricDimension"], metric)
        if "criteria" in raw and kind is not None and isinstance(metric, str):
            self.criteria(f"{where}.criteria", raw["criteria"], metric, kind)
        elif "criteria" in raw and not isinstance(raw["criteria"], Mapping):
            self.add(f"{where}.criteria", f"must be an object, not {_type_name(raw['criteria'])}")
        return name if isinstance(name, str) else None

    def dimension(self, where: str, raw: object, metric: object) -> None:
        if not isinstance(raw, Mapping):
            self.add(where, f"must be an object, not {_type_name(raw)}")
            return
        self.unknown_keys(where, raw, frozenset({"dimensionName", "operator"}))
        if isinstance(metric, str) and metric not in CLOUD_METRIC_TYPES:
            self.add(where, f"is only for cloud-side metrics, not {_shown(metric)}")
        name = raw.get("dimensionName")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            self.add(f"{where}.dimensionName", "is required: 1 to 128 of [a-zA-Z0-9:_-]")
        if "operator" in raw and raw["operator"] not in ("IN", "NOT_IN"):
            self.add(f"{where}.operator", f"{_shown(raw['operator'])} is not IN or NOT_IN")

    def criteria(self, where: str, raw: object, metric: str, kind: str) -> None:
        if not isinstance(raw, Mapping):
            self.add(where, f"must be an object, not {_type_name(raw)}")
            return
        self.unknown_keys(where, raw, _CRITERIA_KEYS)
        for key in ("consecutiveDatapointsToAlarm", "consecutiveDatapointsToClear"):
            if key in raw and not _int_in(raw[key], 1, 10):
                self.add(f"{where}.{key}", f"{_shown(raw[key])} must be a whole number 1 to 10")
        has_value, has_stat = "value" in raw, "statisticalThreshold" in raw
        if "mlDetectionConfig" in raw:
            self.ml(where, raw, metric, kind)
            return
        if has_value and has_stat:
            self.add(where, "has both value and statisticalThreshold; give one")
        operator = raw.get("comparisonOperator")
        if "comparisonOperator" not in raw:
            self.add(
                f"{where}.comparisonOperator",
                "is required (with a value or a statisticalThreshold)",
            )
        elif operator not in _ALL_OPERATORS:
            self.add(f"{where}.comparisonOperator", f"{_shown(operator)} is not an operator")
        elif operator not in _OPERATORS[kind]:
            allowed = ", ".join(sorted(_OPERATORS[kind]))
            self.add(
                f"{where}.comparisonOperator",
                f"{operator} does not apply to {metric} ({kind}); use {allowed}",
            )
        if not has_value and not has_stat:
            self.add(where, "needs a value, a statisticalThreshold or an mlDetectionConfig")
        if has_value:
            self.value(f"{where}.value", raw["value"], metric, kind)
        if has_stat:
            self.statistic(f"{where}.statisticalThreshold", raw["statisticalThreshold"], kind)
            if "durationSeconds" not in raw and (
                metric in DELTA_METRICS or metric in CLOUD_METRIC_TYPES
            ):
                self.add(
                    f"{where}.durationSeconds",
                    f"is required for a statisticalThreshold on {metric}",
                )
        if "durationSeconds" in raw:
            self.duration(f"{where}.durationSeconds", raw["durationSeconds"], metric, kind)

    def duration(self, where: str, value: object, metric: str, kind: str) -> None:
        if kind not in ("count", "number"):
            self.add(where, f"is not allowed with {metric}, a list metric ({kind})")
        elif not _is_int(value) or value not in DURATIONS:
            self.add(where, f"{_shown(value)} must be 300, 600, 900, 1800 or 3600")

    def statistic(self, where: str, raw: object, kind: str) -> None:
        if not isinstance(raw, Mapping):
            self.add(where, f"must be an object, not {_type_name(raw)}")
            return
        self.unknown_keys(where, raw, frozenset({"statistic"}))
        if kind not in ("count", "number"):
            self.add(where, f"applies only to count and number metrics, not {kind}")
        statistic = raw.get("statistic")
        if statistic not in STATISTICS:
            self.add(
                f"{where}.statistic", f"{_shown(statistic)} is not one of {', '.join(STATISTICS)}"
            )

    def ml(self, where: str, raw: Mapping[Any, Any], metric: str, kind: str) -> None:
        config = raw["mlDetectionConfig"]
        at = f"{where}.mlDetectionConfig"
        if not isinstance(config, Mapping):
            self.add(at, f"must be an object, not {_type_name(config)}")
        else:
            self.unknown_keys(at, config, frozenset({"confidenceLevel"}))
            if config.get("confidenceLevel") not in _CONFIDENCE:
                level = _shown(config.get("confidenceLevel"))
                self.add(f"{at}.confidenceLevel", f"{level} is not LOW, MEDIUM or HIGH")
        if not (metric in ML_METRICS or metric in _CLOUD_ML or kind == "number"):
            self.add(at, f"ML Detect does not support {metric}")
        for key in ("comparisonOperator", "value", "statisticalThreshold", "durationSeconds"):
            if key in raw:
                self.add(f"{where}.{key}", "is not allowed with mlDetectionConfig")

    def value(self, where: str, raw: object, metric: str, kind: str) -> None:
        if not isinstance(raw, Mapping):
            self.add(where, f"must be an object, not {_type_name(raw)}")
            return
        members = list(raw)
        unknown = [m for m in members if m not in _MEMBERS]
        for member in unknown:
            self.add(where, f"unknown field {_shown(member)}")
        if not members:
            self.add(where, f"{metric} takes {kind!r}; the value is empty")
            return
        if unknown:
            return
        if len(members) > 1:
            self.add(where, f"has {len(members)} members; {metric} takes only {kind!r}")
            return
        member = members[0]
        if member != kind:
            self.add(where, f"{metric} takes {kind!r}, not {member!r}")
            return
        self.member(f"{where}.{kind}", kind, raw[kind])

    def member(self, where: str, kind: str, value: object) -> None:
        if kind == "count":
            if not _int_in(value, 0, _MAX_LONG):
                self.add(where, f"{_shown(value)} must be a whole number >= 0")
            return
        if kind == "number":
            if not _is_number(value):
                self.add(where, f"{_shown(value)} must be a finite number")
            return
        if not isinstance(value, list):
            self.add(where, f"must be a list, not {_type_name(value)}")
            return
        for i, item in enumerate(value):
            problem = _item_problem(kind, item)
            if problem is not None:
                self.add(f"{where}[{i}]", problem)


def _item_problem(kind: str, item: object) -> Optional[str]:
    if kind == "ports":
        return None if _int_in(item, 0, 65535) else f"{_shown(item)} must be a port 0 to 65535"
    if kind == "numbers":
        return None if _is_number(item) else f"{_shown(item)} must be a finite number"
    if not isinstance(item, str):
        return f"must be a string, not {_type_name(item)}"
    if kind == "cidrs":
        try:
            parse_cidr(item)
        except ValueError as exc:
            return f"{_shown(item)} {exc}"
    return None


def validate_behaviors(behaviors: object, custom_metric_types: Mapping[str, str]) -> list[str]:
    """Every problem of a ``behaviors`` list, one message each naming the field; [] if valid.

    Args:
        behaviors: The decoded JSON of the ``behaviors`` member (anything: never raises).
        custom_metric_types: The custom metrics that exist, name -> ``metricType``.

    >>> validate_behaviors([{"name": "a", "metric": "aws:all-bytes-out",
    ...     "criteria": {"comparisonOperator": "less-than", "value": {"count": 10},
    ...                  "durationSeconds": 300}}], {})
    []
    >>> validate_behaviors([{"name": "a b", "metric": "batt"}, {"name": "x"}], {})
    ["behaviors[0].name: 'a b' must be 1 to 128 of [a-zA-Z0-9:_-]", "behaviors[0].metric: 'batt' is not a custom metric that exists", 'behaviors[1].metric: is required']
    """  # noqa: E501 - a doctest output line
    if not isinstance(behaviors, list):
        return [f"behaviors: must be a list, not {_type_name(behaviors)}"]
    checker = _Checker(custom_metric_types)
    if len(behaviors) > MAX_BEHAVIORS:
        checker.add("behaviors", f"has {len(behaviors)} behaviors; at most {MAX_BEHAVIORS}")
    seen: dict[str, int] = {}
    for i, raw in enumerate(behaviors):
        name = checker.behavior(f"behaviors[{i}]", raw)
        if name is None:
            continue
        if name in seen:
            checker.add(f"behaviors[{i}].name", f"{name!r} is also behaviors[{seen[name]}]'s")
        else:
            seen[name] = i
    return checker.errors


# ------------------------------------------------------------------ the typed form
@dataclass(frozen=True)
class Behavior:
    """One valid behavior, typed for evaluation.

    Attributes:
        name: The behavior's name.
        metric: The metric name (``aws:...`` or a custom metric's).
        kind: ``static`` (operator and value), ``statistical`` (operator and percentile),
            ``ml`` (ML Detect) or ``none`` (no criteria: the metric is only retained).
        operator: ``comparisonOperator`` (None for ``ml`` and ``none``).
        value: The static value, typed: ``int`` for ``count``, ``float`` for ``number``,
            ``frozenset[int]`` of ports, ``tuple`` of networks for ``cidrs`` (IPv4-mapped
            networks as IPv4), ``frozenset[float]`` for ``numbers``, ``frozenset[str]`` for
            ``strings``; None unless ``static``.
        duration_s: ``durationSeconds`` or None.
        to_alarm: ``consecutiveDatapointsToAlarm`` (default 1).
        to_clear: ``consecutiveDatapointsToClear`` (default 1).
        statistic: ``statisticalThreshold.statistic`` (``p90``...) or None.
        confidence: ``mlDetectionConfig.confidenceLevel`` or None.
        suppress_alerts: ``suppressAlerts``.
        value_kind: The metric's MetricValue member (``count``, ``ports``, ``cidrs``,
            ``number``, ``numbers``, ``strings``).
        export_metric: ``exportMetric``.
    """

    name: str
    metric: str
    kind: str
    operator: Optional[str]
    value: Optional[BehaviorValue]
    duration_s: Optional[int]
    to_alarm: int
    to_clear: int
    statistic: Optional[str]
    confidence: Optional[str]
    suppress_alerts: bool
    value_kind: str = "count"
    export_metric: bool = False

    @property
    def criteria_type(self) -> str:
        """``STATIC``, ``STATISTICAL`` or ``MACHINE_LEARNING`` (``behaviorCriteriaType``).

        A behavior without criteria counts as ``STATIC``.
        """
        return {"statistical": "STATISTICAL", "ml": "MACHINE_LEARNING"}.get(self.kind, "STATIC")

    @property
    def cloud_side(self) -> bool:
        """A cloud-side metric: stored, never evaluated by this service."""
        return self.metric in CLOUD_METRIC_TYPES

    @property
    def delta(self) -> bool:
        """The metric's report values are amounts since the previous report."""
        return self.metric in DELTA_METRICS


def _typed_value(kind: str, raw: object) -> BehaviorValue:
    if kind == "count" and isinstance(raw, int):
        return int(raw)
    if kind == "number" and isinstance(raw, (int, float)):
        return float(raw)
    if not isinstance(raw, list):
        raise TypeError(f"{kind}: not a valid value")
    if kind == "ports":
        return frozenset(int(p) for p in raw)
    if kind == "numbers":
        return frozenset(float(n) for n in raw)
    if kind == "strings":
        return frozenset(str(s) for s in raw)
    if kind == "cidrs":
        return tuple(dict.fromkeys(parse_cidr(str(c)) for c in raw))
    raise ValueError(f"not a {kind}")


def parse_behavior(raw: Mapping[str, Any]) -> Behavior:
    """The typed form of one behavior that :func:`validate_behaviors` accepted.

    The metric's kind comes from the metric name, or for a custom metric from the value's
    member (a statistical or ML behavior on a custom metric is a ``number`` one).

    Raises:
        ValueError: ``raw`` is not valid (a guard, not a validator: validate first).

    >>> b = parse_behavior({"name": "out", "metric": "aws:all-bytes-out", "criteria": {
    ...     "comparisonOperator": "greater-than", "statisticalThreshold": {"statistic": "p90"},
    ...     "durationSeconds": 300, "consecutiveDatapointsToAlarm": 2}})
    >>> b.kind, b.statistic, b.duration_s, b.to_alarm, b.to_clear, b.criteria_type
    ('statistical', 'p90', 300, 2, 1, 'STATISTICAL')
    >>> parse_behavior({"name": "n", "metric": "batt"}).kind
    'none'
    """
    try:
        name, metric = str(raw["name"]), str(raw["metric"])
        criteria: Mapping[str, Any] = raw.get("criteria") or {}
        value_raw = criteria.get("value")
        value_kind = METRIC_TYPES.get(metric) or CLOUD_METRIC_TYPES.get(metric)
        if value_kind is None:
            value_kind = next(iter(value_raw)) if isinstance(value_raw, Mapping) else "number"
        if "mlDetectionConfig" in criteria:
            kind = "ml"
        elif "statisticalThreshold" in criteria:
            kind = "statistical"
        elif "value" in criteria:
            kind = "static"
        else:
            kind = "none"
        value = None
        if kind == "static":
            value = _typed_value(value_kind, dict(value_raw or {})[value_kind])
        duration = criteria.get("durationSeconds")
        stat = criteria.get("statisticalThreshold") or {}
        ml = criteria.get("mlDetectionConfig") or {}
        return Behavior(
            name=name,
            metric=metric,
            kind=kind,
            operator=criteria.get("comparisonOperator")
            if kind in ("static", "statistical")
            else None,
            value=value,
            duration_s=int(duration) if duration is not None else None,
            to_alarm=int(criteria.get("consecutiveDatapointsToAlarm", 1)),
            to_clear=int(criteria.get("consecutiveDatapointsToClear", 1)),
            statistic=stat.get("statistic"),
            confidence=ml.get("confidenceLevel"),
            suppress_alerts=bool(raw.get("suppressAlerts", False)),
            value_kind=value_kind,
            export_metric=bool(raw.get("exportMetric", False)),
        )
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration) as exc:
        raise ValueError(f"not a valid behavior: {exc}") from None


def parse_behaviors(raws: Sequence[Mapping[str, Any]]) -> tuple[Behavior, ...]:
    """:func:`parse_behavior` of each."""
    return tuple(parse_behavior(raw) for raw in raws)
