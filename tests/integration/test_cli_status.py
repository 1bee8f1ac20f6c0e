"""`defender-agent status` after a real `run`: dry run, state that could not be saved, health."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import proc_fixture

EXE = [sys.executable, "-m", "defender_agent"]


def _dry_run_once(state: Path) -> None:
    """Run a dry-run agent until it has taken its baseline, then stop it with SIGTERM."""
    args = ["run", "-d", "--splay", "0", "--state-dir", str(state)]
    args += ["--proc-root", str(proc_fixture("gateway_dualstack"))]
    with subprocess.Popen([*EXE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        try:
            end = time.monotonic() + 30
            for raw in proc.stderr:
                if b"baseline taken" in raw:
                    break
                assert time.monotonic() < end, "no baseline"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.stderr.read()
            assert proc.wait(30) == 0


def _status(state: Path) -> str:
    result = subprocess.run(
        [*EXE, "status", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_status_after_a_dry_run_says_so(tmp_path: Path) -> None:
    _dry_run_once(tmp_path / "s")
    text = _status(tmp_path / "s")
    assert "dry run: reports printed, nothing sent" in text
    assert "endpoint:" not in text and "connected:" not in text
    assert "collector: last cycle " in text
    assert "state NOT saved" not in text
    doc = json.loads((tmp_path / "s" / "status.json").read_text())
    assert doc["dry_run"] is True and doc["endpoint"] is None
    assert doc["collector"]["sources"]["net/dev"]["missing"] is None


def test_status_says_when_the_state_was_not_saved(tmp_path: Path) -> None:
    state = tmp_path / "s"
    (state / "baseline.json").mkdir(parents=True)  # the baseline cannot be written over it
    _dry_run_once(state)
    lines = _status(state).splitlines()
    not_saved = [line for line in lines if line.startswith("state NOT saved: ")]
    assert len(not_saved) == 1
    assert f"cannot write state file {state / 'baseline'}.json" in not_saved[0]
