"""``defender-agent service``: a local AWS IoT Device Defender service on an MQTT broker.

Connects to a broker (mutual TLS, or plain TCP with ``--no-tls``), subscribes to
``$aws/things/+/defender/metrics/+``, answers every report on its ``/accepted`` or
``/rejected`` topic as docs/protocol.md §4 and §7 describe, and stores the metric values of
every accepted report (SQLite in the state directory by default, or ``--db
postgresql://…``; query them with ``defender-agent data``). An ACCEPTED reply goes out
once its report is committed (``--reply-before-store``: before, losing acknowledged
reports on a crash). One INFO line per report.
SIGTERM/SIGINT stop it cleanly (exit 0); bad options are one line and exit 2.

Several processes split the reports with ``--shared-group NAME`` (MQTT shared
subscriptions) and one PostgreSQL database. Every choice the protocol leaves open is an
option below (``--min-delay``, ``--strict-report-ids``, ``--allow-mixed-names``, …), and
a key of the ``[service]`` table of the config file (``--config``, ``examples/service.toml``)
and a ``DEFENDER_AGENT_SERVICE_*`` variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Callable, Final, Optional, Union

from defender_agent.cli._common import COMMANDS, EXIT_OK, Parser, setup_logging, stop_on_signals
from defender_agent.cli._settings import SettingOptions, load_for
from defender_agent.config import Config, plaintext_warning
from defender_agent.errors import ConfigError, ConnectError
from defender_agent.report.validate import ValidationPolicy
from defender_agent.schedule import backoff_delay
from defender_agent.service.responder import ResponderPolicy
from defender_agent.service.runner import DeviceDefenderService, RunnerStats, ServiceConfig
from defender_agent.service.storage import DEFAULT_FILE
from defender_agent.state import default_state_dir
from defender_agent.transport.base import MqttSettings

if TYPE_CHECKING:
    from defender_agent.detect.contract import Violations
    from defender_agent.detect.process import DetectProcess
    from defender_agent.detect.runtime import DetectRuntime
    from defender_agent.service.http import HttpServer, Installer

__all__ = [
    "add_parser",
    "build_config",
    "command",
    "http_installers",
    "start_detect",
    "start_http",
]

log = logging.getLogger(__name__)

_BACKOFF_FIRST_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``service`` to the command line."""
    p = sub.add_parser(
        "service",
        help=COMMANDS["service"][1],
        description="Answer Device Defender metrics reports on an MQTT broker as AWS IoT "
        "Device Defender does (accepted/rejected, JSON or CBOR, Throttled per thing) and "
        "store the metric values of every accepted report. Choices where the real "
        "service's behaviour is unknown are options. Every option is also a key of the "
        "[service] table of the config file and a DEFENDER_AGENT_SERVICE_* variable "
        "(examples/service.toml shows them all).",
    )
    o = SettingOptions(p)
    o.common()
    broker = p.add_argument_group("broker")
    o.add("service_broker", "--broker", metavar="HOST", group=broker)
    o.add("service_port", "--port", metavar="PORT", group=broker)
    broker.add_argument(
        "--tls",
        dest="service_tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mutual TLS (default); --no-tls for a plain local listener",
    )
    o.labels["service_tls"] = "--tls/--no-tls"
    o.add("service_ca_file", "--ca-file", metavar="FILE", group=broker)
    o.add("service_cert_file", "--cert-file", metavar="FILE", group=broker)
    o.add("service_key_file", "--key-file", metavar="FILE", group=broker)
    o.add("service_client_id", "--client-id", metavar="ID", group=broker)
    o.switch("service_mqtt5", "--mqtt5", group=broker)
    o.add("service_keep_alive", "--keep-alive", metavar="SECONDS", group=broker)
    o.add("service_session", "--session", choices=("auto", "keep", "discard"), group=broker)
    scale = p.add_argument_group("scaling out")
    o.add("service_shared_group", "--shared-group", metavar="NAME", group=scale)
    o.add("service_topic_prefix", "--topic-prefix", metavar="PREFIX", group=scale)
    store = p.add_argument_group("storage")
    o.add("service_db", "--db", metavar="URL", group=store)
    o.add("service_state_dir", "--state-dir", metavar="DIR", group=store)
    o.add("service_batch_max", "--batch-max", metavar="N", group=store)
    o.add("service_queue_max", "--queue-max", metavar="N", group=store)
    o.add("service_drain_timeout", "--drain-timeout", metavar="SECONDS", group=store)
    o.switch("service_reply_before_store", "--reply-before-store", group=store)
    policy = p.add_argument_group("responder policy (docs/protocol.md §7)")
    o.add("service_min_delay", "--min-delay", metavar="SECONDS", group=policy)
    o.switch("service_strict_report_ids", "--strict-report-ids", group=policy)
    o.switch(
        "service_report_id_in_rejections",
        "--no-report-id-in-rejections",
        value=False,
        group=policy,
        help="leave reportId out of REJECTED replies",
    )
    o.add("service_throttle_message", "--throttle-message", metavar="TEXT", group=policy)
    o.add("service_invalid_message", "--invalid-message", metavar="TEXT", group=policy)
    o.add("service_thing_name_code", "--thing-name-code", metavar="CODE", group=policy)
    o.add("service_thing_name_message", "--thing-name-message", metavar="TEXT", group=policy)
    o.add("service_max_tracked_things", "--max-tracked-things", metavar="N", group=policy)
    o.add("service_max_throttled_replies", "--max-throttled-replies", metavar="N", group=policy)
    validation = p.add_argument_group("validation policy (docs/protocol.md §7)")
    o.switch("service_allow_mixed_names", "--allow-mixed-names", group=validation)
    o.add("service_min_report_id", "--min-report-id", metavar="N", group=validation)
    o.add("service_versions", "--versions", metavar="V[,V...]", group=validation)
    o.switch("service_accept_unknown_keys", "--accept-unknown-keys", group=validation)
    o.switch("service_reject_null_metrics", "--reject-null-metrics", group=validation)
    o.switch(
        "service_custom_name_check",
        "--no-custom-name-check",
        value=False,
        group=validation,
        help="do not check custom metric names against [a-zA-Z0-9:_-]{1,128}",
    )
    http = p.add_argument_group("HTTP API (the AWS IoT control plane for Detect, the dashboard)")
    o.add("http_listen", "--http", metavar="HOST:PORT", group=http)
    o.add("http_credentials_file", "--http-credentials-file", metavar="FILE", group=http)
    o.finish()
    p.set_defaults(func=command)


def build_config(config: Config) -> ServiceConfig:
    """The service configuration that the ``[service]`` settings describe."""
    s = config.service
    generated = s.client_id is None
    client_id = s.client_id or f"defender-agent-service-{socket.gethostname()}-{os.getpid()}"
    broker = MqttSettings(
        endpoint=s.broker,
        port=s.port or (8883 if s.tls else 1883),
        client_id=client_id,
        ca_file=s.ca_file,
        cert_file=s.cert_file,
        key_file=s.key_file,
        use_tls=s.tls,
        mqtt5=s.mqtt5,
        keep_alive_s=s.keep_alive,
        connect_timeout_s=10.0,
        discard_session=s.session == "discard" or (s.session == "auto" and generated),
    )
    validation = ValidationPolicy(
        allow_mixed_names=s.allow_mixed_names,
        min_report_id=s.min_report_id,
        accepted_versions=s.versions,
        reject_unknown_keys=not s.accept_unknown_keys,
        accept_null_metrics=not s.reject_null_metrics,
        check_custom_metric_names=s.custom_name_check,
    )
    policy = ResponderPolicy(
        min_delay_s=s.min_delay,
        throttle_message=s.throttle_message,
        invalid_message=s.invalid_message,
        thing_name_code=s.thing_name_code,
        thing_name_message=s.thing_name_message,
        include_report_id_in_rejections=s.report_id_in_rejections,
        validation=validation,
        strict_report_ids=s.strict_report_ids,
        max_tracked_things=s.max_tracked_things,
        max_throttled_replies=s.max_throttled_replies,
    )
    state_dir = s.state_dir or default_state_dir()
    return ServiceConfig(
        broker=broker,
        db_url=s.db or str(state_dir / DEFAULT_FILE),
        policy=policy,
        shared_group=s.shared_group,
        topic_prefix=s.topic_prefix,
        batch_max=s.batch_max,
        queue_max=s.queue_max,
        drain_timeout_s=s.drain_timeout,
        reply_before_store=s.reply_before_store,
    )


#: Allocations between two young-generation collections once the service runs (CPython's
#: default is 700): reports and Detect's evaluation allocate many short-lived objects.
_GC_YOUNG: Final = 20_000


def settle_gc() -> None:
    """Tune the cyclic garbage collector for a long-running service, once it has started.

    What exists at this point (modules, connections, the registry's plan) lives as long as
    the process: :func:`gc.freeze` takes it out of every later collection, so a full
    collection no longer walks it. Young collections run every ``_GC_YOUNG`` allocations
    instead of every 700. Reference counting frees almost everything the service makes; the
    collector only finds cycles, so this changes when garbage is found, not how much memory
    is kept (docs/performance.md has the figures).
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG, middle, old)


def command(args: argparse.Namespace) -> int:
    """Run the service until SIGTERM/SIGINT; 0 after a clean stop."""
    loaded = load_for(args, "service")
    setup_logging(loaded.effective_log_level("service"), loaded.logging.format, timestamps=True)
    config = build_config(loaded)
    if not config.broker.use_tls:  # to a loopback broker only: the loader refuses the rest
        log.warning(plaintext_warning(config.broker.endpoint, config.broker.port))
    if config.broker.use_tls:
        from defender_agent.transport.tls import check_tls_files  # noqa: PLC0415 - awscrt

        # unusable files fail here in one line; the transport logs the warnings, once
        check_tls_files(config.broker)
    stop = threading.Event()

    stop_on_signals(stop.set)
    detect = start_detect(loaded, config.db_url, config.broker)
    service = DeviceDefenderService(config, after_store=detect.after_store if detect else None)
    if detect is not None:
        detect.bind_publish(service.publish)
    try:
        http = start_http(loaded, config.db_url, service.stats, detect.store if detect else None)
    except BaseException:
        if detect is not None:
            detect.stop()
        raise
    try:
        attempt = 0
        while not stop.is_set():
            try:
                service.start()
                break
            except ConnectError as exc:
                delay = backoff_delay(attempt, base=_BACKOFF_FIRST_S, cap=_BACKOFF_MAX_S)
                attempt += 1
                log.warning(
                    "cannot reach the broker %s:%d (%s); retrying in %.1f s",
                    config.broker.endpoint,
                    config.broker.port,
                    exc,
                    delay,
                )
                stop.wait(delay)
        if not stop.is_set():  # status file, READY=1, STATUS=, the watchdog
            from defender_agent.service.watch import supervise  # noqa: PLC0415
            from defender_agent.state import StateDir  # noqa: PLC0415

            settle_gc()
            supervise(service, stop, StateDir(loaded.service.state_dir or default_state_dir()))
    finally:
        if http is not None:
            http.stop()
        service.stop()
        if detect is not None:
            detect.stop()
    return EXIT_OK


def uses_worker(evaluate_in: str, cores: Optional[int] = None) -> bool:
    """Whether ``[detect] evaluate_in`` means a worker process on this machine.

    >>> uses_worker("auto", 1), uses_worker("auto", 4), uses_worker("thread", 4)
    (False, True, False)
    """
    if evaluate_in == "auto":
        cores = cores if cores is not None else (os.cpu_count() or 1)
        return cores >= 2
    return evaluate_in == "process"


def start_detect(
    loaded: Config, db_url: str, broker: Optional[MqttSettings] = None
) -> Optional[Union[DetectRuntime, DetectProcess]]:
    """Detect's registry, store, alerts and engine (None with ``[detect] enabled = false``).

    ``broker``: the service's connection settings, which a worker process with ``[detect]
    alert_connection = "own"`` connects with (its own client id) to publish its alerts.

    Raises:
        StateError: The database cannot be opened.
    """
    if not loaded.detect.enabled:
        log.info("detect is off ([detect] enabled = false): reports are not evaluated")
        return None
    detect: Union[DetectRuntime, DetectProcess]
    if uses_worker(loaded.detect.evaluate_in):
        from defender_agent.detect.alert_link import alert_client_id  # noqa: PLC0415
        from defender_agent.detect.process import DetectProcess  # noqa: PLC0415

        detect = DetectProcess(
            db_url,
            loaded.detect,
            region=loaded.http.region,
            account=loaded.http.account_id,
            log_level=loaded.effective_log_level("service"),
            log_format=loaded.logging.format,
            mqtt=(
                dataclasses.replace(broker, client_id=alert_client_id(broker.client_id))
                if broker is not None and loaded.detect.alert_connection == "own"
                else None
            ),
        )
    else:
        from defender_agent.detect.runtime import DetectRuntime  # noqa: PLC0415

        detect = DetectRuntime(
            db_url, loaded.detect, region=loaded.http.region, account=loaded.http.account_id
        )
    detect.start()
    alerts = detect.alert_settings
    where = [f"MQTT topic {alerts.topic}"] if alerts.topic else []
    where += [f"{len(alerts.webhooks)} webhook(s)"] if alerts.webhooks else []
    log.info(
        "detect: evaluating accepted reports against the attached security profiles; alerts to %s",
        ", ".join(where) or "nowhere (no alert_topic, no webhooks)",
    )
    return detect


def http_installers() -> list[Installer]:
    """What the HTTP server serves: the AWS IoT API for Detect, the dashboard and /metrics."""
    from defender_agent.service.api.handlers import install  # noqa: PLC0415 - aiohttp
    from defender_agent.web.app import install as install_dashboard  # noqa: PLC0415

    return [install, install_dashboard]


def start_http(
    loaded: Config,
    db_url: str,
    stats: Callable[[], RunnerStats],
    violations: Optional[Violations] = None,
) -> Optional[HttpServer]:
    """Start the ``[http]`` server (None when ``listen`` is unset).

    Raises:
        ConfigError: A bad ``listen``, a non-loopback address without a credentials file,
            or the port cannot be bound.
    """
    if loaded.http.listen is None:
        return None
    from defender_agent.detect.registry import open_registry  # noqa: PLC0415

    try:
        from defender_agent.service.http import (  # noqa: PLC0415 - aiohttp, only when serving
            HttpContext,
            HttpServer,
            check_exposure,
            parse_listen,
        )
    except ImportError as exc:
        raise ConfigError(
            f"--http ([http] listen) needs aiohttp: pip install 'defender-agent[service]' ({exc})"
        ) from None

    host, port = parse_listen(loaded.http.listen)
    check_exposure(host, loaded.http.credentials_file)
    registry = open_registry(db_url, region=loaded.http.region, account=loaded.http.account_id)
    context = HttpContext(loaded, db_url, registry, violations, stats)
    server = HttpServer(host, port, context, http_installers(), closing=[registry.close])
    try:
        server.start()
    except BaseException:
        registry.close()  # closing twice is harmless
        raise
    log.info("AWS IoT API for Detect on %s (aws iot ... --endpoint-url %s)", server.url, server.url)
    log.info("dashboard on %s/dashboard/, Prometheus metrics on %s/metrics", server.url, server.url)
    return server
