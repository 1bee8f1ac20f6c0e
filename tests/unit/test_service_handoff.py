"""The hand-off of stored reports to Detect: in order, batched, bounded, never blocking the writer."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from defender_agent.service.handoff import HandOff
from defender_agent.service.latency import Latency
from defender_agent.service.runner import DeviceDefenderService, ServiceConfig
from defender_agent.service.storage import open_store
from defender_agent.transport.memory import MemoryTransport
from tests.unit.test_service_runner import BROKER, T0, reply_topics, report, topic, wait_for


def test_items_come_in_order_and_what_queued_meanwhile_in_one_call() -> None:
    gate = threading.Event()
    calls: list[list[int]] = []

    def hook(items: list[int]) -> None:
        calls.append(list(items))
        gate.wait(5)

    latency = Latency()
    handoff: HandOff[int] = HandOff(hook, on_error=lambda n, e: None, latency=latency)
    handoff.start()
    handoff.offer([1])
    wait_for(lambda: calls == [[1]])  # the hook holds the thread
    handoff.offer([2, 3])
    handoff.offer([4])
    assert handoff.depth == 3
    gate.set()
    assert handoff.close(5.0) == 0
    assert calls == [[1], [2, 3, 4]]
    assert (handoff.handed, handoff.calls, latency.snapshot().count) == (4, 2, 2)


def test_a_call_takes_at_most_batch_max_items() -> None:
    calls: list[list[int]] = []
    handoff: HandOff[int] = HandOff(calls.append, on_error=lambda n, e: None, batch_max=2)
    handoff.offer([1, 2, 3, 4, 5])  # before start: they wait for it
    handoff.start()
    assert handoff.close(5.0) == 0
    assert calls == [[1, 2], [3, 4], [5]]


def test_a_call_waits_up_to_the_linger_for_its_batch_to_fill() -> None:
    calls: list[tuple[list[int], float]] = []
    began = time.monotonic()
    handoff: HandOff[int] = HandOff(
        lambda items: calls.append((list(items), time.monotonic() - began)),
        on_error=lambda n, e: None,
        batch_max=3,
        linger_s=0.4,
    )
    handoff.start()
    handoff.offer([1])
    time.sleep(0.1)
    handoff.offer([2])  # within the linger of 1: the same call
    wait_for(lambda: len(calls) == 1)
    assert calls[0][0] == [1, 2] and calls[0][1] >= 0.35
    began = time.monotonic()
    handoff.offer([3, 4, 5])  # a full batch goes at once
    wait_for(lambda: len(calls) == 2)
    assert calls[1][0] == [3, 4, 5] and calls[1][1] < 0.3
    assert handoff.close(5.0) == 0


def test_a_full_queue_makes_the_offer_wait_and_nothing_is_skipped() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def hook(items: list[int]) -> None:
        gate.wait(5)
        seen.extend(items)

    handoff: HandOff[int] = HandOff(hook, on_error=lambda n, e: None, queue_max=2)
    handoff.start()
    handoff.offer([0])
    wait_for(lambda: handoff.depth == 0)  # in the (held) call
    handoff.offer([1, 2])  # the queue is full now
    done = threading.Event()

    def offer_more() -> None:
        handoff.offer([3])
        done.set()

    threading.Thread(target=offer_more, daemon=True).start()
    assert not done.wait(0.3)  # waits for room
    gate.set()
    assert done.wait(5)
    assert handoff.close(5.0) == 0
    assert seen == [0, 1, 2, 3] and handoff.waits == 1


def test_a_failing_hook_is_reported_and_the_next_call_goes_on() -> None:
    errors: list[tuple[int, str]] = []
    seen: list[int] = []

    def hook(items: list[int]) -> None:
        if 1 in items:
            raise RuntimeError("engine bug")
        seen.extend(items)

    handoff: HandOff[int] = HandOff(hook, on_error=lambda n, e: errors.append((n, str(e))))
    handoff.start()
    handoff.offer([1])
    wait_for(lambda: handoff.calls == 1)
    handoff.offer([2])
    assert handoff.close(5.0) == 0
    assert errors == [(1, "engine bug")] and seen == [2]


def test_close_gives_up_after_its_time_and_counts_what_was_not_handed_over() -> None:
    gate = threading.Event()
    handoff: HandOff[int] = HandOff(lambda items: gate.wait(5), on_error=lambda n, e: None)
    handoff.start()
    handoff.offer([1])
    wait_for(lambda: handoff.depth == 0)
    handoff.offer([2, 3])
    began = time.monotonic()
    assert handoff.close(0.2) == 3  # the call in progress and the two queued
    assert time.monotonic() - began < 2
    handoff.offer([4])  # after it gave up: counted, never queued
    assert handoff.dropped == 1 and handoff.depth == 0
    gate.set()


def test_the_writer_stores_and_acknowledges_while_detect_is_still_judging(tmp_path: Path) -> None:
    # the hook (Detect) is held on the first batch: the later reports are stored and
    # answered all the same (on the writer thread, the second batch would wait for it)
    gate, entered = threading.Event(), threading.Event()
    seen: list[str] = []

    def hook(items: Any) -> None:
        entered.set()
        gate.wait(10)
        seen.extend(item.thing for item in items)

    transport = MemoryTransport(client_id="svc")
    store = open_store(str(tmp_path / "s.sqlite3"))
    service = DeviceDefenderService(
        ServiceConfig(broker=BROKER, db_url="unused"),
        transport=transport,
        store=store,
        clock=lambda: T0,
        after_store=hook,
    )
    service.start()
    try:
        transport.deliver(topic("a"), report(1))
        wait_for(lambda: len(transport.published) == 1)
        assert entered.wait(5)  # Detect is judging "a", held there
        for i in range(5):
            transport.deliver(topic(f"t{i}"), report(i + 2))
        wait_for(lambda: len(transport.published) == 6)
        assert reply_topics(transport) == ["accepted"] * 6
        assert service.stats().stored == 6 and seen == []
        gate.set()
        wait_for(lambda: len(seen) == 6)
        assert seen[0] == "a" and sorted(seen[1:]) == [f"t{i}" for i in range(5)]
    finally:
        gate.set()
        service.stop()
