"""`defender-agent run` and `status` through real subprocesses: dry run, signals, bad config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import proc_fixture
from tests.mqtt_infra.pki import Pki

EXE = [sys.executable, "-m", "defender_agent"]


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*EXE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*EXE, *args],
        capture_output=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def wait_for_file(path: Path, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dry_run_prints_reports_and_stops_cleanly_on_a_signal(tmp_path: Path, sig: int) -> None:
    state = tmp_path / "state"
    proc = spawn(
        "run",
        "-d",
        "-i",
        "1",
        "--allow-short-interval",
        "--splay",
        "0",
        "--state-dir",
        str(state),
        "--proc-root",
        str(proc_fixture("gateway_dualstack")),
        "-id",
        "dry-thing",
    )
    try:
        end = time.monotonic() + 15
        status = state / "status.json"
        while time.monotonic() < end:
            if status.exists() and json.loads(status.read_text())["counters"]["built"] >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    text = out.decode()
    assert text.count('"report_id"') >= 2
    assert "Traceback" not in err.decode()
    assert f"{signal.Signals(sig).name} received: stopping" in err.decode()
    shown = run("status", "--state-dir", str(state))
    assert shown.returncode == 0
    assert "thing: dry-thing" in shown.stdout.decode()
    assert "not running" in shown.stdout.decode()
    doc = json.loads(run("status", "--state-dir", str(state), "--json").stdout)
    assert doc["counters"]["built"] >= 2 and doc["dry_run"] is True


def test_the_sample_spelling_of_the_agent(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "defender_agent.agent",
            "--endpoint",
            "e",
            "--rootCA",
            "r",
            "--cert",
            "c",
            "--key",
            "k",
            "--format",
            "json",
            "-i",
            "1",
            "--allow-short-interval",
            "-id",
            "THING",
            "--include-custom-metrics",
            "--dryrun",
            "--splay",
            "0",
            "--state-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_file(tmp_path / "status.json")
        time.sleep(1.5)
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert '"cpu_usage"' in out.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "-i", "10"], "interval 10 s is under the 300 s"),
        (["-d", "-i", "ten"], "option --interval: expected a whole number"),
        (["-d", "-t", "bad/thing"], "invalid thing name 'bad/thing': must not contain"),
        (["-e", "x"], "no cert_file: mutual TLS needs --cert"),
        ([], "no endpoint"),
        (["-d", "--config", "/nonexistent.toml"], "cannot read config file /nonexistent.toml"),
        (["-d", "--format", "xml"], "invalid choice"),
        (["-d", "-w", "maybe"], "expected true or false"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = run("run", "--state-dir", str(tmp_path), *args, timeout=30)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_config_key_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[agent]\ndry_run = true\nintreval = 300\n")
    result = run("run", "--config", str(config), "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert (
        f"{config}: unknown key 'agent.intreval'; did you mean 'agent.interval'?"
        in result.stderr.decode()
    )


def test_environment_configures_the_run(tmp_path: Path) -> None:
    proc = spawn(
        "run",
        env={
            "DEFENDER_AGENT_DRY_RUN": "true",
            "DEFENDER_AGENT_INTERVAL": "1",
            "DEFENDER_AGENT_ALLOW_SHORT_INTERVAL": "1",
            "DEFENDER_AGENT_SPLAY": "0",
            "DEFENDER_AGENT_STATE_DIR": str(tmp_path),
            "DEFENDER_AGENT_FORMAT": "cbor",
            "DEFENDER_AGENT_LOG_FORMAT": "json",
        },
    )
    try:
        wait_for_file(tmp_path / "status.json")
        proc.terminate()
        _out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.decode().splitlines()]
    assert any(line["message"].startswith("baseline taken") for line in lines)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_status_without_a_state_file(tmp_path: Path) -> None:
    result = run("status", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert b"no agent status in" in result.stdout


def test_run_help_shows_the_defaults() -> None:
    text = " ".join(run("run", "--help").stdout.decode().split())
    for fragment in (
        "reports; Device Defender accepts one per thing every 300 s (default: 300)",
        "report encoding (default: json)",
        "up to this many seconds (default: 30)",
        "MQTT keep-alive in seconds (default: 1200)",
        "(default: the host name)",
    ):
        assert fragment in text, fragment


def test_log_level_before_and_after_the_command(tmp_path: Path) -> None:
    base = ["-d", "-i", "1", "--allow-short-interval", "--splay", "0", "-id", "t"]
    for words in (
        ["--log-level", "debug", "run", *base, "--state-dir", str(tmp_path / "a")],
        ["run", "--log-level", "debug", *base, "--state-dir", str(tmp_path / "b")],
    ):
        state = Path(words[words.index("--state-dir") + 1])
        proc = spawn(*words)
        try:
            wait_for_file(state / "status.json")
            proc.terminate()
            _out, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "debug: configuration: {" in err.decode(), words


def test_a_string_for_a_number_in_the_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[agent]\ndry_run = true\ninterval = "300"\n')
    result = run("run", "--config", str(config), "--state-dir", str(tmp_path))
    err = result.stderr.decode()
    assert result.returncode == 2
    assert f"{config}: agent.interval: expected a whole number, got the string '300'" in err
    assert len(err.strip().splitlines()) == 1


def test_the_key_permission_warning_is_printed_once(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.client("thing1")
    readable = tmp_path / "key.pem"
    readable.write_bytes(key.read_bytes())
    readable.chmod(0o644)
    with socket.socket() as probe:  # a port nobody listens on: every connect fails
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = spawn(
        "run",
        *("-e", "127.0.0.1", "--port", str(port), "-r", str(pki.ca), "-c", str(cert)),
        *("-k", str(readable), "-id", "thing1", "-i", "1", "--allow-short-interval"),
        *("--splay", "0", "--state-dir", str(tmp_path / "s")),
    )
    try:
        time.sleep(4)  # several connection attempts
        proc.terminate()
        _out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    text = err.decode()
    assert text.count("retrying in") >= 2, text
    assert text.count("is readable by other users") == 1, text


def test_status_finds_the_state_dir_as_run_does(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path / "from-file"}"\n')
    for words in (["status", "--config", str(config)], ["--config", str(config), "status"]):
        result = run(*words)
        assert result.returncode == 1
        assert f"no agent status in {tmp_path / 'from-file'} " in result.stdout.decode()
    env = {"DEFENDER_AGENT_CONFIG": str(config), "DEFENDER_AGENT_STATE_DIR": str(tmp_path)}
    result = run("status", env=env)  # the environment overrides the file
    assert f"no agent status in {tmp_path} " in result.stdout.decode()
