"""The sandbox's starter profile: ``python3 -m http.server 8123`` alarms within one report.

A real ``defender-agent sandbox`` process (embedded broker, real agent collecting from
``/proc``) in its own network namespace (``unshare --net``, root only), so that the ports
other processes of this machine open and close cannot touch the allow-list it starts with.
The test then runs ``python3 -m http.server 8123`` inside the same namespace (``nsenter``),
waits for the in-alarm line, stops the server and waits for the alarm-cleared line.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.test_sandbox import needs_embedded, sandbox_args

pytestmark = [
    pytest.mark.live,
    needs_embedded,
    pytest.mark.skipif(
        os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")),
        reason="needs root, unshare and nsenter for a network namespace of its own",
    ),
]

ALARM = r"^detect: in-alarm sandbox-starter/listening-tcp-ports on sandbox-test: .*\b8123\b"
CLEAR = r"^detect: alarm-cleared sandbox-starter/listening-tcp-ports on sandbox-test"


def _lines(proc: subprocess.Popen[str], into: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        into.put(line.rstrip("\n"))


def _wait_line(lines: queue.Queue[str], pattern: str, seen: list[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(seen))


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_http_server_8123_alarms_within_one_report_and_clears(tmp_path: Path) -> None:
    sandbox = " ".join(sandbox_args(tmp_path / "sandbox", "--interval", "1"))
    proc = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {sandbox}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc, lines), daemon=True).start()
    seen: list[str] = []
    server = None
    try:
        _wait_line(lines, r"^reply  \d+ ← ACCEPTED", seen, 60)
        assert not any("detect:" in line for line in seen), seen  # nothing new listens yet
        inside = ["nsenter", f"--net=/proc/{proc.pid}/ns/net"]
        server = subprocess.Popen(
            [*inside, sys.executable, "-m", "http.server", "8123", "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        opened_at = len(seen)
        alarm = _wait_line(lines, ALARM, seen, 20)
        # within one report: the report collected while the server started may miss it,
        # the next one carries it
        reports = [line for line in seen[opened_at:] if line.startswith("report ")]
        assert 1 <= len(reports) <= 2, seen[opened_at:]
        assert "8123" in alarm
        server.send_signal(signal.SIGINT)
        server.wait(10)
        server = None
        cleared = _wait_line(lines, CLEAR, seen, 20)
        assert "8123" not in cleared
    finally:
        if server is not None:
            server.kill()
            server.wait()
        _stop(proc)
    assert proc.returncode == 0, "\n".join(seen)
