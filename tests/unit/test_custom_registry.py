"""The [custom_metrics] table, and CustomMetrics.collect(): all types, failures isolated, valid reports."""

from __future__ import annotations

import logging
import shutil
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from defender_agent.custom import BUILTIN_NAMES, CustomMetrics, CustomMetricsConfig, ExecSpec
from defender_agent.custom import builtins as builtins_module
from defender_agent.custom.registry import MAX_EXEC_TIMEOUT_S, parse_custom_metrics_table
from defender_agent.errors import ConfigError
from defender_agent.model import CustomMetric, CustomMetricType, Report
from defender_agent.procfs import ProcFS
from defender_agent.report.document import to_document
from defender_agent.report.names import NameStyle
from defender_agent.report.serialize import encode_report
from defender_agent.report.validate import PayloadFormat, validate_document, validate_payload

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10
    import tomli as tomllib

HOST = Path(__file__).parents[1] / "fixtures" / "custom_host"
N = CustomMetricType.NUMBER
NL = CustomMetricType.NUMBER_LIST
SL = CustomMetricType.STRING_LIST
IPL = CustomMetricType.IP_ADDRESS_LIST
NO_PLUGINS: tuple[str, ...] = ()


def parse(table: Mapping[str, object]) -> CustomMetricsConfig:
    return parse_custom_metrics_table(table, "agent.toml", plugin_names=NO_PLUGINS)


# --------------------------------------------------------------------------- the table
def test_full_table_from_toml() -> None:
    text = """
    [custom_metrics]
    enabled = ["cpu_usage", "disk_usage", "logged_in_users"]
    disk_usage_path = "/data"
    utmp_path = "/run/utmp"

    [[custom_metrics.exec]]
    name = "queue_depth"
    command = ["/usr/local/bin/queue-depth", "--spool", "/var/spool/app"]
    type = "number"
    timeout = 2.5

    [[custom_metrics.exec]]
    name = "wifi_ssids"
    command = ["sh", "-c", "iw dev | awk '/ssid/ {print $2}'"]
    type = "string-list"
    """
    config = parse(tomllib.loads(text)["custom_metrics"])
    assert config == CustomMetricsConfig(
        enabled=("cpu_usage", "disk_usage", "logged_in_users"),
        disk_usage_path=Path("/data"),
        utmp_path=Path("/run/utmp"),
        exec_metrics=(
            ExecSpec(
                "queue_depth", ("/usr/local/bin/queue-depth", "--spool", "/var/spool/app"), N, 2.5
            ),
            ExecSpec("wifi_ssids", ("sh", "-c", "iw dev | awk '/ssid/ {print $2}'"), SL, 5.0),
        ),
    )


def test_empty_table() -> None:
    config = parse({})
    assert config == CustomMetricsConfig()
    assert config.empty


def test_all_builtins_can_be_enabled() -> None:
    assert parse({"enabled": list(BUILTIN_NAMES)}).enabled == BUILTIN_NAMES


def test_paths_expand_the_home_directory() -> None:
    config = parse({"disk_usage_path": "~/data", "utmp_path": " /var/run/utmp "})
    assert config.disk_usage_path == Path("~/data").expanduser()
    assert config.utmp_path == Path("/var/run/utmp")


ERRORS = [
    ({"enable": []}, "agent.toml: custom_metrics: unknown key 'enable'; did you mean 'enabled'?"),
    (
        {"enabled": "cpu_usage"},
        "agent.toml: custom_metrics.enabled: expected a list of metric names",
    ),
    ({"enabled": [1]}, "agent.toml: custom_metrics.enabled[0]: expected a metric name, got 1"),
    (
        {"enabled": ["uptime", "cpu_usge"]},
        (
            "agent.toml: custom_metrics.enabled[1]: unknown metric 'cpu_usge'; did you mean 'cpu_usage'? "
            "(built-ins: cpu_usage, memory_usage"
        ),
    ),
    (
        {"enabled": ["uptime", "uptime"]},
        "agent.toml: custom_metrics.enabled[1]: 'uptime' is listed twice",
    ),
    (
        {"disk_usage_path": ""},
        "agent.toml: custom_metrics.disk_usage_path: expected a path, got ''",
    ),
    ({"utmp_path": 5}, "agent.toml: custom_metrics.utmp_path: expected a path, got 5"),
    ({"exec": {"name": "x"}}, "agent.toml: custom_metrics.exec: expected an array of tables"),
    (
        {"exec": ["x"]},
        "agent.toml: custom_metrics.exec[0]: expected a table with name, command and type",
    ),
]
GOOD = {"name": "m", "command": ["true"], "type": "number"}
EXEC_ERRORS = [
    ({"cmd": ["x"]}, "exec[1]: unknown key 'cmd'; did you mean 'command'?"),
    ({"timout": 1}, "exec[1]: unknown key 'timout'; did you mean 'timeout'?"),
    ({"name": None}, "exec[1]: missing 'name'"),
    ({"command": None}, "exec[1]: missing 'command'"),
    ({"type": None}, "exec[1]: missing 'type'"),
    ({"name": "aws:x"}, "exec[1].name: 'aws:x' starts with 'aws:'"),
    ({"name": "a b"}, "exec[1].name: 'a b' does not match [a-zA-Z0-9:_-]{1,128}"),
    ({"name": 3}, "exec[1].name: expected a string, got int"),
    ({"name": "uptime"}, "exec[1].name: 'uptime' is the name of a built-in metric"),
    ({"name": "first"}, "exec[1].name: 'first' is used twice"),
    (
        {"type": "numbr"},
        "exec[1].type: expected one of number, number-list, string-list, ip-address-list, got 'numbr'",
    ),
    ({"type": "ip_list"}, "exec[1].type: expected one of"),
    (
        {"command": "df -h"},
        "exec[1].command: expected the program and its arguments as a list of strings",
    ),
    ({"command": []}, "exec[1].command: expected the program and its arguments"),
    ({"command": [""]}, "exec[1].command: expected the program and its arguments"),
    ({"command": ["df", 1]}, "exec[1].command: expected the program and its arguments"),
    (
        {"timeout": 0},
        f"exec[1].timeout: expected more than 0 and at most {MAX_EXEC_TIMEOUT_S:g} s, got 0",
    ),
    ({"timeout": -1}, "exec[1].timeout: expected more than 0"),
    ({"timeout": 121}, "exec[1].timeout: expected more than 0 and at most 120 s, got 121"),
    ({"timeout": float("nan")}, "exec[1].timeout: expected more than 0"),
    ({"timeout": "5"}, "exec[1].timeout: expected a number of seconds, got '5'"),
    ({"timeout": True}, "exec[1].timeout: expected a number of seconds, got True"),
]


@pytest.mark.parametrize(("table", "message"), ERRORS)
def test_table_errors(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(table)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("change", "message"), EXEC_ERRORS)
def test_exec_errors_name_the_entry_and_key(change: dict[str, object], message: str) -> None:
    second = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    table = {"exec": [{**GOOD, "name": "first"}, second]}
    with pytest.raises(ConfigError) as info:
        parse(table)
    assert str(info.value).startswith("agent.toml: custom_metrics." + message), str(info.value)


def test_exec_name_may_not_repeat_an_enabled_plugin() -> None:
    table = {"enabled": ["my_plugin"], "exec": [{**GOOD, "name": "my_plugin"}]}
    with pytest.raises(ConfigError, match=r"exec\[0\]\.name: 'my_plugin' is used twice"):
        parse_custom_metrics_table(table, "agent.toml", plugin_names=("my_plugin",))


def test_enable() -> None:
    config = CustomMetricsConfig(enabled=("uptime",))
    assert config.enable("cpu_usage").enabled == ("uptime", "cpu_usage")
    assert config.enable("uptime") == config
    assert not config.empty and CustomMetricsConfig().enable("cpu_usage").enabled == ("cpu_usage",)


# --------------------------------------------------------------------------- collection
def utmp(path: Path, *users: str) -> Path:
    record = struct.Struct("=hxxi32s4s32s256shhi2i4i20x")
    path.write_bytes(
        b"".join(
            record.pack(
                7, 100 + i, b"pts/%d" % i, b"ts/%d" % i, u.encode(), b"", 0, 0, 0, 0, 0, 0, 0, 0, 0
            )
            for i, u in enumerate(users)
        )
    )
    return path


@pytest.fixture
def host_copy(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    shutil.copytree(HOST, root, symlinks=True)
    return root


def every_metric_config(tmp_path: Path, list_size: int = 100) -> CustomMetricsConfig:
    return CustomMetricsConfig(
        enabled=BUILTIN_NAMES,
        disk_usage_path=tmp_path,
        utmp_path=utmp(tmp_path / "utmp", "alice", "bob"),
        exec_metrics=(
            ExecSpec("exec_number", ("echo", "33.333333333333336"), N),
            ExecSpec("exec_numbers", ("printf", "1\\n-2.5\\n1e-3\\n"), NL),
            ExecSpec("exec_strings", ("printf", "eth0\\nvalue_1\\n"), SL),
            ExecSpec("exec_ips", ("printf", "192.0.2.1\\n2001:db8::1\\n"), IPL),
        ),
        list_size=list_size,
    )


def test_every_builtin_and_exec_metric_on_the_recorded_host(
    host_copy: Path, tmp_path: Path
) -> None:
    metrics = CustomMetrics(every_metric_config(tmp_path), ProcFS(host_copy))
    first = metrics.collect()
    assert "cpu_usage" not in {m.name for m in first}  # the baseline
    shutil.copyfile(host_copy / "stat.next", host_copy / "stat")
    second = {m.name: m for m in metrics.collect()}
    assert list(second) == [
        *BUILTIN_NAMES,
        "exec_number",
        "exec_numbers",
        "exec_strings",
        "exec_ips",
    ]
    assert {m.name: m.value for m in second.values() if m.name != "disk_usage"} == {
        "cpu_usage": 0.25,
        "memory_usage": 1.9,
        "process_count": 12,
        "uptime": 2593.72,
        "load_average": (0.55, 0.36, 0.36),
        "logged_in_users": ("alice", "bob"),
        "listening_processes": (
            "avahi-daemon:_r",
            "chronyd",
            "cupsd",
            "dhclient",
            "mosquitto",
            "nginx",
            "sshd",
            "systemd-resolve",
        ),
        "interface_addresses": (
            "192.0.2.10",
            "198.51.100.20",
            "2001:db8::10",
            "fe80::146e:b7ff:feea:ba93",
            "fe80::a8b1:c1ff:feb3:de27",
        ),
        "remote_ips": ("192.0.2.1", "198.51.100.1", "2001:db8::1"),
        "exec_number": 33.3333333333333,
        "exec_numbers": (1, -2.5, 0.001),
        "exec_strings": ("eth0", "value_1"),
        "exec_ips": ("192.0.2.1", "2001:db8::1"),
    }
    assert 0 <= second["disk_usage"].value <= 100  # type: ignore[operator]
    assert [m.type for m in second.values()] == [t for _, t in metrics.names_and_types()]


@pytest.mark.parametrize("style", list(NameStyle))
@pytest.mark.parametrize("fmt", list(PayloadFormat))
def test_reports_with_all_four_types_pass_the_validator(
    host_copy: Path, tmp_path: Path, style: NameStyle, fmt: PayloadFormat
) -> None:
    metrics = CustomMetrics(every_metric_config(tmp_path), ProcFS(host_copy))
    metrics.collect()
    shutil.copyfile(host_copy / "stat.next", host_copy / "stat")
    collected = tuple(metrics.collect())
    assert {m.type for m in collected} == set(CustomMetricType)
    report = Report(report_id=1_700_000_000_000, custom_metrics=collected)
    document = to_document(report, style)
    assert validate_document(document) == []
    cmet = document["cmet" if style is NameStyle.SHORT else "custom_metrics"]
    assert cmet["load_average"] == [
        {"number_list": [0.55, 0.36, 0.36]}
    ]  # inner keys never shortened
    assert cmet["remote_ips"] == [{"ip_list": ["192.0.2.1", "198.51.100.1", "2001:db8::1"]}]
    result = validate_payload(
        encode_report(report, fmt.value, short_names=style is NameStyle.SHORT), fmt
    )
    assert result.problems == ()


@pytest.mark.live
@pytest.mark.parametrize("style", list(NameStyle))
def test_live_reports_with_every_builtin_pass_the_validator(
    tmp_path: Path, style: NameStyle
) -> None:
    config = CustomMetricsConfig(enabled=BUILTIN_NAMES, utmp_path=utmp(tmp_path / "utmp", "root"))
    metrics = CustomMetrics(config, ProcFS("/proc"))
    metrics.collect()
    collected = tuple(metrics.collect())
    names = {m.name for m in collected}
    assert names >= set(BUILTIN_NAMES) - {"cpu_usage"}  # cpu_usage: if any jiffy passed
    assert (
        validate_document(to_document(Report(report_id=1, custom_metrics=collected), style)) == []
    )


def test_a_failing_metric_leaves_out_only_itself_with_one_warning(
    host_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (host_copy / "loadavg").unlink()
    config = CustomMetricsConfig(enabled=("uptime", "load_average", "process_count"))
    metrics = CustomMetrics(config, ProcFS(host_copy))
    with caplog.at_level(logging.DEBUG, logger="defender_agent"):
        for _ in range(3):
            assert [m.name for m in metrics.collect()] == ["uptime", "process_count"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.getMessage() for w in warnings] == [
        f"custom metric load_average: left out: cannot read {host_copy / 'loadavg'} (No such file or directory)"
    ]
    assert len([r for r in caplog.records if "load_average" in r.getMessage()]) == 3  # then DEBUG
    (host_copy / "loadavg").write_text("garbage\n")  # another kind of failure: warned again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="defender_agent"):
        metrics.collect()
        metrics.collect()
    assert [r.getMessage() for r in caplog.records] == [
        f"custom metric load_average: left out: {host_copy / 'loadavg'}: 'garbage\\n'"
    ]


def test_a_bug_in_a_builtin_never_escapes_collect(
    host_copy: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: object) -> float:
        return 1 / 0

    monkeypatch.setattr(builtins_module.Uptime, "sample", broken)
    metrics = CustomMetrics(
        CustomMetricsConfig(enabled=("uptime", "process_count")), ProcFS(host_copy)
    )
    with caplog.at_level(logging.WARNING, logger="defender_agent"):
        assert [m.name for m in metrics.collect()] == ["process_count"]
    assert [r.getMessage() for r in caplog.records] == [
        "custom metric uptime: left out: ZeroDivisionError: division by zero"
    ]


def test_invalid_values_are_left_out(
    host_copy: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setattr(builtins_module.Uptime, "sample", lambda self: float("inf"))
    metrics = CustomMetrics(CustomMetricsConfig(enabled=("uptime",)), ProcFS(host_copy))
    with caplog.at_level(logging.WARNING, logger="defender_agent"):
        assert metrics.collect() == []
    assert [r.getMessage() for r in caplog.records] == [
        "custom metric uptime: left out: invalid number: inf is not a finite number"
    ]


def test_lists_are_capped_deterministically(host_copy: Path, tmp_path: Path) -> None:
    config = CustomMetricsConfig(
        enabled=("listening_processes", "interface_addresses"),
        exec_metrics=(ExecSpec("many", ("seq", "1", "1000"), NL),),
        list_size=2,
    )
    collected = CustomMetrics(config, ProcFS(host_copy)).collect()
    assert collected == [
        CustomMetric("listening_processes", SL, ("avahi-daemon:_r", "chronyd")),
        CustomMetric("interface_addresses", IPL, ("192.0.2.10", "198.51.100.20")),
        CustomMetric("many", NL, (1, 2)),
    ]


def test_duplicate_names_built_directly_are_left_out(host_copy: Path, caplog) -> None:
    config = CustomMetricsConfig(
        enabled=("uptime",), exec_metrics=(ExecSpec("uptime", ("echo", "1"), N),)
    )
    with caplog.at_level(logging.WARNING, logger="defender_agent"):
        metrics = CustomMetrics(config, ProcFS(host_copy))
    assert metrics.names_and_types() == [("uptime", N)]
    assert [r.getMessage() for r in caplog.records] == [
        "custom metric uptime: left out: the name 'uptime' is used twice"
    ]


def test_nothing_configured(tmp_path: Path) -> None:
    metrics = CustomMetrics(CustomMetricsConfig(), ProcFS(tmp_path))
    assert metrics.collect() == [] and metrics.names_and_types() == []
    assert metrics.export_state() == {}


def test_cpu_usage_state_survives_a_restart(host_copy: Path) -> None:
    config = CustomMetricsConfig(enabled=("cpu_usage",))
    before = CustomMetrics(config, ProcFS(host_copy))
    assert before.collect() == []
    state = before.export_state()
    assert state == {"cpu_usage": [516964, 410330]}
    shutil.copyfile(host_copy / "stat.next", host_copy / "stat")
    after = CustomMetrics(config, ProcFS(host_copy))
    assert after.import_state(state)
    assert after.collect() == [CustomMetric("cpu_usage", N, 0.25)]  # no second baseline


@pytest.mark.parametrize(
    "state", [None, [], {"cpu_usage": "x"}, {"cpu_usage": [1]}, {"cpu_usage": [-1, 0]}]
)
def test_malformed_state_is_ignored(host_copy: Path, state: object) -> None:
    metrics = CustomMetrics(CustomMetricsConfig(enabled=("cpu_usage",)), ProcFS(host_copy))
    assert not metrics.import_state(state)
    assert metrics.collect() == []  # a fresh baseline
    assert metrics.import_state({})  # nothing to restore is fine


def test_collect_does_not_read_before_it_is_called(tmp_path: Path) -> None:
    metrics = CustomMetrics(CustomMetricsConfig(enabled=BUILTIN_NAMES), ProcFS(tmp_path / "absent"))
    assert [n for n, _ in metrics.names_and_types()] == list(BUILTIN_NAMES)


def test_baseline_samples_only_what_needs_two_samples(host_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = CustomMetricsConfig(
        enabled=("cpu_usage", "uptime"),
        exec_metrics=(ExecSpec("touch", ("sh", "-c", f"touch {marker}; echo 1"), N),),
    )
    metrics = CustomMetrics(config, ProcFS(host_copy))
    metrics.baseline()
    assert not marker.exists()  # the command did not run
    shutil.copyfile(host_copy / "stat.next", host_copy / "stat")
    assert [m.name for m in metrics.collect()] == ["cpu_usage", "uptime", "touch"]
    assert marker.exists()


def test_a_table_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match=r"agent\.toml: custom_metrics: expected a table, got 5"):
        parse_custom_metrics_table(5, "agent.toml")  # type: ignore[arg-type]
