# ruff: noqa: RUF009 - setting() returns a dataclasses.field carrying the parser and help
"""The sections of ``defender-agent service`` and ``defender-agent sandbox``.

Kept apart from :mod:`.sections` so that ``run`` and ``collect`` do not pay at start-up
for creating them; :class:`~defender_agent.config.Config` builds them when they are used.

>>> ServiceSection().min_delay, SandboxSection().interval
(300.0, 10)
>>> [s.where for s in EXTRA_SETTINGS][:2]
['service.broker', 'service.port']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from defender_agent.config import values
from defender_agent.config.sections import EXTRA_SECTIONS, Setting, setting, table

__all__ = [
    "EXTRA_SETTINGS",
    "DetectSection",
    "HttpSection",
    "SandboxSection",
    "ServiceSection",
]

SessionMode = Literal["auto", "keep", "discard"]

_SESSIONS: tuple[SessionMode, ...] = ("auto", "keep", "discard")
EvaluateIn = Literal["auto", "process", "thread"]
_EVALUATE_IN: tuple[EvaluateIn, ...] = ("auto", "process", "thread")
AlertConnection = Literal["own", "service"]
_ALERT_CONNECTIONS: tuple[AlertConnection, ...] = ("own", "service")
_MAX_INT = 2**63 - 1


@dataclass(frozen=True)
class ServiceSection:
    """``[service]``: the local Device Defender service (``defender-agent service``)."""

    broker: str = setting("localhost", values.text, "the MQTT broker's host")
    port: Optional[int] = setting(
        None, values.integer(1, 65535), "broker port", shown="8883 with TLS, 1883 without"
    )
    tls: bool = setting(True, values.boolean, "mutual TLS; false for a plain local listener")
    ca_file: Optional[Path] = setting(
        None, values.optional_path, "CA to verify the broker", shown="the system store"
    )
    cert_file: Optional[Path] = setting(None, values.optional_path, "client certificate")
    key_file: Optional[Path] = setting(None, values.optional_path, "its private key")
    client_id: Optional[str] = setting(
        None,
        values.optional_text,
        "MQTT client id",
        shown="defender-agent-service-<hostname>-<pid>",
    )
    mqtt5: bool = setting(False, values.boolean, "MQTT 5 instead of 3.1.1")
    keep_alive: int = setting(60, values.integer(1, 65535), "MQTT keep-alive in seconds")
    session: SessionMode = setting(
        "auto",
        values.choice(_SESSIONS),
        "at stop, end the broker's MQTT session (discard) or leave it to be resumed by the "
        "same client id (keep); auto: discard with the generated client id",
    )
    shared_group: Optional[str] = setting(
        None,
        values.optional_text,
        "subscribe as a member of this MQTT shared-subscription group ($share/NAME/...): "
        "processes of one group split the reports",
    )
    topic_prefix: str = setting(
        "",
        values.text,
        "reports arrive as PREFIX$aws/things/... (a bridge's remapping; needed for a shared "
        "group on mosquitto 2.0); replies still go to $aws/...",
    )
    db: Optional[str] = setting(
        None,
        values.optional_text,
        "a file, sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
        shown="service.sqlite3 in the state directory",
    )
    state_dir: Optional[Path] = setting(
        None, values.optional_path, "the state directory", shown="as for run"
    )
    batch_max: int = setting(500, values.integer(1, 1_000_000), "reports per transaction")
    queue_max: int = setting(
        20_000,
        values.integer(1, 10_000_000),
        "accepted reports waiting for storage; beyond, no more messages are taken from the "
        "broker until there is room (with reply_before_store: answered but not stored)",
    )
    drain_timeout: float = setting(
        10.0,
        values.seconds(0, 3600),
        "at stop, how long to store what is queued (seconds); what is not stored by then "
        "is not acknowledged",
    )
    reply_before_store: bool = setting(
        False,
        values.boolean,
        "publish ACCEPTED before the report is stored (faster replies, but a crash, a full "
        "queue or a database that is down LOSES acknowledged reports)",
    )
    min_delay: float = setting(
        300.0,
        values.seconds(0, 86400),
        "Throttled when a thing reports again within this many seconds (0: never)",
    )
    strict_report_ids: bool = setting(
        False,
        values.boolean,
        "reject (InvalidPayload) a report id not above the thing's last accepted one",
    )
    report_id_in_rejections: bool = setting(
        True, values.boolean, "put reportId in REJECTED replies"
    )
    throttle_message: str = setting("Throttled", values.text, "ErrorMessage of Throttled")
    invalid_message: str = setting(
        "Malformed metrics report", values.text, "ErrorMessage of InvalidPayload"
    )
    thing_name_code: str = setting("InvalidPayload", values.text, "ErrorCode for a bad thing name")
    thing_name_message: str = setting(
        "Malformed metrics report", values.text, "ErrorMessage for a bad thing name"
    )
    max_tracked_things: int = setting(
        10_000,
        values.integer(1, 10_000_000),
        "thing names kept for the throttle (bounded memory)",
    )
    max_throttled_replies: int = setting(
        100,
        values.integer(0, 10_000_000),
        "Throttled replies per thing and window; its later reports there get none (0: no limit)",
    )
    allow_mixed_names: bool = setting(
        False, values.boolean, "accept long and short standard key names in one report"
    )
    min_report_id: int = setting(1, values.integer(0, _MAX_INT), "the lowest report id")
    versions: Optional[frozenset[str]] = setting(
        None,
        values.versions,
        "the only header versions accepted, each <int>.<int>",
        shown="any <int>.<int>",
    )
    accept_unknown_keys: bool = setting(
        False, values.boolean, "unknown keys are warnings, not rejections"
    )
    reject_null_metrics: bool = setting(
        False, values.boolean, "reject 'metrics': null beside custom_metrics"
    )
    custom_name_check: bool = setting(
        True, values.boolean, "check custom metric names against [a-zA-Z0-9:_-]{1,128}"
    )


@dataclass(frozen=True)
class HttpSection:
    """``[http]``: the service's HTTP server (the AWS IoT Detect API, the dashboard, /metrics)."""

    listen: Optional[str] = setting(
        None,
        values.optional_text,
        "serve HTTP on HOST:PORT (the AWS IoT control-plane API for Detect, the dashboard "
        "and /metrics); off when unset",
        shown="off",
    )
    region: str = setting("us-east-1", values.text, "the region in ARNs and in SigV4 scopes")
    account_id: str = setting(
        "123456789012", values.text, "the 12-digit account id in ARNs the service makes"
    )
    credentials_file: Optional[Path] = setting(
        None,
        values.optional_path,
        "the access keys that may sign API requests (an AWS credentials-format file)",
        shown="none: every API request is refused",
    )
    dashboard_token: Optional[str] = setting(
        None,
        values.optional_text,
        "a token for the dashboard and /metrics (Authorization: Bearer, or ?token= once in "
        "a browser); needed, or dashboard_user and dashboard_password, beyond loopback",
        secret=True,
    )
    dashboard_user: Optional[str] = setting(
        None, values.optional_text, "a user name for the dashboard and /metrics (HTTP Basic)"
    )
    dashboard_password: Optional[str] = setting(
        None, values.optional_text, "its password (at least 8 characters)", secret=True
    )
    metrics_per_thing: bool = setting(
        False,
        values.boolean,
        "/metrics also has a series per thing (labels grow with the fleet: small fleets only)",
    )


@dataclass(frozen=True)
class DetectSection:
    """``[detect]``: evaluation of security profiles (Detect), violations and alerts."""

    enabled: bool = setting(
        True, values.boolean, "evaluate every accepted report against the attached profiles"
    )
    alert_topic: str = setting(
        "defender-agent/alerts",
        values.text,
        "publish each violation event (AWS's SNS message fields, JSON) to this topic on the "
        "service's broker; empty: none",
    )
    webhooks: tuple[str, ...] = setting(
        (), values.webhook_urls, "POST each violation event (JSON) to these http(s) URLs"
    )
    webhook_timeout: float = setting(
        5.0, values.seconds(0.1, 300), "seconds one webhook POST may take"
    )
    webhook_retries: int = setting(
        3,
        values.integer(0, 20),
        "retries of a failed POST (after 1, 2, 4, ... s); then the event is dropped, counted",
    )
    alert_queue_max: int = setting(
        1000,
        values.integer(1, 1_000_000),
        "events waiting for delivery; beyond, new events are dropped (counted), never waited for",
    )
    sns_targets: tuple[tuple[str, str], ...] = setting(
        (),
        values.sns_targets,
        "ARN=TARGET pairs: a profile's alertTargets SNS topic delivered here instead, to "
        "mqtt:TOPIC or an http(s):// webhook",
    )
    invalidate_after: float = setting(
        3600.0,
        values.seconds(0, 365 * 86400),
        "alarm-invalidated for the violations of a thing that sent no report for this many "
        "seconds (0: never)",
    )
    statistics_every: float = setting(
        60.0,
        values.seconds(1, 86400),
        "seconds between recomputations of statistical thresholds (percentiles)",
    )
    evaluate_in: EvaluateIn = setting(
        "auto",
        values.choice(_EVALUATE_IN),
        "where reports are judged: a worker process beside the service (process), a thread "
        "of the service (thread); auto: a process when the machine has 2 cores or more",
    )
    alert_connection: AlertConnection = setting(
        "own",
        values.choice(_ALERT_CONNECTIONS),
        "with evaluate_in = process: the worker publishes MQTT alerts on a connection of its "
        "own, client id SERVICE-ID-detect (own), or hands them to the service's (service)",
    )
    last_violation_every: float = setting(
        30.0,
        values.seconds(0, 86400),
        "an active violation's unchanged lastViolationValue has its lastViolationTime "
        "written at most this often (0: at every violating datapoint)",
    )


@dataclass(frozen=True)
class SandboxSection:
    """``[sandbox]``: ``defender-agent sandbox`` (it also reads ``[agent]`` and ``[logging]``)."""

    broker: Optional[str] = setting(
        None,
        values.optional_text,
        "an existing broker: mqtt://HOST:PORT (plain) or mqtts://HOST:PORT (mutual TLS with "
        "the sandbox's PKI)",
        shown="the embedded broker",
    )
    interval: int = setting(10, values.integer(1, 86400), "seconds between reports")
    reports: int = setting(
        0,
        values.integer(0, _MAX_INT),
        "stop after this many replies (exit 1 if one was a rejection); 0: until Ctrl-C",
    )
    state_dir: Optional[Path] = setting(
        None,
        values.optional_path,
        "where the PKI, the agent's state and the service's database go",
        shown="'sandbox' in the default state directory",
    )


_CLASSES = {
    "service": ServiceSection,
    "http": HttpSection,
    "detect": DetectSection,
    "sandbox": SandboxSection,
}

#: The settings of these sections, in section order.
EXTRA_SETTINGS: tuple[Setting, ...] = table(
    tuple((name, _CLASSES[name], name, prefix) for name, prefix in EXTRA_SECTIONS)
)
