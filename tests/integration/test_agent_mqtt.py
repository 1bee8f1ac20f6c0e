"""`defender-agent run` end to end: a real agent process, a real mosquitto, the responder.

The agent runs as a subprocess (the CLI, as users run it) with the thing1 certificate; the
broker's ACL lets thing1 publish only its own report topics and read only its own replies, as
an AWS IoT policy would. The Device Defender responder runs in the test process on the
broker's plain listener and records every report id it answers. Intervals are 1 s
(``--allow-short-interval``) to keep the tests short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from defender_agent.service.responder import Outcome, Responder, ResponderPolicy
from defender_agent.service.responder_service import ResponderService
from defender_agent.transport.base import MqttSettings
from defender_agent.transport.mqtt import MqttTransport
from tests.conftest import proc_fixture
from tests.mqtt_infra.broker import Mosquitto
from tests.mqtt_infra.fronts import AlpnFront, ConnectProxy, SigV4WebSocketFront
from tests.mqtt_infra.pki import Pki


class RecordingResponder(Responder):
    """A responder that remembers what it answered."""

    def __init__(self, policy: ResponderPolicy) -> None:
        super().__init__(policy)
        self.accepted: list[int] = []
        self.rejected: list[tuple[Optional[int], Optional[str]]] = []
        self.payloads: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def handle(self, topic: str, payload: bytes) -> Outcome:
        outcome = super().handle(topic, payload)
        if outcome.reply is not None:
            with self.lock:
                if outcome.reply.accepted:
                    assert outcome.reply.report_id is not None
                    self.accepted.append(outcome.reply.report_id)
                    self.payloads.append((topic, payload))
                else:
                    self.rejected.append((outcome.reply.report_id, outcome.reply.error_code))
        return outcome


@dataclass
class Service:
    responder: RecordingResponder
    service: ResponderService
    transport: MqttTransport


def start_service(mosquitto: Mosquitto, min_delay_s: float = 0.0) -> Service:
    assert mosquitto.plain is not None
    transport = MqttTransport(
        MqttSettings(
            endpoint="127.0.0.1",
            port=mosquitto.plain,
            client_id="dd-service",
            use_tls=False,
            reconnect_min_s=1.0,
            reconnect_max_s=2.0,
        )
    )
    transport.connect()
    responder = RecordingResponder(ResponderPolicy(min_delay_s=min_delay_s))
    service = ResponderService(transport, responder)
    service.start()
    return Service(responder, service, transport)


@pytest.fixture
def dd(mosquitto: Mosquitto) -> Iterator[Service]:
    svc = start_service(mosquitto)
    try:
        yield svc
    finally:
        svc.service.stop()
        svc.transport.disconnect()


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    state: Path
    log: Path
    ids: list[int] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        path = self.state / "status.json"
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def counter(self, name: str) -> Any:
        return (self.status().get("counters") or {}).get(name, 0)

    def logtext(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            assert self.proc.poll() is None, (
                f"agent exited {self.proc.returncode}:\n{self.logtext()}"
            )
            time.sleep(0.05)
        pytest.fail(f"condition not met in {timeout} s; agent log:\n{self.logtext()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def agent_args(pki: Pki, port: int, *extra: str, name: str = "thing1") -> list[str]:
    cert, key = pki.client(name)
    return [
        "--endpoint",
        "localhost",
        "--port",
        str(port),
        "--rootCA",
        str(pki.ca),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "-id",
        "thing1",
        "-i",
        "1",
        "--allow-short-interval",
        "--splay",
        "0",
        "--log-level",
        "info",
        "--proc-root",
        str(proc_fixture("gateway_dualstack")),
        *extra,
    ]


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(
        args: list[str], env: Optional[dict[str, str]] = None, state: Optional[Path] = None
    ) -> AgentProcess:
        state = state or tmp_path / f"state{len(started)}"
        log = tmp_path / f"agent{len(started)}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "defender_agent", "run", "--state-dir", str(state), *args],
                stdout=subprocess.DEVNULL,
                stderr=sink,
                env={**os.environ, **(env or {})},
            )
        agent = AgentProcess(proc, state, log)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(signal.SIGKILL)


@pytest.mark.parametrize(("fmt", "names"), [("json", []), ("cbor", ["--short-names"])])
def test_reports_are_accepted_and_counted(
    pki: Pki,
    mosquitto: Mosquitto,
    dd: Service,
    run_agent: Callable[..., AgentProcess],
    fmt: str,
    names: list[str],
) -> None:
    agent = run_agent(agent_args(pki, mosquitto.port, "--format", fmt, *names))
    agent.wait(lambda: agent.counter("accepted") >= 3)
    assert agent.stop() == 0
    status = agent.status()
    c = status["counters"]
    assert c["accepted"] >= 3 and c["rejected"] == {} and c["unknown_replies"] == 0
    assert c["dropped"] == 0 and c["invalid"] == 0
    assert status["topic"] == f"$aws/things/thing1/defender/metrics/{fmt}"
    assert len(dd.responder.accepted) == len(set(dd.responder.accepted)) >= 3
    log = agent.logtext()
    assert "connected to localhost:" in log and "accepted" in log and "SIGTERM received" in log
    assert "Traceback" not in log


def test_throttled_reports_are_held(
    pki: Pki, mosquitto: Mosquitto, run_agent: Callable[..., AgentProcess]
) -> None:
    svc = start_service(mosquitto, min_delay_s=1.5)
    try:
        agent = run_agent(agent_args(pki, mosquitto.port))
        agent.wait(lambda: agent.counter("held") >= 1 and agent.counter("accepted") >= 2)
        assert agent.stop() == 0
    finally:
        svc.service.stop()
        svc.transport.disconnect()
    c = agent.status()["counters"]
    assert c["rejected"].get("Throttled", 0) >= 1
    assert c["last_rejection"]["code"] == "Throttled"
    assert "rejected: Throttled" in agent.logtext()


def test_invalid_payload_rejections_are_logged_at_error(
    pki: Pki, mosquitto: Mosquitto, run_agent: Callable[..., AgentProcess]
) -> None:
    # a responder whose policy accepts no version at all: every report is InvalidPayload
    from defender_agent.report.validate import ValidationPolicy

    assert mosquitto.plain is not None
    transport = MqttTransport(
        MqttSettings(
            endpoint="127.0.0.1", port=mosquitto.plain, client_id="dd-strict", use_tls=False
        )
    )
    transport.connect()
    strict = Responder(
        ResponderPolicy(
            min_delay_s=0, validation=ValidationPolicy(accepted_versions=frozenset({"9.9"}))
        )
    )
    service = ResponderService(transport, strict)
    service.start()
    try:
        agent = run_agent(agent_args(pki, mosquitto.port))
        agent.wait(lambda: (agent.counter("rejected") or {}).get("InvalidPayload", 0) >= 2)
        assert agent.stop() == 0
    finally:
        service.stop()
        transport.disconnect()
    assert (
        "error: report" in agent.logtext()
        and "InvalidPayload: Malformed metrics report" in agent.logtext()
    )


def test_broker_restart_mid_run(
    pki: Pki, mosquitto: Mosquitto, dd: Service, run_agent: Callable[..., AgentProcess]
) -> None:
    agent = run_agent(agent_args(pki, mosquitto.port))
    agent.wait(lambda: agent.counter("accepted") >= 2)
    mosquitto.kill()
    time.sleep(2.5)
    before = agent.counter("accepted")
    mosquitto.start()
    agent.wait(lambda: agent.counter("accepted") >= before + 2, timeout=30)
    assert agent.proc.poll() is None
    assert agent.stop() == 0
    ids = dd.responder.accepted
    assert len(ids) == len(set(ids)), "a report id was delivered twice"
    assert ids == sorted(ids)
    log = agent.logtext()
    # one line for each change of the link (the transport's), not one more from the agent
    assert "MQTT link is down" in log and "MQTT link is up again" in log
    assert "connection lost" not in log and "connection restored" not in log


def test_broker_down_at_start(
    pki: Pki, mosquitto: Mosquitto, run_agent: Callable[..., AgentProcess]
) -> None:
    mosquitto.stop()
    agent = run_agent(agent_args(pki, mosquitto.port))
    agent.wait(lambda: "retrying in" in agent.logtext(), timeout=10)
    time.sleep(2)
    assert agent.proc.poll() is None
    mosquitto.start()
    svc = start_service(mosquitto)
    try:
        agent.wait(lambda: agent.counter("accepted") >= 1, timeout=40)
    finally:
        svc.service.stop()
        svc.transport.disconnect()
    assert agent.stop() == 0
    assert agent.counter("dropped") >= 1  # reports built while offline were dropped, not queued
    assert "connection refused" in agent.logtext().lower()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"--cert": "expired"}, "expired"),
        ({"--key": "WRONG"}, "does not belong to certificate"),
        ({"--cert": "/nonexistent/cert.pem"}, "/nonexistent/cert.pem"),
        ({"--rootCA": "GARBAGE"}, "CA"),
    ],
)
def test_bad_tls_files_fail_fast_with_one_line(
    pki: Pki, mosquitto: Mosquitto, tmp_path: Path, change: dict[str, str], fragment: str
) -> None:
    args = agent_args(pki, mosquitto.port)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    special = {
        "expired": str(pki.client("expired")[0]),
        "WRONG": str(pki.wrong_key),
        "GARBAGE": str(garbage),
    }
    for flag, value in change.items():
        if value == "expired":
            args[args.index("--key") + 1] = str(pki.client("expired")[1])
        args[args.index(flag) + 1] = special.get(value, value)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "defender_agent", "run", "--state-dir", str(tmp_path / "s"), *args],
        capture_output=True,
        timeout=30,
        check=False,
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert time.monotonic() - start < 10
    assert fragment in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


@pytest.mark.slow
def test_wrong_ca_is_reported_and_retried_without_hanging(
    pki: Pki, mosquitto: Mosquitto, run_agent: Callable[..., AgentProcess]
) -> None:
    args = agent_args(pki, mosquitto.port)
    args[args.index("--rootCA") + 1] = str(pki.other_ca)
    agent = run_agent(args)
    agent.wait(lambda: "retrying in" in agent.logtext(), timeout=60)
    assert "negotiation failed" in agent.logtext().lower()
    assert agent.stop() == 0


def test_alpn_on_a_443_style_listener(
    pki: Pki, mosquitto: Mosquitto, dd: Service, run_agent: Callable[..., AgentProcess]
) -> None:
    with AlpnFront(pki, mosquitto.port) as front:
        agent = run_agent(agent_args(pki, front.port), env={"DEFENDER_AGENT_ALPN": "true"})
        agent.wait(lambda: agent.counter("accepted") >= 2)
        assert agent.stop() == 0
        assert front.accepted >= 1 and front.refused == 0
        without = run_agent(agent_args(pki, front.port), env={"DEFENDER_AGENT_ALPN": "false"})
        without.wait(lambda: "retrying in" in without.logtext())
        assert without.stop() == 0
        assert front.refused >= 1


def test_websocket_with_sigv4(
    pki: Pki, mosquitto: Mosquitto, dd: Service, run_agent: Callable[..., AgentProcess]
) -> None:
    creds = {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-for-tests",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with SigV4WebSocketFront(
        pki, mosquitto.port, "AKIDEXAMPLE", "s3cr3t-for-tests", "eu-west-1"
    ) as front:
        args = [
            "--endpoint",
            "localhost",
            "--port",
            str(front.port),
            "--rootCA",
            str(pki.ca),
            "-w",
            "-se",
            "eu-west-1",
            "-id",
            "thing1",
            "-i",
            "1",
            "--allow-short-interval",
            "--splay",
            "0",
            "--proc-root",
            str(proc_fixture("gateway_dualstack")),
        ]
        agent = run_agent(args, env=creds)
        agent.wait(lambda: agent.counter("accepted") >= 2)
        assert agent.stop() == 0
        assert front.accepted >= 1
        bad = run_agent(args, env={**creds, "AWS_SECRET_ACCESS_KEY": "wrong"})
        bad.wait(lambda: "retrying in" in bad.logtext())
        assert bad.stop() == 0
        assert front.rejected >= 1
        assert "s3cr3t" not in agent.logtext() + bad.logtext()


def test_through_an_http_connect_proxy_with_auth(
    pki: Pki, mosquitto: Mosquitto, dd: Service, run_agent: Callable[..., AgentProcess]
) -> None:
    with ConnectProxy(auth=("agent", "pr0xy-pass")) as proxy:
        agent = run_agent(
            agent_args(
                pki,
                mosquitto.port,
                "-ph",
                "127.0.0.1",
                "-pp",
                str(proxy.port),
                "--proxy-username",
                "agent",
                "--proxy-password",
                "pr0xy-pass",
                "--log-level",
                "debug",
            )
        )
        agent.wait(lambda: agent.counter("accepted") >= 2)
        assert agent.stop() == 0
        assert proxy.tunnels >= 1
        assert "pr0xy-pass" not in agent.logtext()


def test_mqtt5(
    pki: Pki, mosquitto: Mosquitto, dd: Service, run_agent: Callable[..., AgentProcess]
) -> None:
    agent = run_agent(agent_args(pki, mosquitto.port, "--mqtt5"))
    agent.wait(lambda: agent.counter("accepted") >= 2)
    assert agent.stop() == 0


def test_restart_keeps_ids_increasing_and_reports_an_interval_apart(
    pki: Pki,
    mosquitto: Mosquitto,
    dd: Service,
    run_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    state = tmp_path / "shared-state"
    first = run_agent(agent_args(pki, mosquitto.port, "-i", "2"), state=state)
    first.wait(lambda: first.counter("accepted") >= 1)
    assert first.stop() == 0
    n = len(dd.responder.accepted)
    second = run_agent(agent_args(pki, mosquitto.port, "-i", "2"), state=state)
    second.wait(lambda: len(dd.responder.accepted) >= n + 1, timeout=20)
    assert second.stop() == 0
    assert "resuming with the baseline saved" in second.logtext()
    ids = dd.responder.accepted
    assert ids == sorted(ids) and len(ids) == len(set(ids))


CUSTOM_CONFIG = """
[custom_metrics]
enabled = ["cpu_usage", "memory_usage", "uptime", "load_average", "interface_addresses"]

[[custom_metrics.exec]]
name = "app_states"
command = ["printf", "idle\\nrunning/ok\\n"]
type = "string-list"

[[custom_metrics.exec]]
name = "upstreams"
command = ["printf", "192.0.2.1\\n2001:db8::1\\n"]
type = "ip-address-list"

[[custom_metrics.exec]]
name = "queue_depth"
command = ["echo", "42"]
type = "number"
"""


@pytest.mark.parametrize(("fmt", "names"), [("json", []), ("cbor", ["--short-names"])])
def test_all_four_custom_metric_types_are_accepted(
    pki: Pki,
    mosquitto: Mosquitto,
    dd: Service,
    run_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    fmt: str,
    names: list[str],
) -> None:
    import cbor2

    config = tmp_path / "custom.toml"
    config.write_text(CUSTOM_CONFIG)
    args = agent_args(pki, mosquitto.port, "--config", str(config), "--format", fmt, *names)
    args[args.index("--proc-root") + 1] = "/proc"  # the built-ins read the live host
    agent = run_agent(args)
    agent.wait(lambda: agent.counter("accepted") >= 2)
    assert agent.stop() == 0
    _topic, payload = dd.responder.payloads[-1]
    doc = cbor2.loads(payload) if fmt == "cbor" else json.loads(payload)
    custom = doc["cmet" if names else "custom_metrics"]
    kinds = {key for values in custom.values() for key in values[0]}
    assert kinds == {"number", "number_list", "string_list", "ip_list"}
    assert custom["upstreams"] == [{"ip_list": ["192.0.2.1", "2001:db8::1"]}]
    assert custom["app_states"] == [{"string_list": ["idle", "running/ok"]}]
    assert custom["queue_depth"] == [{"number": 42}]
    assert 0 <= custom["cpu_usage"][0]["number"] <= 100
    assert agent.counter("rejected") == {}


def test_replies_cut_off_behind_the_agents_back_are_noticed_and_recovered(
    pki: Pki, mosquitto: Mosquitto, dd: Service, run_agent: Callable[..., AgentProcess]
) -> None:
    """Issue 9 item 6: the broker stops delivering the agent's replies while the link stays
    up (its ACL loses the read rules, reloaded with SIGHUP). The agent says so in its status,
    subscribes again, then reconnects; once the broker delivers again, replies are back."""
    from tests.mqtt_infra.broker import ACL

    acl = mosquitto.directory / "aws_acl.conf"
    agent = run_agent(agent_args(pki, mosquitto.port))
    agent.wait(lambda: agent.counter("accepted") >= 2)
    assert mosquitto.pid is not None
    acl.write_text("\n".join(line for line in ACL.splitlines() if "pattern read" not in line))
    os.kill(mosquitto.pid, signal.SIGHUP)
    agent.wait(lambda: agent.status().get("replies_missing") is True, timeout=20)
    agent.wait(lambda: "got no reply: reconnecting" in agent.logtext(), timeout=20)
    text = agent.logtext()
    assert "got no reply: subscribing to the replies again" in text
    assert agent.status()["counters"]["unanswered_in_a_row"] >= 3
    status = subprocess.run(
        [sys.executable, "-m", "defender_agent", "status", "--state-dir", str(agent.state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "problem: replies missing" in status.stdout, status.stdout

    acl.write_text(ACL)
    os.kill(mosquitto.pid, signal.SIGHUP)
    before = agent.counter("accepted")
    agent.wait(lambda: agent.counter("accepted") > before + 1, timeout=40)
    agent.wait(lambda: agent.status().get("replies_missing") is False)
    assert agent.stop() == 0
    assert "replies arrive again" in agent.logtext()
