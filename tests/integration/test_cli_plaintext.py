"""Plain TCP through the real command line: refused off loopback, warned about on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import proc_fixture
from tests.integration.test_cli_run import run, spawn
from tests.mqtt_infra.broker import Mosquitto

WARNING = "plain TCP to 127.0.0.1:{port}: no TLS, no server verification"


def _one_line_exit_2(done: subprocess.CompletedProcess[bytes], *expected: str) -> str:
    assert done.returncode == 2
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def test_run_refuses_plain_tcp_to_a_remote_endpoint(tmp_path: Path) -> None:
    done = run(
        "run", "--insecure-plaintext", "-e", "iot.example.com", "-id", "gw",
        "--state-dir", str(tmp_path / "s"),
    )  # fmt: skip
    _one_line_exit_2(
        done,
        "option --insecure-plaintext: plain TCP (no TLS) to 'iot.example.com' refused",
    )


def test_tls_false_is_an_error_naming_the_new_setting(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[mqtt]\nendpoint = "127.0.0.1"\ntls = false\n')
    done = run("run", "--config", str(config), "-id", "gw", "--state-dir", str(tmp_path / "s"))
    _one_line_exit_2(done, f"{config}: mqtt.tls: TLS cannot be switched off", "insecure_plaintext")
    done = run(
        "run", "-e", "127.0.0.1", "-id", "gw", "--state-dir", str(tmp_path / "s"),
        env={"DEFENDER_AGENT_TLS": "false"},
    )  # fmt: skip
    _one_line_exit_2(done, "environment DEFENDER_AGENT_TLS: TLS cannot be switched off")


def test_service_refuses_no_tls_to_a_remote_broker(tmp_path: Path) -> None:
    done = run(
        "service", "--no-tls", "--broker", "10.20.30.40", "--state-dir", str(tmp_path / "s"),
    )  # fmt: skip
    _one_line_exit_2(done, "option --tls/--no-tls: plain TCP (no TLS) to '10.20.30.40' refused")


def test_run_over_plain_tcp_to_loopback_warns_at_start_and_publishes(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    assert mosquitto.plain is not None
    state = tmp_path / "state"
    proc = spawn(
        "run", "--insecure-plaintext", "-e", "127.0.0.1", "--port", str(mosquitto.plain),
        "-id", "plain-thing", "-i", "1", "--allow-short-interval", "--splay", "0",
        "--state-dir", str(state), "--proc-root", str(proc_fixture("gateway_dualstack")),
    )  # fmt: skip
    try:
        end = time.monotonic() + 20
        status = state / "status.json"
        sent = 0
        while time.monotonic() < end and sent < 1:
            if status.exists():
                sent = json.loads(status.read_text())["counters"]["sent"]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _out, err_bytes = proc.communicate(timeout=15)
    finally:
        proc.kill()
    err = err_bytes.decode()
    assert proc.returncode == 0, err
    assert sent >= 1, err
    warnings = [line for line in err.splitlines() if "plain TCP to" in line]
    assert len(warnings) == 1 and "warning: " in warnings[0], err
    assert warnings[0].endswith(WARNING.format(port=mosquitto.plain))
