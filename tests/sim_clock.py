"""A simulated clock for the agent: time advances at once when every agent thread waits.

The agent does all its waiting through ``Clock.wait`` and starts its threads
with ``Clock.start_thread``, so this clock knows every thread that lives by
it. When all of them are blocked in :meth:`SimClock.wait`, time jumps to the
earliest deadline (or to the next scheduled action, :meth:`SimClock.at`, which
runs first). Nothing sleeps, and a thread that is busy (a cycle, a connect
attempt) holds time still until it waits again, so runs are deterministic.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from defender_agent.agent import Agent, Clock

#: Where simulated boot time starts, and the epoch offset of the simulated wall clock.
START = 1000.0
EPOCH = 1_700_000_000.0


class SimClock(Clock):
    def __init__(self, start: float = START) -> None:
        super().__init__(boot=self._boot, wall=self._wall)
        self.now = start
        self._cond = threading.Condition()
        self._members: list[threading.Thread] = []
        self._waiting: dict[int, tuple[float, threading.Event]] = {}
        self._actions: list[tuple[float, int, Callable[[], None]]] = []

    def _boot(self) -> float:
        with self._cond:
            return self.now

    def _wall(self) -> float:
        return self._boot() + EPOCH

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` (on a waiting agent thread) when simulated time reaches ``when``."""
        with self._cond:
            self._actions.append((when, len(self._actions), action))
            self._actions.sort()

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        self.at(self._boot() + seconds, action)

    def start_thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._cond:
            self._members.append(thread)
        thread.start()
        return thread

    def run(self, agent: Agent, seconds: float) -> int:
        """Run ``agent`` in this thread for ``seconds`` of simulated time, then stop it."""
        me = threading.current_thread()
        with self._cond:
            self._members.append(me)
        self.after(seconds, agent.stop)
        try:
            return agent.run()
        finally:
            with self._cond:
                self._members.remove(me)
                # a run that ended early (an error) leaves no stop behind for the next one
                self._actions = [a for a in self._actions if a[2] != agent.stop]

    def _idle(self) -> bool:
        """Whether every agent thread waits, and none of them is due to wake up now."""
        alive = [t for t in self._members if t.is_alive()]
        if not all(t.ident in self._waiting for t in alive):
            return False
        return all(self.now < due and not ev.is_set() for due, ev in self._waiting.values())

    def wait(self, event: threading.Event, seconds: float) -> bool:
        me = threading.get_ident()
        with self._cond:
            deadline = self.now + max(0.0, seconds)
            self._waiting[me] = (deadline, event)
            try:
                while True:
                    if event.is_set():
                        return True
                    if self.now >= deadline:
                        return False
                    if self._idle():
                        self._advance()
                        continue
                    self._cond.wait(0.002)  # another thread is busy or due: let it run
            finally:
                del self._waiting[me]
                self._cond.notify_all()

    def _advance(self) -> None:
        target = min(due for due, _ in self._waiting.values())
        action: Optional[Callable[[], None]] = None
        if self._actions and self._actions[0][0] <= target:
            when, _, action = self._actions.pop(0)
            target = max(self.now, when)
        self.now = target
        if action is not None:
            action()
        self._cond.notify_all()
