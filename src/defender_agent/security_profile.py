"""A starter Device Defender security profile for what the agent reports.

A behavior's ``criteria`` describe what is *normal* for the metric: a device
violates the behavior when a value does not meet them (docs/protocol.md §5.2,
§5.3). ``less-than-equals 10`` on a port count therefore alarms at 11 ports,
and ``in-set ["root"]`` on a user list alarms when anyone but root logs in.
(The public sample's ``CpuUsageIssue``, ``greater-than 75`` on ``cpu_usage``,
reads the other way round: it calls a busy CPU normal.)

The standard device-side metrics every report feeds (§5.1):

| behavior | metric | normal | over |
| --- | --- | --- | --- |
| ``listening-tcp-ports`` | ``aws:num-listening-tcp-ports`` | at most 10 | |
| ``listening-udp-ports`` | ``aws:num-listening-udp-ports`` | at most 10 | |
| ``established-tcp-connections`` | ``aws:num-established-tcp-connections`` | at most 100 | |
| ``bytes-out`` | ``aws:all-bytes-out`` | at most 10 MiB | 300 s |
| ``packets-out`` | ``aws:all-packets-out`` | at most 10 000 | 300 s |

and the other five are kept without a behavior (``additionalMetricsToRetainV2``),
so that ``aws iot list-metric-values`` shows them: ``aws:all-bytes-in``,
``aws:all-packets-in``, ``aws:listening-tcp-ports``, ``aws:listening-udp-ports``,
``aws:destination-ip-addresses``. The thresholds suit a small device that
talks to a few endpoints; a gateway raises them.

The custom metrics, one behavior each, named after the metric:

| metric | normal | alerts |
| --- | --- | --- |
| ``cpu_usage`` | ``less-than-equals`` ``{"number": 75}`` | yes |
| ``memory_usage``, ``disk_usage`` | ``less-than-equals`` ``{"number": 90}`` | yes |
| ``process_count`` | ``less-than-equals`` ``{"number": 500}`` | yes |
| ``uptime`` | ``less-than-equals`` ``{"number": 31536000}`` (rebooted within a year) | yes |
| ``logged_in_users`` | ``in-set`` ``{"strings": ["root"]}`` | yes |
| ``interface_addresses`` | ``in-cidr-set`` private and link-local ranges | yes |
| ``listening_processes`` | ``in-set`` ``{"strings": ["sshd"]}`` | placeholder |
| ``remote_ips`` | ``in-cidr-set`` private ranges | placeholder |
| ``load_average``, other number-list | ``in-set`` ``{"numbers": [0]}`` | placeholder |
| other number | ``less-than-equals`` ``{"number": 100}`` | placeholder |
| other string-list | ``in-set`` ``{"strings": ["example"]}`` | placeholder |
| other ip-address-list | ``in-cidr-set`` private ranges | placeholder |

A placeholder behavior has ``"suppressAlerts": true``: Device Defender keeps
the metric's data and records violations, but sends no alert until the values
are replaced by the fleet's own. Every behavior alarms and clears after one
datapoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Optional

from defender_agent.custom.builtins import BUILTINS
from defender_agent.model import CustomMetricType

__all__ = [
    "DEFAULT_PROFILE",
    "RETAINED_STANDARD_METRICS",
    "Metric",
    "behaviors",
    "custom_behaviors",
    "metrics_to_retain",
    "standard_behaviors",
]

#: The profile's name unless ``aws-setup --security-profile`` names another.
DEFAULT_PROFILE: Final = "defender-agent"

Metric = tuple[str, CustomMetricType]

_N = CustomMetricType.NUMBER
_NL = CustomMetricType.NUMBER_LIST
_SL = CustomMetricType.STRING_LIST
_IPL = CustomMetricType.IP_ADDRESS_LIST
_PRIVATE_V4: Final = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
_LOCAL: Final = (*_PRIVATE_V4, "fc00::/7", "fe80::/10")


@dataclass(frozen=True)
class _Criteria:
    """What is normal for one metric; ``placeholder`` ones suppress alerts."""

    operator: str
    value: Mapping[str, object]
    placeholder: bool = False
    duration_s: Optional[int] = None


# ------------------------------------------------------------------ the standard metrics
_STANDARD: Final[Sequence[tuple[str, str, _Criteria]]] = (
    (
        "listening-tcp-ports",
        "aws:num-listening-tcp-ports",
        _Criteria("less-than-equals", {"count": 10}),
    ),
    (
        "listening-udp-ports",
        "aws:num-listening-udp-ports",
        _Criteria("less-than-equals", {"count": 10}),
    ),
    (
        "established-tcp-connections",
        "aws:num-established-tcp-connections",
        _Criteria("less-than-equals", {"count": 100}),
    ),
    (
        "bytes-out",
        "aws:all-bytes-out",
        _Criteria("less-than-equals", {"count": 10 * 1024 * 1024}, duration_s=300),
    ),
    (
        "packets-out",
        "aws:all-packets-out",
        _Criteria("less-than-equals", {"count": 10_000}, duration_s=300),
    ),
)

#: Standard metrics the profile keeps without a behavior, for ``list-metric-values``.
RETAINED_STANDARD_METRICS: Final = (
    "aws:all-bytes-in",
    "aws:all-packets-in",
    "aws:listening-tcp-ports",
    "aws:listening-udp-ports",
    "aws:destination-ip-addresses",
)

# ------------------------------------------------------------------ the custom metrics
_STARTERS: Final[Mapping[str, _Criteria]] = {
    "cpu_usage": _Criteria("less-than-equals", {"number": 75}),
    "memory_usage": _Criteria("less-than-equals", {"number": 90}),
    "disk_usage": _Criteria("less-than-equals", {"number": 90}),
    "process_count": _Criteria("less-than-equals", {"number": 500}),
    "uptime": _Criteria("less-than-equals", {"number": 31_536_000}),
    "logged_in_users": _Criteria("in-set", {"strings": ["root"]}),
    "interface_addresses": _Criteria("in-cidr-set", {"cidrs": list(_LOCAL)}),
    "listening_processes": _Criteria("in-set", {"strings": ["sshd"]}, placeholder=True),
    "remote_ips": _Criteria("in-cidr-set", {"cidrs": list(_PRIVATE_V4)}, placeholder=True),
}
_GENERIC: Final[Mapping[CustomMetricType, _Criteria]] = {
    _N: _Criteria("less-than-equals", {"number": 100}, placeholder=True),
    _NL: _Criteria("in-set", {"numbers": [0]}, placeholder=True),
    _SL: _Criteria("in-set", {"strings": ["example"]}, placeholder=True),
    _IPL: _Criteria("in-cidr-set", {"cidrs": list(_PRIVATE_V4)}, placeholder=True),
}


def _behavior(name: str, metric: str, criteria: _Criteria) -> dict[str, Any]:
    body: dict[str, Any] = {
        "comparisonOperator": criteria.operator,
        "value": json.loads(json.dumps(criteria.value)),  # a fresh copy
    }
    if criteria.duration_s is not None:
        body["durationSeconds"] = criteria.duration_s
    body["consecutiveDatapointsToAlarm"] = 1
    body["consecutiveDatapointsToClear"] = 1
    behavior: dict[str, Any] = {"name": name, "metric": metric, "criteria": body}
    if criteria.placeholder:
        behavior["suppressAlerts"] = True
    return behavior


def standard_behaviors() -> list[dict[str, Any]]:
    """The behaviors for the standard device-side metrics (the module's first table).

    >>> [(b["metric"], b["criteria"]["value"]) for b in standard_behaviors()][:2]
    [('aws:num-listening-tcp-ports', {'count': 10}), ('aws:num-listening-udp-ports', {'count': 10})]
    """
    return [_behavior(name, metric, criteria) for name, metric, criteria in _STANDARD]


def custom_behaviors(metrics: Iterable[Metric]) -> list[dict[str, Any]]:
    """One starter behavior per custom metric (the module's second table), named after it.

    A plugin or command named like a built-in but of another type gets the
    generic behavior of its own type.

    >>> custom_behaviors([("cpu_usage", CustomMetricType.NUMBER)])[0]["criteria"]
    {'comparisonOperator': 'less-than-equals', 'value': {'number': 75}, 'consecutiveDatapointsToAlarm': 1, 'consecutiveDatapointsToClear': 1}
    """  # noqa: E501 - a doctest output line
    result = []
    for name, metric_type in metrics:
        criteria = _STARTERS.get(name) if name in BUILTINS else None
        if criteria is None or BUILTINS[name].type is not metric_type:
            criteria = _GENERIC[metric_type]
        result.append(_behavior(name, name, criteria))
    return result


def behaviors(metrics: Iterable[Metric], standard: bool = True) -> list[dict[str, Any]]:
    """The profile's behaviors: the standard ones (unless ``standard`` is False), then the custom.

    Behavior names are unique within a profile: a custom metric named like a
    standard behavior gets ``-custom`` appended to its behavior's name.

    >>> [b["name"] for b in behaviors([("bytes-out", CustomMetricType.NUMBER)])][-2:]
    ['packets-out', 'bytes-out-custom']
    >>> [b["name"] for b in behaviors([("bytes-out", CustomMetricType.NUMBER)], standard=False)]
    ['bytes-out']
    """
    result = standard_behaviors() if standard else []
    taken = {b["name"] for b in result}
    for behavior in custom_behaviors(metrics):
        if behavior["name"] in taken:
            behavior["name"] = f"{behavior['name'][:120]}-custom"
        taken.add(behavior["name"])
        result.append(behavior)
    return result


def metrics_to_retain(standard: bool = True) -> list[dict[str, str]]:
    """The profile's ``additionalMetricsToRetainV2``: the standard metrics without a behavior.

    >>> metrics_to_retain()[0]
    {'metric': 'aws:all-bytes-in'}
    >>> metrics_to_retain(standard=False)
    []
    """
    return [{"metric": metric} for metric in RETAINED_STANDARD_METRICS] if standard else []
