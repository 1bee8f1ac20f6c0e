"""TLS cannot be switched off by accident: plain TCP only to loopback, only when asked by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from defender_agent.config import is_loopback, load_config
from defender_agent.errors import ConfigError

AGENT = {"endpoint": "127.0.0.1", "client_id": "gw"}


def test_tls_false_is_refused_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[mqtt]\nendpoint = "127.0.0.1"\ntls = false\n')
    with pytest.raises(ConfigError) as info:
        load_config({"client_id": "gw"}, path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: mqtt.tls: TLS cannot be switched off with tls = false")
    assert "mqtt.insecure_plaintext = true" in message and "\n" not in message
    with pytest.raises(ConfigError, match="environment DEFENDER_AGENT_TLS: TLS cannot be"):
        load_config(AGENT, environ={"DEFENDER_AGENT_TLS": "false"})
    # collect and status read the same file: refused there too, never silently plain
    with pytest.raises(ConfigError, match="insecure_plaintext"):
        load_config({}, path, environ={}, command="collect")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_plain_tcp_to_loopback_when_asked_by_name(host: str) -> None:
    config = load_config({**AGENT, "endpoint": host, "insecure_plaintext": True}, environ={})
    settings = config.mqtt_settings()
    assert settings.use_tls is False and settings.port == 1883
    assert config.sources["insecure_plaintext"] == "option --insecure-plaintext"


@pytest.mark.parametrize(
    "host", ["iot.example.com", "10.0.0.5", "192.168.1.1", "0.0.0.0", "::", "localhost.evil.com"]
)
def test_plain_tcp_to_anything_else_is_refused(host: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**AGENT, "endpoint": host}, environ={"DEFENDER_AGENT_INSECURE_PLAINTEXT": "1"})
    assert str(info.value) == (
        f"environment DEFENDER_AGENT_INSECURE_PLAINTEXT: plain TCP (no TLS) to {host!r} refused: "
        "only a loopback endpoint (127.0.0.0/8, ::1, localhost) may be reached without TLS"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"cert_file": "c.pem"}, "option --cert-file is not used over plain TCP (no TLS)"),
        ({"key_file": "k.pem"}, "option --key-file is not used over plain TCP"),
        ({"ca_file": "ca.pem"}, "option --ca-file is not used over plain TCP"),
        ({"websocket": True}, "WebSocket (SigV4) needs TLS"),
    ],
)
def test_plain_tcp_never_silently_ignores_tls_settings(
    extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**AGENT, "insecure_plaintext": True, **extra}, environ={})
    assert message in str(info.value)


def test_mutual_tls_is_the_default_and_needs_its_files() -> None:
    with pytest.raises(ConfigError, match="no cert_file: mutual TLS needs --cert"):
        load_config(AGENT, environ={})
    config = load_config({**AGENT, "cert_file": "c", "key_file": "k"}, environ={})
    assert config.mqtt_settings().use_tls is True and config.effective_port == 8883


def test_the_service_without_tls_reaches_loopback_only() -> None:
    ok = load_config({"service_tls": False}, environ={}, command="service")
    assert ok.service.tls is False and ok.service.broker == "localhost"
    with pytest.raises(ConfigError) as info:
        load_config(
            {"service_tls": False, "service_broker": "mqtt.example.com"},
            environ={},
            command="service",
        )
    assert "plain TCP (no TLS) to 'mqtt.example.com' refused" in str(info.value)


def test_loopback_is_decided_by_spelling_not_by_resolving() -> None:
    assert is_loopback("127.255.255.254") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("127.0.0.1.nip.io") and not is_loopback("::ffff:10.0.0.1")
