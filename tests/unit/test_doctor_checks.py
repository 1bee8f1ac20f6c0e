"""The doctor's judgements without a network: files, permissions, clock, interval, policy, limits."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from defender_agent.config import load_config
from defender_agent.doctor import as_json, exit_code, render, run_checks
from defender_agent.doctor.local import (
    check_clock,
    check_interval,
    check_key_permissions,
    check_state_dir,
    check_tls_files_result,
)
from defender_agent.doctor.policy import region_of, subscribe_statement
from defender_agent.doctor.probe import TimedOutError, within
from defender_agent.transport.base import MqttSettings
from tests.conftest import proc_fixture


def self_signed(directory: Path, days: int) -> tuple[Path, Path]:
    """A certificate valid for ``days`` days, and its key (mode 0600)."""
    cert, key = directory / "c.pem", directory / "k.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", str(days)),
            *("-subj", "/CN=gw", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key.chmod(0o600)
    return cert, key


def test_a_certificate_expiring_within_30_days_is_a_warning(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, 10)
    settings = MqttSettings(endpoint="h", cert_file=cert, key_file=key, ca_file=cert)
    files, expiry = check_tls_files_result(settings, time.time())
    assert files.status == "ok"
    assert expiry.status == "warn" and "expires in 10 days" in expiry.detail
    assert "renew" in (expiry.fix or "")


def test_a_key_other_users_can_read_is_a_warning_with_chmod(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, 100)
    settings = MqttSettings(endpoint="h", cert_file=cert, key_file=key)
    assert check_key_permissions(settings).status == "ok"
    key.chmod(0o644)
    result = check_key_permissions(settings)
    assert (
        result.status == "warn"
        and result.fix == f"chmod 600 {key} (owner: the user the agent runs as)"
    )


def test_a_key_that_is_not_the_certificates_fails_with_the_fix(tmp_path: Path) -> None:
    cert, _key = self_signed(tmp_path, 100)
    other = tmp_path / "other"
    other.mkdir()
    _cert2, key2 = self_signed(other, 100)
    (result,) = check_tls_files_result(MqttSettings(endpoint="h", cert_file=cert, key_file=key2), 0)
    assert result.status == "fail" and "does not belong to certificate" in result.detail
    assert (result.fix or "").startswith("cert_file and key_file must be the two halves")


def test_the_clock_before_the_certificate_fails() -> None:
    assert check_clock(1.7e9, 1.7e9 + 10, None, None).status == "fail"
    assert check_clock(0, None, None, None).detail.endswith("before 2020, surely wrong")
    assert check_clock(1.7e9, None, 1.7e9 + 1, None).status == "fail"  # the server's cert
    assert check_clock(1.7e9, None, None, 1.7e9 - 60, "HTTP Date").status == "warn"


def test_a_short_interval_fails_unless_allowed() -> None:
    # as doctor loads it after run's rules refused it: the interval check says why
    short = load_config(
        {"dry_run": True, "client_id": "g", "interval": 60}, environ={}, command="doctor"
    )
    assert check_interval(short).status == "fail"
    allowed = load_config(
        {"dry_run": True, "client_id": "g", "interval": 60, "allow_short_interval": True},
        environ={},
    )
    assert check_interval(allowed).status == "warn"


def test_an_unwritable_state_directory_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = check_state_dir(blocker / "state")
    assert result.status == "fail" and "StateDirectory=" in (result.fix or "")


def test_policy_statement_names_region_partition_and_account() -> None:
    assert region_of("abc-ats.iot.cn-north-1.amazonaws.com.cn") == "cn-north-1"
    doc = json.loads(
        subscribe_statement("gw", "cbor", "abc-ats.iot.cn-north-1.amazonaws.com.cn", "111122223333")
    )
    assert doc[0]["Resource"][0] == (
        "arn:aws-cn:iot:cn-north-1:111122223333:topicfilter/$aws/things/gw/defender/metrics/cbor/accepted"
    )


def test_within_bounds_a_call_that_never_returns() -> None:
    started = time.monotonic()
    with pytest.raises(TimedOutError):
        within(0.2, lambda: time.sleep(5))
    assert time.monotonic() - started < 1


def test_a_dry_run_configuration_skips_the_network_and_passes(tmp_path: Path) -> None:
    config = load_config(
        {
            "dry_run": True,
            "client_id": "gw",
            "state_dir": str(tmp_path / "s"),
            "proc_root": str(proc_fixture("gateway_dualstack")),
            "socket_source": "proc",
        },
        environ={},
    )
    results = run_checks(config)
    assert exit_code(results) == 0
    names = {r.name: r.status for r in results}
    assert names["TCP connect"] == "skip" and names["proc"] == "ok"
    assert as_json(results)["ok"] is True
    assert render(results, ascii_only=True).splitlines()[0].startswith("[skip] CA, certificate")


def test_the_http_date_of_an_endpoint_on_443_measures_the_skew(tmp_path: Path) -> None:
    """A TLS server on 127.0.0.1:443 (mutual TLS, ALPN http/1.1, like AWS IoT's HTTPS) whose
    Date is 10 minutes behind: the skew is measured and the clock check fails."""
    import email.utils
    import socket
    import ssl
    import threading

    from defender_agent.doctor.probe import server_time
    from tests.mqtt_infra.pki import make_pki

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # an earlier run's TIME_WAIT
    try:
        listener.bind(("127.0.0.1", 443))
    except OSError:
        listener.close()
        pytest.skip("port 443 is not available")
    pki = make_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.load_verify_locations(str(pki.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    behind = time.time() - 600
    listener.listen(4)

    def serve() -> None:
        for _ in range(2):  # the certificate fetch, then the HTTP request
            conn, _addr = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(4096)
                    date = email.utils.formatdate(behind, usegmt=True)
                    tls.sendall(f"HTTP/1.1 404 Not Found\r\nDate: {date}\r\n\r\n".encode())
            except (OSError, ssl.SSLError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cert, key = pki.client("thing1")
    settings = MqttSettings(
        endpoint="127.0.0.1", port=443, ca_file=pki.ca, cert_file=cert, key_file=key
    )
    try:
        told = server_time(settings, 3.0)
    finally:
        listener.close()
        thread.join(5)
    assert told.source == "HTTP Date" and told.now is not None
    assert abs(told.now - behind) < 2 and told.not_before is not None
    result = check_clock(time.time(), None, told.not_before, told.now, told.source)
    assert result.status == "fail"
    assert re.search(r"; 60\d s from the HTTP Date of the endpoint$", result.detail), result.detail
