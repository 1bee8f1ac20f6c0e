"""Configuration: typed sections, file/environment/flags precedence, validation, the examples."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from defender_agent.config import (
    SETTINGS,
    CollectorConfig,
    Config,
    load_config,
)
from defender_agent.errors import ConfigError
from defender_agent.rules import validate_thing_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLES = Path(__file__).parents[2] / "examples"
EXAMPLE = EXAMPLES / "agent.toml"
SERVICE_EXAMPLE = EXAMPLES / "service.toml"
BASE = {"endpoint": "x-ats.iot.eu-west-1.amazonaws.com", "cert_file": "c", "key_file": "k"}


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "config.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# --------------------------------------------------------------------------- the examples
def _documented(path: Path) -> dict[tuple[str, str], str]:
    """(section, key) -> the value text of every ``key = value`` line, commented or not."""
    found: dict[tuple[str, str], str] = {}
    section = ""
    for line in path.read_text().splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            section = header.group(1)
            continue
        entry = re.fullmatch(r"(?:# )?(\w+) = (.+?)(?:\s+# .*)?", line)
        if entry and section:
            found.setdefault((section, entry.group(1)), entry.group(2))
    return found


def test_the_examples_document_every_setting_with_its_default() -> None:
    documented = {**_documented(EXAMPLE), **_documented(SERVICE_EXAMPLE)}
    for setting in SETTINGS:
        key = (setting.section, setting.key)
        assert key in documented, f"{setting.where} is not in examples/"
        if setting.default is None:
            continue
        shown = tomllib.loads(f"v = {documented[key]}")["v"]
        assert setting.convert(shown, text=False) == setting.default, setting.where


def test_the_example_configs_load() -> None:
    config = load_config({}, EXAMPLE, environ={})
    assert config.mqtt.endpoint == "abcdefghij1234-ats.iot.eu-west-1.amazonaws.com"
    assert config.agent.interval == 300
    assert config.mqtt.alpn is None
    assert config.custom_metrics.enabled == () and config.custom_metrics.exec_metrics == ()
    service = load_config({}, SERVICE_EXAMPLE, environ={}, command="service")
    assert service.service.cert_file == Path("/etc/defender-agent/service/service.pem.crt")
    assert service.service.min_delay == 300.0


def test_defaults() -> None:
    config = load_config(BASE, environ={})
    assert config.agent.format == "json" and config.agent.interval == 300
    assert config.agent.splay == 30.0
    assert config.effective_port == 8883
    assert config.effective_thing_name == config.effective_client_id
    assert config.sources["interval"] == "default"
    ws = load_config({**BASE, "websocket": True}, environ={})
    assert ws.effective_port == 443


def test_the_collector_section_is_the_collectors_own_defaults() -> None:
    assert load_config({"dry_run": True}, environ={}).collector == CollectorConfig()


def test_the_service_defaults_match_the_library_defaults() -> None:
    from defender_agent.report.validate import ValidationPolicy
    from defender_agent.service.responder import ResponderPolicy
    from defender_agent.service.runner import ServiceConfig

    s = Config().service
    policy, validation = ResponderPolicy(), ValidationPolicy()
    assert (s.min_delay, s.throttle_message, s.invalid_message) == (
        policy.min_delay_s,
        policy.throttle_message,
        policy.invalid_message,
    )
    assert (s.thing_name_code, s.thing_name_message, s.report_id_in_rejections) == (
        policy.thing_name_code,
        policy.thing_name_message,
        policy.include_report_id_in_rejections,
    )
    assert (s.strict_report_ids, s.max_tracked_things) == (
        policy.strict_report_ids,
        policy.max_tracked_things,
    )
    assert s.allow_mixed_names == validation.allow_mixed_names
    assert s.min_report_id == validation.min_report_id
    assert s.versions == validation.accepted_versions
    assert s.accept_unknown_keys != validation.reject_unknown_keys
    assert s.reject_null_metrics != validation.accept_null_metrics
    assert s.custom_name_check == validation.check_custom_metric_names
    service = ServiceConfig(broker=None, db_url="x")  # type: ignore[arg-type]
    assert (s.batch_max, s.queue_max, s.drain_timeout) == (
        service.batch_max,
        service.queue_max,
        service.drain_timeout_s,
    )


def test_the_sandbox_interval_default_is_the_sandboxs() -> None:
    from defender_agent.sandbox.app import DEFAULT_INTERVAL_S

    assert Config().sandbox.interval == DEFAULT_INTERVAL_S


def test_sections_are_frozen() -> None:
    config = load_config({"dry_run": True}, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.agent.interval = 5  # type: ignore[misc]


def test_every_setting_has_one_flat_name_and_one_place_in_the_file() -> None:
    names = [s.name for s in SETTINGS]
    places = [(s.section, s.key) for s in SETTINGS]
    assert len(set(names)) == len(names)
    assert len(set(places)) == len(places)
    for setting in SETTINGS:
        assert setting.help and "default" not in setting.help, setting.name
        assert re.fullmatch(r"DEFENDER_AGENT_[A-Z0-9_]+", setting.env)


def test_help_shows_the_default() -> None:
    by_name = {s.name: s for s in SETTINGS}
    assert by_name["interval"].help_with_default.endswith("(default: 300)")
    assert by_name["splay"].help_with_default.endswith("(default: 30)")
    assert by_name["format"].help_with_default.endswith("(default: json)")
    assert "(default: the host name)" in by_name["client_id"].help_with_default


# --------------------------------------------------------------------------- precedence
def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ninterval = 600\nformat = "cbor"\nthing_name = "from-file"\n')
    env = {"DEFENDER_AGENT_INTERVAL": "900", "DEFENDER_AGENT_THING_NAME": "from-env"}
    config = load_config({**BASE, "thing_name": "from-flag"}, path, environ=env)
    assert config.agent.interval == 900
    assert config.sources["interval"] == "environment DEFENDER_AGENT_INTERVAL"
    assert config.agent.format == "cbor" and config.sources["format"].endswith("agent.format")
    assert config.agent.thing_name == "from-flag"
    assert config.sources["thing_name"] == "option --thing-name"


def test_flag_labels_name_the_option_as_spelt() -> None:
    with pytest.raises(ConfigError, match=r"^option --port: expected a whole number"):
        load_config(
            {"service_port": "x"},
            environ={},
            command="service",
            labels={"service_port": "--port"},
        )


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\ninterval = 1200\n")
    config = load_config(BASE, environ={"DEFENDER_AGENT_CONFIG": str(path)})
    assert config.agent.interval == 1200


def test_service_and_sandbox_sections_from_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[service]\ntls = false\nmin_delay = 0\nversions = ["1.0", "2.1"]\n'
        '[sandbox]\ninterval = 5\n[logging]\nformat = "json"\n',
    )
    env = {"DEFENDER_AGENT_SERVICE_PORT": "18830", "DEFENDER_AGENT_SANDBOX_REPORTS": "2"}
    config = load_config({}, path, environ=env, command="service")
    assert config.service.tls is False and config.service.min_delay == 0.0
    assert config.service.versions == frozenset({"1.0", "2.1"})
    assert config.service.port == 18830
    assert config.sandbox.interval == 5 and config.sandbox.reports == 2
    assert config.logging.format == "json"
    assert config.sources["service_port"] == "environment DEFENDER_AGENT_SERVICE_PORT"


def test_each_command_checks_only_its_own_rules() -> None:
    # collect needs no endpoint; the service needs its certificate, not the agent's
    assert load_config({}, environ={}, command="collect").mqtt.endpoint is None
    with pytest.raises(ConfigError, match="mutual TLS needs --cert-file"):
        load_config({}, environ={}, command="service")
    assert load_config({"service_tls": False}, environ={}, command="service").service.tls is False
    with pytest.raises(ConfigError, match=r"shared-group is supported with MQTT 3\.1\.1 only"):
        load_config(
            {"service_tls": False, "service_mqtt5": True, "service_shared_group": "g"},
            environ={},
            command="service",
        )


# --------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[agent]\nintervall = 300\n",
            "unknown key 'agent.intervall'; did you mean 'agent.interval'?",
        ),
        ("[agnet]\n", "unknown key 'agnet'; did you mean 'agent'?"),
        (
            "[service]\nmin_dealy = 1\n",
            "unknown key 'service.min_dealy'; did you mean 'service.min_delay'?",
        ),
        ("[agent]\ninterval = 'soon'\n", "agent.interval: expected a whole number, got the string"),
        ('[agent]\ninterval = "300"\n', "agent.interval: expected a whole number, got the string"),
        ('[agent]\nsplay = "5"\n', "agent.splay: expected a number of seconds, got the string"),
        ('[mqtt]\ntls = "false"\n', "mqtt.tls: expected true or false, got the string 'false'"),
        ("[agent]\ninterval = 10\n", "interval 10 s is under the 300 s"),
        ("[agent]\ninterval = 3.5\n", "agent.interval: expected a whole number, got 3.5"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: expected a whole number from 1 to 65535, got 70000"),
        ("[agent]\nformat = 'xml'\n", "agent.format: expected one of json, cbor, got 'xml'"),
        ("[agent]\nshort_names = 'maybe'\n", "agent.short_names: expected true or false"),
        ("[agent]\nthing_name = 'a/b'\n", "agent.thing_name: invalid thing name 'a/b': must not"),
        ('[agent]\nthing_name = ""\n', "agent.thing_name: invalid thing name '': must be 1 to"),
        ("[collector]\ninterfaces_exclude = 3\n", "expected a list of glob patterns"),
        ("[collector]\nproc_root = '/nonexistent/proc'\n", "is not a directory"),
        ("[service]\nversions = ['1.x']\n", "service.versions: expected versions such as"),
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


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, b'[agent]\nthing_name = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(BASE, path, environ={})
    assert str(info.value).startswith(f"config file {path} is not UTF-8 text")
    assert "\n" not in str(info.value)


def test_bad_environment_values_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="environment DEFENDER_AGENT_PORT: expected a whole"):
        load_config(BASE, environ={"DEFENDER_AGENT_PORT": "eighty"})
    with pytest.raises(ConfigError, match="unknown key 'DEFENDER_AGENT_ENDPIONT'; did you mean"):
        load_config(BASE, environ={"DEFENDER_AGENT_ENDPIONT": "x"})
    with pytest.raises(ConfigError, match="DEFENDER_AGENT_SERVICE_VERSIONS: expected versions"):
        load_config(BASE, environ={"DEFENDER_AGENT_SERVICE_VERSIONS": "abc"})
    with pytest.raises(ConfigError, match="did you mean 'DEFENDER_AGENT_SERVICE_MIN_DELAY'"):
        load_config(BASE, environ={"DEFENDER_AGENT_SERVICE_MIN_DELY": "1"})


def test_bad_flag_values_name_the_option() -> None:
    with pytest.raises(ConfigError, match="option --interval: expected a whole number"):
        load_config({**BASE, "interval": "5m"}, environ={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file /nonexistent\.toml"):
        load_config(BASE, Path("/nonexistent.toml"), environ={})


def test_short_interval_needs_the_switch() -> None:
    config = load_config({**BASE, "interval": "5", "allow_short_interval": True}, environ={})
    assert config.agent.interval == 5


def test_required_settings() -> None:
    with pytest.raises(ConfigError, match="no endpoint"):
        load_config({}, environ={})
    with pytest.raises(ConfigError, match="no cert_file: mutual TLS needs --cert"):
        load_config({"endpoint": "e"}, environ={})
    assert load_config({"endpoint": "e", "websocket": True}, environ={}).mqtt.websocket is True
    assert load_config({"dry_run": True}, environ={}).agent.dry_run is True
    with pytest.raises(ConfigError, match="go together"):
        load_config({**BASE, "proxy_username": "u"}, environ={})


def test_env_booleans_and_lists() -> None:
    env = {"DEFENDER_AGENT_MQTT5": "yes", "DEFENDER_AGENT_INTERFACES_EXCLUDE": "lo, docker*,veth*"}
    config = load_config(BASE, environ=env)
    assert config.mqtt.mqtt5 is True
    assert config.collector.interfaces_exclude == ("lo", "docker*", "veth*")


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
    assert config.collector.list_size == 7 and config.collector.proc_root == tmp_path


def test_log_level_default_depends_on_the_command() -> None:
    config = load_config({"dry_run": True}, environ={})
    assert config.effective_log_level("run") == "info"
    assert config.effective_log_level("service") == "info"
    assert config.effective_log_level("collect") == "warning"
    debug = load_config({"dry_run": True}, environ={"DEFENDER_AGENT_LOG_LEVEL": "debug"})
    assert debug.effective_log_level("collect") == "debug"


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
    assert config.collector.custom_metrics == config.custom_metrics


def test_bad_custom_metrics_table_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[custom_metrics]\nenabled = ["cpu_usgae"]\n')
    with pytest.raises(ConfigError, match="cpu_usgae"):
        load_config(BASE, path, environ={})


def test_describe_lists_every_setting(tmp_path: Path) -> None:
    described: dict[str, Any] = load_config({"dry_run": True}, environ={}).describe()
    assert set(described) == {s.name for s in SETTINGS}
    assert described["interval"] == 300 and described["service_min_delay"] == 300.0
