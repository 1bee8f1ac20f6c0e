"""Stored reports handed to a hook (Detect) on a thread of their own, in order.

The service's writer thread commits a batch, publishes its ACCEPTED replies and then offers
the batch's items here; this thread calls the hook with whatever has queued since its last
call (up to ``batch_max`` items, in the order they were offered). So the writer commits the
next batch while the hook judges the previous one. A call waits until ``batch_max`` items
are queued or the oldest has waited ``linger_s`` (whichever comes first), so the hook gets
larger batches, which cost it less per item (a database round trip per batch, not per
item). Nothing is skipped:

* the queue is bounded (``queue_max`` items); a full queue makes :meth:`HandOff.offer`
  wait for room, which holds the writer, which holds the MQTT callbacks (back-pressure);
* one thread calls the hook, so it sees each thing's reports in the order they were stored;
* a hook that raises costs only its call: ``on_error(count, exc)`` is told, the next call
  goes on;
* :meth:`HandOff.close` hands over what is queued (bounded in time) and returns how many
  items it could not.

>>> seen = []
>>> handoff = HandOff(seen.append, on_error=lambda n, exc: None)
>>> handoff.start()
>>> handoff.offer(["a", "b"])
>>> handoff.offer(["c"])
>>> handoff.close(5.0)
0
>>> [item for call in seen for item in call]
['a', 'b', 'c']
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Callable, Generic, Optional, TypeVar

from defender_agent.service.latency import Latency

__all__ = ["HandOff"]

T = TypeVar("T")


class HandOff(Generic[T]):
    """A bounded FIFO of items and one thread that feeds them to ``hook`` in batches.

    Args:
        hook: Called with a non-empty list of items, on the hand-off thread.
        on_error: Called with the call's item count and the exception when ``hook`` raised.
        batch_max: The most items per call.
        queue_max: The most items waiting; :meth:`offer` waits while the queue is full.
        latency: Where each call's duration is observed (None: not timed).
        linger_s: How long the oldest item may wait for the batch to fill (0: call at once).
        name: The thread's name.

    Attributes:
        handed: Items the hook was called with (whether or not it raised).
        calls: Calls made.
        waits: :meth:`offer` calls that had to wait for room.
    """

    def __init__(
        self,
        hook: Callable[[list[T]], object],
        *,
        on_error: Callable[[int, BaseException], None],
        batch_max: int = 1000,
        queue_max: int = 20_000,
        latency: Optional[Latency] = None,
        linger_s: float = 0.0,
        name: str = "dd-service-handoff",
    ) -> None:
        if batch_max < 1 or queue_max < 1 or not linger_s >= 0:
            raise ValueError("batch_max and queue_max must be at least 1, linger_s >= 0")
        self._linger = linger_s
        self._oldest = 0.0  # monotonic time the oldest queued item arrived
        self._hook = hook
        self._on_error = on_error
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._latency = latency
        self._queue: deque[T] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandon = False
        self._in_call = 0
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.handed = 0
        self.calls = 0
        self.waits = 0

    def start(self) -> None:
        """Start the hand-off thread."""
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Items offered after :meth:`close` gave up (never handed over)."""
        with self._cond:
            return self._dropped

    @property
    def depth(self) -> int:
        """Items waiting (not counting the call in progress)."""
        with self._cond:
            return len(self._queue)

    def offer(self, items: Sequence[T]) -> None:
        """Queue ``items`` for the hook, waiting while the queue is full.

        After :meth:`close` gave up (its time ran out) the items are counted in
        :attr:`dropped` instead; before :meth:`start` they wait for it.
        """
        if not items:
            return
        with self._cond:
            if len(self._queue) >= self._queue_max and not self._abandon:
                self.waits += 1
                while len(self._queue) >= self._queue_max and not self._abandon:
                    self._cond.wait()
            if self._abandon:
                self._dropped += len(items)
                return
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.extend(items)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                while len(self._queue) < self._batch_max and not self._closing:
                    left = self._oldest + self._linger - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._queue or self._abandon:
                    return
                count = min(len(self._queue), self._batch_max)
                batch = [self._queue.popleft() for _ in range(count)]
                self._in_call = count
                self._cond.notify_all()  # room for a waiting offer
            began = time.monotonic()
            try:
                self._hook(batch)
            except Exception as exc:  # the hook's bug must not end the hand-off
                self._on_error(len(batch), exc)
            if self._latency is not None:
                self._latency.observe(time.monotonic() - began)
            with self._cond:
                self._in_call = 0
                self.handed += count
                self.calls += 1

    def close(self, timeout: float) -> int:
        """Hand over what is queued (at most ``timeout`` s), then stop.

        Returns:
            The items not handed over: still queued when the time ran out, or in the call
            still running then. (Items offered afterwards are counted in :attr:`dropped`.)
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(max(0.0, timeout))
        with self._cond:
            self._abandon = True
            left = len(self._queue) + self._in_call
            self._queue.clear()
            self._cond.notify_all()
        return left
