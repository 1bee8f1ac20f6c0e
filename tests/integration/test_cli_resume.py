"""`run` restarted on one state directory: resume only a baseline read from the same source."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import proc_fixture

EXE = [sys.executable, "-m", "defender_agent"]


def _run_until(state: Path, marker: str, *extra: str) -> str:
    """A dry-run agent on ``state`` until its log says ``marker``; its whole log."""
    args = [*EXE, "run", "-d", "--splay", "0", "--state-dir", str(state), *extra]
    with subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        lines = []
        try:
            end = time.monotonic() + 30
            for raw in proc.stderr:
                lines.append(raw.decode())
                if marker in lines[-1]:
                    break
                assert time.monotonic() < end, "".join(lines)
        finally:
            proc.send_signal(signal.SIGTERM)
            lines.append(proc.stderr.read().decode())
            assert proc.wait(30) == 0, "".join(lines)
    return "".join(lines)


def test_a_baseline_from_a_proc_fixture_is_not_resumed_on_the_live_proc(tmp_path: Path) -> None:
    state = tmp_path / "s"
    fixture = proc_fixture("gateway_dualstack")
    _run_until(state, "baseline taken", "--proc-root", str(fixture))
    # the same fixture again: resumed (the next report is due an interval after the baseline)
    again = _run_until(state, "resuming with the baseline", "--proc-root", str(fixture))
    assert "not resuming" not in again
    # then the live /proc: that baseline would make the first delta a spike
    log = _run_until(state, "baseline taken")
    assert (
        f"not resuming the saved baseline: it was read with proc_root '{fixture.resolve()}', "
        "now '/proc'; starting fresh" in log
    )
    assert "resuming with the baseline" not in log
