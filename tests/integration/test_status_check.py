"""`status --check` exit codes and systemd's notifications, on the real agent and service.

The agent runs against a real mosquitto (mutual TLS, no responder: its reports go
unanswered) with NOTIFY_SOCKET pointing at a real AF_UNIX datagram socket: READY=1 once
connected and subscribed, STATUS= lines, WATCHDOG=1 at half WATCHDOG_USEC; `status
--check` says healthy, then "replies missing", then "not running" after SIGTERM. The
service the same way, and `status --service --check` sees its broker go away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_infra.broker import Mosquitto
from tests.mqtt_infra.pki import Pki
from tests.unit.test_sdnotify import Systemd, wait_for

EXE = [sys.executable, "-m", "defender_agent"]


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    box = Systemd(sock, path)
    yield box
    box.close()


def check(*args: str) -> tuple[int, str]:
    result = subprocess.run(
        [*EXE, "status", "--check", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.strip()


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [*EXE, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **env},
        )


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_the_agent_notifies_systemd_and_status_check_follows_it(
    mosquitto: Mosquitto, pki: Pki, tmp_path: Path, systemd: Systemd
) -> None:
    cert, key = pki.client("thing1")
    state = tmp_path / "state"
    args = ["run", "-e", "127.0.0.1", "--port", str(mosquitto.port), "-r", str(pki.ca)]
    args += ["-c", str(cert), "-k", str(key), "--client-id", "thing1", "-i", "1"]
    args += ["--allow-short-interval", "--splay", "0", "--state-dir", str(state)]
    env = {"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "2000000"}
    log = tmp_path / "agent.log"
    proc = spawn(args, env, log)
    try:
        wait_for(lambda: systemd.lines("READY"), 30)
        ready_at = systemd.lines("READY")[0][0]
        assert "connected to 127.0.0.1" in log.read_text()  # READY came after the connect
        assert any(s.startswith("connected;") for _, s in systemd.lines("STATUS"))
        # pings every second from the loop (WatchdogSec 2 s), none ever 2 s apart
        time.sleep(3.0)
        pings = [at for at, _ in systemd.lines("WATCHDOG") if at > ready_at - 2]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert len(pings) >= 3 and max(gaps) < 2.0, pings
        wait_for((state / "status.json").exists, 10)
        code, line = check("--state-dir", str(state))
        assert (code, line) == (0, "OK: agent healthy"), log.read_text()[-2000:]
        code, line = check("--state-dir", str(state), "--max-age", "0.5")
        assert code == 1 and line.startswith("UNHEALTHY: no report accepted since the start")
        # nobody answers: after 3 unanswered reports in a row, "replies missing"
        wait_for(lambda: check("--state-dir", str(state))[0] == 1, 30)
        code, line = check("--state-dir", str(state))
        assert line.startswith("UNHEALTHY: replies missing: "), line
        assert any("unanswered" in s for _, s in systemd.lines("STATUS"))
    finally:
        assert stop(proc) == 0, log.read_text()[-2000:]
    assert systemd.lines("STOPPING")
    code, line = check("--state-dir", str(state))
    assert code == 1 and line == f"UNHEALTHY: agent not running (pid {proc.pid} is gone)"


def test_a_dry_run_agent_is_ready_after_its_first_cycle_and_healthy(
    tmp_path: Path, systemd: Systemd
) -> None:
    state = tmp_path / "state"
    args = ["run", "-d", "-i", "1", "--allow-short-interval", "--splay", "0"]
    args += ["--state-dir", str(state), "--client-id", "gw"]
    proc = spawn(args, {"NOTIFY_SOCKET": systemd.name}, tmp_path / "agent.log")
    try:
        wait_for(lambda: systemd.lines("READY"), 30)
        assert systemd.lines("READY")[0][1] == "1"
        assert systemd.lines("STATUS")[0][1].startswith("dry run; built ")
        assert check("--state-dir", str(state)) == (0, "OK: agent healthy")
    finally:
        assert stop(proc) == 0


def test_no_status_an_unreadable_one_or_bad_options_exit_2(tmp_path: Path) -> None:
    code, line = check("--state-dir", str(tmp_path / "none"))
    assert code == 2 and line.startswith("UNKNOWN: no readable agent status in ")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "status.json").write_text("{not json")
    assert check("--state-dir", str(tmp_path / "bad"))[0] == 2
    result = subprocess.run(
        [*EXE, "status", "--check", "--max-age", "soon"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "--max-age" in result.stderr


def test_the_service_notifies_systemd_and_status_check_sees_the_broker_go(
    mosquitto: Mosquitto, pki: Pki, tmp_path: Path, systemd: Systemd
) -> None:
    cert, key = pki.client("responder")
    state = tmp_path / "service"
    args = ["service", "--broker", "127.0.0.1", "--port", str(mosquitto.port)]
    args += ["--ca-file", str(pki.ca), "--cert-file", str(cert), "--key-file", str(key)]
    args += ["--db", str(tmp_path / "db.sqlite3")]
    env = {
        "NOTIFY_SOCKET": systemd.name,
        "WATCHDOG_USEC": "1000000",
        "DEFENDER_AGENT_STATE_DIR": str(state),
    }
    log = tmp_path / "service.log"
    proc = spawn(args, env, log)
    service_check = ["--service", "--state-dir", str(state)]
    try:
        wait_for(lambda: systemd.lines("READY"), 30)
        assert "service answering reports" in log.read_text()
        assert systemd.lines("STATUS")[0][1].startswith("broker connected; accepted 0")
        time.sleep(1.6)
        assert len(systemd.lines("WATCHDOG")) >= 3
        wait_for((state / "service-status.json").exists, 10)
        assert check(*service_check) == (0, "OK: service healthy")
        mosquitto.stop()  # the broker goes away
        wait_for(lambda: check(*service_check, "--max-disconnected", "1")[0] == 1, 20)
        code, line = check(*service_check, "--max-disconnected", "1")
        assert line.startswith("UNHEALTHY: broker not connected for "), line
        assert any("broker NOT connected" in s for _, s in systemd.lines("STATUS"))
    finally:
        assert stop(proc) == 0, log.read_text()[-2000:]
    code, line = check(*service_check)
    assert code == 1 and line == f"UNHEALTHY: service not running (pid {proc.pid} is gone)"


def test_with_a_service_answering_status_shows_the_acceptance_and_check_is_healthy(
    mosquitto: Mosquitto, pki: Pki, tmp_path: Path, systemd: Systemd
) -> None:
    """The local service answers the agent's reports: STATUS= shows the acceptance as the
    reply arrives (not at the next cycle), and --max-age 5 is met."""
    cert, key = pki.client("responder")
    service = spawn(
        [
            *("service", "--broker", "127.0.0.1", "--port", str(mosquitto.port)),
            *("--ca-file", str(pki.ca), "--cert-file", str(cert), "--key-file", str(key)),
            *("--db", str(tmp_path / "db.sqlite3"), "--min-delay", "0"),
        ],
        {"DEFENDER_AGENT_STATE_DIR": str(tmp_path / "service")},
        tmp_path / "service.log",
    )
    cert, key = pki.client("thing1")
    state = tmp_path / "state"
    args = ["run", "-e", "127.0.0.1", "--port", str(mosquitto.port), "-r", str(pki.ca)]
    args += ["-c", str(cert), "-k", str(key), "--client-id", "thing1", "-i", "2"]
    args += ["--allow-short-interval", "--splay", "0", "--state-dir", str(state)]
    log = tmp_path / "agent.log"
    try:
        wait_for(lambda: "service answering reports" in (tmp_path / "service.log").read_text(), 30)
        agent = spawn(args, {"NOTIFY_SOCKET": systemd.name}, log)
        try:
            wait_for(lambda: any("accepted 1" in s for _, s in systemd.lines("STATUS")), 30)
            lines = systemd.lines("STATUS")
            index = next(i for i, (_, s) in enumerate(lines) if "accepted 1" in s)
            assert lines[index][1].startswith("connected; sent ")
            assert "; last accepted " in lines[index][1]
            # sent when the reply came: well before the next cycle (2 s after the publish)
            assert lines[index][0] - lines[index - 1][0] < 1.5, lines
            wait_for(lambda: check("--state-dir", str(state), "--max-age", "5")[0] == 0, 10)
        finally:
            assert stop(agent) == 0, log.read_text()[-2000:]
    finally:
        assert stop(service) == 0
