"""``defender-agent service``: a local AWS IoT Device Defender service on an MQTT broker.

Connects to a broker (mutual TLS, or plain TCP with ``--no-tls``), subscribes to
``$aws/things/+/defender/metrics/+``, answers every report on its ``/accepted`` or
``/rejected`` topic as protocol.md §4 and §7 describe, and stores the metric values of
every accepted report (SQLite in the state directory by default, or ``--db
postgresql://…``; query them with ``defender-agent data``). One INFO line per report.
SIGTERM/SIGINT stop it cleanly (exit 0); bad options are one line and exit 2.

Several processes split the reports with ``--shared-group NAME`` (MQTT shared
subscriptions) and one PostgreSQL database. Every choice the protocol leaves open is an
option below (``--min-delay``, ``--strict-report-ids``, ``--allow-mixed-names``, …).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Final

from defender_agent.cli._common import (
    COMMANDS,
    EXIT_OK,
    Parser,
    count,
    positive,
    seconds,
    setup_logging,
    stop_on_signals,
)
from defender_agent.errors import ConfigError, ConnectError
from defender_agent.report.validate import ValidationPolicy
from defender_agent.service.responder import INVALID_PAYLOAD, ResponderPolicy
from defender_agent.service.runner import DeviceDefenderService, ServiceConfig
from defender_agent.service.storage import DEFAULT_FILE
from defender_agent.state import default_state_dir
from defender_agent.transport.base import MqttSettings

__all__ = ["add_parser", "build_config", "command"]

log = logging.getLogger(__name__)

_BACKOFF_FIRST_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0


def _port(text: str) -> int:
    value = count(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {value}")
    return value


def _versions(text: str) -> frozenset[str]:
    versions = frozenset(v.strip() for v in text.split(",") if v.strip())
    if not versions:
        raise argparse.ArgumentTypeError("expected versions such as 1.0,1.1")
    return versions


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``service`` to the command line."""
    p = sub.add_parser(
        "service",
        help=COMMANDS["service"][1],
        description="Answer Device Defender metrics reports on an MQTT broker as AWS IoT "
        "Device Defender does (accepted/rejected, JSON or CBOR, Throttled per thing) and "
        "store the metric values of every accepted report. Choices where the real "
        "service's behaviour is unknown are options.",
    )
    broker = p.add_argument_group("broker")
    broker.add_argument("--broker", default="localhost", metavar="HOST", help="default localhost")
    broker.add_argument(
        "--port", type=_port, metavar="PORT", help="default 8883 with TLS, 1883 without"
    )
    broker.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mutual TLS (default); --no-tls for a plain local listener",
    )
    broker.add_argument("--ca-file", type=Path, metavar="FILE", help="CA to verify the broker")
    broker.add_argument("--cert-file", type=Path, metavar="FILE", help="client certificate")
    broker.add_argument("--key-file", type=Path, metavar="FILE", help="its private key")
    broker.add_argument(
        "--client-id",
        metavar="ID",
        help="MQTT client id (default defender-agent-service-<hostname>-<pid>)",
    )
    broker.add_argument("--mqtt5", action="store_true", help="MQTT 5 instead of 3.1.1")
    broker.add_argument(
        "--keep-alive", type=positive, default=60, metavar="SECONDS", help="default 60"
    )
    broker.add_argument(
        "--session",
        choices=("auto", "keep", "discard"),
        default="auto",
        help="at stop, end the broker's MQTT session (discard) or leave it to be resumed "
        "by the same --client-id (keep); auto: discard with the generated client id",
    )
    scale = p.add_argument_group("scaling out")
    scale.add_argument(
        "--shared-group",
        metavar="NAME",
        help="subscribe as a member of this MQTT shared-subscription group "
        "($share/NAME/...): processes of one group split the reports",
    )
    scale.add_argument(
        "--topic-prefix",
        default="",
        metavar="PREFIX",
        help="reports arrive as PREFIX$aws/things/... (a bridge's remapping; needed for "
        "--shared-group on mosquitto 2.0); replies still go to $aws/...",
    )
    store = p.add_argument_group("storage")
    store.add_argument(
        "--db",
        metavar="URL",
        help=f"a file, sqlite:///PATH or postgresql://USER@HOST:PORT/DB (default: {DEFAULT_FILE} "
        "in the state directory)",
    )
    store.add_argument("--state-dir", type=Path, metavar="DIR", help="the state directory")
    store.add_argument(
        "--batch-max", type=positive, default=500, metavar="N", help="reports per transaction"
    )
    store.add_argument(
        "--queue-max",
        type=positive,
        default=20_000,
        metavar="N",
        help="accepted reports waiting for storage; beyond, answered but not stored",
    )
    store.add_argument(
        "--drain-timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="at stop, how long to store what is queued (default 10)",
    )
    policy = p.add_argument_group("responder policy (protocol.md §7)")
    policy.add_argument(
        "--min-delay",
        type=seconds,
        default=300.0,
        metavar="SECONDS",
        help="Throttled when a thing reports again within this (default 300; 0: never)",
    )
    policy.add_argument(
        "--strict-report-ids",
        action="store_true",
        help="reject (InvalidPayload) a report id not above the thing's last accepted one",
    )
    policy.add_argument(
        "--no-report-id-in-rejections",
        dest="report_id_in_rejections",
        action="store_false",
        help="leave reportId out of REJECTED replies",
    )
    policy.add_argument(
        "--throttle-message", default="Throttled", metavar="TEXT", help="ErrorMessage of Throttled"
    )
    policy.add_argument(
        "--invalid-message",
        default="Malformed metrics report",
        metavar="TEXT",
        help="ErrorMessage of InvalidPayload",
    )
    policy.add_argument(
        "--thing-name-code",
        default=INVALID_PAYLOAD,
        metavar="CODE",
        help="ErrorCode for a bad thing name (default InvalidPayload)",
    )
    policy.add_argument(
        "--thing-name-message",
        default="Malformed metrics report",
        metavar="TEXT",
        help="ErrorMessage for a bad thing name",
    )
    policy.add_argument(
        "--max-tracked-things",
        type=positive,
        default=10_000,
        metavar="N",
        help="thing names kept for the throttle (bounded memory)",
    )
    validation = p.add_argument_group("validation policy (protocol.md §7)")
    validation.add_argument(
        "--allow-mixed-names",
        action="store_true",
        help="accept long and short standard key names in one report",
    )
    validation.add_argument(
        "--min-report-id", type=count, default=1, metavar="N", help="the lowest report id"
    )
    validation.add_argument(
        "--versions",
        type=_versions,
        metavar="V[,V...]",
        help="the only header versions accepted (default: any <int>.<int>)",
    )
    validation.add_argument(
        "--accept-unknown-keys",
        action="store_true",
        help="unknown keys are warnings, not rejections",
    )
    validation.add_argument(
        "--reject-null-metrics",
        action="store_true",
        help="reject 'metrics': null beside custom_metrics",
    )
    validation.add_argument(
        "--no-custom-name-check",
        dest="custom_name_check",
        action="store_false",
        help="do not check custom metric names against [a-zA-Z0-9:_-]{1,128}",
    )
    logs = p.add_argument_group("logging")
    logs.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    logs.add_argument("--log-format", default="text", choices=("text", "json"))
    p.set_defaults(func=command)


def build_config(args: argparse.Namespace) -> ServiceConfig:
    """The service configuration the parsed options describe.

    Raises:
        ConfigError: The options contradict each other.
    """
    if args.tls and (args.cert_file is None or args.key_file is None):
        raise ConfigError("mutual TLS needs --cert-file and --key-file (or --no-tls)")
    if args.mqtt5 and args.shared_group is not None:
        raise ConfigError(
            "--shared-group is supported with MQTT 3.1.1 only (MQTT 5 shared "
            "subscriptions are not tested yet)"
        )
    generated = args.client_id is None
    client_id = args.client_id or f"defender-agent-service-{socket.gethostname()}-{os.getpid()}"
    broker = MqttSettings(
        endpoint=args.broker,
        port=args.port or (8883 if args.tls else 1883),
        client_id=client_id,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        use_tls=args.tls,
        mqtt5=args.mqtt5,
        keep_alive_s=args.keep_alive,
        connect_timeout_s=10.0,
        discard_session=args.session == "discard" or (args.session == "auto" and generated),
    )
    validation = ValidationPolicy(
        allow_mixed_names=args.allow_mixed_names,
        min_report_id=args.min_report_id,
        accepted_versions=args.versions,
        reject_unknown_keys=not args.accept_unknown_keys,
        accept_null_metrics=not args.reject_null_metrics,
        check_custom_metric_names=args.custom_name_check,
    )
    policy = ResponderPolicy(
        min_delay_s=args.min_delay,
        throttle_message=args.throttle_message,
        invalid_message=args.invalid_message,
        thing_name_code=args.thing_name_code,
        thing_name_message=args.thing_name_message,
        include_report_id_in_rejections=args.report_id_in_rejections,
        validation=validation,
        strict_report_ids=args.strict_report_ids,
        max_tracked_things=args.max_tracked_things,
    )
    state_dir = args.state_dir or default_state_dir()
    return ServiceConfig(
        broker=broker,
        db_url=args.db or str(state_dir / DEFAULT_FILE),
        policy=policy,
        shared_group=args.shared_group,
        topic_prefix=args.topic_prefix,
        batch_max=args.batch_max,
        queue_max=args.queue_max,
        drain_timeout_s=args.drain_timeout,
    )


def command(args: argparse.Namespace) -> int:
    """Run the service until SIGTERM/SIGINT; 0 after a clean stop."""
    setup_logging(args.log_level, args.log_format, timestamps=True)
    config = build_config(args)
    if config.broker.use_tls:
        from defender_agent.transport.tls import check_tls_files  # noqa: PLC0415 - awscrt

        for warning in check_tls_files(config.broker):
            log.warning("%s", warning)
    stop = threading.Event()

    stop_on_signals(stop.set)
    service = DeviceDefenderService(config)
    try:
        delay = _BACKOFF_FIRST_S
        while not stop.is_set():
            try:
                service.start()
                break
            except ConnectError as exc:
                log.warning(
                    "cannot reach the broker %s:%d (%s); retrying in %.1f s",
                    config.broker.endpoint,
                    config.broker.port,
                    exc,
                    delay,
                )
                stop.wait(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
        stop.wait()
    finally:
        service.stop()
    return EXIT_OK
