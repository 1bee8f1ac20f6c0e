"""``defender-agent aws-setup``: the AWS side of what the agent reports.

Device Defender keeps a metric's values only when a security profile uses it
(as a behavior, or in its ``additionalMetricsToRetainV2``), and a custom
metric only when it was also created in the account (CreateCustomMetric,
docs/protocol.md §5.4). This command prints the AWS CLI calls for both: an
``aws iot create-custom-metric`` per custom metric the configuration enables
(``[custom_metrics]`` of ``--config``, plus ``cpu_usage`` with
``--include-custom-metrics``), then an ``aws iot create-security-profile``
(``--security-profile NAME``, default ``defender-agent``) with behaviors for
the standard device-side metrics and one per custom metric
(:mod:`defender_agent.security_profile` has the values), and the
``attach-security-profile`` call to make it apply. ``--no-standard-metrics``
leaves the ``aws:`` behaviors out, ``--no-security-profile`` the profile.

``--apply`` makes the same calls through boto3 (``pip install
'defender-agent[aws]'``), idempotently: existing metrics are left alone (a type
conflict is an error, since a type cannot change), a missing profile is
created, an existing one gains behaviors (and retained metrics) only for the
metrics it does not watch yet. The profile is not attached by ``--apply``:
the target is the account owner's choice.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
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
from defender_agent.procfs import ProcFS, default_proc_root
from defender_agent.security_profile import (
    DEFAULT_PROFILE,
    Metric,
    behaviors,
    metrics_to_retain,
)

__all__ = [
    "add_parser",
    "apply",
    "behaviors",
    "cli_commands",
    "command",
    "load_custom_metrics_config",
]

log = logging.getLogger(__name__)

_NAME: Final = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_REGION: Final = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-[0-9]+")
_DESCRIPTION: Final = "defender-agent: starter behaviors for its metrics"
_NOT_FOUND: Final = "ResourceNotFoundException"


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
        description="Print the AWS CLI calls that prepare an AWS account for the agent: "
        "'aws iot create-custom-metric' for every configured custom metric, and a security "
        "profile with behaviors for the standard device-side metrics and each custom metric. "
        "--apply makes the same calls with boto3, idempotently.",
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
    profile = p.add_mutually_exclusive_group()
    profile.add_argument(
        "--security-profile",
        type=_profile_name,
        default=DEFAULT_PROFILE,
        metavar="NAME",
        help="the security profile's name (default: %(default)s)",
    )
    profile.add_argument(
        "--no-security-profile",
        dest="security_profile",
        action="store_const",
        const=None,
        default=DEFAULT_PROFILE,
        help="only the custom metrics, no security profile",
    )
    p.add_argument(
        "--no-standard-metrics",
        dest="standard_metrics",
        action="store_false",
        help="leave the behaviors and retained values of the standard aws: metrics out of the "
        "profile (only the custom metrics' behaviors)",
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


# --------------------------------------------------------------------------- printed commands
def _display_name(name: str) -> Optional[str]:
    return BUILTINS[name].display_name if name in BUILTINS else None


def _shell(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(arg) for arg in argv)


def _compact(document: object) -> str:
    return json.dumps(document, separators=(",", ":"))


def cli_commands(
    metrics: Sequence[Metric],
    profile: Optional[str] = DEFAULT_PROFILE,
    region: Optional[str] = None,
    standard: bool = True,
) -> list[str]:
    """The AWS CLI commands (and ``#`` comments), each line ready to paste into a shell.

    Args:
        metrics: The custom metrics, name and type, in report order.
        profile: The security profile's name; None prints no profile.
        region: Appended as ``--region`` to every call when given.
        standard: Whether the profile watches and keeps the standard ``aws:`` metrics.
    """
    tail = ["--region", region] if region else []
    lines = [f"# defender-agent aws-setup: {len(metrics)} custom metric(s)."]
    if metrics:
        lines.append(
            "# Create each once per account and region; a metric's name and type cannot change."
        )
    for name, metric_type in metrics:
        argv = ["aws", "iot", "create-custom-metric", "--metric-name", name]
        argv += ["--metric-type", metric_type.value]
        display = _display_name(name)
        if display:
            argv += ["--display-name", display]
        lines.append(_shell(argv + tail))
    if not profile:
        return lines
    document = behaviors(metrics, standard)
    lines.append(
        "# A starter security profile: each behavior says what is normal; a device outside it "
        "is in violation. Review the values."
    )
    if any(b.get("suppressAlerts") for b in document):
        lines.append(
            '# Behaviors with "suppressAlerts": true are placeholders: data kept, no alerts.'
        )
    argv = ["aws", "iot", "create-security-profile", "--security-profile-name", profile]
    argv += ["--security-profile-description", _DESCRIPTION, "--behaviors", _compact(document)]
    retain = metrics_to_retain(standard)
    if retain:
        argv += ["--additional-metrics-to-retain-v2", _compact(retain)]
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
    client: IotClient,
    metrics: Sequence[Metric],
    profile: Optional[str],
    out: TextIO,
    standard: bool = True,
) -> None:
    """Create what is missing: the custom metrics, then the security profile.

    Every metric is described first; if one exists with another type nothing
    is created (a type cannot change). An existing profile keeps its
    behaviors and retained metrics: only metrics it neither watches nor keeps
    are added.

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
        _apply_profile(client, metrics, profile, out, standard)


def _apply_profile(
    client: IotClient, metrics: Sequence[Metric], profile: str, out: TextIO, standard: bool
) -> None:
    wanted = behaviors(metrics, standard)
    retain = metrics_to_retain(standard)
    current = _call(client, "describe_security_profile", securityProfileName=profile)
    if current is None:
        kwargs: dict[str, object] = {
            "securityProfileName": profile,
            "securityProfileDescription": _DESCRIPTION,
            "behaviors": wanted,
        }
        if retain:
            kwargs["additionalMetricsToRetainV2"] = retain
        _call(client, "create_security_profile", **kwargs)
        print(f"security profile {profile}: created with {len(wanted)} behavior(s)", file=out)
        return
    kept = list(current.get("behaviors") or [])
    kept_retained = list(current.get("additionalMetricsToRetainV2") or [])
    covered = {b.get("metric") for b in kept} | {m.get("metric") for m in kept_retained}
    names = {b.get("name") for b in kept}
    added = []
    for behavior in wanted:
        if behavior["metric"] in covered:
            continue
        if behavior["name"] in names:  # a behavior of that name watches something else
            behavior["name"] = f"{behavior['name'][:110]}-defender-agent"
        names.add(behavior["name"])
        added.append(behavior)
    added_retained = [m for m in retain if m["metric"] not in covered]
    if not added and not added_retained:
        print(f"security profile {profile}: up to date", file=out)
        return
    kwargs = {"securityProfileName": profile}
    if added:
        kwargs["behaviors"] = kept + added
    if added_retained:
        kwargs["additionalMetricsToRetainV2"] = kept_retained + added_retained
    if current.get("version") is not None:
        kwargs["expectedVersion"] = current["version"]
    _call(client, "update_security_profile", **kwargs)
    what = [f"behaviors for {', '.join(b['metric'] for b in added)}"] if added else []
    if added_retained:
        what.append(f"retained {', '.join(m['metric'] for m in added_retained)}")
    print(f"security profile {profile}: updated, added {'; '.join(what)}", file=out)


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
    profile: Optional[str] = args.security_profile
    if not metrics and not profile:
        raise AgentError(
            "nothing to set up: no custom metrics configured and --no-security-profile "
            "(list metrics in [custom_metrics] of --config FILE, or give "
            "--include-custom-metrics)"
        )
    if not metrics and profile and not args.standard_metrics:
        raise AgentError(
            "nothing to set up: no custom metrics configured and --no-standard-metrics "
            "(the profile would have no behaviors)"
        )
    if args.apply:
        apply(_make_client(args.region), metrics, profile, sys.stdout, args.standard_metrics)
    else:
        for line in cli_commands(metrics, profile, args.region, args.standard_metrics):
            print(line)
    return EXIT_OK
