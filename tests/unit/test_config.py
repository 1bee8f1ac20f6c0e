"""Configuration: file, environment and flags, precedence, validation, the example file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from defender_agent.config import SETTINGS, load_config
from defender_agent.errors import ConfigError
from defender_agent.rules import validate_thing_name

EXAMPLE = Path(__file__).parents[2] / "examples" / "agent.toml"
BASE = {"endpoint": "x-ats.iot.eu-west-1.amazonaws.com", "cert_file": "c", "key_file": "k"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_example_config_loads_and_documents_every_setting() -> None:
    config = load_config({}, EXAMPLE, environ={})
    assert config.endpoint == "abcdefghij1234-ats.iot.eu-west-1.amazonaws.com"
    assert config.interval == 300
    assert config.alpn is None
    assert config.custom_metrics.enabled == () and config.custom_metrics.exec_metrics == ()
    text = EXAMPLE.read_text()
    for setting in SETTINGS:
        section = re.search(rf"^\[{setting.section}\]$", text, re.M)
        assert section, setting.section
        assert re.search(rf"^#? ?{setting.toml_key} = ", text, re.M), setting.name


def test_defaults() -> None:
    config = load_config(BASE, environ={})
    assert config.format == "json" and config.interval == 300 and config.splay == 30.0
    assert config.effective_port == 8883
    assert config.effective_thing_name == config.effective_client_id
    assert config.sources["interval"] == "default"
    ws = load_config({**BASE, "websocket": True}, environ={})
    assert ws.effective_port == 443


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ninterval = 600\nformat = "cbor"\nthing_name = "from-file"\n')
    env = {"DEFENDER_AGENT_INTERVAL": "900", "DEFENDER_AGENT_THING_NAME": "from-env"}
    config = load_config({**BASE, "thing_name": "from-flag"}, path, environ=env)
    assert config.interval == 900
    assert config.sources["interval"] == "environment DEFENDER_AGENT_INTERVAL"
    assert config.format == "cbor" and config.sources["format"].endswith("agent.format")
    assert config.thing_name == "from-flag"
    assert config.sources["thing_name"] == "option --thing-name"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\ninterval = 1200\n")
    config = load_config(BASE, environ={"DEFENDER_AGENT_CONFIG": str(path)})
    assert config.interval == 1200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[agent]\nintervall = 300\n",
            "unknown key 'agent.intervall'; did you mean 'agent.interval'?",
        ),
        ("[agnet]\n", "unknown key 'agnet'; did you mean 'agent'?"),
        ("[agent]\ninterval = 'soon'\n", "agent.interval: expected a whole number, got 'soon'"),
        ("[agent]\ninterval = 10\n", "interval 10 s is under the 300 s"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: expected a whole number from 1 to 65535, got 70000"),
        ("[agent]\nformat = 'xml'\n", "agent.format: expected one of json, cbor, got 'xml'"),
        ("[agent]\nshort_names = 'maybe'\n", "agent.short_names: expected true or false"),
        ("[agent]\nthing_name = 'a/b'\n", "agent.thing_name: invalid thing name 'a/b': must not"),
        ("[collector]\ninterfaces_exclude = 3\n", "expected a list of glob patterns"),
        ("agent = 1\n", "[agent] must be a table"),
        ("[agent\n", "is not valid TOML"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(BASE, path, environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_environment_values_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="environment DEFENDER_AGENT_PORT: expected a whole"):
        load_config(BASE, environ={"DEFENDER_AGENT_PORT": "eighty"})
    with pytest.raises(ConfigError, match="unknown key 'DEFENDER_AGENT_ENDPIONT'; did you mean"):
        load_config(BASE, environ={"DEFENDER_AGENT_ENDPIONT": "x"})


def test_bad_flag_values_name_the_option() -> None:
    with pytest.raises(ConfigError, match="option --interval: expected a whole number"):
        load_config({**BASE, "interval": "5m"}, environ={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file /nonexistent\.toml"):
        load_config(BASE, Path("/nonexistent.toml"), environ={})


def test_short_interval_needs_the_switch() -> None:
    config = load_config({**BASE, "interval": "5", "allow_short_interval": True}, environ={})
    assert config.interval == 5


def test_required_settings() -> None:
    with pytest.raises(ConfigError, match="no endpoint"):
        load_config({}, environ={})
    with pytest.raises(ConfigError, match="no cert_file: mutual TLS needs --cert"):
        load_config({"endpoint": "e"}, environ={})
    assert load_config({"endpoint": "e", "websocket": True}, environ={}).websocket is True
    assert load_config({"dry_run": True}, environ={}).dry_run is True
    with pytest.raises(ConfigError, match="go together"):
        load_config({**BASE, "proxy_username": "u"}, environ={})


def test_env_booleans_and_lists() -> None:
    env = {"DEFENDER_AGENT_MQTT5": "yes", "DEFENDER_AGENT_INTERFACES_EXCLUDE": "lo, docker*,veth*"}
    config = load_config(BASE, environ=env)
    assert config.mqtt5 is True
    assert config.interfaces_exclude == ("lo", "docker*", "veth*")


def test_secrets_are_masked() -> None:
    config = load_config({**BASE, "proxy_username": "u", "proxy_password": "hunter2"}, environ={})
    assert config.describe()["proxy_password"] == "***"
    assert "hunter2" not in repr(config.mqtt_settings())


def test_settings_for_the_transport_and_collector(tmp_path: Path) -> None:
    config = load_config(
        {**BASE, "port": "443", "client_id": "gw", "list_size": "7", "proc_root": str(tmp_path)},
        environ={},
    )
    mqtt = config.mqtt_settings()
    assert (mqtt.port, mqtt.client_id, mqtt.cert_file) == (443, "gw", Path("c"))
    collector = config.collector_config()
    assert collector.list_size == 7 and collector.proc_root == tmp_path


@pytest.mark.parametrize(
    "name", ["", "a" * 129, "é" * 65, "tab\there", "del\x7f", "a+b", "a#b", "a/b"]
)
def test_invalid_thing_names(name: str) -> None:
    with pytest.raises(ValueError):
        validate_thing_name(name)


@pytest.mark.parametrize("name", ["t", "a" * 128, "é" * 64, "gw:01_x-y", "with space", "ünïcode"])
def test_valid_thing_names(name: str) -> None:
    assert validate_thing_name(name) == name


def test_invalid_thing_name_from_client_id() -> None:
    with pytest.raises(ConfigError, match="invalid thing name"):
        load_config({**BASE, "client_id": "a/b"}, environ={})


def test_the_example_exec_metric_parses(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("enabled = []", 'enabled = ["cpu_usage", "uptime"]')
    text = text.replace("# [[custom_metrics.exec]]", "[[custom_metrics.exec]]")
    for key in ("name", "command", "type", "timeout"):
        text = text.replace(f"# {key} = ", f"{key} = ")
    config = load_config({}, write(tmp_path, text), environ={})
    assert config.custom_metrics.enabled == ("cpu_usage", "uptime")
    [spec] = config.custom_metrics.exec_metrics
    assert spec.name == "queue_depth" and spec.timeout_s == 5
    assert config.collector_config().custom_metrics == config.custom_metrics


def test_bad_custom_metrics_table_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[custom_metrics]\nenabled = ["cpu_usgae"]\n')
    with pytest.raises(ConfigError, match="cpu_usgae"):
        load_config(BASE, path, environ={})
