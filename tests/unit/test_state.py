"""State files and report ids: atomic, tolerant, strictly increasing across restarts and clock steps."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from defender_agent.errors import StateError
from defender_agent.state import ReportIdSequence, StateDir, default_state_dir


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_ids_follow_the_clock_in_ms(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000.0)
    seq = ReportIdSequence(StateDir(tmp_path), clock)
    assert seq.next() == 1_700_000_000_000
    clock.now += 300
    assert seq.next() == 1_700_000_300_000


def test_same_millisecond_and_clock_step_back(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000.0)
    seq = ReportIdSequence(StateDir(tmp_path), clock)
    ids = [seq.next(), seq.next()]
    clock.now -= 3600  # NTP stepped the clock back an hour
    ids.append(seq.next())
    assert ids == [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002]


def test_ids_increase_across_a_restart_with_the_clock_behind(tmp_path: Path) -> None:
    first = ReportIdSequence(StateDir(tmp_path), Clock(1_700_000_000.0))
    last = first.next()
    # a board without an RTC rebooted and believes it is 1970
    second = ReportIdSequence(StateDir(tmp_path), Clock(10.0))
    assert second.next() == last + 1
    saved = json.loads((tmp_path / "report-id.json").read_text())
    assert saved == {"last_report_id": last + 1, "version": 1}


def test_corrupt_state_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "report-id.json").write_text("{not json")
    seq = ReportIdSequence(StateDir(tmp_path), Clock(5.0))
    assert seq.next() == 5000
    assert "ignoring unreadable state file" in caplog.text
    (tmp_path / "report-id.json").write_text(json.dumps({"version": 99, "last_report_id": 10**15}))
    assert ReportIdSequence(StateDir(tmp_path), Clock(6.0)).next() == 6000


def test_unwritable_state_dir_falls_back_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    seq = ReportIdSequence(StateDir(blocker / "sub"), Clock(1.0))
    assert [seq.next(), seq.next()] == [1000, 1001]
    assert caplog.text.count("report ids are kept in memory only") == 1


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.save("thing", {"a": 1})
    state.save("thing", {"a": 2})
    assert state.load("thing") == {"a": 2, "version": 1}
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["thing.json"]
    assert oct((tmp_path / "s").stat().st_mode & 0o777) == "0o700"


def test_save_into_unwritable_place_raises_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="state directory"):
        StateDir(blocker / "x").save("a", {})


def _worker(path: str, n: int, queue: multiprocessing.Queue[list[int]]) -> None:
    seq = ReportIdSequence(StateDir(path), Clock(1_700_000_000.0))
    queue.put([seq.next() for _ in range(n)])


def test_processes_sharing_a_state_dir_never_repeat_ids(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[int]] = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), 50, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    ids = [i for _ in procs for i in queue.get(timeout=30)]
    for p in procs:
        p.join(10)
    assert len(ids) == len(set(ids)) == 150


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_state_dir({"DEFENDER_AGENT_STATE_DIR": "/x"}) == Path("/x")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir({}) == Path("/var/lib/defender-agent")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_state_dir({"HOME": "/home/u"}) == Path("/home/u/.local/state/defender-agent")
    assert default_state_dir({"XDG_STATE_HOME": "/xdg"}) == Path("/xdg/defender-agent")


HOLD = """
import sys
from defender_agent.state import StateDir
held = StateDir(sys.argv[1]).acquire_lock()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_process_cannot_own_a_locked_directory(tmp_path: Path) -> None:
    import subprocess
    import sys

    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            assert (tmp_path / "lock").read_text() == f"{holder.pid}\n"
            with pytest.raises(StateError) as caught:
                StateDir(tmp_path).acquire_lock()
            assert str(caught.value) == (
                f"state directory {tmp_path} is in use by pid {holder.pid}; "
                "stop it or use --state-dir"
            )
            # the short read-modify-write lock is another file: report ids work beside it
            assert ReportIdSequence(StateDir(tmp_path), Clock(1.0)).next() == 1000
        finally:
            holder.kill()  # a crash: the kernel drops the lock, the stale pid stays in the file
            holder.wait()
    with StateDir(tmp_path).lock() as held:
        assert held.held
        assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
    assert getattr(held, "held") is False  # noqa: B009 - read again after the with block
    StateDir(tmp_path).acquire_lock().release()


def test_the_lock_excludes_this_process_too_until_released(tmp_path: Path) -> None:
    first = StateDir(tmp_path).acquire_lock()
    with pytest.raises(StateError, match=f"in use by pid {os.getpid()}"):
        StateDir(tmp_path).acquire_lock()
    first.release()
    first.release()  # idempotent
    StateDir(tmp_path).acquire_lock().release()
