"""Behaviors in words, for people (the dashboard, logs, the CLI).

A behavior's criteria say what is *normal*; the sentence says what the metric "must" be:

>>> from defender_agent.detect.behaviors import parse_behavior
>>> describe(parse_behavior({"name": "p", "metric": "aws:listening-tcp-ports",
...     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443, 22]}}}))
'listening TCP ports must be in {22, 443}'
>>> describe(parse_behavior({"name": "o", "metric": "aws:all-bytes-out", "criteria": {
...     "comparisonOperator": "less-than-equals", "value": {"count": 1000000},
...     "durationSeconds": 300, "consecutiveDatapointsToAlarm": 3}}))
'bytes out over 5 min must be <= 1000000 (3 datapoints to alarm)'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from defender_agent.detect.behaviors import Behavior

__all__ = ["describe", "metric_words"]

_METRIC_WORDS: Final = {
    "aws:all-bytes-in": "bytes in",
    "aws:all-bytes-out": "bytes out",
    "aws:all-packets-in": "packets in",
    "aws:all-packets-out": "packets out",
    "aws:num-listening-tcp-ports": "number of listening TCP ports",
    "aws:num-listening-udp-ports": "number of listening UDP ports",
    "aws:num-established-tcp-connections": "number of established TCP connections",
    "aws:listening-tcp-ports": "listening TCP ports",
    "aws:listening-udp-ports": "listening UDP ports",
    "aws:destination-ip-addresses": "destination IP addresses",
    "aws:message-byte-size": "message size in bytes",
    "aws:num-messages-sent": "messages sent",
    "aws:num-messages-received": "messages received",
    "aws:num-authorization-failures": "authorization failures",
    "aws:source-ip-address": "source IP address",
    "aws:num-connection-attempts": "connection attempts",
    "aws:num-disconnects": "disconnects",
    "aws:disconnect-duration": "disconnect duration",
}
_SYMBOLS: Final = {
    "less-than": "<",
    "less-than-equals": "<=",
    "greater-than": ">",
    "greater-than-equals": ">=",
}
_SETS: Final = {
    "in-port-set": "must be in",
    "in-cidr-set": "must be in",
    "in-set": "must be in",
    "not-in-port-set": "must not be in",
    "not-in-cidr-set": "must not be in",
    "not-in-set": "must not be in",
}
_MAX_SHOWN: Final = 10


def metric_words(metric: str) -> str:
    """The metric's name in words; a custom metric keeps its own name.

    >>> metric_words("aws:num-listening-udp-ports"), metric_words("cpu_usage")
    ('number of listening UDP ports', 'cpu_usage')
    """
    return _METRIC_WORDS.get(metric, metric)


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _set(items: Iterable[object], numeric: bool) -> str:
    ordered = sorted(items, key=float) if numeric else sorted(items, key=str)  # type: ignore[arg-type]
    shown = [_number(i) if numeric else str(i) for i in ordered[:_MAX_SHOWN]]  # type: ignore[arg-type]
    more = len(ordered) - len(shown)
    if more:
        shown.append(f"... {more} more")
    return "{" + ", ".join(shown) + "}"


def _value(behavior: Behavior) -> str:
    value = behavior.value
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, tuple):
        return _set((str(n) for n in value), numeric=False)
    if isinstance(value, frozenset):
        return _set(value, numeric=behavior.value_kind in ("ports", "numbers"))
    return "?"


def describe(behavior: Behavior) -> str:
    """One sentence for the behavior.

    >>> from defender_agent.detect.behaviors import parse_behavior as p
    >>> describe(p({"name": "a", "metric": "aws:num-listening-tcp-ports", "criteria": {
    ...     "comparisonOperator": "greater-than", "statisticalThreshold": {"statistic": "p90"},
    ...     "consecutiveDatapointsToClear": 2}}))
    'number of listening TCP ports must be > the fleet p90 (2 datapoints to clear)'
    >>> describe(p({"name": "m", "metric": "batt", "suppressAlerts": True,
    ...     "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}}}))
    'batt must look normal to the local ML model (HIGH confidence; alerts suppressed)'
    >>> describe(p({"name": "r", "metric": "aws:destination-ip-addresses"}))
    'destination IP addresses: retained, not judged'
    >>> describe(p({"name": "c", "metric": "aws:num-messages-sent", "criteria": {
    ...     "comparisonOperator": "less-than", "value": {"count": 10}, "durationSeconds": 300}}))
    'messages sent over 5 min must be < 10 (a cloud-side metric: stored, not evaluated here)'
    """
    subject = metric_words(behavior.metric)
    if behavior.duration_s is not None:
        subject += f" over {_duration(behavior.duration_s)}"
    operator = behavior.operator or ""
    if behavior.kind == "none":
        sentence = f"{subject}: retained, not judged"
    elif behavior.kind == "ml":
        sentence = f"{subject} must look normal to the local ML model"
    elif behavior.kind == "statistical":
        sentence = (
            f"{subject} must be {_SYMBOLS.get(operator, operator)} the fleet {behavior.statistic}"
        )
    elif operator in _SETS:
        sentence = f"{subject} {_SETS[operator]} {_value(behavior)}"
    else:
        sentence = f"{subject} must be {_SYMBOLS.get(operator, operator)} {_value(behavior)}"
    notes = []
    if behavior.kind == "ml":
        notes.append(f"{behavior.confidence} confidence")
    if behavior.kind != "none":
        if behavior.to_alarm != 1:
            notes.append(f"{behavior.to_alarm} datapoints to alarm")
        if behavior.to_clear != 1:
            notes.append(f"{behavior.to_clear} datapoints to clear")
    if behavior.cloud_side:
        notes.append("a cloud-side metric: stored, not evaluated here")
    if behavior.suppress_alerts:
        notes.append("alerts suppressed")
    return f"{sentence} ({'; '.join(notes)})" if notes else sentence
