"""Detect's tables: per-thing behavior state, violations, violation events, populations.

The engine (:mod:`defender_agent.detect.engine`) keeps everything it knows in the service's
database, beside the reports, so that a restart keeps active violations and the counters of
consecutive datapoints, and several service processes over one PostgreSQL database judge a
thing's reports as one (whichever process received each):

``detect_things``
    One row per thing: ``states``, the JSON object ``{"PROFILE/BEHAVIOR": state}`` of every
    behavior's :class:`~defender_agent.detect.evaluate.BehaviorState` (``to_json``; the
    engine leaves out ``last_value``/``last_time``, which the violation rows keep), and
    ``last_report``, when its last evaluated report arrived. The engine judges a batch of
    reports inside one transaction that first locks the rows of the batch's things, in name
    order (PostgreSQL: the rows are created if missing, then ``SELECT … FOR UPDATE``;
    SQLite: ``BEGIN IMMEDIATE`` locks the whole file): two processes never judge reports of
    one thing at the same time, and never deadlock.
``detect_violations``
    One row per violation. Active while ``end_time`` is NULL; a partial unique index allows
    at most one active violation per (thing, profile, behavior). ``ListActiveViolations``
    reads a partial index on ``(start_time, violation_id)`` of the active rows only.
``detect_events``
    ``in-alarm``, ``alarm-cleared`` and ``alarm-invalidated`` events, by time.
``detect_population`` and ``detect_thresholds``
    For statistical thresholds: each targeted thing's latest value of a behavior (its window
    sum), and the percentile computed from them on a schedule.

The tables have their own migrations and version table (``detect_schema_version``).
Detect's commits do not wait for the disk (SQLite ``synchronous = NORMAL`` in WAL mode,
PostgreSQL ``synchronous_commit = off``): everything here is derived from reports that were
committed durably first, a crash of the service loses nothing of it, and a power cut may
lose the last fraction of a second of evaluation (never a report, never a corrupt table).
Waiting for a second flush per batch cost the service a third of its replies.
Pagination tokens are opaque (URL-safe base64 of the sort key of the last item returned), so
a page is stable while violations come and go.

>>> from defender_agent.service.storage import open_store
>>> store = DetectStore.beside(open_store("sqlite://:memory:"))
>>> with store.batch(["gw-1"], now=100.0) as tx:
...     vid = tx.open_violation("gw-1", "p", {"name": "b", "metric": "m"}, "STATIC",
...                             False, {"count": 5}, 100.0)
>>> page = store.list_active(ViolationFilter(), limit=10, token=None)
>>> [(v["thingName"], v["behavior"]["name"], v["lastViolationValue"]) for v in page.items]
[('gw-1', 'b', {'count': 5})]
>>> store.close()
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import random
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Final, Optional, Union

from defender_agent.detect.contract import Page, ViolationFilter
from defender_agent.service.storage import (
    Migration,
    PostgresStore,
    SQLiteStore,
    Store,
)

__all__ = [
    "DETECT_MIGRATIONS",
    "ActiveRow",
    "BadTokenError",
    "Batch",
    "DetectStore",
    "EventRow",
    "Known",
]

EVENT_TYPES: Final = ("in-alarm", "alarm-cleared", "alarm-invalidated")
VERIFICATION_STATES: Final = ("FALSE_POSITIVE", "BENIGN_POSITIVE", "TRUE_POSITIVE", "UNKNOWN")

DETECT_MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "detect: behavior state per thing, violations, events, statistical populations",
        (
            """CREATE TABLE detect_things (
                thing TEXT PRIMARY KEY,
                states TEXT NOT NULL,
                last_report DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX detect_things_last_report ON detect_things (last_report)",
            """CREATE TABLE detect_violations (
                violation_id TEXT PRIMARY KEY,
                thing TEXT NOT NULL,
                profile TEXT NOT NULL,
                behavior_name TEXT NOT NULL,
                behavior TEXT NOT NULL,
                criteria_type TEXT NOT NULL,
                suppressed INTEGER NOT NULL,
                start_time DOUBLE PRECISION NOT NULL,
                last_value TEXT,
                last_time DOUBLE PRECISION NOT NULL,
                additional_info TEXT,
                verification_state TEXT,
                verification_description TEXT,
                end_time DOUBLE PRECISION
            )""",
            (
                "CREATE UNIQUE INDEX detect_violations_one_active ON detect_violations"
                " (thing, profile, behavior_name) WHERE end_time IS NULL"
            ),
            (
                "CREATE INDEX detect_violations_active ON detect_violations"
                " (start_time, violation_id) WHERE end_time IS NULL"
            ),
            (
                "CREATE INDEX detect_violations_active_profile ON detect_violations"
                " (profile, start_time, violation_id) WHERE end_time IS NULL"
            ),
            """CREATE TABLE detect_events (
                id {pk},
                violation_id TEXT NOT NULL,
                thing TEXT NOT NULL,
                profile TEXT NOT NULL,
                behavior TEXT NOT NULL,
                criteria_type TEXT NOT NULL,
                suppressed INTEGER NOT NULL,
                event_type TEXT NOT NULL,
                event_time DOUBLE PRECISION NOT NULL,
                metric_value TEXT,
                additional_info TEXT
            )""",
            "CREATE INDEX detect_events_time ON detect_events (event_time, id)",
            "CREATE INDEX detect_events_thing ON detect_events (thing, event_time, id)",
            """CREATE TABLE detect_population (
                profile TEXT NOT NULL,
                behavior TEXT NOT NULL,
                thing TEXT NOT NULL,
                value DOUBLE PRECISION NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (profile, behavior, thing)
            )""",
            """CREATE TABLE detect_thresholds (
                profile TEXT NOT NULL,
                behavior TEXT NOT NULL,
                value DOUBLE PRECISION,
                devices INTEGER NOT NULL,
                computed_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (profile, behavior)
            )""",
        ),
    ),
)

_UPSERT_STATE: Final = """INSERT INTO detect_things (thing, states, last_report) VALUES (?, ?, ?)
    ON CONFLICT (thing) DO UPDATE SET states = excluded.states,
    last_report = excluded.last_report"""
_INSERT_VIOLATION: Final = """INSERT INTO detect_violations (violation_id, thing, profile,
    behavior_name, behavior, criteria_type, suppressed, start_time, last_value, last_time,
    additional_info, end_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_INSERT_EVENT: Final = """INSERT INTO detect_events (violation_id, thing, profile, behavior,
    criteria_type, suppressed, event_type, event_time, metric_value, additional_info)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_UPSERT_POPULATION: Final = """INSERT INTO detect_population (profile, behavior, thing, value, at)
    VALUES (?, ?, ?, ?, ?) ON CONFLICT (profile, behavior, thing) DO UPDATE SET
    value = excluded.value, at = excluded.at"""
_UPSERT_THRESHOLD: Final = """INSERT INTO detect_thresholds (profile, behavior, value, devices,
    computed_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (profile, behavior) DO UPDATE SET
    value = excluded.value, devices = excluded.devices, computed_at = excluded.computed_at"""
_VIOLATION_COLUMNS: Final = """violation_id, thing, profile, behavior, criteria_type, suppressed,
    start_time, last_value, last_time, additional_info, verification_state,
    verification_description"""


Known = Callable[[str, str], Optional[Mapping[tuple[str, str, str], "ActiveRow"]]]
"""``(thing, states text) -> its active violations`` (see :meth:`DetectStore.batch`)."""


class BadTokenError(ValueError):
    """A ``nextToken`` this store did not make (the API answers InvalidRequestException)."""


@dataclass
class ActiveRow:
    """An active violation as the engine sees it (mutable within a batch).

    Attributes:
        violation_id: ``violationId``.
        thing: ``thingName``.
        profile: ``securityProfileName``.
        behavior: The behavior (AWS's shape) as it was when the violation started.
        criteria_type: ``STATIC``, ``STATISTICAL`` or ``MACHINE_LEARNING``.
        suppressed: The behavior's ``suppressAlerts``.
        start_time: ``violationStartTime``.
        last_value: ``lastViolationValue`` (a ``MetricValue``), None when unknown.
        last_time: ``lastViolationTime``.
        additional_info: ``violationEventAdditionalInfo``, if any.
        verification_state: The verification state, None until set.
        verification_description: Its description.
        written: ``(lastViolationValue, lastViolationTime)`` as the database has them
            (:meth:`Batch.still_violating` may hold newer ones back).
    """

    violation_id: str
    thing: str
    profile: str
    behavior: Mapping[str, Any]
    criteria_type: str
    suppressed: bool
    start_time: float
    last_value: Optional[Mapping[str, Any]]
    last_time: float
    additional_info: Optional[Mapping[str, Any]] = None
    verification_state: Optional[str] = None
    verification_description: Optional[str] = None
    written: tuple[Optional[Mapping[str, Any]], float] = (None, 0.0)

    def __post_init__(self) -> None:
        self.written = (self.last_value, self.last_time)

    @property
    def behavior_name(self) -> str:
        """The behavior's name."""
        return str(self.behavior.get("name", ""))

    def to_json(self) -> dict[str, Any]:
        """The ``ActiveViolation`` structure (times as POSIX seconds)."""
        doc: dict[str, Any] = {
            "violationId": self.violation_id,
            "thingName": self.thing,
            "securityProfileName": self.profile,
            "behavior": dict(self.behavior),
            "violationStartTime": self.start_time,
            "lastViolationTime": self.last_time,
        }
        if self.last_value is not None:
            doc["lastViolationValue"] = dict(self.last_value)
        return _with_details(doc, self)


@dataclass(frozen=True)
class EventRow:
    """A violation event (``in-alarm``, ``alarm-cleared``, ``alarm-invalidated``).

    Attributes:
        violation_id: ``violationId``.
        thing: ``thingName``.
        profile: ``securityProfileName``.
        behavior: The behavior, AWS's shape.
        criteria_type: ``STATIC``, ``STATISTICAL`` or ``MACHINE_LEARNING``.
        suppressed: The behavior's ``suppressAlerts``.
        event_type: ``violationEventType``.
        event_time: ``violationEventTime``.
        metric_value: ``metricValue``, if any.
        additional_info: ``violationEventAdditionalInfo``, if any.
        verification_state: The violation's verification state, if set.
        verification_description: Its description.
    """

    violation_id: str
    thing: str
    profile: str
    behavior: Mapping[str, Any]
    criteria_type: str
    suppressed: bool
    event_type: str
    event_time: float
    metric_value: Optional[Mapping[str, Any]] = None
    additional_info: Optional[Mapping[str, Any]] = None
    verification_state: Optional[str] = None
    verification_description: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        """The ``ViolationEvent`` structure (times as POSIX seconds)."""
        doc: dict[str, Any] = {
            "violationId": self.violation_id,
            "thingName": self.thing,
            "securityProfileName": self.profile,
            "behavior": dict(self.behavior),
            "violationEventType": self.event_type,
            "violationEventTime": self.event_time,
        }
        if self.metric_value is not None:
            doc["metricValue"] = dict(self.metric_value)
        return _with_details(doc, self)


def _with_details(doc: dict[str, Any], row: Union[ActiveRow, EventRow]) -> dict[str, Any]:
    """``doc`` with the members a violation and its events share when they are set."""
    if row.additional_info:
        doc["violationEventAdditionalInfo"] = dict(row.additional_info)
    if row.verification_state is not None:
        doc["verificationState"] = row.verification_state
    if row.verification_description is not None:
        doc["verificationStateDescription"] = row.verification_description
    return doc


_TEXTS: dict[int, tuple[Mapping[str, Any], str]] = {}  # id(doc) -> (doc, its JSON)


def _dumps(doc: Optional[Mapping[str, Any]]) -> Optional[str]:
    """A document's JSON text; once per document object (they are never changed once made).

    A behavior, and the ``MetricValue`` of a set, is one shared object for every
    violation and event it appears in: formatting it again for each was half the cost of
    opening a violation. The cache holds the object, so its id cannot be reused meanwhile.
    """
    if doc is None:
        return None
    held = _TEXTS.get(id(doc))
    if held is not None and held[0] is doc:
        return held[1]
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    if len(_TEXTS) >= 4096:
        _TEXTS.clear()
    _TEXTS[id(doc)] = (doc, text)
    return text


def _loads(text: Optional[str]) -> Optional[dict[str, Any]]:
    if text is None:
        return None
    doc = json.loads(text)
    return doc if isinstance(doc, dict) else None


def make_token(key: float, tie: object) -> str:
    """An opaque page token for the sort key ``(key, tie)``.

    >>> token = make_token(1.5, "v-1")
    >>> read_token(token)
    (1.5, 'v-1')
    """
    raw = json.dumps([key, tie], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_token(token: str) -> tuple[float, Any]:
    """The sort key in a token of :func:`make_token`; :class:`BadTokenError` otherwise.

    >>> read_token("nonsense!")
    Traceback (most recent call last):
    ...
    defender_agent.detect.store.BadTokenError: nextToken: not a token this service made
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        key, tie = json.loads(raw)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadTokenError("nextToken: not a token this service made") from exc
    if not isinstance(key, (int, float)) or isinstance(key, bool):
        raise BadTokenError("nextToken: not a token this service made")
    return float(key), tie


class _SQLiteDb(SQLiteStore):
    _VERSION_TABLE = "detect_schema_version"
    _SYNC_COMMIT = False  # derived from stored reports: see the module's docstring


class _PostgresDb(PostgresStore):
    _VERSION_TABLE = "detect_schema_version"
    _SYNC_COMMIT = False


class _States(dict[str, dict[str, Any]]):
    """Thing -> its decoded states, decoded from ``texts`` on first use."""

    texts: Mapping[str, str] = {}

    def __missing__(self, thing: str) -> dict[str, Any]:
        if thing not in self.texts:
            raise KeyError(thing)
        doc = _loads(self.texts[thing]) or {}
        self[thing] = doc
        return doc


@dataclass
class Batch:
    """One judging transaction over some things, their rows locked (see :meth:`DetectStore.batch`).

    The engine reads :attr:`states` and :attr:`active`, and records what it decided with the
    methods; everything is written when the ``with`` block ends, in the same transaction.

    Attributes:
        now: The time of the batch (for the rows it writes).
        states: Thing -> its ``{"PROFILE/BEHAVIOR": state}`` object (a new thing: ``{}``),
            decoded from :attr:`texts` when first used.
        texts: Thing -> the JSON text of its states as loaded; set it to the new text to
            write (the engine encodes once, and skips decoding a text it wrote itself).
        last_report: Thing -> when its last evaluated report arrived (0: never).
        active: ``(thing, profile, behavior name)`` -> its active violation.
        events: The events recorded in this batch, in order.
    """

    now: float
    states: _States = field(default_factory=_States)
    texts: dict[str, str] = field(default_factory=dict)
    last_report: dict[str, float] = field(default_factory=dict)
    active: dict[tuple[str, str, str], ActiveRow] = field(default_factory=dict)
    events: list[EventRow] = field(default_factory=list)
    _saved: dict[str, float] = field(default_factory=dict)
    _new: list[ActiveRow] = field(default_factory=list)
    _updated: dict[str, ActiveRow] = field(default_factory=dict)
    _ended: list[tuple[float, ActiveRow]] = field(default_factory=list)
    _population: list[tuple[str, str, str, float, float]] = field(default_factory=list)

    def save_state(self, thing: str, reported_at: Optional[float] = None) -> None:
        """Write back ``states[thing]`` (and ``reported_at`` as its last report, if given)."""
        last = self.last_report.get(thing, 0.0)
        self._saved[thing] = last if reported_at is None else max(last, reported_at)
        self.last_report[thing] = self._saved[thing]

    def open_violation(  # noqa: PLR0917 - the violation's fields, in AWS's order
        self,
        thing: str,
        profile: str,
        behavior: Mapping[str, Any],
        criteria_type: str,
        suppressed: bool,
        value: Optional[Mapping[str, Any]],
        at: float,
        additional_info: Optional[Mapping[str, Any]] = None,
    ) -> ActiveRow:
        """A new active violation and its ``in-alarm`` event."""
        row = ActiveRow(
            _violation_id(),
            thing,
            profile,
            behavior,
            criteria_type,
            suppressed,
            at,
            value,
            at,
            additional_info,
        )
        self.active[(thing, profile, row.behavior_name)] = row
        self._new.append(row)
        self._event(row, "in-alarm", at, value)
        return row

    def still_violating(
        self, row: ActiveRow, value: Optional[Mapping[str, Any]], at: float, every: float = 0.0
    ) -> None:
        """Another violating datapoint of an active violation: its last value and time.

        The row is written when its value changed, or when what the database has is
        ``every`` seconds older (0: always); else only ``row`` holds them until then
        (:meth:`DetectStore.write_last_values`).
        """
        row.last_value = value
        row.last_time = at
        written_value, written_time = row.written
        if every <= 0 or value != written_value or at - written_time >= every:
            self._updated[row.violation_id] = row

    def end_violation(
        self, row: ActiveRow, event_type: str, at: float, value: Optional[Mapping[str, Any]]
    ) -> EventRow:
        """End an active violation with ``alarm-cleared`` or ``alarm-invalidated``."""
        if event_type not in EVENT_TYPES[1:]:
            raise ValueError(f"not an ending event: {event_type}")
        self.active.pop((row.thing, row.profile, row.behavior_name), None)
        self._ended.append((at, row))
        return self._event(row, event_type, at, value)

    def observe(self, profile: str, behavior: str, thing: str, value: float, at: float) -> None:
        """A thing's latest value of a statistical behavior (its population's member)."""
        self._population.append((profile, behavior, thing, value, at))

    def _event(
        self, row: ActiveRow, event_type: str, at: float, value: Optional[Mapping[str, Any]]
    ) -> EventRow:
        event = EventRow(
            row.violation_id,
            row.thing,
            row.profile,
            row.behavior,
            row.criteria_type,
            row.suppressed,
            event_type,
            at,
            value,
            row.additional_info,
            row.verification_state,
            row.verification_description,
        )
        self.events.append(event)
        return event


_IDS: Final = random.Random(os.urandom(32))  # noqa: S311 - unique ids, not secrets
os.register_at_fork(after_in_child=lambda: _IDS.seed(os.urandom(32)))  # never the parent's


def _violation_id() -> str:
    """A new ``violationId``: a random (version 4) UUID.

    Drawn from a generator seeded once from the operating system rather than from
    ``os.urandom`` each time: a violation id is unique, not a secret, and every system call
    on the writer thread lets the MQTT threads take the interpreter for a while.

    >>> a, b = _violation_id(), _violation_id()
    >>> a != b and uuid.UUID(a).version == 4
    True
    """
    return str(uuid.UUID(int=_IDS.getrandbits(128), version=4))


_BEHAVIORS: dict[str, Mapping[str, Any]] = {}  # behavior JSON text -> decoded (read-only use)


def _behavior(text: str) -> Mapping[str, Any]:
    """A violation's behavior, decoded once per distinct text (they repeat across things)."""
    doc = _BEHAVIORS.get(text)
    if doc is None:
        if len(_BEHAVIORS) >= 4096:
            _BEHAVIORS.clear()
        doc = _BEHAVIORS[text] = _loads(text) or {}
    return doc


_VALUES: dict[str, Optional[dict[str, Any]]] = {}  # lastViolationValue text -> decoded


def _value(text: Optional[str]) -> Optional[dict[str, Any]]:
    """A violation's last value, decoded once per distinct text (shared: read-only use).

    Every batch reads the active violations of its things; their values repeat.
    """
    if text is None:
        return None
    if text in _VALUES:
        return _VALUES[text]
    if len(_VALUES) >= 4096:
        _VALUES.clear()
    doc = _VALUES[text] = _loads(text)
    return doc


def _active_row(row: Sequence[Any]) -> ActiveRow:
    (vid, thing, profile, behavior, ctype, suppressed, start, value, last, info, state, desc) = row
    return ActiveRow(
        vid,
        thing,
        profile,
        _behavior(behavior),
        ctype,
        bool(suppressed),
        float(start),
        _value(value),
        float(last),
        _loads(info),
        state,
        desc,
    )


def _filters(where: ViolationFilter, alias: str) -> tuple[list[str], list[Any]]:
    """SQL conditions and parameters for a :class:`ViolationFilter`."""
    sql: list[str] = []
    params: list[Any] = []
    if where.thing_name is not None:
        sql.append(f"{alias}.thing = ?")
        params.append(where.thing_name)
    if where.security_profile_name is not None:
        sql.append(f"{alias}.profile = ?")
        params.append(where.security_profile_name)
    if where.behavior_criteria_type is not None:
        sql.append(f"{alias}.criteria_type = ?")
        params.append(where.behavior_criteria_type)
    if where.list_suppressed_alerts is not None:
        sql.append(f"{alias}.suppressed = ?")
        params.append(1 if where.list_suppressed_alerts else 0)
    if where.verification_state is not None:
        sql.append("COALESCE(v.verification_state, 'UNKNOWN') = ?")
        params.append(where.verification_state)
    return sql, params


class DetectStore:
    """Detect's tables in the service's database; implements ``contract.Violations``.

    Open it with :meth:`beside` (the service's open :class:`~.storage.Store`: same database,
    its own connection). Safe to share between threads.
    """

    def __init__(self, db: Store) -> None:
        self._db = db
        self._pg = isinstance(db, PostgresStore)
        self.name = db.name

    @classmethod
    def beside(cls, store: Store) -> DetectStore:
        """Open (and migrate) Detect's tables in the database of an open service store.

        Raises:
            StateError: The database cannot be opened or has a newer Detect schema.
        """
        if isinstance(store, PostgresStore):
            return cls(_PostgresDb(store._url, migrations=DETECT_MIGRATIONS))
        return cls(_SQLiteDb(store.name, migrations=DETECT_MIGRATIONS))

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def schema_version(self) -> int:
        """Detect's schema version in the database."""
        return self._db.schema_version()

    # ------------------------------------------------------------------ engine side
    @contextmanager
    def batch(
        self, things: Iterable[str], *, now: float, known: Optional[Known] = None
    ) -> Iterator[Batch]:
        """A transaction holding the rows of ``things`` (in name order) with what they hold.

        Everything the engine records on the :class:`Batch` is written when the block ends
        without an exception; an exception rolls all of it back.

        Args:
            things: The things.
            now: The batch's time.
            known: ``(thing, states text) -> its active violations`` when the caller holds
                them for exactly that text (it wrote the text last), else None: then they are
                not read again.

        Raises:
            StateError: A database error (the transaction is rolled back).
        """
        names = sorted(set(things))
        db = self._db
        with db._guard(), db._write() as cur:
            batch = Batch(now)
            for start in range(0, len(names), 500):
                self._load(cur, batch, names[start : start + 500], known)
            yield batch
            self._flush(cur, batch)

    def _load(
        self,
        cur: Any,  # noqa: ANN401 - a DB-API cursor
        batch: Batch,
        names: Sequence[str],
        known: Optional[Known],
    ) -> None:
        if not names:
            return
        if self._pg:
            cur.execute(
                "INSERT INTO detect_things (thing, states, last_report)"
                " SELECT t, '{}', 0 FROM unnest(?::text[]) AS t ON CONFLICT DO NOTHING",
                (list(names),),
            )
            cur.execute(
                "SELECT thing, states, last_report FROM detect_things"
                " WHERE thing = ANY(?) ORDER BY thing FOR UPDATE",
                (list(names),),
            )
            marks = "ANY(?)"
            params: Sequence[Any] = (list(names),)
        else:
            marks = "(" + ",".join("?" * len(names)) + ")"
            params = names
            cur.execute(
                f"SELECT thing, states, last_report FROM detect_things WHERE thing IN {marks}",  # noqa: S608
                params,
            )
        for thing, states, last in cur.fetchall():
            batch.texts[thing] = str(states)
            batch.last_report[thing] = float(last)
        for name in names:
            batch.texts.setdefault(name, "{}")
            batch.last_report.setdefault(name, 0.0)
        batch.states.texts = batch.texts
        if known is not None:
            unknown = []
            for name in names:
                rows = known(name, batch.texts[name])
                if rows is None:
                    unknown.append(name)
                else:
                    batch.active.update(rows)
            if not unknown:
                return
            if len(unknown) < len(names):
                names = unknown
                marks = "ANY(?)" if self._pg else "(" + ",".join("?" * len(names)) + ")"
                params = (list(names),) if self._pg else names
        where = "thing = ANY(?)" if self._pg else f"thing IN {marks}"
        cur.execute(
            f"SELECT {_VIOLATION_COLUMNS} FROM detect_violations"  # noqa: S608
            f" WHERE end_time IS NULL AND {where}",
            params,
        )
        for raw in cur.fetchall():
            row = _active_row(raw)
            batch.active[(row.thing, row.profile, row.behavior_name)] = row

    def _flush(self, cur: Any, batch: Batch) -> None:  # noqa: ANN401
        if batch._saved:
            rows = [
                (
                    thing,
                    (
                        json.dumps(batch.states[thing], separators=(",", ":"), sort_keys=True)
                        if thing in batch.states
                        else batch.texts[thing]
                    ),
                    last,
                )
                for thing, last in sorted(batch._saved.items())
            ]
            if self._pg:  # the rows exist (locked): one statement, a column array each,
                # sent binary (%b): psycopg escapes every quote of a text array's members
                # with a regular expression, which was half the engine's time on PostgreSQL
                cur.execute(
                    "UPDATE detect_things t SET states = u.s, last_report = u.l FROM"
                    " unnest(%b::text[], %b::text[], %b::double precision[]) AS u(t, s, l)"
                    " WHERE t.thing = u.t",
                    [list(column) for column in zip(*rows)],
                )
            else:
                cur.executemany(_UPSERT_STATE, rows)
        ended = {row.violation_id: at for at, row in batch._ended}
        fresh = {row.violation_id for row in batch._new}
        closing = [(at, r) for at, r in batch._ended if r.violation_id not in fresh]
        if closing:  # first, so that a new violation of the same behavior may start
            cur.executemany(
                "UPDATE detect_violations SET end_time = ?, last_value = ?, last_time = ?"
                " WHERE violation_id = ?",
                [(at, _dumps(r.last_value), r.last_time, r.violation_id) for at, r in closing],
            )
        if batch._new:
            cur.executemany(
                _INSERT_VIOLATION,
                [
                    (
                        r.violation_id,
                        r.thing,
                        r.profile,
                        r.behavior_name,
                        _dumps(r.behavior),
                        r.criteria_type,
                        int(r.suppressed),
                        r.start_time,
                        _dumps(r.last_value),
                        r.last_time,
                        _dumps(r.additional_info),
                        ended.get(r.violation_id),
                    )
                    for r in batch._new
                ],
            )
        updated = [r for vid, r in batch._updated.items() if vid not in ended and vid not in fresh]
        if updated:
            self._write_last(cur, updated)
        if batch._ended:
            self._current_verification(cur, batch)
        if batch.events:
            cur.executemany(
                _INSERT_EVENT,
                [
                    (
                        e.violation_id,
                        e.thing,
                        e.profile,
                        _dumps(e.behavior),
                        e.criteria_type,
                        int(e.suppressed),
                        e.event_type,
                        e.event_time,
                        _dumps(e.metric_value),
                        _dumps(e.additional_info),
                    )
                    for e in batch.events
                ],
            )
        if batch._population:
            latest = {row[:3]: row for row in batch._population}
            cur.executemany(_UPSERT_POPULATION, [latest[key] for key in sorted(latest)])

    def _write_last(self, cur: Any, rows: Sequence[ActiveRow]) -> None:  # noqa: ANN401
        """Write the rows' last value and time (unless the database has a later one)."""
        if self._pg:
            cur.execute(
                "UPDATE detect_violations v SET last_value = u.val, last_time = u.t FROM"
                " unnest(%b::text[], %b::text[], %b::double precision[]) AS u(id, val, t)"
                " WHERE v.violation_id = u.id AND v.last_time <= u.t",
                [
                    [r.violation_id for r in rows],
                    [_dumps(r.last_value) for r in rows],
                    [r.last_time for r in rows],
                ],
            )
        else:
            cur.executemany(
                "UPDATE detect_violations SET last_value = ?, last_time = ?"
                " WHERE violation_id = ? AND last_time <= ?",
                [(_dumps(r.last_value), r.last_time, r.violation_id, r.last_time) for r in rows],
            )
        for r in rows:
            r.written = (r.last_value, r.last_time)

    def _current_verification(self, cur: Any, batch: Batch) -> None:  # noqa: ANN401
        """The ending events with their violation's verification state as stored now.

        A caller's rows (``known``) may be older than a PutVerificationStateOnViolation.
        """
        ids = sorted({row.violation_id for _at, row in batch._ended})
        found: dict[str, tuple[Optional[str], Optional[str]]] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            where = "= ANY(?)" if self._pg else "IN (" + ",".join("?" * len(part)) + ")"
            cur.execute(
                "SELECT violation_id, verification_state, verification_description"  # noqa: S608
                f" FROM detect_violations WHERE violation_id {where}",
                (part,) if self._pg else part,
            )
            found.update({str(v): (s, d) for v, s, d in cur.fetchall()})
        for i, event in enumerate(batch.events):
            if event.violation_id in found:
                state, description = found[event.violation_id]
                batch.events[i] = replace(
                    event, verification_state=state, verification_description=description
                )
        for _at, row in batch._ended:
            if row.violation_id in found:
                row.verification_state, row.verification_description = found[row.violation_id]

    def write_last_values(self, rows: Sequence[ActiveRow]) -> None:
        """Write the last values :meth:`Batch.still_violating` held back (engine's stop)."""
        pending = [r for r in rows if (r.last_value, r.last_time) != r.written]
        if not pending:
            return
        db = self._db
        with db._guard(), db._write() as cur:
            self._write_last(cur, pending)

    def active_keys(self) -> list[tuple[str, str, str, str]]:
        """Every active violation as ``(thing, profile, behavior name, behavior JSON)``."""
        db = self._db
        with db._guard(), db._read() as cur:
            cur.execute(
                "SELECT thing, profile, behavior_name, behavior FROM detect_violations"
                " WHERE end_time IS NULL ORDER BY thing",
                (),
            )
            return [(str(a), str(b), str(c), str(d)) for a, b, c, d in cur.fetchall()]

    def things_with_violations_since(self, before: float) -> list[str]:
        """The things with an active violation whose last report arrived before ``before``."""
        db = self._db
        with db._guard(), db._read() as cur:
            cur.execute(
                "SELECT DISTINCT v.thing FROM detect_violations v"
                " JOIN detect_things t ON t.thing = v.thing"
                " WHERE v.end_time IS NULL AND t.last_report < ? ORDER BY v.thing",
                (before,),
            )
            return [str(row[0]) for row in cur.fetchall()]

    def known_things(self) -> list[str]:
        """Every thing the service has stored a report of (``all/registered-things``)."""
        db = self._db
        with db._guard(), db._read() as cur:
            cur.execute("SELECT name FROM things ORDER BY name", ())
            return [str(row[0]) for row in cur.fetchall()]

    def population(self, profile: str, behavior: str, since: float) -> list[float]:
        """The latest values of a statistical behavior's things observed at or after ``since``."""
        db = self._db
        with db._guard(), db._read() as cur:
            cur.execute(
                "SELECT value FROM detect_population WHERE profile = ? AND behavior = ?"
                " AND at >= ?",
                (profile, behavior, since),
            )
            return [float(row[0]) for row in cur.fetchall()]

    def set_threshold(
        self, profile: str, behavior: str, value: Optional[float], devices: int, at: float
    ) -> None:
        """Keep the percentile computed for a statistical behavior."""
        db = self._db
        with db._guard(), db._write() as cur:
            cur.execute(_UPSERT_THRESHOLD, (profile, behavior, value, devices, at))

    def thresholds(self) -> dict[tuple[str, str], tuple[Optional[float], int, float]]:
        """``(profile, behavior) -> (value, devices, computed_at)`` of every statistical one."""
        db = self._db
        with db._guard(), db._read() as cur:
            cur.execute(
                "SELECT profile, behavior, value, devices, computed_at FROM detect_thresholds", ()
            )
            return {
                (str(p), str(b)): (None if v is None else float(v), int(n), float(at))
                for p, b, v, n, at in cur.fetchall()
            }

    def forget_population(self, keep: Iterable[tuple[str, str]]) -> None:
        """Drop the populations and thresholds of statistical behaviors no longer defined."""
        keep_set = set(keep)
        db = self._db
        with db._guard(), db._write() as cur:
            cur.execute("SELECT DISTINCT profile, behavior FROM detect_thresholds", ())
            known = {(str(p), str(b)) for p, b in cur.fetchall()}
            cur.execute("SELECT DISTINCT profile, behavior FROM detect_population", ())
            known |= {(str(p), str(b)) for p, b in cur.fetchall()}
            for profile, behavior in sorted(known - keep_set):
                for table in ("detect_thresholds", "detect_population"):
                    cur.execute(
                        f"DELETE FROM {table} WHERE profile = ? AND behavior = ?",  # noqa: S608
                        (profile, behavior),
                    )

    # ------------------------------------------------------------------ API side
    def list_active(self, where: ViolationFilter, *, limit: int, token: Optional[str]) -> Page:
        """``activeViolations`` items (``ActiveViolation`` shape), oldest start first.

        Raises:
            BadTokenError: ``token`` is not one this store made.
        """
        conditions, params = _filters(where, "v")
        if token is not None:
            start, vid = read_token(token)
            conditions.append("(v.start_time > ? OR (v.start_time = ? AND v.violation_id > ?))")
            params += [start, start, str(vid)]
        sql = (
            f"SELECT {_VIOLATION_COLUMNS} FROM detect_violations v WHERE v.end_time IS NULL"  # noqa: S608
            + "".join(f" AND {c}" for c in conditions)
            + " ORDER BY v.start_time, v.violation_id LIMIT ?"
        )
        db = self._db
        with db._guard(), db._read() as cur:
            cur.execute(sql, (*params, limit + 1))
            rows = [_active_row(raw) for raw in cur.fetchall()]
        more = len(rows) > limit
        rows = rows[:limit]
        next_token = make_token(rows[-1].start_time, rows[-1].violation_id) if more else None
        return Page([r.to_json() for r in rows], next_token)

    def list_events(
        self,
        where: ViolationFilter,
        *,
        start_time: float,
        end_time: float,
        limit: int,
        token: Optional[str],
    ) -> Page:
        """``violationEvents`` items (``ViolationEvent`` shape) in [start_time, end_time).

        Raises:
            BadTokenError: ``token`` is not one this store made.
        """
        conditions, params = _filters(where, "e")
        conditions[:0] = ["e.event_time >= ?", "e.event_time < ?"]
        params[:0] = [start_time, end_time]
        if token is not None:
            at, eid = read_token(token)
            if not isinstance(eid, int) or isinstance(eid, bool):
                raise BadTokenError("nextToken: not a token this service made")
            conditions.append("(e.event_time > ? OR (e.event_time = ? AND e.id > ?))")
            params += [at, at, eid]
        sql = (
            "SELECT e.id, e.violation_id, e.thing, e.profile, e.behavior, e.criteria_type,"  # noqa: S608
            " e.suppressed, e.event_type, e.event_time, e.metric_value, e.additional_info,"
            " v.verification_state, v.verification_description FROM detect_events e"
            " LEFT JOIN detect_violations v ON v.violation_id = e.violation_id WHERE "
            + " AND ".join(conditions)
            + " ORDER BY e.event_time, e.id LIMIT ?"
        )
        db = self._db
        with db._guard(), db._read() as cur:
            cur.execute(sql, (*params, limit + 1))
            raw = cur.fetchall()
        more = len(raw) > limit
        raw = raw[:limit]
        items = [
            EventRow(
                vid,
                thing,
                profile,
                _loads(behavior) or {},
                ctype,
                bool(suppressed),
                etype,
                float(at),
                _loads(value),
                _loads(info),
                state,
                desc,
            ).to_json()
            for (
                _id,
                vid,
                thing,
                profile,
                behavior,
                ctype,
                suppressed,
                etype,
                at,
                value,
                info,
                state,
                desc,
            ) in raw
        ]
        next_token = make_token(float(raw[-1][8]), int(raw[-1][0])) if more else None
        return Page(items, next_token)

    def set_verification_state(
        self, violation_id: str, state: str, description: Optional[str]
    ) -> bool:
        """Set a violation's verification state; False when the id is unknown.

        Raises:
            ValueError: ``state`` is not one of AWS's verification states.
        """
        if state not in VERIFICATION_STATES:
            raise ValueError(f"verificationState: expected one of {', '.join(VERIFICATION_STATES)}")
        db = self._db
        with db._guard(), db._write() as cur:
            cur.execute("SELECT 1 FROM detect_violations WHERE violation_id = ?", (violation_id,))
            if cur.fetchone() is None:
                return False
            cur.execute(
                "UPDATE detect_violations SET verification_state = ?,"
                " verification_description = ? WHERE violation_id = ?",
                (state, description, violation_id),
            )
            return True
