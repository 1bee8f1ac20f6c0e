"""``defender-agent sandbox``: the agent, the service and a broker on this machine.

:class:`Sandbox` starts, in this order and in this process:

1. the PKI (:func:`~defender_agent.sandbox.pki.ensure_pki`, in ``<state dir>/pki``; files
   that are still good are reused);
2. the strict embedded broker (:class:`~defender_agent.sandbox.broker.EmbeddedBroker`:
   TLS on 127.0.0.1, a free port, client certificates required), or nothing with
   ``broker_url`` (an existing broker, ``mqtt://`` or ``mqtts://``; the PKI is then used
   only for ``mqtts://``);
3. the local Device Defender service, as the client ``defender-service``: it validates
   every report, replies ACCEPTED or REJECTED on the reply topics, and stores the
   accepted reports' metric values in ``<state dir>/service.sqlite3`` (what
   ``defender-agent data`` reads);
4. the agent (:class:`~defender_agent.agent.Agent`), collecting from this machine every
   ``interval`` seconds (no start splay; short intervals allowed), with its state in
   ``<state dir>/agent``. The configuration it runs with is written to
   ``<state dir>/agent.toml``: ``defender-agent run --config`` takes that file as is.

It prints one line per report the agent publishes and one per reply the agent
receives, until :meth:`Sandbox.stop` (Ctrl-C, SIGTERM) or, with ``reports``, until
that many replies arrived. The service's throttle window is half the interval
(AWS: 300 s), so a sandbox report at the sandbox's cadence is accepted.

Nothing leaves the machine: the embedded broker listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Final, Optional, Protocol
from urllib.parse import urlsplit

from defender_agent.config.load import check_plaintext, plaintext_warning
from defender_agent.errors import ConfigError, ConnectError, ReportError, StateError
from defender_agent.replies import parse_reply, rejection_text
from defender_agent.report.decode import decode_report
from defender_agent.report.validate import PayloadFormat, decode_payload
from defender_agent.rules import validate_thing_name
from defender_agent.sandbox.private import private_dir
from defender_agent.service.metrics_map import MetricValue, metric_values
from defender_agent.service.responder import ResponderPolicy
from defender_agent.state import StateDir, StateLock, default_state_dir
from defender_agent.transport.base import MessageHandler, MqttSettings, Transport
from defender_agent.transport.wrap import TransportWrapper

if TYPE_CHECKING:
    from defender_agent.agent import Agent
    from defender_agent.detect.runtime import DetectRuntime
    from defender_agent.detect.store import EventRow
    from defender_agent.model import PortList
    from defender_agent.sandbox.api import SandboxApi
    from defender_agent.sandbox.broker import EmbeddedBroker
    from defender_agent.sandbox.pki import SandboxPki

__all__ = [
    "DEFAULT_INTERVAL_S",
    "STORE_FILE",
    "BrokerTarget",
    "Sandbox",
    "SandboxConfig",
    "ServiceHandle",
    "default_sandbox_dir",
    "parse_broker_url",
    "summarize_report",
]

log = logging.getLogger(__name__)

#: The sandbox's reporting interval (Device Defender's minimum is 300 s).
DEFAULT_INTERVAL_S: Final = 10
#: The service's database, in the state directory.
STORE_FILE: Final = "service.sqlite3"
_FALLBACK_THING: Final = "sandbox-thing"
_SERVICE_NAME: Final = "defender-service"  # pki.SERVICE_NAME, without importing cryptography
_SCHEMES: Final = {"mqtt": (False, 1883), "mqtts": (True, 8883)}
_INSTALL: Final = "pip install 'defender-agent[sandbox]'"


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BrokerTarget:
    """An existing broker the sandbox uses instead of the embedded one.

    Attributes:
        host: Its host name or address.
        port: Its port.
        tls: Mutual TLS with the sandbox PKI (``mqtts://``), or plain TCP (``mqtt://``).
    """

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        """The broker as a URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerTarget:
    """``mqtt://HOST[:PORT]`` (plain, port 1883) or ``mqtts://HOST[:PORT]`` (TLS, 8883).

    >>> parse_broker_url("mqtt://127.0.0.1:18830")
    BrokerTarget(host='127.0.0.1', port=18830, tls=False)
    >>> parse_broker_url("mqtts://[::1]").url
    'mqtts://[::1]:8883'

    Raises:
        ConfigError: Another scheme, no host, a bad port, or a path, user or query.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--broker {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(f"--broker {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    if not parts.hostname:
        raise ConfigError(f"--broker {url!r}: no host")
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"--broker {url!r}: only a host and a port are allowed")
    tls, default_port = _SCHEMES[scheme]
    if port == 0:
        raise ConfigError(f"--broker {url!r}: port 0")
    return BrokerTarget(parts.hostname, port or default_port, tls)


@dataclass(frozen=True)
class SandboxConfig:
    """What the sandbox runs.

    Attributes:
        state_dir: Where the PKI, the agent's state, its configuration and the service's
            database go.
        interval: Seconds between reports.
        broker: An existing broker; None starts the embedded one.
        format: The report encoding, ``json`` or ``cbor``.
        short_names: Short field names in the reports.
        include_custom_metrics: Add the ``cpu_usage`` custom metric.
        reports: Stop after this many replies; 0 runs until stopped.
        thing_name: The thing the agent reports for (the CN of its certificate); None: the
            host name, or ``sandbox-thing`` when the host name is no valid thing name.
        throttle_s: The service's throttle window per thing; None: half the interval.
        log_level: The agent's log level (the sandbox's own lines go to ``out``).
    """

    state_dir: Path
    interval: int = DEFAULT_INTERVAL_S
    broker: Optional[BrokerTarget] = None
    format: str = "json"
    short_names: bool = False
    include_custom_metrics: bool = False
    reports: int = 0
    thing_name: Optional[str] = None
    throttle_s: Optional[float] = None
    log_level: str = "warning"

    def __post_init__(self) -> None:
        if not 1 <= self.interval <= 86400:
            raise ConfigError(f"--interval {self.interval}: expected 1 to 86400 seconds")
        if self.format not in ("json", "cbor"):
            raise ConfigError(f"--format {self.format!r}: expected json or cbor")
        if self.reports < 0:
            raise ConfigError(f"--reports {self.reports}: expected 0 or more")
        if self.thing_name is not None:
            try:
                validate_thing_name(self.thing_name)
            except ValueError as exc:
                raise ConfigError(f"--thing-name {self.thing_name!r}: {exc}") from None
            if self.thing_name == _SERVICE_NAME:
                raise ConfigError(f"--thing-name: {_SERVICE_NAME!r} is the service's identity")

    @property
    def thing(self) -> str:
        """The thing name the agent reports for."""
        if self.thing_name:
            return self.thing_name
        host = socket.gethostname().split(".")[0]
        try:
            validate_thing_name(host)
        except ValueError:
            return _FALLBACK_THING
        return host if host != _SERVICE_NAME else _FALLBACK_THING

    @property
    def store_path(self) -> Path:
        """The service's SQLite database."""
        return self.state_dir / STORE_FILE


def _private_dir(path: Path, *, tighten: bool = False) -> Path:
    return private_dir(path, "sandbox state directory", tighten=tighten)


def default_sandbox_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """``<default state dir>/sandbox``, created; a private temporary one if that is impossible.

    A user without a usable home (``nobody``: ``/nonexistent``) gets
    ``$TMPDIR/defender-agent-<uid>/sandbox`` (mode 0700, checked to be this user's).

    Raises:
        StateError: Neither directory can be used.
    """
    env = dict(os.environ if environ is None else environ)
    preferred = default_state_dir(env) / "sandbox"
    try:
        return _private_dir(preferred)
    except StateError as exc:
        fallback = Path(tempfile.gettempdir()) / f"defender-agent-{os.geteuid()}"
        try:
            _private_dir(fallback, tighten=True)
            chosen = _private_dir(fallback / "sandbox")
        except (StateError, OSError):
            raise exc from None
        log.warning("%s; using %s instead", exc, chosen)
        return chosen


# --------------------------------------------------------------------------- printing
def _size(count: float) -> str:
    """``512 B``, ``5.2 KB``, ``3.1 MB`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


_IN_WORDS: Final = {
    "AWS_IO_SOCKET_CONNECTION_REFUSED": "connection refused: nothing listens there",
    "AWS_IO_SOCKET_TIMEOUT": "no answer: the connection timed out",
    "AWS_IO_SOCKET_NO_ROUTE_TO_HOST": "no route to the host",
    "AWS_IO_SOCKET_NETWORK_DOWN": "the network is down",
    "AWS_IO_DNS_INVALID_NAME": "the host name cannot be resolved",
    "AWS_IO_DNS_QUERY_FAILED": "the host name cannot be resolved",
    "AWS_IO_SOCKET_CLOSED": "the broker closed the connection",
    "AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE": "the TLS handshake failed",
}


def connect_failure_in_words(reason: str) -> str:
    """A transport's connection failure in words, its awscrt error name kept in brackets.

    >>> connect_failure_in_words("AWS_IO_SOCKET_CONNECTION_REFUSED: socket connection refused.")
    'connection refused: nothing listens there (AWS_IO_SOCKET_CONNECTION_REFUSED)'
    >>> connect_failure_in_words("no connection within 10 s")
    'no connection within 10 s'
    """
    name = reason.partition(":")[0].strip()
    words = _IN_WORDS.get(name)
    return f"{words} ({name})" if words else reason


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def summarize_report(payload: bytes, fmt: str) -> tuple[Optional[int], str]:
    """The report id and a one-line summary of an encoded report.

    >>> report = b'{"header": {"report_id": 7, "version": "1.0"}, "metrics": {'
    >>> report += b'"listening_tcp_ports": {"ports": [{"port": 22}], "total": 1},'
    >>> report += b'"network_stats": {"bytes_in": 5200, "bytes_out": 1100,'
    >>> report += b' "packets_in": 9, "packets_out": 8}}}'
    >>> summarize_report(report, "json")
    (7, '1 tcp port, +5.2 KB in / +1.1 KB out')

    Args:
        payload: The report as published.
        fmt: ``json`` or ``cbor``.

    Returns:
        ``(report_id or None, summary)``; a payload that does not decode is summarised so.
    """
    try:
        document, _ = decode_payload(payload, PayloadFormat(fmt))
        report = decode_report(document)
    except ReportError as exc:
        return None, f"undecodable: {exc}"
    values: dict[str, MetricValue] = {v.metric: v for v in metric_values(report)}

    def count(metric: str) -> Optional[int]:
        value = values.get(metric)
        return value.count if value is not None else None

    parts = []
    for metric, one, many in (
        ("aws:num-listening-tcp-ports", "tcp port", "tcp ports"),
        ("aws:num-listening-udp-ports", "udp port", "udp ports"),
        ("aws:num-established-tcp-connections", "connection", "connections"),
    ):
        if (number := count(metric)) is not None:
            parts.append(_plural(number, one, many))
    if report.custom_metrics:
        parts.append(_plural(len(report.custom_metrics), "custom metric", "custom metrics"))
    bytes_in, bytes_out = count("aws:all-bytes-in"), count("aws:all-bytes-out")
    if bytes_in is not None and bytes_out is not None:
        parts.append(f"+{_size(bytes_in)} in / +{_size(bytes_out)} out")
    return report.report_id, ", ".join(parts) or "no metrics"


def _describe_reply(topic: str, payload: bytes) -> tuple[Optional[int], bool, str]:
    """``(report id, accepted, text)`` of a Device Defender reply."""
    try:
        reply = parse_reply(topic, payload)
    except ValueError as exc:
        return None, False, f"undecodable reply: {exc}"
    if reply.accepted:
        return reply.report_id, True, "ACCEPTED"
    return (
        reply.report_id,
        False,
        f"REJECTED {rejection_text(reply.error_code, reply.error_message)}",
    )


class _Console:
    """The sandbox's own lines on ``out``: one per report, one per reply; thread-safe."""

    def __init__(self, out: IO[str], fmt: str, reports: int, done: threading.Event) -> None:
        self.out = out
        self.fmt = fmt
        self.limit = reports
        self.done = done
        self.lock = threading.Lock()
        self.published = 0
        self.accepted = 0
        self.rejected = 0

    def line(self, text: str) -> None:
        # (a closed pipe must not kill the sandbox)
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.out.write(text + "\n")
            self.out.flush()

    def report(self, topic: str, payload: bytes) -> None:
        report_id, summary = summarize_report(payload, self.fmt)
        with self.lock:
            self.published += 1
        shown = report_id if report_id is not None else "?"
        self.line(f"report {shown} ({_size(len(payload))} {self.fmt}) → {summary}")

    def reply(self, topic: str, payload: bytes) -> None:
        report_id, accepted, text = _describe_reply(topic, payload)
        with self.lock:
            if self.done.is_set() and self.limit:
                return  # late replies after --reports N are not shown
            if accepted:
                self.accepted += 1
            else:
                self.rejected += 1
            finished = bool(self.limit) and self.accepted + self.rejected >= self.limit
        shown = report_id if report_id is not None else "?"
        self.line(f"reply  {shown} ← {text}")
        if finished:
            self.done.set()


class _ObservedTransport(TransportWrapper):
    """The agent's transport, with each publish and each received reply shown."""

    def __init__(
        self,
        inner: Transport,
        on_publish: Callable[[str, bytes], None],
        on_message: Callable[[str, bytes], None],
    ) -> None:
        super().__init__(inner)
        self._on_publish = on_publish
        self._on_message = on_message

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        def observed(topic: str, payload: bytes) -> None:
            handler(topic, payload)  # the agent's ledger first: it matches the reply
            try:
                self._on_message(topic, payload)
            except Exception:  # printing must never break the agent
                log.exception("could not show a reply")

        self.inner.subscribe(topic_filter, observed)

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        try:
            self._on_publish(topic, payload)  # before the publish: the reply follows it
        except Exception:
            log.exception("could not show a report")
        return self.inner.publish(topic, payload)


# --------------------------------------------------------------------------- the service
class ServiceHandle(Protocol):
    """The local Device Defender service as the sandbox drives it.

    :class:`~defender_agent.service.runner.DeviceDefenderService` is one.
    """

    def start(self) -> None:
        """Connect and answer reports from now on."""

    def stop(self) -> None:
        """Stop answering, disconnect, store what is queued and close; idempotent."""


# --------------------------------------------------------------------------- the sandbox
def _port_numbers(group: Optional[PortList]) -> list[int]:
    """The port numbers of a listening-port group (none when it is missing)."""
    if group is None or group.ports is None:
        return []
    return sorted({p.port for p in group.ports if p.port is not None})


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


@dataclass
class _Endpoint:
    host: str
    port: int
    tls: bool
    label: str


@dataclass
class _Parts:
    """What :meth:`Sandbox.start` started, in order, for :meth:`Sandbox.stop`."""

    broker: Optional[EmbeddedBroker] = None
    service: Optional[ServiceHandle] = None
    agent: Optional[Agent] = None
    agent_thread: Optional[threading.Thread] = None
    agent_code: list[int] = field(default_factory=list)
    api: Optional[SandboxApi] = None
    detect: Optional[DetectRuntime] = None


class Sandbox:
    """PKI, broker, service and agent in this process, showing each report and reply.

    Args:
        config: What to run.
        out: Where the report and reply lines go.
    """

    def __init__(self, config: SandboxConfig, out: IO[str] = sys.stdout) -> None:
        self.config = config
        self.out = out
        self.done = threading.Event()  # stop asked, N replies seen, or the agent ended
        self.console = _Console(out, config.format, config.reports, self.done)
        self.thing = config.thing
        self.pki: Optional[SandboxPki] = None
        self.endpoint: Optional[_Endpoint] = None
        self._parts = _Parts()
        self._stopped = False
        self._lock: Optional[StateLock] = None
        self._had_baseline = False  # the agent found a saved baseline (it may resume it)

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Start everything; return once the agent runs (its first report follows later).

        Raises:
            AgentError: A part could not start (one line: which and why); whatever
                started is stopped again.
        """
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        log.info("sandbox up in %.0f ms", (time.monotonic() - started) * 1000)

    def _start(self) -> None:
        config = self.config
        _private_dir(config.state_dir)
        # one sandbox per state directory: two would mix their reports in one database
        self._lock = StateDir(config.state_dir).acquire_lock()
        target = config.broker
        if target is None or target.tls:
            self.pki = self._ensure_pki()
        if target is None:
            self.endpoint = self._start_broker()
        else:
            if not target.tls:
                check_plaintext(target.host, f"--broker {target.url}")
                log.warning(plaintext_warning(target.host, target.port))
            self.endpoint = _Endpoint(target.host, target.port, target.tls, target.url)
        self._start_api()  # before Detect's starter profile notes the ports listening
        self._start_service()
        self._start_agent()

    def _ensure_pki(self) -> SandboxPki:
        try:
            from defender_agent.sandbox.pki import ensure_pki  # noqa: PLC0415 - cryptography
        except ImportError as exc:
            raise ConfigError(
                f"the sandbox's PKI needs cryptography, in the 'sandbox' extra ({_INSTALL}): {exc}"
            ) from None
        pki = ensure_pki(self.config.state_dir / "pki", self.thing)
        if pki.made:
            log.info("sandbox PKI: made %s in %s", ", ".join(pki.made), pki.directory)
        return pki

    def _start_api(self) -> None:
        """The AWS IoT API for Detect on 127.0.0.1 (a free port), its keys in the state dir."""
        from defender_agent.sandbox.api import SandboxApi  # noqa: PLC0415
        from defender_agent.service.runner import DeviceDefenderService, RunnerStats  # noqa: PLC0415

        def stats() -> RunnerStats:
            service = self._parts.service  # started right after the API
            assert isinstance(service, DeviceDefenderService)
            return service.stats()

        api = SandboxApi(self.config.state_dir, str(self.config.store_path))
        self._parts.api = api  # stop() closes what a failed start opened
        try:
            api.start(stats)
        except ImportError as exc:  # no aiohttp (the 'service' extra): no API, say so
            log.warning("no Detect API in the sandbox: %s (the 'service' extra)", exc)
            api.stop()
            self._parts.api = None

    def _start_broker(self) -> _Endpoint:
        from defender_agent.sandbox.broker import BrokerSettings, EmbeddedBroker  # noqa: PLC0415

        assert self.pki is not None
        # amqtt's own lines (and tracebacks) only when asked for: its failures that matter
        # come back as one-line errors, and a refused client is logged by the broker plugin
        level = {"debug": logging.DEBUG, "info": logging.WARNING}.get(
            self.config.log_level, logging.CRITICAL
        )
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(level)
        try:
            broker = EmbeddedBroker(
                BrokerSettings(self.pki.ca_cert, self.pki.server.cert, self.pki.server.key)
            )
        except ImportError:
            raise ConfigError(
                "the embedded broker needs amqtt 0.12.1, in the 'sandbox' extra on Python 3.10 "
                f"or later ({_INSTALL}); or use an existing broker with --broker URL"
            ) from None
        broker.start()
        self._parts.broker = broker
        return _Endpoint(broker.host, broker.port, True, f"{broker.url} (embedded)")

    def _start_service(self) -> None:
        from defender_agent.service.runner import (  # noqa: PLC0415 - awscrt
            DeviceDefenderService,
            ServiceConfig,
        )

        endpoint, pki = self.endpoint, self.pki
        assert endpoint is not None
        embedded = self._parts.broker is not None
        tls_files = pki if endpoint.tls else None
        settings = MqttSettings(
            endpoint=endpoint.host,
            port=endpoint.port,
            # the embedded broker wants client id == CN; elsewhere, take over no one's id
            client_id=_SERVICE_NAME if embedded else f"{_SERVICE_NAME}-{os.getpid()}",
            ca_file=tls_files.ca_cert if tls_files else None,
            cert_file=tls_files.service.cert if tls_files else None,
            key_file=tls_files.service.key if tls_files else None,
            use_tls=endpoint.tls,
            connect_timeout_s=10.0,
            # a session of a client id nobody reuses would keep collecting reports
            discard_session=not embedded,
        )
        throttle = self.config.throttle_s
        if throttle is None:
            throttle = self.config.interval / 2
        detect = self._start_detect()
        service = DeviceDefenderService(
            ServiceConfig(
                broker=settings,
                db_url=str(self.config.store_path),
                policy=ResponderPolicy(min_delay_s=throttle),
            ),
            after_store=detect.after_store,
        )
        self._parts.service = service
        detect.bind_publish(service.publish)
        try:
            service.start()
        except ConnectError as exc:
            raise ConnectError(
                f"the service cannot reach the broker {endpoint.label} (host {endpoint.host}, "
                f"port {endpoint.port}): {connect_failure_in_words(str(exc))}"
            ) from None

    def _start_detect(self) -> DetectRuntime:
        """Detect with the starter profile: the ports listening now, a bytes-out ceiling."""
        from defender_agent.config.extra_sections import DetectSection  # noqa: PLC0415
        from defender_agent.cycle import Collector  # noqa: PLC0415
        from defender_agent.detect.runtime import DetectRuntime  # noqa: PLC0415
        from defender_agent.detect.starter import ensure_starter_profile  # noqa: PLC0415

        collector = Collector()  # ids in memory; the first cycle is the baseline
        collector.cycle()
        now = collector.cycle()
        tcp = now.listening_tcp_ports if now else None
        udp = now.listening_udp_ports if now else None
        # the lines below show every event; the embedded broker lets the service publish
        # replies only (an alert topic would cost it its connection)
        detect = DetectRuntime(
            str(self.config.store_path), DetectSection(alert_topic=""), on_event=self._detect_line
        )
        self._parts.detect = detect
        ensure_starter_profile(detect.registry, _port_numbers(tcp), _port_numbers(udp))
        detect.start()
        return detect

    def _detect_line(self, event: EventRow) -> None:
        value = json.dumps(event.metric_value or {}, separators=(",", ":"))
        self.console.line(
            f"detect: {event.event_type} {event.profile}/{event.behavior.get('name')} "
            f"on {event.thing}: {value}"
        )

    def _agent_toml(self) -> Path:
        endpoint = self.endpoint
        assert endpoint is not None
        config = self.config
        mqtt: dict[str, object] = {
            "endpoint": endpoint.host,
            "port": endpoint.port,
            "client_id": self.thing,
        }
        if not endpoint.tls:  # a loopback broker only (checked at start); the agent warns
            mqtt["insecure_plaintext"] = True
        if endpoint.tls:
            assert self.pki is not None
            mqtt.update(
                ca_file=self.pki.ca_cert, cert_file=self.pki.thing.cert, key_file=self.pki.thing.key
            )
        agent: dict[str, object] = {
            "thing_name": self.thing,
            "format": config.format,
            "interval": config.interval,
            "allow_short_interval": True,
            "splay": 0,
            "short_names": config.short_names,
            "include_custom_metrics": config.include_custom_metrics,
            "state_dir": config.state_dir / "agent",
        }
        lines = [
            "# Written by `defender-agent sandbox` for the agent it runs; rewritten at each start.",
            f"# The broker was {endpoint.label}.",
        ]
        for section, table in (("mqtt", mqtt), ("agent", agent), ("logging", {})):
            lines.append(f"\n[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        lines.append(f"level = {_toml_value(config.log_level)}")
        path = config.state_dir / "agent.toml"
        try:
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        except OSError as exc:
            raise StateError(f"{path}: {exc.strerror or exc}") from exc
        return path

    def _start_agent(self) -> None:
        from defender_agent.agent import Agent  # noqa: PLC0415
        from defender_agent.config import load_config  # noqa: PLC0415
        from defender_agent.cycle import Collector  # noqa: PLC0415
        from defender_agent.transport.mqtt import MqttTransport  # noqa: PLC0415

        # the sandbox's own file, not /etc/defender-agent/config.toml nor DEFENDER_AGENT_*
        config = load_config({}, self._agent_toml(), environ={})
        self._had_baseline = (self.config.state_dir / "agent" / "baseline.json").exists()
        state = StateDir(config.agent.state_dir or self.config.state_dir / "agent")
        state.ensure()
        transport = _ObservedTransport(
            MqttTransport(config.mqtt_settings()), self.console.report, self.console.reply
        )
        collector = Collector(config.collector_config(), state_dir=state.path)
        agent = Agent(config, collector, transport, state)
        codes = self._parts.agent_code

        def run() -> None:
            try:
                codes.append(agent.run())
            except BaseException:
                log.exception("the agent failed")
                codes.append(70)
            finally:
                self.done.set()

        thread = threading.Thread(target=run, name="sandbox-agent", daemon=True)
        self._parts.agent, self._parts.agent_thread = agent, thread
        thread.start()

    # ------------------------------------------------------------------ run and stop
    def header(self) -> list[str]:
        """The lines shown at the start: what runs where."""
        config, endpoint = self.config, self.endpoint
        assert endpoint is not None
        names = "short names" if config.short_names else "long names"
        custom = ", with cpu_usage" if config.include_custom_metrics else ""
        certs = f", client certificates in {self.pki.directory}" if self.pki else ""
        state = shlex.quote(str(config.state_dir))
        lines = [
            (
                f"defender-agent sandbox: thing {self.thing!r}, a report every "
                f"{config.interval} s ({config.format}, {names}{custom})"
            ),
            f"  broker   {endpoint.label}{certs}",
            f"  service  validates, replies, stores in {config.store_path}",
            f"  agent    collects from this machine; state in {config.state_dir / 'agent'}",
            f"  state    all of the above is in {config.state_dir}; remove it: rm -rf {state}",
        ]
        if self._parts.api is not None:
            lines += self._parts.api.lines()
        if self._had_baseline:  # resumed: the next report is due sooner (or found stale)
            first = (
                f"the first report within {config.interval} s "
                "(sooner when the agent resumes the baseline it saved)"
            )
        else:
            first = f"the first report follows the baseline in {config.interval} s"
        replies = _plural(config.reports, "reply", "replies")
        stop = f"stops after {replies}" if config.reports else "Ctrl-C stops"
        lines.append(f"{first}; {stop}")
        return lines

    def footer(self) -> list[str]:
        """The lines shown at the end: the counts and how to query what was stored."""
        console = self.console
        db = shlex.quote(str(self.config.store_path))
        thing = shlex.quote(self.thing)
        reports = _plural(console.published, "report", "reports")
        counts = f"{console.accepted} accepted, {console.rejected} rejected"
        metric = "--metric aws:all-bytes-in --since -1h"
        return [
            f"stopped: {reports}, {counts}",
            "the service stored the accepted reports; query them with:",
            f"  defender-agent data things --db {db}",
            f"  defender-agent data list-metric-values --db {db} --thing {thing} {metric}",
        ]

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until stopped, ``reports`` replies arrived or the agent ended.

        Returns:
            Whether that happened (False: ``timeout`` passed first).
        """
        return self.done.wait(timeout)

    def exit_code(self) -> int:
        """The exit status.

        Returns:
            0; 1 when ``reports`` was given and a counted reply was a rejection; the
            agent's status (2, or 70 for a bug) when it stopped on a fatal error.
        """
        codes = self._parts.agent_code
        if codes and codes[0] != 0:
            return codes[0]
        if self.config.reports and self.console.rejected:
            return 1
        return 0

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (signal-safe)."""
        self.done.set()

    def stop(self) -> None:
        """Stop the agent, the service and the broker, in that order; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.done.set()
        parts = self._parts
        if parts.agent is not None:
            parts.agent.stop()
        if parts.agent_thread is not None:
            parts.agent_thread.join(timeout=15)
            if parts.agent_thread.is_alive():
                log.warning("the agent did not stop within 15 s")
        if parts.api is not None:
            parts.api.stop()
        if parts.service is not None:
            parts.service.stop()
        if parts.detect is not None:
            parts.detect.stop()
        if parts.broker is not None:
            parts.broker.stop()
        if self._lock is not None:
            self._lock.release()

    def run(self) -> int:
        """Start, print the header, wait, stop, print the footer; return the exit status.

        Call :meth:`request_stop` (from a signal handler, another thread) to end it.

        Raises:
            AgentError: A part could not start (everything started is stopped again).
        """
        try:
            self.start()
            for line in self.header():
                self.console.line(line)
            while not self.wait(0.5):
                pass
        finally:
            self.stop()
        for line in self.footer():
            self.console.line(line)
        return self.exit_code()
