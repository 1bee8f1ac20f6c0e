"""``defender-agent aws-setup``: the AWS side of the configured custom metrics.

Device Defender keeps a custom metric's values only when the metric was
created in the account (CreateCustomMetric, protocol.md §5.4) and is used by a
security profile. This command prints the AWS CLI calls for every custom
metric the configuration enables (``[custom_metrics]`` of ``--config``, plus
``cpu_usage`` with ``--include-custom-metrics``), and with
``--security-profile NAME`` a starter profile with one behavior per metric.
``--apply`` makes the same calls through boto3 (``pip install
'defender-agent[aws]'``), idempotently: existing metrics are left alone (a type
conflict is an error, since a type cannot change), a missing profile is
created, an existing one gets behaviors only for the metrics it has none for.

Starter behaviors (protocol.md §5.3: the value member each type needs; the
``cpu_usage`` one is the public sample's ``CpuUsageIssue``; every behavior
alarms and clears after one datapoint):

| metric | criteria | alerts |
| --- | --- | --- |
| ``cpu_usage`` | ``greater-than`` ``{"number": 75}`` | yes |
| ``memory_usage``, ``disk_usage`` | ``greater-than`` ``{"number": 90}`` | yes |
| ``process_count`` | ``greater-than`` ``{"number": 500}`` | yes |
| ``uptime`` | ``greater-than`` ``{"number": 31536000}`` (a year without a reboot: no kernel updates) | yes |
| ``logged_in_users`` | ``not-in-set`` ``{"strings": ["root"]}`` (anyone else logs in) | yes |
| ``interface_addresses`` | ``not-in-cidr-set`` private and link-local ranges (a public address) | yes |
| ``listening_processes`` | ``not-in-set`` ``{"strings": ["sshd"]}`` | placeholder |
| ``remote_ips`` | ``not-in-cidr-set`` private ranges | placeholder |
| ``load_average``, other number-list | ``not-in-set`` ``{"numbers": [0]}`` | placeholder |
| other number | ``greater-than`` ``{"number": 100}`` | placeholder |
| other string-list | ``not-in-set`` ``{"strings": ["example"]}`` | placeholder |
| other ip-address-list | ``not-in-cidr-set`` private ranges | placeholder |

A placeholder behavior has ``"suppressAlerts": true``: Device Defender keeps
the metric's data and records violations, but sends no alert until the values
are replaced by the fleet's own.
"""  # noqa: E501 - a table

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Optional, Protocol, TextIO

from defender_agent.cli._common import COMMANDS, EXIT_OK, Parser
from defender_agent.config import (
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    config_file_path,
    custom_metrics_table,
    read_toml,
)
from defender_agent.custom import BUILTINS, CustomMetrics, CustomMetricsConfig
from defender_agent.errors import AgentError
from defender_agent.model import CustomMetricType
from defender_agent.procfs import ProcFS, default_proc_root

__all__ = [
    "add_parser",
    "apply",
    "behaviors",
    "cli_commands",
    "command",
    "load_custom_metrics_config",
]

log = logging.getLogger(__name__)

_N = CustomMetricType.NUMBER
_NL = CustomMetricType.NUMBER_LIST
_SL = CustomMetricType.STRING_LIST
_IPL = CustomMetricType.IP_ADDRESS_LIST
_PRIVATE_V4: Final = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
_LOCAL: Final = (*_PRIVATE_V4, "fc00::/7", "fe80::/10")
_NAME: Final = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_REGION: Final = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-[0-9]+")
_DESCRIPTION: Final = "defender-agent custom metrics: starter behaviors"
_NOT_FOUND: Final = "ResourceNotFoundException"


@dataclass(frozen=True)
class _Starter:
    """A starter behavior's criteria; ``placeholder`` ones suppress alerts."""

    operator: str
    value: Mapping[str, object]
    placeholder: bool = False


_STARTERS: Final[Mapping[str, _Starter]] = {
    "cpu_usage": _Starter("greater-than", {"number": 75}),
    "memory_usage": _Starter("greater-than", {"number": 90}),
    "disk_usage": _Starter("greater-than", {"number": 90}),
    "process_count": _Starter("greater-than", {"number": 500}),
    "uptime": _Starter("greater-than", {"number": 31_536_000}),
    "logged_in_users": _Starter("not-in-set", {"strings": ["root"]}),
    "interface_addresses": _Starter("not-in-cidr-set", {"cidrs": list(_LOCAL)}),
    "listening_processes": _Starter("not-in-set", {"strings": ["sshd"]}, placeholder=True),
    "remote_ips": _Starter("not-in-cidr-set", {"cidrs": list(_PRIVATE_V4)}, placeholder=True),
}
_GENERIC: Final[Mapping[CustomMetricType, _Starter]] = {
    _N: _Starter("greater-than", {"number": 100}, placeholder=True),
    _NL: _Starter("not-in-set", {"numbers": [0]}, placeholder=True),
    _SL: _Starter("not-in-set", {"strings": ["example"]}, placeholder=True),
    _IPL: _Starter("not-in-cidr-set", {"cidrs": list(_PRIVATE_V4)}, placeholder=True),
}

Metric = tuple[str, CustomMetricType]


# --------------------------------------------------------------------------- the command line
def _profile_name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected 1-128 of [a-zA-Z0-9:_-], got {text!r}")
    return text


def _region(text: str) -> str:
    if not _REGION.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected a region such as eu-west-1, got {text!r}")
    return text


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add this subcommand to the command line."""
    p = sub.add_parser(
        "aws-setup",
        help=COMMANDS["aws-setup"][1],
        description="Print the 'aws iot create-custom-metric' command of every configured "
        "custom metric and, with --security-profile, a starter security profile with one "
        "behavior per metric. --apply makes the same calls with boto3, idempotently.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="the agent's TOML file; only [custom_metrics] is read "
        f"(default: ${ENV_PREFIX}CONFIG, else {DEFAULT_CONFIG_FILE} if it exists)",
    )
    p.add_argument(
        "--include-custom-metrics",
        "--custom-metrics",
        action="store_true",
        help="add cpu_usage, as the agent's option of that name does",
    )
    p.add_argument(
        "--security-profile",
        type=_profile_name,
        default=None,
        metavar="NAME",
        help="also a security profile of this name with one starter behavior per metric",
    )
    p.add_argument(
        "--apply",
        action="store_true",
        help="make the calls with boto3 (pip install 'defender-agent[aws]') instead of printing",
    )
    p.add_argument(
        "--region",
        type=_region,
        default=None,
        help="the AWS region (default: the AWS CLI/boto3 configuration)",
    )
    p.set_defaults(func=command)


def load_custom_metrics_config(
    path: Optional[Path], environ: Optional[Mapping[str, str]] = None
) -> CustomMetricsConfig:
    """Read the ``[custom_metrics]`` table of the agent's configuration file.

    The file is ``path``, else ``$DEFENDER_AGENT_CONFIG``, else
    ``/etc/defender-agent/config.toml`` when it exists (as ``run`` finds it);
    no file, or no table, is an empty configuration.

    Raises:
        ConfigError: the file cannot be read or parsed, or the table is invalid.
    """
    found = config_file_path(path, environ)
    if found is None:
        return CustomMetricsConfig()
    return custom_metrics_table(read_toml(found), found)


# --------------------------------------------------------------------------- what to create
def behaviors(metrics: Sequence[Metric]) -> list[dict[str, Any]]:
    """One starter behavior per metric (see the module's table), named after the metric.

    >>> behaviors([("cpu_usage", CustomMetricType.NUMBER)])[0]["criteria"]
    {'comparisonOperator': 'greater-than', 'value': {'number': 75}, 'consecutiveDatapointsToAlarm': 1, 'consecutiveDatapointsToClear': 1}
    """  # noqa: E501 - a doctest output line
    result: list[dict[str, Any]] = []
    for name, metric_type in metrics:
        starter = _STARTERS.get(name) if name in BUILTINS else None
        if starter is None or BUILTINS[name].type is not metric_type:
            starter = _GENERIC[metric_type]
        behavior: dict[str, Any] = {
            "name": name,
            "metric": name,
            "criteria": {
                "comparisonOperator": starter.operator,
                "value": json.loads(json.dumps(starter.value)),  # a fresh copy
                "consecutiveDatapointsToAlarm": 1,
                "consecutiveDatapointsToClear": 1,
            },
        }
        if starter.placeholder:
            behavior["suppressAlerts"] = True
        result.append(behavior)
    return result


def _display_name(name: str) -> Optional[str]:
    return BUILTINS[name].display_name if name in BUILTINS else None


def _shell(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(arg) for arg in argv)


def cli_commands(
    metrics: Sequence[Metric], profile: Optional[str] = None, region: Optional[str] = None
) -> list[str]:
    """The AWS CLI commands (and ``#`` comments), each line ready to paste into a shell."""
    tail = ["--region", region] if region else []
    lines = [
        f"# defender-agent aws-setup: {len(metrics)} custom metric(s).",
        "# Create each once per account and region; a metric's name and type cannot change.",
    ]
    for name, metric_type in metrics:
        argv = ["aws", "iot", "create-custom-metric", "--metric-name", name]
        argv += ["--metric-type", metric_type.value]
        display = _display_name(name)
        if display:
            argv += ["--display-name", display]
        lines.append(_shell(argv + tail))
    if profile:
        lines.append("# A starter security profile, one behavior per metric: review the values.")
        lines.append(
            '# Behaviors with "suppressAlerts": true are placeholders: data kept, no alerts.'
        )
        document = json.dumps(behaviors(metrics), separators=(",", ":"))
        argv = ["aws", "iot", "create-security-profile", "--security-profile-name", profile]
        argv += ["--security-profile-description", _DESCRIPTION, "--behaviors", document]
        lines.append(_shell(argv + tail))
        target = f"arn:aws:iot:{region or '<region>'}:<account-id>:all/registered-things"
        argv = ["aws", "iot", "attach-security-profile", "--security-profile-name", profile]
        argv += ["--security-profile-target-arn", target]
        lines.append("# Then attach it, for example to every registered thing:")
        lines.append("# " + _shell(argv + tail))
    return lines


# --------------------------------------------------------------------------- --apply
class IotClient(Protocol):
    """The part of boto3's ``iot`` client that ``--apply`` uses."""

    def describe_custom_metric(self, **kwargs: object) -> Mapping[str, Any]:
        """DescribeCustomMetric."""

    def create_custom_metric(self, **kwargs: object) -> Mapping[str, Any]:
        """CreateCustomMetric."""

    def describe_security_profile(self, **kwargs: object) -> Mapping[str, Any]:
        """DescribeSecurityProfile."""

    def create_security_profile(self, **kwargs: object) -> Mapping[str, Any]:
        """CreateSecurityProfile."""

    def update_security_profile(self, **kwargs: object) -> Mapping[str, Any]:
        """UpdateSecurityProfile."""


def _error_code(exc: BaseException) -> Optional[str]:
    """The AWS error code of a botocore ``ClientError``, else ``None``."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error")
        if isinstance(error, Mapping):
            return str(error.get("Code"))
    return None


def _aws_error(operation: str, exc: Exception) -> AgentError:
    code = _error_code(exc)
    if code is None:  # botocore's own errors: no credentials, no region, no connection
        return AgentError(f"{operation}: {exc}")
    error = getattr(exc, "response", {}).get("Error", {})
    return AgentError(f"{operation}: {code}: {error.get('Message', '')}".rstrip(": "))


def _call(client: IotClient, operation: str, **kwargs: object) -> Optional[Mapping[str, Any]]:
    """Call ``operation``; ``None`` when it says ResourceNotFound; AgentError for other errors."""
    method = getattr(client, operation)
    try:
        response: Mapping[str, Any] = method(**kwargs)
    except Exception as exc:  # botocore's ClientError/BotoCoreError, without importing botocore
        if _error_code(exc) == _NOT_FOUND:
            return None
        if _error_code(exc) is None and not _is_botocore(exc):
            raise  # not an AWS error: a bug
        raise _aws_error(operation, exc) from exc
    return response


def _is_botocore(exc: Exception) -> bool:
    return type(exc).__module__.startswith("botocore")


def apply(
    client: IotClient, metrics: Sequence[Metric], profile: Optional[str], out: TextIO
) -> None:
    """Create what is missing: the custom metrics, then the security profile's behaviors.

    Every metric is described first; if one exists with another type nothing
    is created (a type cannot change). An existing profile keeps its
    behaviors: only metrics it has no behavior for get a starter one.

    Raises:
        AgentError: a type conflict or an AWS error, in one line.
    """
    existing: dict[str, Optional[str]] = {}
    for name, _ in metrics:
        found = _call(client, "describe_custom_metric", metricName=name)
        existing[name] = None if found is None else str(found.get("metricType"))
    conflicts = [
        f"{name} exists as {existing[name]}, the agent sends {metric_type.value}"
        for name, metric_type in metrics
        if existing[name] not in (None, metric_type.value)
    ]
    if conflicts:
        raise AgentError(
            "custom metric type conflict: " + "; ".join(conflicts) + " (a metric's type cannot "
            "change: delete the metric in AWS IoT, or rename the agent's metric)"
        )
    for name, metric_type in metrics:
        if existing[name] is not None:
            print(f"custom metric {name} ({metric_type.value}): exists", file=out)
            continue
        kwargs: dict[str, object] = {"metricName": name, "metricType": metric_type.value}
        display = _display_name(name)
        if display:
            kwargs["displayName"] = display
        _call(client, "create_custom_metric", **kwargs)
        print(f"custom metric {name} ({metric_type.value}): created", file=out)
    if profile:
        _apply_profile(client, metrics, profile, out)


def _apply_profile(client: IotClient, metrics: Sequence[Metric], profile: str, out: TextIO) -> None:
    wanted = behaviors(metrics)
    current = _call(client, "describe_security_profile", securityProfileName=profile)
    if current is None:
        _call(
            client,
            "create_security_profile",
            securityProfileName=profile,
            securityProfileDescription=_DESCRIPTION,
            behaviors=wanted,
        )
        print(f"security profile {profile}: created with {len(wanted)} behavior(s)", file=out)
        return
    kept = list(current.get("behaviors") or [])
    covered = {b.get("metric") for b in kept}
    names = {b.get("name") for b in kept}
    added = []
    for behavior in wanted:
        if behavior["metric"] in covered:
            continue
        if behavior["name"] in names:  # a behavior of that name watches something else
            behavior["name"] = f"{behavior['name'][:110]}-defender-agent"
        added.append(behavior)
    if not added:
        print(f"security profile {profile}: up to date", file=out)
        return
    kwargs: dict[str, object] = {"securityProfileName": profile, "behaviors": kept + added}
    if current.get("version") is not None:
        kwargs["expectedVersion"] = current["version"]
    _call(client, "update_security_profile", **kwargs)
    metrics_added = ", ".join(b["metric"] for b in added)
    print(f"security profile {profile}: updated, added behaviors for {metrics_added}", file=out)


def _make_client(region: Optional[str]) -> IotClient:
    """A boto3 ``iot`` client (boto3 is optional: a one-line error without it)."""
    try:
        boto3 = importlib.import_module("boto3")
    except ImportError:
        raise AgentError("--apply needs boto3: pip install 'defender-agent[aws]'") from None
    try:
        client: IotClient = boto3.client("iot", region_name=region)
    except Exception as exc:  # botocore: no region, bad configuration
        if not _is_botocore(exc):
            raise
        raise AgentError(f"cannot create the AWS IoT client: {exc}") from exc
    return client


def command(args: argparse.Namespace) -> int:
    """Run this subcommand; returns the exit status."""
    config = load_custom_metrics_config(args.config)
    if args.include_custom_metrics:
        config = config.enable("cpu_usage")
    metrics = CustomMetrics(config, ProcFS(default_proc_root())).names_and_types()
    if not metrics:
        raise AgentError(
            "no custom metrics configured: list them in [custom_metrics] of --config FILE, "
            "or give --include-custom-metrics"
        )
    if args.apply:
        apply(_make_client(args.region), metrics, args.security_profile, sys.stdout)
    else:
        for line in cli_commands(metrics, args.security_profile, args.region):
            print(line)
    return EXIT_OK
