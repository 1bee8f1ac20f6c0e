"""Issue 9 item 8: a failed TLS handshake is explained in words, against a real mosquitto.

awscrt says only "TLS (SSL) negotiation failed"; the transport makes one handshake of
its own with Python's ssl (transport/diagnose.py) and says why: the CA, the server's
name, our client certificate.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from defender_agent.errors import ConnectError
from defender_agent.transport.base import MqttSettings
from defender_agent.transport.diagnose import diagnose
from defender_agent.transport.mqtt import MqttTransport
from tests.mqtt_infra.broker import Mosquitto
from tests.mqtt_infra.pki import Pki, _csr, _sign


def settings(port: int, pki: Pki, name: str = "thing1", **changes: object) -> MqttSettings:
    cert, key = pki.client(name)
    values: dict[str, object] = {
        "endpoint": "127.0.0.1",
        "port": port,
        "client_id": name,
        "ca_file": pki.ca,
        "cert_file": cert,
        "key_file": key,
        "connect_timeout_s": 5.0,
    }
    values.update(changes)
    return MqttSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def elsewhere(pki: Pki, tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto whose certificate (from the right CA) is for elsewhere.example only."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    for name in ("ca.crt", "ca.key"):
        shutil.copy(pki.dir / name, work / name)
    (work / "server.ext").write_text(
        "subjectAltName=DNS:elsewhere.example\n"
        "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    _csr(work, "elsewhere")
    _sign(work, "elsewhere", "ca", "server.ext")
    served = dataclasses.replace(
        pki, server_cert=work / "elsewhere.crt", server_key=work / "elsewhere.key"
    )
    broker = Mosquitto(tmp_path / "mosquitto-elsewhere", served)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_good_handshake_has_nothing_to_explain(mosquitto: Mosquitto, pki: Pki) -> None:
    assert diagnose(settings(mosquitto.port, pki)) is None


def test_the_wrong_ca_is_named(mosquitto: Mosquitto, pki: Pki) -> None:
    cause = diagnose(settings(mosquitto.port, pki, ca_file=pki.other_ca))
    assert cause == f"the server's certificate is not signed by CA {pki.other_ca}"


def test_a_server_certificate_for_another_name_names_both(elsewhere: Mosquitto, pki: Pki) -> None:
    cause = diagnose(settings(elsewhere.port, pki))
    assert cause == "the server's certificate is for elsewhere.example, not 127.0.0.1"


def test_a_client_certificate_from_another_ca_is_refused_in_words(
    mosquitto: Mosquitto, pki: Pki
) -> None:
    cause = diagnose(settings(mosquitto.port, pki, "rogue"))
    assert cause is not None
    assert cause.startswith("the server refused our client certificate"), cause


def test_not_tls_problems_are_not_explained(pki: Pki) -> None:
    from tests.mqtt_infra.broker import free_port

    assert diagnose(settings(free_port(), pki)) is None  # connection refused: not TLS's


@pytest.mark.parametrize("mqtt5", [False, True], ids=["mqtt3", "mqtt5"])
def test_the_transport_says_why_once_per_distinct_failure(
    mosquitto: Mosquitto, pki: Pki, caplog: pytest.LogCaptureFixture, mqtt5: bool
) -> None:
    """The rogue client certificate fails fast (< 5 s): each attempt's error carries the
    cause; the diagnostic handshake and its ERROR line happen once."""
    transport = MqttTransport(settings(mosquitto.port, pki, "rogue", mqtt5=mqtt5))
    messages = []
    with caplog.at_level(logging.ERROR, "defender_agent.transport"):
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(ConnectError) as failed:
                transport.connect()
            assert time.monotonic() - started < 10
            messages.append(str(failed.value))
    transport.disconnect()
    for message in messages:
        assert "the server refused our client certificate" in message, message
    lines = [r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"TLS handshake with 127.0.0.1:{mosquitto.port} failed: ")
