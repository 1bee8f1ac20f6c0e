"""Two `defender-agent run` processes on one state directory: the second refuses, naming the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import proc_fixture

EXE = [sys.executable, "-m", "defender_agent"]


def _args(state: Path) -> list[str]:
    root = proc_fixture("gateway_dualstack")
    return [*EXE, "run", "-d", "--splay", "0", "--state-dir", str(state), "--proc-root", str(root)]


def _wait_for_status(state: Path, pid: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if json.loads((state / "status.json").read_text())["pid"] == pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the agent {pid} wrote no status: {list(state.iterdir())}")


def test_a_second_run_on_the_same_state_dir_refuses(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with subprocess.Popen(_args(state), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as first:
        try:
            _wait_for_status(state, first.pid)  # it holds the lock: the status is written after
            second = subprocess.run(
                _args(state), capture_output=True, text=True, timeout=60, check=False
            )
            assert second.returncode == 2
            assert second.stdout == ""
            assert second.stderr == (
                f"defender-agent: error: state directory {state} is in use by pid "
                f"{first.pid}; stop it or use --state-dir\n"
            )
            # the refused agent wrote nothing into the first one's directory
            assert json.loads((state / "status.json").read_text())["pid"] == first.pid
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(30) == 0
            assert first.stderr is not None
            first.stderr.read()
    # the lock went with the first process: a new agent may use the directory
    with subprocess.Popen(_args(state), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as third:
        try:
            _wait_for_status(state, third.pid)
        finally:
            third.send_signal(signal.SIGTERM)
            assert third.wait(30) == 0
            assert third.stderr is not None
            third.stderr.read()
    assert (state / "lock").read_text() == f"{third.pid}\n"
    assert os.access(state / "lock", os.R_OK)
