"""What the dashboard shows: pure shaping of fleet and thing data, and the queries behind it.

The pure functions (:func:`thing_state`, :func:`fleet_counts`, :func:`appearances`,
:func:`bucket_width`, :func:`ports_of`) take plain values and are tested on their own; the
query functions take a :class:`~defender_agent.service.storage.Store` of the dashboard's own
(its own connection: a page view never waits for the service's writer in this process) and
return JSON-ready dicts. Everything here is data: escaping is the page's job, which only
ever puts it in the DOM as text.

**Late and silent** are relative to each thing's own interval, estimated from what the
store keeps for every thing (first and last report time, number of reports): the mean gap
``(last - first) / (reports - 1)``. A thing is *late* when its last report is more than
:data:`LATE_FACTOR` intervals old, *silent* beyond :data:`SILENT_FACTOR` intervals, and a
thing with one report only is judged against :data:`DEFAULT_INTERVAL_S`. The mean is cheap
(no extra query, no extra write) and right for a device that reports on a schedule; a
device that was off for a long time and came back has a longer mean for a while.

**Rejected counts** come from the running service's counters (per thing name, for the
names its responder tracks); they are this process's since it started, and a rejected report
is never stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Optional

from defender_agent.detect.contract import ViolationFilter, Violations
from defender_agent.service.responder import ThingCounts
from defender_agent.service.storage import Store

__all__ = [
    "DEFAULT_INTERVAL_S",
    "LATE_FACTOR",
    "MAX_POINTS",
    "SILENT_FACTOR",
    "SORT_KEYS",
    "STATE_SQL",
    "Appearance",
    "FleetQuery",
    "active_violations",
    "appearances",
    "behavior_words",
    "bucket_width",
    "fleet",
    "ports_of",
    "state_counts",
    "thing_detail",
    "thing_state",
]

#: The interval assumed for a thing with a single report (seconds): the agent's default.
DEFAULT_INTERVAL_S: Final = 300.0
#: Late: no report for more than this many intervals.
LATE_FACTOR: Final = 2.0
#: Silent: no report for more than this many intervals.
SILENT_FACTOR: Final = 5.0
#: The most points of one chart series; more values are averaged into buckets.
MAX_POINTS: Final = 600
#: Active violations read for the fleet view at most (pages of the Violations API).
MAX_ACTIVE: Final = 50_000
_PAGE: Final = 250

#: The numeric metrics charted, in this order (custom numbers follow, by name).
CHARTED: Final = (
    "aws:all-bytes-in",
    "aws:all-bytes-out",
    "aws:all-packets-in",
    "aws:all-packets-out",
    "aws:num-established-tcp-connections",
    "aws:num-listening-tcp-ports",
    "aws:num-listening-udp-ports",
)


def thing_state(now: float, first: float, last: float, reports: int) -> tuple[str, float]:
    """``(state, interval)``: ``reporting``, ``late`` or ``silent``, and the mean interval.

    >>> thing_state(1000.0, 0.0, 900.0, 10)   # every 100 s, last 100 s ago
    ('reporting', 100.0)
    >>> thing_state(1250.0, 0.0, 900.0, 10)   # 3.5 intervals
    ('late', 100.0)
    >>> thing_state(2000.0, 0.0, 900.0, 10)   # 11 intervals
    ('silent', 100.0)
    >>> thing_state(100.0, 50.0, 50.0, 1)     # one report: the default interval
    ('reporting', 300.0)
    """
    interval = (last - first) / (reports - 1) if reports > 1 and last > first else 0.0
    if interval <= 0:
        interval = DEFAULT_INTERVAL_S
    age = now - last
    if age > SILENT_FACTOR * interval:
        return "silent", interval
    if age > LATE_FACTOR * interval:
        return "late", interval
    return "reporting", interval


def ports_of(text: Optional[str]) -> list[int]:
    """The sorted unique port numbers of a report's ``ports`` list (JSON text), or [].

    Tolerates anything (the document came from the network, through the validator).

    >>> ports_of('[{"port": 443, "interface": "eth0"}, {"port": 22}, {"port": 443}]')
    [22, 443]
    >>> ports_of(None), ports_of("null"), ports_of('[{"port": "x"}]')
    ([], [], [])
    """
    if not text:
        return []
    try:
        entries = json.loads(text)
    except ValueError:
        return []
    if not isinstance(entries, list):
        return []
    ports = {
        e["port"]
        for e in entries
        if isinstance(e, dict)
        and isinstance(e.get("port"), int)
        and not isinstance(e["port"], bool)
    }
    return sorted(ports)


@dataclass(frozen=True)
class Appearance:
    """One member of a set-valued metric (a port, an address, a string) over a time range.

    Attributes:
        value: The member (as a string, for display).
        first: When it was first seen in the range (epoch seconds).
        last: When it was last seen in the range.
        present: Whether the newest value in the range has it.
        at_start: Whether the first value in the range had it already (it may be older).
    """

    value: str
    first: float
    last: float
    present: bool
    at_start: bool

    def to_json(self) -> dict[str, object]:
        """The fields as a JSON object."""
        return {
            "value": self.value,
            "first": self.first,
            "last": self.last,
            "present": self.present,
            "at_start": self.at_start,
        }


def appearances(groups: Sequence[tuple[Sequence[object], float, float]]) -> list[Appearance]:
    """When each member of a set metric appeared, from the distinct values in a range.

    Each group is one distinct value (a list of members) with the first and last time it
    was reported in the range; the database groups the values, so the work grows with the
    number of *different* sets, not of reports. The value at the range's first time says
    what was there at its start, the one at its newest time what is there now. Newest
    appearance first (what a security engineer wants to see: what is new), then by value.

    >>> got = appearances([([22], 10.0, 30.0), ([22, 8080], 20.0, 20.0)])
    >>> [(a.value, a.first, a.last, a.present, a.at_start) for a in got]
    [('8080', 20.0, 20.0, False, False), ('22', 10.0, 30.0, True, True)]
    >>> appearances([])
    []
    """
    if not groups:
        return []
    start = min(first for _m, first, _l in groups)
    newest = max(last for _m, _f, last in groups)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    at_start: set[str] = set()
    latest: set[str] = set()
    for members, group_first, group_last in groups:
        keys = {str(m) for m in members}
        for key in keys:
            first[key] = min(first.get(key, group_first), group_first)
            last[key] = max(last.get(key, group_last), group_last)
        if group_first == start:
            at_start |= keys
        if group_last == newest:
            latest |= keys
    out = [Appearance(v, first[v], last[v], v in latest, v in at_start) for v in first]
    out.sort(key=lambda a: (-a.first, a.value))
    return out


def bucket_width(since: float, until: float, max_points: int = MAX_POINTS) -> float:
    """Seconds per chart point so that the range has at most ``max_points`` (at least 1 s).

    >>> bucket_width(0, 86_400, 600), bucket_width(0, 60, 600)
    (144.0, 1.0)
    """
    return float(max(1, math.ceil((until - since) / max_points)))


# ----------------------------------------------------------------------------- queries
_PORTS_SQL: Final = {
    "sqlite": "json_extract(last_report, '$.metrics.{0}.ports')",
    "postgresql": "(last_report::json->'metrics'->'{0}'->'ports')::text",
}
_BUCKET_SQL: Final = {
    "sqlite": "CAST((received_at - ?) / ? AS INTEGER)",
    "postgresql": "FLOOR((received_at - ?) / ?)",
}


def active_violations(
    violations: Optional[Violations], where: Optional[ViolationFilter] = None
) -> list[Mapping[str, Any]]:
    """Every active violation matching ``where`` (at most :data:`MAX_ACTIVE`), oldest first."""
    if violations is None:
        return []
    where = where or ViolationFilter()
    items: list[Mapping[str, Any]] = []
    token: Optional[str] = None
    while len(items) < MAX_ACTIVE:
        page = violations.list_active(where, limit=_PAGE, token=token)
        items.extend(page.items)
        token = page.next_token
        if not token:
            break
    return items


@dataclass(frozen=True)
class FleetQuery:
    """Which rows of the fleet the page shows: filter, sort and one page.

    Attributes:
        text: Only things whose name contains this (case-insensitive).
        state: Only things in this state (``reporting``, ``late``, ``silent``), or ``alarm``.
        sort: One of :data:`SORT_KEYS`.
        descending: Largest first.
        offset: Rows to skip (after filter and sort).
        limit: Rows to return.
    """

    text: str = ""
    state: str = ""
    sort: str = "name"
    descending: bool = False
    offset: int = 0
    limit: int = 200


#: What the fleet can be sorted by.
SORT_KEYS: Final = ("name", "state", "last_seen", "reports", "accepted", "rejected", "violations")
_STATE_ORDER: Final = {"silent": 0, "late": 1, "reporting": 2}


#: A thing's mean interval, as :func:`thing_state` computes it, in SQL.
_INTERVAL_SQL: Final = (
    "(CASE WHEN reports > 1 AND last_seen > first_seen"
    f" THEN (last_seen - first_seen) / (reports - 1) ELSE {DEFAULT_INTERVAL_S} END)"
)
#: Its state as :func:`thing_state` says (0 silent, 1 late, 2 reporting); two ``now`` params.
STATE_SQL: Final = (
    f"(CASE WHEN ? - last_seen > {SILENT_FACTOR} * {_INTERVAL_SQL} THEN 0"
    f" WHEN ? - last_seen > {LATE_FACTOR} * {_INTERVAL_SQL} THEN 1 ELSE 2 END)"
)
_STATES: Final = ("silent", "late", "reporting")
_SQL_SORTS: Final = {
    "name": "name",
    "state": f"{STATE_SQL}",
    "last_seen": "last_seen",
    "reports": "reports",
}


def state_counts(store: Store, now: float) -> dict[str, int]:
    """How many things are reporting, late and silent now (counted by the database)."""
    counts = dict.fromkeys(_STATES, 0)
    rows = store.query(
        f"SELECT st, COUNT(*) FROM (SELECT {STATE_SQL} AS st FROM things) AS s GROUP BY st",  # noqa: S608
        (now, now),
    )
    for state, count in rows:
        counts[_STATES[int(state)]] = int(count)
    return counts


def _alarms(violations: Optional[Violations]) -> dict[str, int]:
    alarms: dict[str, int] = {}
    for violation in active_violations(violations):
        name = str(violation.get("thingName", ""))
        alarms[name] = alarms.get(name, 0) + 1
    return alarms


def _like(text: str) -> str:
    r"""A LIKE pattern for "contains ``text``" (``\`` escapes ``%`` and ``_``).

    >>> _like("gw_1%")
    '%gw\\_1\\%%'
    """
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def fleet(
    store: Store,
    now: float,
    *,
    things: Mapping[str, ThingCounts],
    violations: Optional[Violations],
    query: FleetQuery = FleetQuery(),
) -> dict[str, Any]:
    """The fleet page's data: counts over every thing, then one page of matching rows.

    Filtering, sorting and paging happen in the database (the state as :data:`STATE_SQL`),
    so that 10 000 things cost the service a few queries and the browser one page
    (``query.limit`` rows) every few seconds. Sorting by accepted, rejected or violations,
    and the ``alarm`` filter, use what only this process knows (its counters, Detect's
    violations): those read every name and sort here.

    Args:
        store: The dashboard's store.
        now: The time to judge late and silent against.
        things: The service's reply counts per thing name (``RunnerStats.things``).
        violations: Detect's violations (None: Detect is off, nothing is in alarm).
        query: Filter, sort and page.
    """
    alarms = _alarms(violations)
    counts: dict[str, int] = {"things": 0, **state_counts(store, now), "in_alarm": len(alarms)}
    counts["things"] = sum(counts[s] for s in _STATES)
    where: list[str] = ["1 = 1"]
    params: list[object] = []
    if query.text:
        where.append("LOWER(name) LIKE ? ESCAPE '\\'")
        params.append(_like(query.text))
    if query.state in _STATES:
        where.append(f"{STATE_SQL} = ?")
        params += [now, now, _STATES.index(query.state)]
    condition = " AND ".join(where)
    offset, limit = max(0, query.offset), max(0, query.limit)
    if query.sort in _SQL_SORTS and query.state != "alarm":
        matched = int(
            store.query(f"SELECT COUNT(*) FROM things WHERE {condition}", params)[0][0]  # noqa: S608
        )
        order = _SQL_SORTS[query.sort]
        order_params = [now, now] if query.sort == "state" else []
        direction = "DESC" if query.descending else "ASC"
        page = store.query(
            f"SELECT name, first_seen, last_seen, reports FROM things WHERE {condition}"  # noqa: S608
            f" ORDER BY {order} {direction}, name LIMIT ? OFFSET ?",
            [*params, *order_params, limit, offset],
        )
    else:
        rows = store.query(
            f"SELECT name, first_seen, last_seen, reports FROM things WHERE {condition}",  # noqa: S608
            params,
        )
        if query.state == "alarm":
            rows = [r for r in rows if r[0] in alarms]
        key = _sort_key(query.sort if query.sort in SORT_KEYS else "name", things, alarms, now)
        rows.sort(key=lambda r: r[0])
        rows.sort(key=key, reverse=query.descending)
        matched, page = len(rows), rows[offset : offset + limit]
    ports = _ports(store, [str(r[0]) for r in page])
    out = []
    for name, first, last, reports in page:
        state, interval = thing_state(now, float(first), float(last), int(reports))
        thing_counts = things.get(name)
        tcp, udp = ports.get(name, ([], []))
        out.append(
            {
                "name": name,
                "first_seen": float(first),
                "last_seen": float(last),
                "reports": int(reports),
                "interval": interval,
                "state": state,
                "accepted": None if thing_counts is None else thing_counts.accepted,
                "rejected": {} if thing_counts is None else dict(thing_counts.rejected),
                "violations": alarms.get(name, 0),
                "tcp_ports": tcp,
                "udp_ports": udp,
            }
        )
    return {"now": now, "counts": counts, "matched": matched, "things": out}


def _sort_key(
    sort: str, things: Mapping[str, ThingCounts], alarms: Mapping[str, int], now: float
) -> Any:  # noqa: ANN401
    """A key over ``(name, first_seen, last_seen, reports)`` rows, for the sorts done here."""
    if sort == "state":
        return lambda r: _STATE_ORDER[thing_state(now, r[1], r[2], r[3])[0]]
    if sort == "last_seen":
        return lambda r: r[2]
    if sort == "reports":
        return lambda r: r[3]
    if sort == "violations":
        return lambda r: alarms.get(r[0], 0)
    if sort == "accepted":
        return lambda r: getattr(things.get(r[0]), "accepted", -1)
    if sort == "rejected":
        return lambda r: sum(things[r[0]].rejected.values()) if r[0] in things else 0
    return lambda r: r[0]


def _ports(store: Store, names: Sequence[str]) -> dict[str, tuple[list[int], list[int]]]:
    """The listening TCP and UDP ports of each thing's last report (one query per 500)."""
    tcp = _PORTS_SQL[store.dialect].format("listening_tcp_ports")
    udp = _PORTS_SQL[store.dialect].format("listening_udp_ports")
    out: dict[str, tuple[list[int], list[int]]] = {}
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = store.query(
            f"SELECT name, {tcp}, {udp} FROM things WHERE name IN ({marks})",  # noqa: S608
            chunk,
        )
        for name, tcp_text, udp_text in rows:
            out[str(name)] = (ports_of(tcp_text), ports_of(udp_text))
    return out


_METRICS_OF: Final = """WITH RECURSIVE m(metric) AS (
    SELECT MIN(metric) FROM metric_values WHERE thing = ?
    UNION ALL
    SELECT (SELECT MIN(metric) FROM metric_values WHERE thing = ? AND metric > m.metric)
    FROM m WHERE m.metric IS NOT NULL
) SELECT metric FROM m WHERE metric IS NOT NULL"""


def _metrics_of(store: Store, thing: str) -> list[str]:
    """The thing's metric names, sorted.

    One index seek per name (a loose index scan), not a scan of all the thing's values.
    """
    return [str(row[0]) for row in store.query(_METRICS_OF, (thing, thing))]


def _in(names: Sequence[str]) -> str:
    """``IN (?, ?, ...)`` for ``names`` (never empty: a name no metric has stands in)."""
    return "IN (" + ", ".join("?" * max(1, len(names))) + ")"


def _series(
    store: Store, thing: str, metrics: Sequence[str], since: float, until: float
) -> list[dict[str, Any]]:
    """Every numeric metric of the thing in the range, bucketed to at most MAX_POINTS.

    One query over the ranges of the (thing, metric, received_at, id, count, number) index,
    one range per metric: the table itself is not read.
    """
    width = bucket_width(since, until)
    bucket = _BUCKET_SQL[store.dialect]
    rows = store.query(
        f"SELECT metric, {bucket} AS b, MAX(received_at), AVG(COALESCE(number, count))"  # noqa: S608
        f" FROM metric_values WHERE thing = ? AND metric {_in(metrics)} AND received_at >= ?"
        " AND received_at < ? AND (number IS NOT NULL OR count IS NOT NULL)"
        " GROUP BY metric, b ORDER BY metric, b",
        (since, width, thing, *(metrics or [""]), since, until),
    )
    by_metric: dict[str, list[list[float]]] = {}
    for metric, _b, at, value in rows:
        by_metric.setdefault(str(metric), []).append([float(at), float(value)])
    order = {name: i for i, name in enumerate(CHARTED)}
    names = sorted(by_metric, key=lambda m: (order.get(m, len(order)), m))
    return [{"metric": m, "points": by_metric[m], "bucket_s": width} for m in names]


def _sets(
    store: Store, thing: str, metrics: Sequence[str], since: float, until: float
) -> list[dict[str, Any]]:
    """Every list-valued metric (ports, addresses, strings, numbers) with its appearances."""
    rows = store.query(
        "SELECT metric, value, MIN(received_at), MAX(received_at) FROM metric_values"  # noqa: S608
        f" WHERE thing = ? AND metric {_in(metrics)} AND received_at >= ? AND received_at < ?"
        " AND count IS NULL AND number IS NULL GROUP BY metric, value",
        (thing, *(metrics or [""]), since, until),
    )
    by_metric: dict[str, list[tuple[Sequence[object], float, float]]] = {}
    for metric, text, first, last in rows:
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        members = next((v for v in doc.values() if isinstance(v, list)), None) if doc else None
        if members is not None:
            by_metric.setdefault(str(metric), []).append((members, float(first), float(last)))
    return [
        {"metric": metric, "items": [a.to_json() for a in appearances(groups)]}
        for metric, groups in sorted(by_metric.items())
    ]


def thing_detail(
    store: Store,
    thing: str,
    since: float,
    until: float,
    now: float,
    *,
    counts: Optional[ThingCounts],
    violations: Optional[Violations],
) -> Optional[dict[str, Any]]:
    """The thing page's data for ``[since, until)``; None for a thing never stored."""
    rows = store.query(
        "SELECT first_seen, last_seen, reports, last_format, last_report FROM things"
        " WHERE name = ?",
        (thing,),
    )
    if not rows:
        return None
    first, last, reports, fmt, document = rows[0]
    metrics = _metrics_of(store, thing)
    state, interval = thing_state(now, float(first), float(last), int(reports))
    where = ViolationFilter(thing_name=thing)
    active = active_violations(violations, where)
    events: list[Mapping[str, Any]] = []
    if violations is not None:
        events = list(
            violations.list_events(
                where, start_time=since, end_time=until, limit=250, token=None
            ).items
        )
    series = _series(store, thing, metrics, since, until)
    charted = {s["metric"] for s in series}
    return {
        "name": thing,
        "since": since,
        "until": until,
        "now": now,
        "first_seen": float(first),
        "last_seen": float(last),
        "reports": int(reports),
        "interval": interval,
        "state": state,
        "accepted": None if counts is None else counts.accepted,
        "rejected": {} if counts is None else dict(counts.rejected),
        "series": series,
        "sets": _sets(store, thing, [m for m in metrics if m not in charted], since, until),
        "active": active,
        "events": events,
        "last_report": None
        if document is None
        else {"received_at": float(last), "format": fmt, "document": json.loads(document)},
    }


def behavior_words(behavior: Mapping[str, Any]) -> str:
    """A behavior in words (:func:`defender_agent.detect.describe.describe`).

    A stored behavior was validated; one that still does not parse is named, not described.

    >>> behavior_words({"name": "ports", "metric": "aws:listening-tcp-ports",
    ...     "criteria": {"comparisonOperator": "in-port-set",
    ...                  "value": {"ports": [22, 443]}}})
    'listening TCP ports must be in {22, 443}'
    >>> behavior_words({"name": "odd"})
    'odd: cannot be described'
    """
    from defender_agent.detect.behaviors import parse_behavior  # noqa: PLC0415
    from defender_agent.detect.describe import describe  # noqa: PLC0415

    try:
        return describe(parse_behavior(behavior))
    except (ValueError, TypeError, KeyError):
        return f"{behavior.get('name', '?')}: cannot be described"
