"""Storage of the local Device Defender service: metric values per thing, with their time.

Every accepted report adds a row to ``reports``, one row per Device Defender metric value
(:mod:`defender_agent.service.metrics_map`) to ``metric_values``, and updates its thing in
``things`` (first and last seen, number of reports), all in one transaction. A value is kept
as the JSON text of its ``MetricValue`` member (``{"ports": [22, 443]}``), with ``count`` and
``number`` also in typed columns for queries. Times are epoch seconds (UTC) as the service
received the report: the report has no time of its own (docs/protocol.md §2.3). Time ranges are
half-open, ``since <= t < until``, so consecutive windows never count a value twice.

Two back ends share the schema and the SQL (parameterised only):

* **SQLite**, the default: a path or ``sqlite:///path`` (``sqlite://relative/path`` and
  ``sqlite://:memory:`` too). The standard library; nothing to install. WAL journal, a busy
  timeout, and one connection behind a lock, so MQTT callback threads may call
  :meth:`Store.record` concurrently; other processes may read (and write) the file meanwhile.
* **PostgreSQL**: ``postgresql://user@host:port/db`` (psycopg 3, the ``postgresql`` extra).
  Several service processes may write to one database: the thing row is updated with an
  upsert, and each record is one transaction.

The schema is versioned: ``schema_version`` has a row per applied migration, and
:data:`MIGRATIONS` are applied in order at open, in one transaction that holds the write lock
(SQLite ``BEGIN IMMEDIATE``; a PostgreSQL advisory lock), so concurrent openers migrate once.
A database with a version newer than this code knows is refused with a :class:`StateError`.
Nothing is cached in memory: queries go to the database, and :meth:`Store.export` pages
through it.

>>> store = open_store("sqlite://:memory:")
>>> store.record("gw-1", 7, 1_700_000_000.0, "json", [MetricValue("aws:all-bytes-out", count=9)])
>>> [(v.metric, v.value.to_json()) for v in store.metric_values("gw-1", "aws:all-bytes-out")]
[('aws:all-bytes-out', {'count': 9})]
>>> store.close()
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Optional, Protocol, Union

from defender_agent.dburl import is_keyword_string, mask_db_url, mask_secrets_in
from defender_agent.errors import ConfigError, StateError
from defender_agent.service.metrics_map import MetricValue
from defender_agent.state import default_state_dir

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoredReport",
    "StoredValue",
    "ThingSummary",
    "default_url",
    "open_store",
]


@dataclass(frozen=True)
class Migration:
    """One step of the schema.

    Attributes:
        version: The schema version after this step (1, 2, … in order).
        description: What it changes, kept in ``schema_version``.
        statements: SQL run in order; ``{pk}`` is the dialect's auto-increment primary key.
    """

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "things, reports and metric values",
        (
            """CREATE TABLE things (
                name TEXT PRIMARY KEY,
                first_seen DOUBLE PRECISION NOT NULL,
                last_seen DOUBLE PRECISION NOT NULL,
                reports BIGINT NOT NULL
            )""",
            """CREATE TABLE reports (
                id {pk},
                thing TEXT NOT NULL REFERENCES things (name),
                report_id BIGINT,
                received_at DOUBLE PRECISION NOT NULL,
                format TEXT NOT NULL
            )""",
            "CREATE INDEX reports_thing_received ON reports (thing, received_at)",
            """CREATE TABLE metric_values (
                id {pk},
                report BIGINT NOT NULL REFERENCES reports (id),
                thing TEXT NOT NULL,
                metric TEXT NOT NULL,
                received_at DOUBLE PRECISION NOT NULL,
                count BIGINT,
                number DOUBLE PRECISION,
                value TEXT NOT NULL
            )""",
            (
                "CREATE INDEX metric_values_thing_metric ON metric_values"
                " (thing, metric, received_at, id)"
            ),
            "CREATE INDEX metric_values_received ON metric_values (received_at, id)",
            "CREATE INDEX metric_values_report ON metric_values (report)",
        ),
    ),
    Migration(
        2,
        "the last accepted report of each thing (for the dashboard)",
        (
            "ALTER TABLE things ADD COLUMN last_report TEXT",
            "ALTER TABLE things ADD COLUMN last_format TEXT",
        ),
    ),
    Migration(
        3,
        "the per-thing metric index also holds count and number (charts read only the index)",
        (
            "DROP INDEX metric_values_thing_metric",
            (
                "CREATE INDEX metric_values_thing_metric ON metric_values"
                " (thing, metric, received_at, id, count, number)"
            ),
        ),
    ),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1].version

_SCHEMA_TABLE: Final = """CREATE TABLE IF NOT EXISTS {table} (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)"""
_INSERT_VALUE: Final = """INSERT INTO metric_values
    (report, thing, metric, received_at, count, number, value) VALUES (?, ?, ?, ?, ?, ?, ?)"""
_SELECT: Final = """SELECT v.id, v.thing, v.metric, v.received_at, r.report_id, r.format, v.value
    FROM metric_values v JOIN reports r ON r.id = v.report"""
_SELECT_VALUES: Final = f"""{_SELECT}
    WHERE v.thing = ? AND v.metric = ? AND v.received_at >= ? AND v.received_at < ?
    ORDER BY v.received_at, v.id LIMIT ?"""
_SELECT_PAGE: Final = f"""{_SELECT}
    WHERE v.received_at >= ? AND (v.received_at > ? OR v.id > ?) AND v.received_at < ?
    ORDER BY v.received_at, v.id LIMIT ?"""
_EXPORT_PAGE: Final = 500  # rows fetched per query by export(): memory stays bounded


@dataclass(frozen=True)
class ThingSummary:
    """A thing that has sent reports.

    Attributes:
        name: The thing name (from the report topic).
        first_seen: When its first stored report arrived (epoch seconds).
        last_seen: When its last stored report arrived (epoch seconds).
        reports: How many reports were stored.
    """

    name: str
    first_seen: float
    last_seen: float
    reports: int

    def to_json(self) -> dict[str, object]:
        """A JSON object with the same keys."""
        return {
            "thing": self.name,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "reports": self.reports,
        }


@dataclass(frozen=True)
class StoredValue:
    """One stored metric value.

    Attributes:
        thing: The thing that reported it.
        metric: The Device Defender metric name.
        timestamp: When the report arrived (epoch seconds).
        report_id: The report's ``report_id``, if it had one.
        value: The value.
    """

    thing: str
    metric: str
    timestamp: float
    report_id: Optional[int]
    value: MetricValue

    def to_json(self) -> dict[str, object]:
        """``{"thing", "metric", "timestamp", "report_id", "value"}``; value as AWS shapes it."""
        return {
            "thing": self.thing,
            "metric": self.metric,
            "timestamp": self.timestamp,
            "report_id": self.report_id,
            "value": self.value.to_json(),
        }


@dataclass(frozen=True)
class StoredReport:
    """One accepted report as the store keeps it.

    Attributes:
        thing: The thing name (from the report topic).
        report_id: The report's ``report_id``; None if it had none.
        received_at: When it arrived (epoch seconds): the time of its values.
        fmt: The report encoding, ``json`` or ``cbor``.
        values: Its metric values (may be empty).
        document: The decoded report as JSON text (CBOR decoded too), kept as the thing's
            last report when it is its newest (``things.last_report``); None keeps none.
    """

    thing: str
    report_id: Optional[int]
    received_at: float
    fmt: str
    values: Sequence[MetricValue]
    document: Optional[str] = None


#: ``json.dumps(value, allow_nan=False)``: one encoder for every value (dumps with a keyword
#: builds a new one per call, a tenth of the writer's time per report).
_ENCODE_JSON: Final = json.JSONEncoder(allow_nan=False).encode


def _value_text(value: MetricValue) -> str:
    """``json.dumps(value.to_json(), allow_nan=False)``; written directly for a count or a number.

    Seven of a typical report's eleven values are counts: formatting them directly saves the
    writer ~50 us a report.

    >>> [_value_text(MetricValue("m", count=c)) for c in (0, 2**40)]
    ['{"count": 0}', '{"count": 1099511627776}']
    >>> [_value_text(MetricValue("m", number=n)) for n in (0.5, 1e-07, -0.0, 1e22)]
    ['{"number": 0.5}', '{"number": 1e-07}', '{"number": -0.0}', '{"number": 1e+22}']
    >>> _value_text(MetricValue("m", ports=(22, 443)))
    '{"ports": [22, 443]}'
    """
    count, number = value.count, value.number
    if type(count) is int:  # never a bool here: the member is a count
        return f'{{"count": {count!r}}}'
    if type(number) is float and math.isfinite(number):
        return f'{{"number": {number!r}}}'
    return _ENCODE_JSON(value.to_json())


def _value_rows(report: StoredReport) -> list[tuple[object, ...]]:
    """The ``metric_values`` columns after ``(report, thing)`` of each value of ``report``.

    Raises:
        ValueError: The thing is empty, the time or a value is not finite.
    """
    at = report.received_at
    if not report.thing or not math.isfinite(at):
        raise ValueError(f"bad thing {report.thing!r} or time {at!r}")
    return [(v.metric, at, v.count, v.number, _value_text(v)) for v in report.values]


class _Cursor(Protocol):
    """What the store needs of a DB-API cursor (sqlite3 and psycopg both fit)."""

    def execute(self, sql: str, params: Sequence[Any], /) -> object: ...

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> object: ...

    def fetchone(self) -> Any: ...  # noqa: ANN401 - a row, or None

    def fetchall(self) -> list[Any]: ...


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Store(ABC):
    """A metric value store; :func:`open_store` makes one.

    Safe to share between threads. Use one store per process (never across ``fork``).
    A store is also a context manager that closes it.

    Attributes:
        name: The file or URL (without a password), for messages.
    """

    _PK: ClassVar[str]  # the dialect's auto-increment primary key column type
    _NO_LIMIT: ClassVar[Optional[int]]  # what LIMIT takes for "no limit"
    _UPSERT_THING: ClassVar[str]
    #: The table of applied migrations (a subclass with other tables keeps its own).
    _VERSION_TABLE: ClassVar[str] = "schema_version"
    # False: a commit returns before it reaches the disk (SQLite ``synchronous = NORMAL`` in
    # WAL mode, PostgreSQL ``synchronous_commit = off``): safe from a crash of the process,
    # not of the machine, and never corrupt. Only for derived data (Detect's state).
    _SYNC_COMMIT: ClassVar[bool] = True

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ dialect hooks
    @abstractmethod
    def _write(self) -> AbstractContextManager[_Cursor]:
        """A cursor in a write transaction, under the store lock; commits on success."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[_Cursor]:
        """A cursor for single-statement reads, under the store lock."""

    @abstractmethod
    def _insert_report(self, cur: _Cursor, params: Sequence[object]) -> int:
        """Insert a ``reports`` row; returns its id."""

    def _insert_reports(self, cur: _Cursor, headers: Sequence[Sequence[object]]) -> list[int]:
        """Insert ``reports`` rows, in order; returns their ids (one statement each here)."""
        return [self._insert_report(cur, header) for header in headers]

    def _upsert_things(self, cur: _Cursor, seen: Sequence[StoredReport]) -> None:
        """Add or update the thing of each report, in the order given (by name)."""
        cur.executemany(
            self._UPSERT_THING,
            [(r.thing, r.received_at, r.received_at, r.document, r.fmt) for r in seen],
        )

    def _insert_values(self, cur: _Cursor, rows: Sequence[Sequence[object]]) -> None:
        """Insert ``metric_values`` rows (the columns of ``_INSERT_VALUE``)."""
        cur.executemany(_INSERT_VALUE, rows)

    @abstractmethod
    def _db_errors(self) -> tuple[type[Exception], ...]:
        """The driver's error classes, turned into StateError."""

    def _after_error(self) -> None:  # noqa: B027 - an optional hook
        """Forget a broken connection (the next call reconnects), where the driver can."""

    def _scrub(self, text: str) -> str:
        """A driver's error message without the connection's secrets."""
        return text

    @abstractmethod
    def _close(self) -> None: ...

    # ------------------------------------------------------------------ public API
    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except self._db_errors() as exc:
            self._after_error()
            why = self._scrub(_one_line(exc))
            raise StateError(f"service database {self.name}: {why}") from exc

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        """Apply the migrations newer than the database, in one locked transaction."""
        known = migrations[-1].version if migrations else 0
        with self._guard(), self._write() as cur:
            self._lock_schema(cur)
            cur.execute(_SCHEMA_TABLE.format(table=self._VERSION_TABLE), ())
            cur.execute(f"SELECT MAX(version) FROM {self._VERSION_TABLE}", ())  # noqa: S608 - a class constant
            current = int(cur.fetchone()[0] or 0)
            if current > known:
                raise StateError(
                    f"service database {self.name} has schema version {current}, newer than "
                    f"this defender-agent knows ({known}): upgrade defender-agent"
                )
            for migration in migrations:
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    cur.execute(statement.format(pk=self._PK), ())
                cur.execute(
                    f"INSERT INTO {self._VERSION_TABLE} (version, description, applied_at)"  # noqa: S608
                    " VALUES (?, ?, ?)",
                    (migration.version, migration.description, time.time()),
                )

    def _lock_schema(self, cur: _Cursor) -> None:  # noqa: B027 - an optional hook
        """Serialise migrations between processes (beyond the write transaction)."""

    def schema_version(self) -> int:
        """The schema version of the database."""
        with self._guard(), self._read() as cur:
            cur.execute(f"SELECT MAX(version) FROM {self._VERSION_TABLE}", ())  # noqa: S608 - a class constant
            return int(cur.fetchone()[0] or 0)

    def record(
        self,
        thing: str,
        report_id: Optional[int],
        received_at: float,
        fmt: str,
        values: Sequence[MetricValue],
    ) -> None:
        """Store one accepted report's values and update its thing, in one transaction.

        Args:
            thing: The thing name.
            report_id: The report's ``report_id`` (None if it had none).
            received_at: When the report arrived (epoch seconds): the values' time.
            fmt: The report encoding (``json`` or ``cbor``).
            values: The report's metric values (may be empty).

        Raises:
            ValueError: ``thing`` is empty, ``received_at`` or a value is not finite.
            StateError: The database failed (it is unchanged).
        """
        self.record_many([StoredReport(thing, report_id, received_at, fmt, values)])

    def record_many(self, reports: Sequence[StoredReport]) -> None:
        """Store several accepted reports in one transaction (all or nothing).

        The same rows as :meth:`record` for each report. The thing rows are updated first,
        in name order, so that two processes writing batches to one PostgreSQL database
        take their row locks in the same order and never deadlock.

        Raises:
            ValueError: A thing is empty, a time or a value is not finite (nothing is kept).
            StateError: The database failed (nothing of the batch is kept).
        """
        rows = [(report, _value_rows(report)) for report in reports]
        if not rows:
            return
        with self._guard(), self._write() as cur:
            ordered = sorted(reports, key=lambda r: r.thing)
            self._upsert_things(cur, ordered)
            headers = [(r.thing, r.report_id, r.received_at, r.fmt) for r, _ in rows]
            row_ids = self._insert_reports(cur, headers)
            value_rows: list[tuple[object, ...]] = []
            for (report, values), row_id in zip(rows, row_ids):
                value_rows.extend((row_id, report.thing, *value) for value in values)
            if value_rows:
                self._insert_values(cur, value_rows)

    def things(self) -> list[ThingSummary]:
        """Every thing that has sent a stored report, by name."""
        sql = "SELECT name, first_seen, last_seen, reports FROM things ORDER BY name"
        with self._guard(), self._read() as cur:
            cur.execute(sql, ())
            rows = cur.fetchall()
        return [ThingSummary(str(n), float(f), float(la), int(r)) for n, f, la, r in rows]

    def metrics(self, thing: str) -> list[str]:
        """The metric names stored for ``thing``, sorted."""
        sql = "SELECT DISTINCT metric FROM metric_values WHERE thing = ? ORDER BY metric"
        with self._guard(), self._read() as cur:
            cur.execute(sql, (thing,))
            return [str(row[0]) for row in cur.fetchall()]

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``: which SQL :meth:`query` takes."""
        return "postgresql" if isinstance(self, PostgresStore) else "sqlite"

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read-only statement (``?`` placeholders), for read-only views.

        The dashboard's queries (:mod:`defender_agent.web.data`) use it on a store of their
        own, so that reading never waits for the writer's lock in this process.

        Raises:
            StateError: The database failed.
        """
        with self._guard(), self._read() as cur:
            cur.execute(sql, params)
            return [tuple(row) for row in cur.fetchall()]

    def last_report(self, thing: str) -> Optional[tuple[float, str, str]]:
        """The thing's newest stored report: ``(received_at, format, JSON text)``, or None.

        None when the thing is unknown or its reports were stored without their document
        (by a version before schema 2, or by a caller that passed none). The time is the
        thing's last report's, even when that one came without a document.
        """
        sql = "SELECT last_seen, last_format, last_report FROM things WHERE name = ?"
        with self._guard(), self._read() as cur:
            cur.execute(sql, (thing,))
            row = cur.fetchone()
        if row is None or row[2] is None:
            return None
        return float(row[0]), str(row[1]), str(row[2])

    def metric_values(
        self,
        thing: str,
        metric: str,
        since: Optional[float] = None,
        until: Optional[float] = None,
        limit: Optional[int] = None,
    ) -> list[StoredValue]:
        """The values of one metric of one thing, oldest first.

        Args:
            thing: The thing name.
            metric: The Device Defender metric name (``aws:…`` or a custom metric).
            since: Only values received at or after this time (epoch seconds).
            until: Only values received before this time.
            limit: At most this many (the oldest in the range); None for all.
        """
        low, high = _bounds(since, until)
        params = (thing, metric, low, high, self._NO_LIMIT if limit is None else limit)
        with self._guard(), self._read() as cur:
            cur.execute(_SELECT_VALUES, params)
            rows = cur.fetchall()
        return [_stored(row)[0] for row in rows]

    def export(
        self, since: Optional[float] = None, until: Optional[float] = None
    ) -> Iterator[dict[str, object]]:
        """Every stored value in the range, oldest first, as JSON-lines records.

        Each record is :meth:`StoredValue.to_json` plus ``format`` (the report encoding). The
        database is read a page at a time, without holding the store between pages.
        """
        low, high = _bounds(since, until)
        last_time, last_id = low, -1
        while True:
            with self._guard(), self._read() as cur:
                cur.execute(_SELECT_PAGE, (last_time, last_time, last_id, high, _EXPORT_PAGE))
                rows = cur.fetchall()
            for row in rows:
                stored, fmt = _stored(row)
                yield {**stored.to_json(), "format": fmt}
            if len(rows) < _EXPORT_PAGE:
                return
            last_time, last_id = float(rows[-1][3]), int(rows[-1][0])

    def close(self) -> None:
        """Close the connection; later calls raise StateError."""
        with self._lock:
            self._close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bounds(since: Optional[float], until: Optional[float]) -> tuple[float, float]:
    return (-math.inf if since is None else since, math.inf if until is None else until)


def _stored(row: Sequence[Any]) -> tuple[StoredValue, str]:
    _id, thing, metric, received_at, report_id, fmt, text = row
    value = MetricValue.from_json(metric, json.loads(text))
    report = None if report_id is None else int(report_id)
    return StoredValue(str(thing), str(metric), float(received_at), report, value), str(fmt)


def _retry_busy(action: Callable[[], object], timeout: float) -> None:
    """Run ``action``, retrying while SQLite says the database is busy or locked.

    SQLite's busy timeout does not cover every case: switching to WAL and
    recovering a WAL left by another process can answer ``database is locked``
    at once when two processes open a new file together.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            action()
        except (sqlite3.OperationalError, StateError) as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        else:
            return


class SQLiteStore(Store):
    """A store in one SQLite file (WAL journal, busy timeout, one connection and a lock).

    Args:
        path: The database file, or ``:memory:``.
        create: Create the file (and its directory) when missing; False raises StateError.
        busy_timeout: Seconds to wait for another process's write lock.
        migrations: The schema steps (the default is this version's).

    Raises:
        StateError: The file is missing (``create=False``), unusable, not a database, or of a
            newer schema.
    """

    _PK = "INTEGER PRIMARY KEY"
    _NO_LIMIT = -1
    _UPSERT_THING = """INSERT INTO things
        (name, first_seen, last_seen, reports, last_report, last_format)
        VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (name) DO UPDATE SET
        first_seen = MIN(things.first_seen, excluded.first_seen),
        last_seen = MAX(things.last_seen, excluded.last_seen),
        reports = things.reports + 1,
        last_report = CASE WHEN excluded.last_seen >= things.last_seen
            AND excluded.last_report IS NOT NULL
            THEN excluded.last_report ELSE things.last_report END,
        last_format = CASE WHEN excluded.last_seen >= things.last_seen
            AND excluded.last_report IS NOT NULL
            THEN excluded.last_format ELSE things.last_format END"""

    def __init__(
        self,
        path: Union[str, Path],
        *,
        create: bool = True,
        busy_timeout: float = 10.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        super().__init__(str(path))
        self._conn: Optional[sqlite3.Connection] = None
        if str(path) != ":memory:":
            path = Path(path).expanduser()
            self.name = str(path)
            if not path.exists() and not create:
                raise StateError(f"no service database at {path}")
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(f"service database {path}: {exc.strerror or exc}") from exc
        with self._guard():
            conn = sqlite3.connect(
                str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._conn = conn
            try:
                _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL"), busy_timeout)
                conn.execute("PRAGMA foreign_keys = ON")
                if not self._SYNC_COMMIT:
                    conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error:
                self._close()
                raise
        try:
            _retry_busy(lambda: self._migrate(migrations), busy_timeout)
        except StateError:
            self._close()
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"service database {self.name}: the store is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[_Cursor]:
        with self._lock:
            conn = self._connection()
            cur = conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                yield cur
                cur.execute("COMMIT")
            finally:
                if conn.in_transaction:  # an exception: nothing of the transaction is kept
                    conn.execute("ROLLBACK")
                cur.close()

    @contextmanager
    def _read(self) -> Iterator[_Cursor]:
        with self._lock:
            cur = self._connection().cursor()
            try:
                yield cur
            finally:
                cur.close()

    def _insert_report(self, cur: _Cursor, params: Sequence[object]) -> int:
        assert isinstance(cur, sqlite3.Cursor)
        cur.execute(
            "INSERT INTO reports (thing, report_id, received_at, format) VALUES (?, ?, ?, ?)",
            params,
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _db_errors(self) -> tuple[type[Exception], ...]:
        return (sqlite3.Error,)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_ADVISORY_LOCK: Final = 0x6465_6661_6765_6E74  # "defagent": serialises schema migrations


class PostgresStore(Store):
    """A store in a PostgreSQL database (psycopg 3), safe for several writing processes.

    One connection per store, used under a lock; a connection that breaks (server restart)
    is replaced at the next call, and the call that saw it fails with StateError.

    Args:
        url: ``postgresql://user[:password]@host:port/db`` (any libpq URL).
        connect_timeout: Seconds to wait for the server.
        migrations: The schema steps (the default is this version's).

    Raises:
        ConfigError: psycopg is not installed.
        StateError: The server cannot be reached, or the schema is newer than this code.
    """

    _PK = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    _NO_LIMIT = None  # LIMIT NULL is LIMIT ALL
    _UPSERT_THING = """INSERT INTO things
        (name, first_seen, last_seen, reports, last_report, last_format)
        VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (name) DO UPDATE SET
        first_seen = LEAST(things.first_seen, excluded.first_seen),
        last_seen = GREATEST(things.last_seen, excluded.last_seen),
        reports = things.reports + 1,
        last_report = CASE WHEN excluded.last_seen >= things.last_seen
            AND excluded.last_report IS NOT NULL
            THEN excluded.last_report ELSE things.last_report END,
        last_format = CASE WHEN excluded.last_seen >= things.last_seen
            AND excluded.last_report IS NOT NULL
            THEN excluded.last_format ELSE things.last_format END"""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 10.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        super().__init__(_redact(url))
        try:
            import psycopg  # noqa: PLC0415 - optional dependency, only for PostgreSQL URLs
        except ImportError as exc:
            raise ConfigError(
                f"{self.name}: PostgreSQL storage needs psycopg 3: "
                "pip install 'defender-agent[postgresql]'"
            ) from exc
        self._psycopg = psycopg
        self._url = url
        self._timeout = max(1, math.ceil(connect_timeout))
        self._conn: Optional[psycopg.Connection[tuple[Any, ...]]] = None
        self._closed = False
        try:
            self._migrate(migrations)
        except StateError:
            self._close()
            raise

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._closed:
            raise StateError(f"service database {self.name}: the store is closed")
        if self._conn is None:
            self._conn = self._psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=self._timeout,
                application_name="defender-agent",
            )
            if not self._SYNC_COMMIT:
                self._conn.execute("SET synchronous_commit = off")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[_Cursor]:
        with self._lock:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                yield _PgCursor(cur)

    @contextmanager
    def _read(self) -> Iterator[_Cursor]:
        with self._lock, self._connection().cursor() as cur:
            yield _PgCursor(cur)

    def _lock_schema(self, cur: _Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(?)", (_ADVISORY_LOCK,))

    def _insert_report(self, cur: _Cursor, params: Sequence[object]) -> int:
        cur.execute(
            "INSERT INTO reports (thing, report_id, received_at, format)"
            " VALUES (?, ?, ?, ?) RETURNING id",
            params,
        )
        return int(cur.fetchone()[0])

    def _insert_reports(self, cur: _Cursor, headers: Sequence[Sequence[object]]) -> list[int]:
        """The ids from the identity's sequence in one round trip, then one pipelined batch."""
        if len(headers) <= 1:
            return [self._insert_report(cur, header) for header in headers]
        cur.execute(
            "SELECT nextval(pg_get_serial_sequence('reports', 'id'))"
            " FROM generate_series(1, ?::integer)",
            (len(headers),),
        )
        ids = [int(row[0]) for row in cur.fetchall()]
        cur.execute(
            "INSERT INTO reports (id, thing, report_id, received_at, format) SELECT * FROM"
            " unnest(?::bigint[], ?::text[], ?::bigint[], ?::double precision[], ?::text[])",
            [ids, *(list(column) for column in zip(*headers))],
        )
        return ids

    def _upsert_things(self, cur: _Cursor, seen: Sequence[StoredReport]) -> None:
        """One statement: each thing once (first and last time, count, last report), by name."""
        things: dict[str, list[Any]] = {}
        for r in seen:
            at, doc = r.received_at, r.document
            row = things.get(r.thing)
            if row is None:
                things[r.thing] = [at, at, 1, doc, r.fmt]
                continue
            if doc is not None and at >= row[1]:
                row[3], row[4] = doc, r.fmt
            row[0], row[1], row[2] = min(row[0], at), max(row[1], at), row[2] + 1
        columns = [[row[i] for row in things.values()] for i in range(5)]
        cur.execute(
            "INSERT INTO things (name, first_seen, last_seen, reports, last_report, last_format)"
            " SELECT * FROM unnest(?::text[], ?::double precision[], ?::double precision[],"
            " ?::bigint[], ?::text[], ?::text[])"
            " ON CONFLICT (name) DO UPDATE SET"
            " first_seen = LEAST(things.first_seen, excluded.first_seen),"
            " last_seen = GREATEST(things.last_seen, excluded.last_seen),"
            " reports = things.reports + excluded.reports,"
            " last_report = CASE WHEN excluded.last_seen >= things.last_seen"
            " AND excluded.last_report IS NOT NULL"
            " THEN excluded.last_report ELSE things.last_report END,"
            " last_format = CASE WHEN excluded.last_seen >= things.last_seen"
            " AND excluded.last_report IS NOT NULL"
            " THEN excluded.last_format ELSE things.last_format END",
            [list(things), *columns],
        )

    def _insert_values(self, cur: _Cursor, rows: Sequence[Sequence[object]]) -> None:
        """One statement for the whole batch: a column array per parameter (``unnest``)."""
        cur.execute(
            "INSERT INTO metric_values (report, thing, metric, received_at, count, number, value)"
            " SELECT * FROM unnest(?::bigint[], ?::text[], ?::text[], ?::double precision[],"
            " ?::bigint[], ?::double precision[], ?::text[])",
            [list(column) for column in zip(*rows)],
        )

    def _db_errors(self) -> tuple[type[Exception], ...]:
        return (self._psycopg.Error,)

    def _scrub(self, text: str) -> str:
        return mask_secrets_in(text, self._url)

    def _after_error(self) -> None:
        with self._lock:
            conn = self._conn
            if conn is not None and (conn.broken or conn.closed):
                self._conn = None
                conn.close()

    def _close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _PgCursor:
    """A psycopg cursor that takes the ``?`` placeholders the shared SQL uses."""

    def __init__(self, cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
        self._cur = cur

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")  # the shared SQL has no other "?" (nor "%")

    def execute(self, sql: str, params: Sequence[Any], /) -> object:
        return self._cur.execute(self._sql(sql), params)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> object:
        self._cur.executemany(self._sql(sql), params)
        return None

    def fetchone(self) -> Any:  # noqa: ANN401 - a row, or None
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()


def _redact(url: str) -> str:
    """The URL without its password, for messages.

    >>> _redact("postgresql://svc:s3cret@db:5432/defender")
    'postgresql://svc:***@db:5432/defender'
    """
    return mask_db_url(url)  # every form libpq takes a password in: dburl.mask_db_url


DEFAULT_FILE: Final = "service.sqlite3"


def default_url(environ: Optional[dict[str, str]] = None) -> str:
    """The default database: ``service.sqlite3`` in the state directory.

    >>> default_url({"DEFENDER_AGENT_STATE_DIR": "/srv/dd"})
    '/srv/dd/service.sqlite3'
    """
    return str(default_state_dir(environ) / DEFAULT_FILE)


def open_store(url: str, *, create: bool = True) -> Store:
    """Open (and migrate) the store a URL names.

    Args:
        url: A file path or ``sqlite:///path`` (SQLite), or ``postgresql://…`` /
            ``postgres://…`` or a libpq keyword/value string ``host=… dbname=…`` (PostgreSQL).
        create: For SQLite, create a missing file; False raises StateError instead (for
            queries).

    Returns:
        The open store.

    Raises:
        ConfigError: The URL names another database, or PostgreSQL without psycopg.
        StateError: The database cannot be opened or has a newer schema.
    """
    if url.startswith(("postgresql://", "postgres://")) or is_keyword_string(url):
        return PostgresStore(url)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
    elif "://" in url:
        raise ConfigError(
            f"unsupported database URL {_redact(url)!r}: "
            "expected a file path, sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
        )
    else:
        path = url
    if not path:
        raise ConfigError(f"database URL {url!r} names no file")
    return SQLiteStore(path, create=create)
