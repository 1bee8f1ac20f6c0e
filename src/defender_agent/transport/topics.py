"""MQTT topic names and filters (MQTT 3.1.1 §4.7, shared subscriptions of MQTT 5 §4.8.2).

Pure functions used by every transport: which filter a message belongs to, and
whether a filter or a topic name is well formed.

Example:
    >>> topic_matches("$aws/things/+/defender/metrics/+", "$aws/things/t1/defender/metrics/json")
    True
    >>> shared_group("$share/service/$aws/things/+/defender/metrics/+")
    ('service', '$aws/things/+/defender/metrics/+')
"""

from __future__ import annotations

from typing import Optional

__all__ = ["filter_problem", "shared_group", "topic_matches", "topic_problem"]

_SHARE = "$share/"


def shared_group(topic_filter: str) -> tuple[Optional[str], str]:
    """Split a shared subscription ``$share/<group>/<filter>`` into group and inner filter.

    Examples:
        >>> shared_group("$share/g/a/+")
        ('g', 'a/+')
        >>> shared_group("a/+")
        (None, 'a/+')
        >>> shared_group("$share/g")   # no inner filter: not a shared subscription
        (None, '$share/g')
    """
    if topic_filter.startswith(_SHARE):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3 and parts[1] and parts[2]:
            return parts[1], parts[2]
    return None, topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether an MQTT topic filter matches a topic name (MQTT 3.1.1 §4.7).

    A shared subscription ``$share/<group>/<filter>`` matches what ``<filter>``
    matches. Wildcards at the first level do not match topics starting with ``$``.

    Examples:
        >>> topic_matches("$aws/things/t1/json/+", "$aws/things/t1/json/accepted")
        True
        >>> topic_matches("a/#", "a"), topic_matches("a/+", "a/b/c"), topic_matches("#", "$aws/x")
        (True, False, False)
        >>> topic_matches("$share/g/$aws/things/+/x", "$aws/things/t1/x")  # a shared subscription
        True
        >>> topic_matches("$share/g", "g")
        False
    """
    if topic_filter.startswith(_SHARE):
        group, topic_filter = shared_group(topic_filter)
        if group is None:
            return False
    if topic.startswith("$") and topic_filter[:1] in ("#", "+"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


def filter_problem(topic_filter: str) -> Optional[str]:
    """Why a topic filter is malformed, or ``None`` when it is well formed.

    Examples:
        >>> filter_problem("$aws/things/+/defender/metrics/#") is None
        True
        >>> filter_problem("a/#/b")
        "'#' must be the last level"
        >>> filter_problem("a/b+")
        "a wildcard must be a whole level: 'b+'"
        >>> filter_problem("$share/g/")
        'a shared subscription needs $share/<group>/<filter>'
    """
    if not topic_filter:
        return "empty topic filter"
    if "\x00" in topic_filter:
        return "a topic filter must not contain NUL"
    if topic_filter.startswith(_SHARE):
        group, inner = shared_group(topic_filter)
        if group is None or "+" in group or "#" in group:
            return "a shared subscription needs $share/<group>/<filter>"
        topic_filter = inner
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if level in ("+", "#"):
            if level == "#" and index != len(levels) - 1:
                return "'#' must be the last level"
        elif "+" in level or "#" in level:
            return f"a wildcard must be a whole level: {level!r}"
    return None


def topic_problem(topic: str) -> Optional[str]:
    """Why a topic name cannot be published to, or ``None`` when it can.

    Examples:
        >>> topic_problem("$aws/things/t1/defender/metrics/json") is None
        True
        >>> topic_problem("a/+/b")
        'a topic name must not contain wildcards (+ or #)'
        >>> topic_problem("")
        'empty topic name'
    """
    if not topic:
        return "empty topic name"
    if "+" in topic or "#" in topic:
        return "a topic name must not contain wildcards (+ or #)"
    if "\x00" in topic:
        return "a topic name must not contain NUL"
    return None
