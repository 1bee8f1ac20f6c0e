"""`defender-agent service --http`: the API served by the real service process.

The HTTP server starts before the broker connection (a service waiting for its broker
still answers the API); a non-loopback address without a credentials file, a bad
``--http`` or a taken port is one line and exit 2.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import boto3  # type: ignore[import-untyped]

from tests.integration.test_cli_run import EXE, run
from tests.mqtt_infra.broker import free_port


def _credentials(path: Path) -> tuple[str, str]:
    key_id, secret = "AKIATESTSERVICEHTTP1", "a-secret-for-the-service-http-test"
    path.write_text(
        f"[ops]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n",
        encoding="utf-8",
    )
    return key_id, secret


def test_the_service_serves_the_api_while_waiting_for_its_broker(tmp_path: Path) -> None:
    key_id, secret = _credentials(tmp_path / "creds")
    port = free_port()
    proc = subprocess.Popen(
        [
            *EXE, "service", "--no-tls", "--port", str(free_port()),
            "--state-dir", str(tmp_path / "state"),
            "--http", f"127.0.0.1:{port}", "--http-credentials-file", str(tmp_path / "creds"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "DEFENDER_AGENT_HTTP_REGION": "eu-west-1"},
    )  # fmt: skip
    try:
        iot = boto3.client(
            "iot",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="eu-west-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                iot.create_security_profile(securityProfileName="p")
                break
            except Exception:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.2)
        names = [p["name"] for p in iot.list_security_profiles()["securityProfileIdentifiers"]]
        assert names == ["p"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert secret not in err.decode()
    # the key id (not a secret; AWS's own audit trail names it too) only in the audit line
    assert [line for line in err.decode().splitlines() if key_id in line] == [
        line for line in err.decode().splitlines() if "api: CreateSecurityProfile 'p' by" in line
    ]


def test_non_loopback_without_credentials_is_refused(tmp_path: Path) -> None:
    done = run(
        "service", "--no-tls", "--port", "1", "--state-dir", str(tmp_path),
        "--http", "0.0.0.0:0",
    )  # fmt: skip
    assert done.returncode == 2
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("defender-agent: error: http listen on 0.0.0.0 (not loopback) needs")


def test_a_taken_port_and_a_bad_listen_are_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        done = run(
            "service", "--no-tls", "--port", "1", "--state-dir", str(tmp_path),
            "--http", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"defender-agent: error: cannot serve HTTP on 127.0.0.1:{port}")
    )
    done = run(
        "service", "--no-tls", "--port", "1", "--state-dir", str(tmp_path), "--http", "nope",
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines()[-1] == (
        "defender-agent: error: http listen 'nope' is not HOST:PORT"
    )
