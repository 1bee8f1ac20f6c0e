"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET.

The agent loop runs in real time (dry run, 1 s interval, a recorded proc root) with
a 0.5 s watchdog ping interval; then its collector hangs, and no WATCHDOG=1 may arrive.
"""

from __future__ import annotations

import io
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from defender_agent.agent import Agent
from defender_agent.config import load_config
from defender_agent.cycle import Collector
from defender_agent.model import Report
from defender_agent.sdnotify import Notifier
from defender_agent.state import StateDir
from tests.conftest import proc_fixture


class Systemd:
    """A datagram socket that records every notification with its arrival time."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name  # the NOTIFY_SOCKET value
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def lines(self, key: str) -> list[tuple[float, str]]:
        """``(time, value)`` of every ``KEY=value`` line received."""
        return [
            (at, line[len(key) + 1 :])
            for at, message in list(self.messages)
            for line in message.splitlines()
            if line.startswith(key + "=")
        ]


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Systemd]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(tmp_path / "notify")
        sock.bind(path)
        name = path
    else:
        name = f"@defender-agent-test-{os.getpid()}-{random.randrange(1 << 30)}"
        sock.bind("\0" + name[1:])
    box = Systemd(sock, name)
    yield box
    box.close()


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_ready_status_and_stopping_reach_the_socket(systemd: Systemd) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.name})
    assert notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("connected; sent 0")
    notifier.ready("connected; sent 0")  # READY=1 once
    notifier.status("connected; sent 0")  # unchanged: not sent again
    notifier.status("connected;\nsent 1")  # one line
    notifier.stopping()
    notifier.close()
    wait_for(lambda: len(systemd.messages) == 3)
    assert [m for _, m in systemd.messages] == [
        "READY=1\nSTATUS=connected; sent 0",
        "STATUS=connected; sent 1",
        "STOPPING=1",
    ]


def test_watchdog_pings_at_half_watchdog_usec_and_only_for_its_pid(systemd: Systemd) -> None:
    env = {"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "400000"}
    assert (
        Notifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval
        is None
    )
    now = [100.0]
    notifier = Notifier(
        Notifier.from_environment(env).address,
        Notifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval,
        clock=lambda: now[0],
    )
    assert notifier.watchdog_interval == 0.2
    notifier.ping()  # the first one at once
    for _ in range(10):  # 0.05 s steps: one ping every 0.2 s
        now[0] += 0.05
        notifier.ping()
    notifier.close()
    wait_for(lambda: len(systemd.lines("WATCHDOG")) == 3)
    time.sleep(0.1)
    assert len(systemd.lines("WATCHDOG")) == 3  # at 100.0, 100.2, 100.4


def test_outside_systemd_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_due() is None
    notifier.ready("x")
    notifier.ping()
    broken = Notifier("/nonexistent/notify")
    assert broken.notify("READY=1") is False  # logged, not raised
    broken.close()


class HangingCollector(Collector):
    """A collector whose cycle blocks once ``hang`` is set, until ``release`` is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hang = threading.Event()
        self.release = threading.Event()
        self.hung_at: Optional[float] = None

    def cycle(self) -> Optional[Report]:
        if self.hang.is_set():
            self.hang.clear()
            self.hung_at = time.monotonic()
            self.release.wait(30)
        return super().cycle()


def test_the_agent_loop_pings_and_a_hung_loop_stops_the_pings(
    systemd: Systemd, tmp_path: Path
) -> None:
    config = load_config(
        {
            "dry_run": True,
            "thing_name": "gw",
            "interval": 1,
            "allow_short_interval": True,
            "splay": 0,
            "proc_root": str(proc_fixture("gateway_dualstack")),
            "state_dir": str(tmp_path / "state"),
            "socket_source": "proc",
        },
        environ={},
    )
    state = StateDir(tmp_path / "state")
    collector = HangingCollector(config.collector_config(), state_dir=state.path)
    notifier = Notifier.from_environment(
        {"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "1000000"}
    )
    agent = Agent(config, collector, None, state, out=io.StringIO(), notifier=notifier)
    thread = threading.Thread(target=agent.run, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        wait_for(lambda: systemd.lines("READY"))
        ready_at = systemd.lines("READY")[0][0]
        assert ready_at - started < 5
        wait_for(lambda: any("built 1 reports" in s for _, s in systemd.lines("STATUS")))
        # healthy: pings every 0.5 s (WatchdogSec 1 s), never 1 s apart
        time.sleep(2.0)
        pings = [at for at, _ in systemd.lines("WATCHDOG")]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert len(pings) >= 4 and max(gaps) < 1.0, pings
        # hang the loop in its next cycle: the pings stop
        collector.hang.set()
        wait_for(lambda: collector.hung_at is not None)
        assert collector.hung_at is not None
        time.sleep(2.5)
        late = [at for at, _ in systemd.lines("WATCHDOG") if at > collector.hung_at + 0.05]
        assert late == [], "WATCHDOG=1 arrived while the loop was hung"
        # released, the loop pings again
        released = time.monotonic()
        collector.release.set()
        wait_for(lambda: any(at > released for at, _ in systemd.lines("WATCHDOG")), 3)
    finally:
        collector.release.set()
        agent.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert systemd.lines("STOPPING")


def test_the_service_is_ready_once_connected_and_a_hung_store_stops_the_pings(
    systemd: Systemd, tmp_path: Path
) -> None:
    """The service's supervisor: READY=1 and STATUS= once connected, pings every 0.5 s,
    service-status.json; a store call that blocks beyond WatchdogSec (1 s) stops the
    pings until it returns."""
    from defender_agent.health import service_problem
    from defender_agent.service.watch import supervise
    from tests.unit.test_service_runner import GatedStore, hand_over, make, report, topic

    store = GatedStore(tmp_path / "db.sqlite3")
    service, transport = make(store)
    notifier = Notifier.from_environment(
        {"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "1000000"}
    )
    stop = threading.Event()
    state = StateDir(tmp_path / "state")
    thread = threading.Thread(target=supervise, args=(service, stop, state, notifier), daemon=True)
    thread.start()
    try:
        wait_for(lambda: systemd.lines("READY"))
        assert systemd.lines("STATUS")[0][1].startswith("broker connected; accepted 0")
        wait_for(lambda: len(systemd.lines("WATCHDOG")) >= 4)
        saved = state.load("service-status")
        assert saved is not None and saved["connected"] is True
        assert service_problem(saved, time.time()) is None
        # a report whose store call blocks (the gate is closed)
        hand_over(transport, topic(), report())
        assert store.entered.wait(5)
        blocked = time.monotonic()
        time.sleep(3.0)  # a ping may still go out until the call has run 1 s (WatchdogSec)
        late = [at for at, _ in systemd.lines("WATCHDOG") if at > blocked + 1.6]
        assert late == [], "WATCHDOG=1 arrived while a store call hung"
        saved = state.load("service-status")
        assert saved is not None and saved["store_busy_s"] > 1.0
        store.gate.set()
        released = time.monotonic()
        wait_for(lambda: any(at > released for at, _ in systemd.lines("WATCHDOG")), 3)
        wait_for(lambda: any("stored 1" in s for _, s in systemd.lines("STATUS")), 3)
    finally:
        store.gate.set()
        stop.set()
        thread.join(10)
        service.stop()
    assert systemd.lines("STOPPING")
