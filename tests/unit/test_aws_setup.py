"""``defender-agent aws-setup``: printed AWS CLI commands (golden, checked against botocore's
model of AWS IoT), the starter security profile, and --apply through botocore's Stubber."""

from __future__ import annotations

import argparse
import io
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.stub import Stubber
from botocore.validate import ParamValidator

from defender_agent.cli import aws_setup
from defender_agent.cli._common import Parser
from defender_agent.errors import AgentError, ConfigError
from defender_agent.model import CustomMetricType
from defender_agent.security_profile import custom_behaviors, metrics_to_retain

ROOT = Path(__file__).resolve().parents[2]
N = CustomMetricType.NUMBER
NL = CustomMetricType.NUMBER_LIST
SL = CustomMetricType.STRING_LIST
IPL = CustomMetricType.IP_ADDRESS_LIST
IOT = botocore.session.get_session().get_service_model("iot")

METRICS = [
    ("cpu_usage", N),
    ("memory_usage", N),
    ("load_average", NL),
    ("logged_in_users", SL),
    ("interface_addresses", IPL),
    ("remote_ips", IPL),
    ("queue_depth", N),
    ("fan_speeds", NL),
    ("wifi_ssids", SL),
    ("dns_servers", IPL),
]

GOLDEN = """\
# defender-agent aws-setup: 10 custom metric(s).
# Create each once per account and region; a metric's name and type cannot change.
aws iot create-custom-metric --metric-name cpu_usage --metric-type number --display-name 'CPU usage (%)' --region eu-west-1
aws iot create-custom-metric --metric-name memory_usage --metric-type number --display-name 'Memory usage (%)' --region eu-west-1
aws iot create-custom-metric --metric-name load_average --metric-type number-list --display-name 'Load average (1, 5, 15 min)' --region eu-west-1
aws iot create-custom-metric --metric-name logged_in_users --metric-type string-list --display-name 'Logged-in users' --region eu-west-1
aws iot create-custom-metric --metric-name interface_addresses --metric-type ip-address-list --display-name 'Interface addresses' --region eu-west-1
aws iot create-custom-metric --metric-name remote_ips --metric-type ip-address-list --display-name 'Remote IPs of established TCP connections' --region eu-west-1
aws iot create-custom-metric --metric-name queue_depth --metric-type number --region eu-west-1
aws iot create-custom-metric --metric-name fan_speeds --metric-type number-list --region eu-west-1
aws iot create-custom-metric --metric-name wifi_ssids --metric-type string-list --region eu-west-1
aws iot create-custom-metric --metric-name dns_servers --metric-type ip-address-list --region eu-west-1
# A starter security profile: each behavior says what is normal; a device outside it is in violation. Review the values.
# Behaviors with "suppressAlerts": true are placeholders: data kept, no alerts.
aws iot create-security-profile --security-profile-name Gateways --security-profile-description 'defender-agent: starter behaviors for its metrics' --behaviors '[{"name":"listening-tcp-ports","metric":"aws:num-listening-tcp-ports","criteria":{"comparisonOperator":"less-than-equals","value":{"count":10},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1}},{"name":"listening-udp-ports","metric":"aws:num-listening-udp-ports","criteria":{"comparisonOperator":"less-than-equals","value":{"count":10},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1}},{"name":"established-tcp-connections","metric":"aws:num-established-tcp-connections","criteria":{"comparisonOperator":"less-than-equals","value":{"count":100},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1}},{"name":"bytes-out","metric":"aws:all-bytes-out","criteria":{"comparisonOperator":"less-than-equals","value":{"count":10485760},"durationSeconds":300,"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1}},{"name":"packets-out","metric":"aws:all-packets-out","criteria":{"comparisonOperator":"less-than-equals","value":{"count":10000},"durationSeconds":300,"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1}},{"name":"cpu_usage","metric":"cpu_usage","criteria":{"comparisonOperator":"less-than-equals","value":{"number":75},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1}},{"name":"memory_usage","metric":"memory_usage","criteria":{"comparisonOperator":"less-than-equals","value":{"number":90},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1}},{"name":"load_average","metric":"load_average","criteria":{"comparisonOperator":"in-set","value":{"numbers":[0]},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1},"suppressAlerts":true},{"name":"logged_in_users","metric":"logged_in_users","criteria":{"comparisonOperator":"in-set","value":{"strings":["root"]},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1}},{"name":"interface_addresses","metric":"interface_addresses","criteria":{"comparisonOperator":"in-cidr-set","value":{"cidrs":["10.0.0.0/8","172.16.0.0/12","192.168.0.0/16","fc00::/7","fe80::/10"]},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1}},{"name":"remote_ips","metric":"remote_ips","criteria":{"comparisonOperator":"in-cidr-set","value":{"cidrs":["10.0.0.0/8","172.16.0.0/12","192.168.0.0/16"]},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1},"suppressAlerts":true},{"name":"queue_depth","metric":"queue_depth","criteria":{"comparisonOperator":"less-than-equals","value":{"number":100},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1},"suppressAlerts":true},{"name":"fan_speeds","metric":"fan_speeds","criteria":{"comparisonOperator":"in-set","value":{"numbers":[0]},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1},"suppressAlerts":true},{"name":"wifi_ssids","metric":"wifi_ssids","criteria":{"comparisonOperator":"in-set","value":{"strings":["example"]},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1},"suppressAlerts":true},{"name":"dns_servers","metric":"dns_servers","criteria":{"comparisonOperator":"in-cidr-set","value":{"cidrs":["10.0.0.0/8","172.16.0.0/12","192.168.0.0/16"]},"consecutiveDatapointsToAlarm":1,"consecutiveDatapointsToClear":1},"suppressAlerts":true}]' --additional-metrics-to-retain-v2 '[{"metric":"aws:all-bytes-in"},{"metric":"aws:all-packets-in"},{"metric":"aws:listening-tcp-ports"},{"metric":"aws:listening-udp-ports"},{"metric":"aws:destination-ip-addresses"}]' --region eu-west-1
# Then attach it, for example to every registered thing:
# aws iot attach-security-profile --security-profile-name Gateways --security-profile-target-arn 'arn:aws:iot:eu-west-1:<account-id>:all/registered-things' --region eu-west-1
"""


def validate_params(operation: str, params: dict[str, Any]) -> None:
    """Check API parameters against botocore's model of AWS IoT (types, required, enums, lengths)."""
    if operation == "CreateCustomMetric":  # the CLI and the SDKs fill in the idempotency token
        params = {**params, "clientRequestToken": "filled-in-by-the-cli"}
    report = ParamValidator().validate(params, IOT.operation_model(operation).input_shape)
    assert not report.has_errors(), report.generate_report()


JSON_OPTIONS = ("behaviors", "additionalMetricsToRetainV2")


def cli_to_params(line: str) -> tuple[str, dict[str, Any]]:
    """Turn a printed ``aws iot <command> --opt value ...`` line into the API call it makes."""
    argv = shlex.split(line)
    assert argv[:2] == ["aws", "iot"]
    operation = "".join(word.title() for word in argv[2].split("-"))
    params: dict[str, Any] = {}
    options = argv[3:]
    assert len(options) % 2 == 0
    for option, value in zip(options[::2], options[1::2]):
        assert option.startswith("--")
        words = option[2:].split("-")
        key = words[0] + "".join(w.title() for w in words[1:])
        if key != "region":
            params[key] = json.loads(value) if key in JSON_OPTIONS else value
    return operation, params


# --------------------------------------------------------------------------- printed commands
def test_printed_commands_golden() -> None:
    lines = aws_setup.cli_commands(METRICS, "Gateways", "eu-west-1")
    assert "\n".join(lines) + "\n" == GOLDEN


def test_printed_commands_are_valid_api_calls() -> None:
    lines = aws_setup.cli_commands(METRICS, "Gateways", "eu-west-1")
    calls = [cli_to_params(line) for line in lines if not line.startswith("#")]
    assert [op for op, _ in calls] == ["CreateCustomMetric"] * len(METRICS) + [
        "CreateSecurityProfile"
    ]
    for operation, params in calls:
        validate_params(operation, params)
    operation, params = cli_to_params(lines[-1].removeprefix("# "))  # the commented attach call
    assert operation == "AttachSecurityProfile"
    assert params["securityProfileTargetArn"].startswith("arn:aws:iot:eu-west-1:")


STANDARD_METRICS = {  # the device-side metrics a report feeds (docs/protocol.md §5.1)
    "aws:all-bytes-in",
    "aws:all-bytes-out",
    "aws:all-packets-in",
    "aws:all-packets-out",
    "aws:num-listening-tcp-ports",
    "aws:num-listening-udp-ports",
    "aws:num-established-tcp-connections",
    "aws:listening-tcp-ports",
    "aws:listening-udp-ports",
    "aws:destination-ip-addresses",
}
NUMBER_OPERATORS = {"less-than", "less-than-equals", "greater-than", "greater-than-equals"}


def test_behaviors_use_the_value_member_and_operators_of_their_type() -> None:
    expected = {
        N: (NUMBER_OPERATORS, "number"),
        NL: ({"in-set", "not-in-set"}, "numbers"),
        SL: ({"in-set", "not-in-set"}, "strings"),
        IPL: ({"in-cidr-set", "not-in-cidr-set"}, "cidrs"),
    }
    types = dict(METRICS)
    for behavior in custom_behaviors(METRICS):
        operators, member = expected[types[behavior["metric"]]]
        criteria = behavior["criteria"]
        assert criteria["comparisonOperator"] in operators
        assert list(criteria["value"]) == [member]
        assert "durationSeconds" not in criteria  # not allowed with list metrics, pointless here
        assert (
            criteria["consecutiveDatapointsToAlarm"]
            == criteria["consecutiveDatapointsToClear"]
            == 1
        )
        for cidr in criteria["value"].get("cidrs", []):
            assert 2 <= len(cidr) <= 43 and set(cidr) <= set("0123456789abcdefABCDEF:./")


def test_the_profile_covers_every_standard_metric_once() -> None:
    watched = [b["metric"] for b in aws_setup.behaviors([])]
    kept = [m["metric"] for m in metrics_to_retain()]
    assert sorted(watched + kept) == sorted(STANDARD_METRICS)  # each once: watched or kept
    assert {"aws:num-listening-tcp-ports", "aws:all-bytes-out"} <= set(watched)


def test_standard_behaviors_bound_counts_from_above() -> None:
    for behavior in aws_setup.behaviors([]):
        criteria = behavior["criteria"]
        # The criteria say what is normal: an upper bound, a count, and a duration only for
        # the traffic metrics (the values Detect adds up over a window, protocol.md §5.2).
        assert criteria["comparisonOperator"] == "less-than-equals"
        assert list(criteria["value"]) == ["count"] and criteria["value"]["count"] > 0
        traffic = behavior["metric"].startswith("aws:all-")
        assert ("durationSeconds" in criteria) == traffic
        assert criteria.get("durationSeconds", 300) in (300, 600, 900, 1800, 3600)
        assert "suppressAlerts" not in behavior


def test_cpu_usage_behavior_calls_a_busy_cpu_abnormal() -> None:
    # Criteria describe normal behaviour: the public sample's "greater-than 75" would call
    # an idle CPU a violation. Ours: at most 75 % is normal, so 76 % alarms.
    (behavior,) = custom_behaviors([("cpu_usage", N)])
    assert behavior == {
        "name": "cpu_usage",
        "metric": "cpu_usage",
        "criteria": {
            "comparisonOperator": "less-than-equals",
            "value": {"number": 75},
            "consecutiveDatapointsToAlarm": 1,
            "consecutiveDatapointsToClear": 1,
        },
    }


def test_a_plugin_named_like_a_builtin_of_another_type_gets_the_generic_starter() -> None:
    (behavior,) = custom_behaviors([("cpu_usage", SL)])
    assert behavior["criteria"]["value"] == {"strings": ["example"]}
    assert behavior["suppressAlerts"] is True


def test_behavior_names_are_unique_in_a_profile() -> None:
    names = [b["name"] for b in aws_setup.behaviors([("bytes-out", N), ("packets-out", N)])]
    assert len(names) == len(set(names))
    assert names[-2:] == ["bytes-out-custom", "packets-out-custom"]


def test_without_profile_or_region() -> None:
    lines = aws_setup.cli_commands([("uptime", N)], None)
    assert lines[2:] == [
        "aws iot create-custom-metric --metric-name uptime --metric-type number --display-name 'Uptime (s)'"
    ]
    profile = aws_setup.cli_commands([("uptime", N)])
    assert "--security-profile-name defender-agent " in profile[-3]
    assert profile[-1].endswith("'arn:aws:iot:<region>:<account-id>:all/registered-things'")
    assert "--region" not in "".join(profile)


def test_standard_profile_alone() -> None:
    lines = aws_setup.cli_commands([], "Fleet", "us-east-1")
    calls = [cli_to_params(line) for line in lines if not line.startswith("#")]
    assert [op for op, _ in calls] == ["CreateSecurityProfile"]
    operation, params = calls[0]
    validate_params(operation, params)
    assert {b["metric"] for b in params["behaviors"]} <= STANDARD_METRICS
    assert not any("placeholder" in line for line in lines)  # no suppressed behavior to explain


def test_custom_metrics_only_profile() -> None:
    lines = aws_setup.cli_commands([("uptime", N)], "P", standard=False)
    _, params = cli_to_params(lines[-3])
    assert [b["metric"] for b in params["behaviors"]] == ["uptime"]
    assert "additionalMetricsToRetainV2" not in params


def test_every_metric_name_survives_the_shell() -> None:
    odd = [("a:b-c_d", N), ("x" * 128, SL)]
    for line in aws_setup.cli_commands(odd, "p:1", "us-east-1"):
        if not line.startswith("#"):
            validate_params(*cli_to_params(line))


# --------------------------------------------------------------------------- the command
def parse_args(*argv: str) -> argparse.Namespace:
    parser = Parser(prog="defender-agent")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    aws_setup.add_parser(sub)
    return parser.parse_args(["aws-setup", *argv])


@pytest.fixture(autouse=True)
def no_default_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws_setup, "DEFAULT_CONFIG_FILE", tmp_path / "no-such-config.toml")
    monkeypatch.delenv("DEFENDER_AGENT_CONFIG", raising=False)


CONFIG = """
[mqtt]
endpoint = "ignored.example"

[custom_metrics]
enabled = ["memory_usage", "load_average"]

[[custom_metrics.exec]]
name = "queue_depth"
command = ["echo", "1"]
type = "number"
"""


def test_command_reads_only_the_custom_metrics_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG)
    args = parse_args("--config", str(config), "--include-custom-metrics")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    calls = [cli_to_params(line) for line in out.splitlines() if not line.startswith("#")]
    names = [params["metricName"] for op, params in calls if op == "CreateCustomMetric"]
    assert names == ["memory_usage", "load_average", "cpu_usage", "queue_depth"]
    assert calls[-1][0] == "CreateSecurityProfile"
    assert calls[-1][1]["securityProfileName"] == "defender-agent"


def test_command_finds_the_config_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG)
    monkeypatch.setenv("DEFENDER_AGENT_CONFIG", str(config))
    args = parse_args("--security-profile", "Fleet")
    assert args.func(args) == 0
    assert "create-security-profile --security-profile-name Fleet" in capsys.readouterr().out


def test_command_with_nothing_configured_prints_the_standard_profile(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse_args()
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    calls = [cli_to_params(line) for line in lines if not line.startswith("#")]
    assert [op for op, _ in calls] == ["CreateSecurityProfile"]


@pytest.mark.parametrize("option", ["--no-security-profile", "--no-standard-metrics"])
def test_command_with_nothing_to_set_up(option: str) -> None:
    args = parse_args(option)
    with pytest.raises(
        AgentError, match=f"nothing to set up: no custom metrics configured and {option}"
    ):
        args.func(args)


def test_the_readmes_example_through_the_cli(tmp_path: Path) -> None:
    """``defender-agent aws-setup --config examples/agent.toml``, as the README shows it."""
    result = subprocess.run(
        [sys.executable, "-m", "defender_agent", "aws-setup", "--config", "examples/agent.toml"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    calls = [cli_to_params(line) for line in result.stdout.splitlines() if line[:1] != "#"]
    assert calls, result.stdout
    for operation, params in calls:
        validate_params(operation, params)
    assert calls[-1][0] == "CreateSecurityProfile"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[custom_metrics\n", "is not valid TOML"),
        ("custom_metrics = 5\n", "[custom_metrics] must be a table"),
        (
            '[custom_metrics]\nenabled = ["nope"]\n',
            "custom_metrics.enabled[0]: unknown metric 'nope'",
        ),
    ],
)
def test_command_config_errors(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    args = parse_args("--config", str(config))
    with pytest.raises(ConfigError) as info:
        args.func(args)
    assert message in str(info.value)


def test_command_missing_config_file(tmp_path: Path) -> None:
    args = parse_args("--config", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match=r"cannot read config file .*absent\.toml: No such file"):
        args.func(args)


@pytest.mark.parametrize(
    "argv",
    [
        ["--security-profile", "bad name"],
        ["--security-profile", ""],
        ["--region", "Europe"],
        ["--apply", "x"],
        ["--security-profile", "P", "--no-security-profile"],
    ],
)
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(*argv)
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- --apply
@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    client = botocore.session.get_session().create_client(
        "iot", region_name="eu-west-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def not_found(stubber: Stubber, method: str, params: dict[str, Any]) -> None:
    stubber.add_client_error(
        method,
        service_error_code="ResourceNotFoundException",
        http_status_code=404,
        expected_params=params,
    )


def described(name: str, metric_type: str) -> dict[str, Any]:
    return {
        "metricName": name,
        "metricArn": f"arn:aws:iot:eu-west-1:123456789012:custommetric/{name}",
        "metricType": metric_type,
    }


TWO = [("cpu_usage", N), ("queue_depth", N)]
DESCRIPTION = "defender-agent: starter behaviors for its metrics"


def test_apply_creates_metrics_and_profile(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    for name, _ in TWO:
        not_found(stub, "describe_custom_metric", {"metricName": name})
    stub.add_response(
        "create_custom_metric",
        {"metricName": "cpu_usage", "metricArn": "arn:x"},
        {
            "metricName": "cpu_usage",
            "metricType": "number",
            "displayName": "CPU usage (%)",
        },
    )
    stub.add_response(
        "create_custom_metric",
        {"metricName": "queue_depth", "metricArn": "arn:y"},
        {"metricName": "queue_depth", "metricType": "number"},
    )
    not_found(stub, "describe_security_profile", {"securityProfileName": "Fleet"})
    stub.add_response(
        "create_security_profile",
        {"securityProfileName": "Fleet", "securityProfileArn": "arn:z"},
        {
            "securityProfileName": "Fleet",
            "securityProfileDescription": DESCRIPTION,
            "behaviors": aws_setup.behaviors(TWO),
            "additionalMetricsToRetainV2": metrics_to_retain(),
        },
    )
    out = io.StringIO()
    aws_setup.apply(client, TWO, "Fleet", out)
    assert out.getvalue().splitlines() == [
        "custom metric cpu_usage (number): created",
        "custom metric queue_depth (number): created",
        "security profile Fleet: created with 7 behavior(s)",
    ]


def test_apply_creates_a_custom_metrics_only_profile(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response(
        "describe_custom_metric", described("cpu_usage", "number"), {"metricName": "cpu_usage"}
    )
    not_found(stub, "describe_security_profile", {"securityProfileName": "Fleet"})
    stub.add_response(
        "create_security_profile",
        {"securityProfileName": "Fleet", "securityProfileArn": "arn:z"},
        {
            "securityProfileName": "Fleet",
            "securityProfileDescription": DESCRIPTION,
            "behaviors": custom_behaviors([("cpu_usage", N)]),
        },
    )
    out = io.StringIO()
    aws_setup.apply(client, [("cpu_usage", N)], "Fleet", out, standard=False)
    assert out.getvalue().splitlines()[-1] == "security profile Fleet: created with 1 behavior(s)"


def test_apply_twice_changes_nothing(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    for name, _ in TWO:
        stub.add_response("describe_custom_metric", described(name, "number"), {"metricName": name})
    stub.add_response(
        "describe_security_profile",
        {
            "securityProfileName": "Fleet",
            "behaviors": aws_setup.behaviors(TWO),
            "additionalMetricsToRetainV2": metrics_to_retain(),
            "version": 3,
        },
        {"securityProfileName": "Fleet"},
    )
    out = io.StringIO()
    aws_setup.apply(client, TWO, "Fleet", out)  # no create or update call is stubbed
    assert out.getvalue().splitlines() == [
        "custom metric cpu_usage (number): exists",
        "custom metric queue_depth (number): exists",
        "security profile Fleet: up to date",
    ]


def test_apply_adds_only_missing_behaviors_and_keeps_the_users(
    stubbed: tuple[Any, Stubber],
) -> None:
    client, stub = stubbed
    theirs = [
        {  # the user's own threshold for cpu_usage: kept as it is
            "name": "HighCpu",
            "metric": "cpu_usage",
            "criteria": {"comparisonOperator": "greater-than", "value": {"number": 95}},
        },
        {  # an unrelated behavior that happens to be called like our metric
            "name": "queue_depth",
            "metric": "aws:num-messages-sent",
            "criteria": {
                "comparisonOperator": "greater-than",
                "value": {"count": 10},
                "durationSeconds": 300,
            },
        },
    ]
    for name, _ in TWO:
        stub.add_response("describe_custom_metric", described(name, "number"), {"metricName": name})
    stub.add_response(
        "describe_security_profile",
        {"securityProfileName": "Fleet", "behaviors": theirs, "version": 7},
        {"securityProfileName": "Fleet"},
    )
    added = custom_behaviors([("queue_depth", N)])[0]
    added["name"] = "queue_depth-defender-agent"
    stub.add_response(
        "update_security_profile",
        {"securityProfileName": "Fleet", "version": 8},
        {"securityProfileName": "Fleet", "behaviors": [*theirs, added], "expectedVersion": 7},
    )
    out = io.StringIO()
    aws_setup.apply(client, TWO, "Fleet", out, standard=False)
    assert (
        out.getvalue().splitlines()[-1]
        == "security profile Fleet: updated, added behaviors for queue_depth"
    )


def test_apply_adds_the_standard_metrics_a_profile_lacks(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    theirs = [  # the user already watches bytes out their own way, and keeps bytes in
        {
            "name": "MyBytesOut",
            "metric": "aws:all-bytes-out",
            "criteria": {
                "comparisonOperator": "less-than",
                "value": {"count": 1000},
                "durationSeconds": 300,
            },
        }
    ]
    retained = [{"metric": "aws:all-bytes-in"}]
    stub.add_response(
        "describe_security_profile",
        {
            "securityProfileName": "Fleet",
            "behaviors": theirs,
            "additionalMetricsToRetainV2": retained,
        },
        {"securityProfileName": "Fleet"},
    )
    added = [b for b in aws_setup.behaviors([]) if b["metric"] != "aws:all-bytes-out"]
    stub.add_response(
        "update_security_profile",
        {"securityProfileName": "Fleet", "version": 2},
        {
            "securityProfileName": "Fleet",
            "behaviors": [*theirs, *added],
            "additionalMetricsToRetainV2": [*retained, *metrics_to_retain()[1:]],
        },
    )
    out = io.StringIO()
    aws_setup.apply(client, [], "Fleet", out)
    assert out.getvalue() == (
        "security profile Fleet: updated, added behaviors for aws:num-listening-tcp-ports, "
        "aws:num-listening-udp-ports, aws:num-established-tcp-connections, aws:all-packets-out; "
        "retained aws:all-packets-in, aws:listening-tcp-ports, aws:listening-udp-ports, "
        "aws:destination-ip-addresses\n"
    )


def test_apply_type_conflict_creates_nothing(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response(
        "describe_custom_metric", described("cpu_usage", "string-list"), {"metricName": "cpu_usage"}
    )
    not_found(stub, "describe_custom_metric", {"metricName": "queue_depth"})
    with pytest.raises(AgentError) as info:
        aws_setup.apply(client, TWO, "Fleet", io.StringIO())
    message = str(info.value)
    assert message.startswith(
        "custom metric type conflict: cpu_usage exists as string-list, the agent sends number"
    )
    assert "\n" not in message


def test_apply_without_profile(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response(
        "describe_custom_metric", described("cpu_usage", "number"), {"metricName": "cpu_usage"}
    )
    out = io.StringIO()
    aws_setup.apply(client, [("cpu_usage", N)], None, out)
    assert out.getvalue() == "custom metric cpu_usage (number): exists\n"


def test_apply_other_aws_errors_are_one_line(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_client_error(
        "describe_custom_metric",
        service_error_code="AccessDeniedException",
        service_message="User is not authorized to perform: iot:DescribeCustomMetric",
        http_status_code=403,
    )
    with pytest.raises(AgentError) as info:
        aws_setup.apply(client, [("cpu_usage", N)], None, io.StringIO())
    assert str(info.value) == (
        "describe_custom_metric: AccessDeniedException: User is not authorized to perform: iot:DescribeCustomMetric"
    )


def test_command_apply_uses_the_client(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stubbed: tuple[Any, Stubber],
    capsys: pytest.CaptureFixture[str],
) -> None:
    client, stub = stubbed
    regions: list[str | None] = []

    def make_client(region: str | None) -> Any:
        regions.append(region)
        return client

    monkeypatch.setattr(aws_setup, "_make_client", make_client)
    stub.add_response(
        "describe_custom_metric", described("cpu_usage", "number"), {"metricName": "cpu_usage"}
    )
    args = parse_args(
        "--include-custom-metrics", "--apply", "--region", "eu-west-1", "--no-security-profile"
    )
    assert args.func(args) == 0
    assert regions == ["eu-west-1"]
    assert capsys.readouterr().out == "custom metric cpu_usage (number): exists\n"


def test_apply_without_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> Any:
        if name == "boto3":
            raise ImportError("No module named 'boto3'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(AgentError) as info:
        aws_setup._make_client("eu-west-1")
    assert str(info.value) == "--apply needs boto3: pip install 'defender-agent[aws]'"


def test_make_client_with_boto3() -> None:
    pytest.importorskip("boto3")
    client = aws_setup._make_client("eu-west-1")
    assert client.meta.region_name == "eu-west-1"  # type: ignore[attr-defined]
    assert client.meta.service_model.service_name == "iot"  # type: ignore[attr-defined]


def test_make_client_without_a_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("boto3")
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(
        AgentError, match="cannot create the AWS IoT client: You must specify a region"
    ):
        aws_setup._make_client(None)
