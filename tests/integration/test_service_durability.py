"""ACCEPTED means stored: ``defender-agent service`` killed, locked out of its database, stopped.

A real ``defender-agent service`` subprocess answers devices (awscrt clients) on a real
mosquitto (plain listener, 127.0.0.1) and stores into SQLite or a PostgreSQL cluster the
test starts (tests/pg_infra.py). The test counts the ACCEPTED replies its devices received
and compares them with the rows in the database:

* kill -9 at random moments while devices publish open-loop: every acknowledged report is
  in the database, for both databases. For SQLite another connection takes the write lock
  for 0.3 s of every 0.5 s, so that the writer has a backlog at many moments (with
  ``--reply-before-store`` one run lost 1 292 of 3 005 acknowledged reports so; PostgreSQL
  without it, 1 305 of 1 513);
* a SQLite file locked by another connection (``BEGIN EXCLUSIVE``): no ACCEPTED reply until
  it is released, then every report is stored and acknowledged; the small queue made the
  MQTT callback wait for room (back-pressure through awscrt), and the replies still went out;
* SIGTERM while the file is locked: the reports not stored are not acknowledged, and one
  line says how many;
* the PostgreSQL server stopped under the service: no ACCEPTED reply while it is down, one
  line when it goes down and one when it is back, then every report stored and acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Callable, Optional

import pytest

from defender_agent.transport.mqtt import MqttTransport
from tests.integration.test_service_mqtt import ServiceProcess, report
from tests.mqtt_infra.broker import Mosquitto, connect_device

WAIT_S = 20.0
KILLS = 5
DEVICES = 6


def service_args(broker: Mosquitto, db: str, *extra: str) -> list[str]:
    assert broker.plain is not None
    return [
        "--no-tls",
        "--broker",
        "127.0.0.1",
        "--port",
        str(broker.plain),
        "--db",
        db,
        "--min-delay",
        "0",
        *extra,
    ]


class Devices:
    """``count`` awscrt devices on the plain listener; they publish open-loop and keep every
    ACCEPTED reply as ``(thing, report id)``."""

    def __init__(self, broker: Mosquitto, count: int, name: str = "dur") -> None:
        assert broker.plain is not None
        self.things = [f"{name}{n}" for n in range(count)]
        self.accepted: set[tuple[str, int]] = set()
        self.rejected = 0
        self.sent = 0
        self._next = dict.fromkeys(self.things, 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.transports: list[MqttTransport] = []
        for thing in self.things:
            self.transports.append(connect_device(broker, thing, self._on_reply, WAIT_S))

    def _on_reply(self, topic: str, payload: bytes) -> None:
        doc = json.loads(payload)
        with self._lock:
            if topic.endswith("/accepted"):
                self.accepted.add((str(doc["thingName"]), int(doc["reportId"])))
            else:
                self.rejected += 1

    def acknowledged(self) -> int:
        with self._lock:
            return len(self.accepted)

    def wait_acknowledged(self, count: int) -> bool:
        """Whether ``count`` reports were acknowledged within WAIT_S."""
        return wait_until(lambda: self.acknowledged() >= count)

    def send(self, thing_index: int, count: int) -> None:
        """Publish ``count`` reports of one thing (next report ids), waiting for the PUBACKs."""
        thing, transport = self.things[thing_index], self.transports[thing_index]
        futures = []
        for _ in range(count):
            rid = self._next[thing]
            self._next[thing] = rid + 1
            payload = json.dumps(report(rid)).encode()
            futures.append(transport.publish(f"$aws/things/{thing}/defender/metrics/json", payload))
        for future in futures:
            future.result(WAIT_S)
        self.sent += count

    def start_flood(self, pause_s: float = 0.002) -> None:
        """Every device publishes a report every ``pause_s``, not waiting for replies."""
        self._stop.clear()

        def run(index: int) -> None:
            thing, transport = self.things[index], self.transports[index]
            while not self._stop.is_set():
                rid = self._next[thing]
                self._next[thing] = rid + 1
                payload = json.dumps(report(rid)).encode()
                transport.publish(f"$aws/things/{thing}/defender/metrics/json", payload)
                self.sent += 1
                time.sleep(pause_s)

        self._threads = [
            threading.Thread(target=run, args=(n,), daemon=True) for n in range(len(self.things))
        ]
        for thread in self._threads:
            thread.start()

    def stop_flood(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def close(self) -> None:
        self.stop_flood()
        for transport in self.transports:
            transport.disconnect()


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def sqlite_rows(path: Path) -> set[tuple[str, int]]:
    with sqlite3.connect(str(path)) as conn:
        return {(t, int(r)) for t, r in conn.execute("SELECT thing, report_id FROM reports")}


def pg_rows(url: str) -> set[tuple[str, int]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT thing, report_id FROM reports").fetchall()
    return {(t, int(r)) for t, r in rows}


class Contender:
    """Another connection that takes SQLite's write lock for ``hold_s`` every ``every_s``
    (a busy disk, a reader's checkpoint): the service's writer falls behind now and then."""

    def __init__(self, db: Path, hold_s: float = 0.3, every_s: float = 0.5) -> None:
        self._db, self._hold, self._every = db, hold_s, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Contender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        conn = sqlite3.connect(str(self._db), isolation_level=None, timeout=5)
        try:
            while not self._stop.is_set():
                conn.execute("BEGIN IMMEDIATE")
                time.sleep(self._hold)
                conn.execute("ROLLBACK")
                time.sleep(self._every - self._hold)
        finally:
            conn.close()


def kill_while_publishing(
    broker: Mosquitto,
    db: str,
    rows: Callable[[], set[tuple[str, int]]],
    work: Path,
    contend: Optional[Path] = None,
    *,
    kills: int = KILLS,
    extra: Sequence[str] = (),
) -> tuple[int, int, int]:
    """``kills`` times: start the service, flood it, kill -9 it at a random moment.

    (bench/bench_service_load.py ``--kill`` runs this too.)

    Args:
        broker: A mosquitto with a plain listener (``broker.plain``).
        db: The service's ``--db``.
        rows: ``(thing, report id)`` of every stored report.
        work: Where the service logs go.
        contend: A SQLite file to take the write lock of now and then (:class:`Contender`).
        kills: How many times.
        extra: More service options (``--reply-before-store``).

    Returns (acknowledged, stored, acknowledged but missing).
    """
    rng = random.Random()
    devices = Devices(broker, DEVICES)
    try:
        for kill in range(kills):
            args = [*service_args(broker, db), *extra]
            proc = ServiceProcess(args, work / f"service-{kill}.log")
            proc.wait_ready()
            before = devices.acknowledged()
            with contextlib.ExitStack() as stack:
                if contend is not None:
                    stack.enter_context(Contender(contend))
                devices.start_flood()
                assert devices.wait_acknowledged(before + 20), proc.log()[-2000:]
                time.sleep(rng.uniform(0.0, 0.8))
                proc.proc.send_signal(signal.SIGKILL)
                proc.proc.wait(10)
                devices.stop_flood()
            assert "Traceback" not in proc.log()
        time.sleep(1.0)  # replies the broker still had in hand
    finally:
        devices.close()
    stored = rows()
    missing = devices.accepted - stored
    return len(devices.accepted), len(stored), len(missing)


def test_kill_9_loses_no_acknowledged_report_sqlite(mosquitto: Mosquitto, tmp_path: Path) -> None:
    db = tmp_path / "service.sqlite3"
    acked, stored, missing = kill_while_publishing(
        mosquitto, str(db), lambda: sqlite_rows(db), tmp_path, contend=db
    )
    assert acked >= KILLS * 20
    assert missing == 0, f"{missing} of {acked} acknowledged reports not stored ({stored} rows)"


def test_kill_9_loses_no_acknowledged_report_postgresql(
    mosquitto: Mosquitto, pg_url: str, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the postgresql extra)")
    acked, stored, missing = kill_while_publishing(
        mosquitto, pg_url, lambda: pg_rows(pg_url), tmp_path
    )
    assert acked >= KILLS * 20
    assert missing == 0, f"{missing} of {acked} acknowledged reports not stored ({stored} rows)"


@pytest.fixture
def locked_service(
    mosquitto: Mosquitto, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, Path, Devices]]:
    """A service with a 5-report queue on a SQLite file; its devices."""
    db = tmp_path / "service.sqlite3"
    args = service_args(mosquitto, str(db), "--queue-max", "5", "--batch-max", "5")
    proc = ServiceProcess([*args, "--drain-timeout", "1"], tmp_path / "service.log")
    devices: Optional[Devices] = None
    try:
        proc.wait_ready()
        devices = Devices(mosquitto, 1, name="locked")
        yield proc, db, devices
    finally:
        if devices is not None:
            devices.close()
        proc.stop()


def exclusive_lock(db: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(str(db), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_a_locked_sqlite_file_holds_the_acknowledgements_until_released(
    locked_service: tuple[ServiceProcess, Path, Devices],
) -> None:
    proc, db, devices = locked_service
    holder = exclusive_lock(db)
    try:
        devices.send(0, 40)
        time.sleep(3.0)
        assert devices.acknowledged() == 0  # nothing stored, nothing acknowledged
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert wait_until(lambda: devices.acknowledged() == 40), (devices.acknowledged(), proc.log())
    assert proc.stop() == 0
    assert devices.accepted == sqlite_rows(db)
    summary = proc.summary()
    assert "40 accepted, 0 rejected, 40 stored, 40 acknowledged once stored" in summary, summary
    waits = int(summary.split(" waits for room")[0].rsplit(" ", 1)[1])
    assert waits >= 1, summary  # the callback waited (awscrt), and the replies still went out
    assert "Traceback" not in proc.log()


def test_sigterm_while_locked_acknowledges_nothing_and_says_how_many(
    locked_service: tuple[ServiceProcess, Path, Devices],
) -> None:
    proc, db, devices = locked_service
    holder = exclusive_lock(db)
    try:
        devices.send(0, 8)
        time.sleep(1.0)
        started = time.monotonic()
        assert proc.stop() == 0
        assert time.monotonic() - started < 8
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    time.sleep(0.5)
    assert devices.acknowledged() == 0
    summary = proc.summary()
    accepted = int(summary.split(" messages, ")[1].split(" accepted")[0])
    ignored = int(summary.split(" ignored while stopping")[0].rsplit(" ", 1)[1])
    assert accepted + ignored == 8, summary  # (a message after the stop began: no reply)
    line = f"{accepted} accepted reports were not stored and not acknowledged"
    assert line in proc.log(), proc.log()
    assert sqlite_rows(db) == set()


def test_postgresql_down_stops_the_acknowledgements_until_it_is_back(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The service's own PostgreSQL server is stopped and started again under it."""
    from tests.pg_infra import Cluster, create_database, pg_bin, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    bindir = pg_bin()
    assert bindir is not None
    cluster = Cluster(bindir)
    cluster.start()
    proc: Optional[ServiceProcess] = None
    devices: Optional[Devices] = None
    try:
        url = create_database(cluster)
        proc = ServiceProcess(service_args(mosquitto, url), tmp_path / "service.log")
        proc.wait_ready()
        devices = Devices(mosquitto, 1, name="pgdown")
        devices.send(0, 5)
        assert devices.wait_acknowledged(5)
        done = cluster.run("pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "stop")
        assert done.returncode == 0, done.stderr
        devices.send(0, 10)
        assert wait_until(lambda: "is down" in proc.log() if proc else False)
        time.sleep(1.0)
        assert devices.acknowledged() == 5  # nothing acknowledged while it is down
        options = f"-p {cluster.port} -k {cluster.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(cluster.root / "server.log")
        done = cluster.run(
            "pg_ctl", "-D", str(cluster.data), "-l", log, "-o", options, "-w", "start"
        )
        assert done.returncode == 0, done.stderr
        assert devices.wait_acknowledged(15), proc.log()[-2000:]
        assert devices.accepted == pg_rows(url)
        assert proc.stop() == 0
        log_text = proc.log()
        assert log_text.count("is down") == 1 and log_text.count("is back after") == 1, log_text
        assert "Traceback" not in log_text
    finally:
        if devices is not None:
            devices.close()
        if proc is not None:
            proc.stop()
        cluster.stop()
