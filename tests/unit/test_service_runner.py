"""The service runner over an in-memory transport: replies, the writer thread, failures, stop."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import cbor2
import pytest

from defender_agent.errors import ConfigError, ConnectError, StateError
from defender_agent.service.responder import Outcome, ResponderPolicy
from defender_agent.service.runner import DeviceDefenderService, ServiceConfig
from defender_agent.service.storage import SQLiteStore, Store, StoredReport, open_store
from defender_agent.transport.base import MqttSettings
from defender_agent.transport.memory import MemoryTransport

T0 = 1_700_000_000.0
BROKER = MqttSettings(endpoint="127.0.0.1", port=1883, client_id="svc", use_tls=False)


def report(rid: int = 7, bytes_in: int = 5) -> bytes:
    doc = {
        "header": {"report_id": rid, "version": "1.0"},
        "metrics": {"network_stats": {"bytes_in": bytes_in}},
    }
    return json.dumps(doc).encode()


def topic(thing: str = "thing1", fmt: str = "json") -> str:
    return f"$aws/things/{thing}/defender/metrics/{fmt}"


def reply_topics(transport: MemoryTransport) -> list[str]:
    """``accepted`` or ``rejected``, for each reply published so far."""
    return [t.rsplit("/", 1)[1] for t, _ in transport.published]


def hand_over(transport: MemoryTransport, topic_name: str, payload: bytes) -> None:
    """Call the subscription's handler with a message a broker would not route to it."""
    (handler,) = transport.subscriptions.values()
    handler(topic_name, payload)


class GatedStore(SQLiteStore):
    """A SQLite store whose writes wait for ``gate`` (to pile reports up in the queue)."""

    def __init__(self, path: Path) -> None:
        self.armed = False  # not while the schema is made
        self.gate = threading.Event()
        self.entered = threading.Event()
        super().__init__(path)
        self.armed = True

    @contextmanager
    def _write(self) -> Iterator[Any]:
        if self.armed:
            self.entered.set()
            assert self.gate.wait(10)
        with super()._write() as cur:
            yield cur


def caused(error: StateError, cause: Exception) -> StateError:
    """``error`` as the store raises it: ``raise error from cause``."""
    error.__cause__ = cause
    return error


def down_error() -> StateError:
    """What the store raises when the database is unreachable (the driver's OperationalError)."""
    text = "service database: connection refused"
    return caused(StateError(text), sqlite3.OperationalError("connection refused"))


def data_error(text: str) -> StateError:
    """What the store raises when the database refuses a report (not an OperationalError)."""
    return caused(StateError(text), sqlite3.IntegrityError(text))


class BrokenStore(SQLiteStore):
    """Every write fails like a database that went away (while ``down`` is set); ``bad``
    things fail only alone, as a report the database refuses."""

    def __init__(self, path: Path, bad: Optional[set[str]] = None) -> None:
        self.armed = False
        super().__init__(path)
        self.bad = bad
        self.down = threading.Event()
        if bad is None:
            self.down.set()
        self.attempts = 0
        self.armed = True

    @contextmanager
    def _write(self) -> Iterator[Any]:
        if self.armed:
            self.attempts += 1
        if self.armed and self.down.is_set():
            raise down_error()
        with super()._write() as cur:
            yield cur

    def record_many(self, reports: Sequence[StoredReport]) -> None:
        if self.bad is not None and len(reports) == 1 and reports[0].thing in self.bad:
            raise data_error(f"cannot store {reports[0].thing}")
        super().record_many(reports)


def make(
    store: Store,
    *,
    min_delay: float = 0.0,
    on_outcome: Any = None,
    **config: Any,
) -> tuple[DeviceDefenderService, MemoryTransport]:
    transport = MemoryTransport(client_id="svc")
    cfg = ServiceConfig(
        broker=BROKER,
        db_url="unused",
        policy=ResponderPolicy(min_delay_s=min_delay),
        **config,
    )
    service = DeviceDefenderService(
        cfg, transport=transport, store=store, on_outcome=on_outcome, clock=lambda: T0
    )
    service.start()
    return service, transport


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "service.sqlite3"


# --------------------------------------------------------------------------- replies and storage
def test_accepted_reports_are_stored_then_answered(db: Path) -> None:
    service, transport = make(open_store(str(db)))
    transport.deliver(topic("thing1"), report(1, bytes_in=10))
    transport.deliver(topic("thing2", "cbor"), cbor2.dumps(json.loads(report(2, bytes_in=20))))
    transport.deliver(topic("thing1"), b"not json")  # rejected: never stored
    wait_for(lambda: len(transport.published) == 3)
    assert sorted(reply_topics(transport)) == ["accepted", "accepted", "rejected"]
    assert service.stats().stored == 2
    service.stop()
    with open_store(str(db)) as store:
        values = store.metric_values("thing2", "aws:all-bytes-in")
        assert [(v.value.count, v.report_id, v.timestamp) for v in values] == [(20, 2, T0)]
        assert [t.name for t in store.things()] == ["thing1", "thing2"]
        assert next(iter(store.export()))["format"] == "json"
    stats = service.stats()
    assert (stats.messages, stats.replies, stats.accepted, dict(stats.rejected)) == (
        3,
        3,
        2,
        {"InvalidPayload": 1},
    )
    assert (stats.store_errors, stats.store_overflow, stats.queue_depth) == (0, 0, 0)
    assert (stats.acknowledged, stats.store_down) == (2, False)
    assert transport.disconnects == 1


def test_writer_commits_what_piled_up_as_one_batch(db: Path) -> None:
    store = GatedStore(db)
    service, transport = make(store, batch_max=50)
    transport.deliver(topic("first"), report())
    assert store.entered.wait(5)  # the writer holds "first" and waits at the gate
    for n in range(120):
        transport.deliver(topic(f"t{n}"), report())
    assert transport.published == []  # ACCEPTED only once stored
    assert service.stats().queue_depth == 120
    store.gate.set()
    wait_for(lambda: service.stats().stored == 121)
    wait_for(lambda: reply_topics(transport).count("accepted") == 121)
    stats = service.stats()
    assert stats.batches == 1 + 3  # 1, then 50 + 50 + 20
    assert stats.largest_batch == 50
    service.stop()


def test_stop_drains_the_queue(db: Path) -> None:
    store = GatedStore(db)
    service, transport = make(store)
    for n in range(200):
        transport.deliver(topic(f"t{n}"), report())
    assert service.stats().stored == 0
    threading.Timer(0.2, store.gate.set).start()
    service.stop()  # waits for the writer
    assert service.stats().stored == 200
    with open_store(str(db)) as reopened:
        assert len(reopened.things()) == 200


def test_drain_is_bounded_and_reports_what_was_lost(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = GatedStore(db)
    service, transport = make(store, drain_timeout_s=0.2)
    for n in range(5):
        transport.deliver(topic(f"t{n}"), report())
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started < 2
    assert "5 accepted reports were not stored" in caplog.text
    store.gate.set()


def test_a_store_that_is_down_stops_the_acknowledgements_until_it_is_back(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = BrokenStore(db)
    service, transport = make(store)
    transport.deliver(topic("thing1"), b"not json")  # a rejection needs no storage
    for n in range(10):
        transport.deliver(topic(f"t{n}"), report())
    wait_for(lambda: store.attempts >= 3)  # retried with backoff
    assert reply_topics(transport) == ["rejected"]
    stats = service.stats()
    assert (stats.stored, stats.store_errors, stats.acknowledged, stats.store_down) == (
        0,
        0,
        0,
        True,
    )
    store.down.clear()
    wait_for(lambda: service.stats().acknowledged == 10)
    assert reply_topics(transport) == ["rejected"] + ["accepted"] * 10
    stats = service.stats()
    assert (stats.stored, stats.store_errors, stats.store_down) == (10, 0, False)
    service.stop()
    assert caplog.text.count("is down (service database: connection refused)") == 1
    assert caplog.text.count("is back after") == 1


def test_stop_while_the_store_is_down_acknowledges_nothing(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = BrokenStore(db)
    service, transport = make(store, drain_timeout_s=0.3)
    for n in range(7):
        transport.deliver(topic(f"t{n}"), report())
    service.stop()
    assert transport.published == []
    assert "7 accepted reports were not stored and not acknowledged" in caplog.text


def test_reply_before_store_answers_while_the_store_is_down(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, transport = make(BrokenStore(db), reply_before_store=True, drain_timeout_s=0.2)
    for n in range(10):
        transport.deliver(topic(f"t{n}"), report())
    assert reply_topics(transport) == ["accepted"] * 10  # the old order: a lie when down
    wait_for(lambda: service.stats().store_down)
    assert service.stats().stored == 0
    assert service.stats().handler_errors == 0
    service.stop()
    assert "connection refused" in caplog.text
    assert "10 accepted reports were not stored:" in caplog.text


class FlakyStore(BrokenStore):
    """The first transaction fails (a refused value, say); ``bad`` things always fail."""

    def __init__(self, path: Path, bad: set[str]) -> None:
        self.failed = False
        super().__init__(path, bad)

    @contextmanager
    def _write(self) -> Iterator[Any]:
        if self.armed and not self.failed:
            self.failed = True
            raise data_error("value out of range")
        with super()._write() as cur:
            yield cur


def test_a_failed_batch_is_retried_report_by_report(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from defender_agent.report.decode import decode_report
    from defender_agent.report.validate import PayloadFormat
    from defender_agent.service.runner import _Accepted, _Writer

    writer = _Writer(FlakyStore(db, bad={"t3"}), batch_max=500, queue_max=100)
    for n in range(6):  # queued before the thread starts: one batch of six
        decoded = decode_report(json.loads(report(n + 1)))
        assert writer.offer(_Accepted(f"t{n}", n + 1, T0, PayloadFormat.JSON, decoded))
    writer.start()
    assert writer.close(5) == 0
    assert (writer.stored, writer.errors, writer.largest) == (5, 1, 1)
    assert "storing them one by one" in caplog.text
    assert "an accepted report of t3 (report id 4) was not stored" in caplog.text
    with open_store(str(db)) as store:
        assert [t.name for t in store.things()] == ["t0", "t1", "t2", "t4", "t5"]


def test_queue_overflow_still_answers_with_reply_before_store(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = GatedStore(db)
    service, transport = make(store, queue_max=3, reply_before_store=True)
    transport.deliver(topic("first"), report())
    assert store.entered.wait(5)
    for n in range(10):
        transport.deliver(topic(f"t{n}"), report())
    assert reply_topics(transport) == ["accepted"] * 11
    assert service.stats().store_overflow == 7
    assert "storage queue full" in caplog.text
    store.gate.set()
    service.stop()
    assert service.stats().stored == 4


def test_a_full_queue_holds_the_callback_and_never_acknowledges_an_unstored_report(
    db: Path,
) -> None:
    store = GatedStore(db)
    service, transport = make(store, queue_max=3)
    transport.deliver(topic("first"), report())
    assert store.entered.wait(5)  # the writer holds "first" at the gate
    sender = threading.Thread(
        target=lambda: [transport.deliver(topic(f"t{n}"), report()) for n in range(10)]
    )
    sender.start()
    wait_for(lambda: service.stats().backpressure_waits == 1)
    assert sender.is_alive()  # the callback waits for room: the broker holds the rest
    assert service.stats().queue_depth == 3
    assert transport.published == []
    store.gate.set()
    deadline = time.monotonic() + 10
    while sender.is_alive() or service.stats().acknowledged < 11:
        assert time.monotonic() < deadline
        accepted = reply_topics(transport).count("accepted")  # read before stored
        assert accepted <= service.stats().stored
        time.sleep(0.001)
    sender.join()
    service.stop()
    stats = service.stats()
    assert (stats.stored, stats.acknowledged, stats.store_overflow) == (11, 11, 0)
    assert reply_topics(transport) == ["accepted"] * 11


# --------------------------------------------------------------------------- hooks, config, lifecycle
def test_on_outcome_sees_every_message_and_its_errors_are_contained(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, Optional[str]]] = []

    def on_outcome(topic_name: str, outcome: Outcome) -> None:
        seen.append((topic_name, outcome.reply.error_code if outcome.reply else "dropped"))
        if len(seen) == 2:
            raise RuntimeError("sandbox bug")

    service, transport = make(open_store(str(db)), min_delay=300, on_outcome=on_outcome)
    transport.deliver(topic(), report())
    transport.deliver(topic(), report())  # throttled
    hand_over(transport, topic() + "/accepted", report())  # not a report topic: dropped
    transport.deliver(topic(), report())
    assert seen == [
        (topic(), None),
        (topic(), "Throttled"),
        (topic() + "/accepted", "dropped"),
        (topic(), "Throttled"),
    ]
    assert "the on_outcome callback failed" in caplog.text
    assert service.stats().handler_errors == 0
    service.stop()
    assert service.stats().stored == 1


def test_shared_group_and_prefix(db: Path) -> None:
    service, transport = make(open_store(str(db)), shared_group="dd", topic_prefix="bridged/")
    assert list(transport.subscriptions) == ["$share/dd/bridged/$aws/things/+/defender/metrics/+"]
    transport.deliver("bridged/" + topic("thing7"), report())
    wait_for(lambda: len(transport.published) == 1)
    assert transport.published[0][0] == topic("thing7") + "/accepted"
    service.stop()
    assert service.stats().stored == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"shared_group": ""},
        {"shared_group": "a/b"},
        {"shared_group": "a+"},
        {"topic_prefix": "x/#/"},
        {"batch_max": 0},
        {"queue_max": 0},
        {"drain_timeout_s": -1.0},
    ],
)
def test_bad_config(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ServiceConfig(broker=BROKER, db_url="x", **bad)


def test_start_again_after_a_failed_connect_then_stop_is_final(db: Path) -> None:
    transport = MemoryTransport()
    transport.fail_next_connects(1)
    service = DeviceDefenderService(
        ServiceConfig(broker=BROKER, db_url=str(db)), transport=transport
    )
    with pytest.raises(ConnectError):
        service.start()
    assert service.running is False
    service.start()
    assert (service.running, transport.connect_attempts) == (True, 2)
    service.stop()
    service.stop()
    assert service.running is False
    with pytest.raises(RuntimeError):
        service.start()


def test_stop_waits_a_bounded_time_for_replies_in_flight(
    db: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from defender_agent.service import runner

    monkeypatch.setattr(runner, "_REPLY_WAIT_S", 0.1)
    caplog.set_level(logging.INFO)
    service, transport = make(open_store(str(db)))
    transport.auto_ack = False  # PUBACKs never come
    transport.deliver(topic(), report())
    service.stop()
    assert "1 reply still unacknowledged at stop" in caplog.text
    assert "service stopped: 1 messages, 1 accepted" in caplog.text
    doc = service.stats().to_json()
    assert doc["stored"] == 1 and doc["rejected"] == {}


def test_messages_after_stop_are_ignored(db: Path) -> None:
    service, transport = make(open_store(str(db)))
    service.stop()
    hand_over(transport, topic(), report())  # a message still in the client's hands
    assert transport.published == []
    assert service.stats().ignored == 1
