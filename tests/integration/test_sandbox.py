"""`defender-agent sandbox` as a real process, and its strict embedded broker in-process.

The sandbox runs on this machine (it collects from the live /proc) with its own state
directory under tmp_path; the embedded broker listens on 127.0.0.1 only. Tests of the
embedded broker talk to it with paho (pure Python: TLS failures show at once, unlike
awscrt's s2n "blinding" delay).

The embedded broker needs the ``sandbox`` extra (amqtt 0.12.1, Python 3.10+, and
cryptography): those tests skip without it. ``--broker mqtt://...`` needs neither.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shlex
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.mqtt_infra.broker import Mosquitto
from tests.mqtt_infra.pki import Pki

pytestmark = pytest.mark.live  # the sandbox collects from this machine

HAVE_AMQTT = importlib.util.find_spec("amqtt") is not None
HAVE_CRYPTOGRAPHY = importlib.util.find_spec("cryptography") is not None
needs_embedded = pytest.mark.skipif(
    not (HAVE_AMQTT and HAVE_CRYPTOGRAPHY),
    reason="the embedded broker needs the 'sandbox' extra (amqtt 0.12.1 on Python 3.10+, "
    "cryptography)",
)

THING = "sandbox-test"
WAIT_S = 10.0
# the size is "812 B" or, with many listening ports, "1.2 KB"
REPORT = re.compile(r"^report (\d+) \(([\d.]+ K?B) (json|cbor)\) → (.+)$", re.M)
REPLY = re.compile(r"^reply  (\d+) ← (.+)$", re.M)


def sandbox_command() -> list[str]:
    """``python -m defender_agent sandbox``."""
    return [sys.executable, "-m", "defender_agent", "sandbox"]


def sandbox_args(state: Path, *extra: str) -> list[str]:
    return [*sandbox_command(), "--state-dir", str(state), "--thing-name", THING, *extra]


def run_sandbox(state: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sandbox_args(state, *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ.copy(),
    )


def check_exchange(out: str, count: int, fmt: str) -> list[int]:
    """``count`` report lines, each followed by its ACCEPTED reply; returns the report ids."""
    reports = REPORT.findall(out)
    replies = REPLY.findall(out)
    assert len(reports) == count, out
    assert len(replies) == count, out
    ids = [int(report_id) for report_id, _size, _fmt, _summary in reports]
    assert [int(report_id) for report_id, _ in replies] == ids, out
    assert all(text == "ACCEPTED" for _, text in replies), out
    assert all(got == fmt for _id, _size, got, _summary in reports), out
    assert all("tcp port" in summary and " in / +" in summary for *_, summary in reports), out
    assert ids == sorted(ids) and len(set(ids)) == count, out
    # each reply comes after its report
    for report_id in ids:
        assert out.index(f"report {report_id} ") < out.index(f"reply  {report_id} "), out
    return ids


def stored_reports(db: Path) -> dict[str, int]:
    from defender_agent.service.storage import open_store

    with open_store(str(db), create=False) as store:
        return {thing.name: thing.reports for thing in store.things()}


# --------------------------------------------------------------------------- the command
@needs_embedded
@pytest.mark.parametrize(
    ("extra", "fmt"),
    [((), "json"), (("--format", "cbor", "--short-names", "--include-custom-metrics"), "cbor")],
    ids=["json-long", "cbor-short-custom"],
)
def test_reports_are_answered_and_stored_then_it_exits_0(
    tmp_path: Path, extra: tuple[str, ...], fmt: str
) -> None:
    state = tmp_path / "sandbox"
    started = time.monotonic()
    done = run_sandbox(state, "--reports", "2", "--interval", "1", *extra)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert done.stderr == "", done.stderr  # warnings and up only: nothing went wrong
    check_exchange(done.stdout, 2, fmt)
    if "--include-custom-metrics" in extra:
        assert "1 custom metric" in done.stdout
    assert "stopped: 2 reports, 2 accepted, 0 rejected" in done.stdout
    db = state / "service.sqlite3"
    assert f"defender-agent data things --db {db}" in done.stdout
    assert stored_reports(db) == {THING: 2}
    assert elapsed < 20, elapsed
    # the PKI: private directory and keys, reused by the next run
    assert (state / "pki").stat().st_mode & 0o777 == 0o700
    keys = sorted((state / "pki").glob("*.key"))
    assert [key.name for key in keys] == ["ca.key", "server.key", "service.key", "thing.key"]
    assert all(key.stat().st_mode & 0o777 == 0o600 for key in keys)
    # the agent's configuration, as `defender-agent run --config` takes it
    toml = (state / "agent.toml").read_text()
    assert f'thing_name = "{THING}"' in toml
    assert "allow_short_interval = true" in toml


@needs_embedded
def test_a_restart_reuses_the_pki_and_starts_fast(tmp_path: Path) -> None:
    state = tmp_path / "sandbox"
    first = run_sandbox(state, "--reports", "1", "--interval", "1")
    assert first.returncode == 0, first.stderr
    pki = {path.name: path.read_bytes() for path in (state / "pki").iterdir()}

    with subprocess.Popen(
        sandbox_args(state, "--interval", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            started = time.monotonic()
            assert proc.stdout is not None
            # the header is printed once broker, service and agent run; Detect may speak
            # first: the first run's starter profile is refreshed from the ports listening
            # now (other tests open some), which invalidates a violation of the old one
            header = proc.stdout.readline()
            while header.startswith("detect: "):
                header = proc.stdout.readline()
            startup = time.monotonic() - started
            assert header.startswith("defender-agent sandbox: thing "), header
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert startup < 3.0, f"startup took {startup:.2f} s"
    assert {path.name: path.read_bytes() for path in (state / "pki").iterdir()} == pki
    assert "stopped:" in out


@needs_embedded
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_it_cleanly(tmp_path: Path, sig: int) -> None:
    proc = subprocess.Popen(
        sandbox_args(tmp_path / "sandbox", "--interval", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "the sandbox ended early"
            lines.append(line)
            if line.startswith("reply "):
                break
        proc.send_signal(sig)
        stopping = time.monotonic()
        out, err = proc.communicate(timeout=30)
        stop_s = time.monotonic() - stopping
    finally:
        proc.kill()
        proc.wait()
    out = "".join(lines) + out
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "← ACCEPTED" in out
    assert "stopped: " in out
    assert stop_s < 10, stop_s


@needs_embedded
def test_rejections_are_shown_and_make_reports_n_exit_1(tmp_path: Path) -> None:
    import io

    from defender_agent.sandbox.app import Sandbox, SandboxConfig

    out = io.StringIO()
    config = SandboxConfig(
        state_dir=tmp_path / "sandbox", interval=1, reports=2, throttle_s=60, thing_name=THING
    )
    assert Sandbox(config, out).run() == 1
    text = out.getvalue()
    replies = REPLY.findall(text)
    assert [status for _, status in replies] == ["ACCEPTED", "REJECTED Throttled"]
    assert "stopped: 2 reports, 1 accepted, 1 rejected" in text
    assert stored_reports(config.store_path) == {THING: 1}


def test_an_existing_plain_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    assert mosquitto.plain is not None
    state = tmp_path / "sandbox"
    done = run_sandbox(
        state,
        "--broker",
        f"mqtt://127.0.0.1:{mosquitto.plain}",
        "--reports",
        "2",
        "--interval",
        "1",
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    check_exchange(done.stdout, 2, "json")
    assert f"mqtt://127.0.0.1:{mosquitto.plain}" in done.stdout
    assert not (state / "pki").exists()  # plain TCP: no PKI needed
    assert stored_reports(state / "service.sqlite3") == {THING: 2}


def test_an_existing_tls_broker_with_the_sandbox_pki(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    from defender_agent.sandbox.pki import ensure_pki
    from tests.mqtt_infra.broker import mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    state = tmp_path / "sandbox"
    made = ensure_pki(state / "pki", THING)  # what the sandbox makes, and then reuses
    broker_pki = Pki(
        dir=made.directory,
        ca=made.ca_cert,
        other_ca=made.ca_cert,
        server_cert=made.server.cert,
        server_key=made.server.key,
        wrong_key=made.server.key,
    )
    with Mosquitto(tmp_path / "mosquitto", broker_pki, acl=False) as mosquitto:
        done = run_sandbox(
            state,
            "--broker",
            f"mqtts://127.0.0.1:{mosquitto.port}",
            "--reports",
            "2",
            "--interval",
            "1",
        )
        log = mosquitto.log()
    assert done.returncode == 0, done.stderr + done.stdout
    check_exchange(done.stdout, 2, "json")
    assert f"u'{THING}'" in log or f"as {THING}" in log, log  # the thing's certificate
    assert "defender-service" in log


def test_an_unreachable_broker_is_one_line_in_words_and_exit_2(tmp_path: Path) -> None:
    from tests.mqtt_infra.broker import free_port

    port = free_port()
    done = run_sandbox(tmp_path / "sandbox", "--broker", f"mqtt://127.0.0.1:{port}", timeout=30)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"defender-agent: error: the service cannot reach the broker mqtt://127.0.0.1:{port} "
        f"(host 127.0.0.1, port {port}): connection refused: nothing listens there "
        "(AWS_IO_SOCKET_CONNECTION_REFUSED)"
    ), done.stderr


def _start_sandbox(state: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    """A sandbox process, and its header lines (read until the first-report line)."""
    proc = subprocess.Popen(
        sandbox_args(state, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    header: list[str] = []
    while not header or not header[-1].startswith("the first report"):
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            pytest.fail(f"the sandbox ended early: {header} {proc.communicate()[1]}")
        header.append(line.rstrip("\n"))
    return proc, header


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    return out, err


def test_a_second_sandbox_on_the_same_state_dir_refuses_naming_the_pid(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Two sandboxes would mix their report streams in one database (issue #8, item 3)."""
    state = tmp_path / "sandbox"
    broker = f"mqtt://127.0.0.1:{mosquitto.plain}"
    first, header = _start_sandbox(state, "--broker", broker, "--interval", "60")
    try:
        removal = f"rm -rf {shlex.quote(str(state))}"
        assert f"  state    all of the above is in {state}; remove it: {removal}" in header
        second = run_sandbox(state, "--broker", broker, "--interval", "60", timeout=30)
        assert second.returncode == 2, second.stderr
        in_use = f"state directory {state} is in use by pid {first.pid}; stop it or use --state-dir"
        assert second.stderr.strip().splitlines() == [f"defender-agent: error: {in_use}"]
        assert second.stdout == ""
    finally:
        _stop(first)
    # once the first one is gone, the directory is free again
    again, _header = _start_sandbox(state, "--broker", broker, "--interval", "60")
    _stop(again)


def test_the_banner_says_when_the_first_report_comes_and_counts_in_words(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A fresh state waits one interval for the baseline; a restart may resume it (#14)."""
    state = tmp_path / "sandbox"
    broker = f"mqtt://127.0.0.1:{mosquitto.plain}"
    fresh = run_sandbox(state, "--broker", broker, "--reports", "1", "--interval", "1")
    assert fresh.returncode == 0, fresh.stderr
    assert "the first report follows the baseline in 1 s; stops after 1 reply\n" in fresh.stdout
    assert "stopped: 1 report, 1 accepted, 0 rejected" in fresh.stdout
    assert (state / "agent" / "baseline.json").exists()
    restarted = run_sandbox(state, "--broker", broker, "--reports", "2", "--interval", "1")
    assert restarted.returncode == 0, restarted.stderr
    assert (
        "the first report within 1 s (sooner when the agent resumes the baseline it saved); "
        "stops after 2 replies\n"
    ) in restarted.stdout
    assert "follows the baseline" not in restarted.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--broker", "http://127.0.0.1:1883"), "expected mqtt://HOST:PORT"),
        (("--thing-name", "a/b"), "--thing-name"),
        (("--thing-name", "defender-service"), "the service's identity"),
        (("--interval", "0"), "--interval"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    done = run_sandbox(tmp_path / "sandbox", *args, timeout=30)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# --------------------------------------------------------------------------- the broker
class Client:
    """A paho MQTT 3.1.1 client on its own network thread, with what it saw."""

    def __init__(
        self,
        port: int,
        client_id: str,
        ca: Path,
        cert: Optional[Path] = None,
        key: Optional[Path] = None,
        clean_session: bool = True,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.connack: queue.Queue[str] = queue.Queue()
        self.suback: queue.Queue[list[int]] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.disconnected = queue.Queue[str]()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
        )
        context = ssl.create_default_context(cafile=str(ca))
        if cert is not None and key is not None:
            context.load_cert_chain(str(cert), str(key))
        client.tls_set_context(context)
        client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(str(rc))
        client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.suback.put(
            [int(code.value) for code in codes]
        )
        client.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, bytes(msg.payload)))
        client.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnected.put(str(rc))
        self.client = client
        self.port = port

    def connect(self) -> Optional[str]:
        """The CONNACK's reason, or None when the connection ended without one."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except OSError:  # ssl.SSLError included
            return None
        self.client.loop_start()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                return self.connack.get(timeout=0.05)
            except queue.Empty:
                if not self.disconnected.empty():
                    return None
        return None

    def subscribe(self, topic: str) -> list[int]:
        self.client.subscribe(topic, qos=1)
        return self.suback.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def next_message(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=WAIT_S)

    def no_message(self, wait_s: float = 0.5) -> bool:
        time.sleep(wait_s)
        return self.messages.empty()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def sandbox_pki(tmp_path: Path) -> Any:
    pytest.importorskip("cryptography")
    from defender_agent.sandbox.pki import ensure_pki

    return ensure_pki(tmp_path / "pki", "thing1")


@pytest.fixture
def embedded(sandbox_pki: Any) -> Iterator[Any]:
    if not HAVE_AMQTT:
        pytest.skip("the embedded broker needs amqtt 0.12.1 (the 'sandbox' extra)")
    from defender_agent.sandbox.broker import BrokerSettings, EmbeddedBroker

    broker = EmbeddedBroker(
        BrokerSettings(sandbox_pki.ca_cert, sandbox_pki.server.cert, sandbox_pki.server.key)
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def clients(embedded: Any, sandbox_pki: Any, tmp_path: Path) -> Iterator[Any]:
    """``make(name)``: a connected client with a sandbox certificate for CN ``name``."""
    from defender_agent.sandbox.pki import issue_client

    made: list[Client] = []

    def make(name: str, client_id: Optional[str] = None, clean_session: bool = True) -> Client:
        if name == "thing1":
            pair = sandbox_pki.thing
        elif name == "defender-service":
            pair = sandbox_pki.service
        else:
            pair = issue_client(sandbox_pki, name, tmp_path / "clients")
        client = Client(
            embedded.port,
            client_id or name,
            sandbox_pki.ca_cert,
            pair.cert,
            pair.key,
            clean_session,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


REPORT_TOPIC = "$aws/things/thing1/defender/metrics/json"


def test_the_embedded_broker_has_one_listener_on_loopback(embedded: Any) -> None:
    assert embedded.bound == (("127.0.0.1", embedded.port),)
    assert embedded.url == f"mqtts://127.0.0.1:{embedded.port}"


def test_a_client_without_a_certificate_is_refused(embedded: Any, sandbox_pki: Any) -> None:
    client = Client(embedded.port, "thing1", sandbox_pki.ca_cert)
    try:
        assert client.connect() is None
    finally:
        client.close()


def test_a_client_from_another_ca_is_refused(embedded: Any, sandbox_pki: Any, pki: Pki) -> None:
    for name in ("thing1", "rogue"):  # the test PKI's CA, and its unrelated CA
        cert, key = pki.client(name)
        client = Client(embedded.port, name, sandbox_pki.ca_cert, cert, key)
        try:
            assert client.connect() is None, name
        finally:
            client.close()


def test_the_client_id_must_be_the_certificates_cn(clients: Any) -> None:
    assert clients("thing1", client_id="thing2").connect() == "Not authorized"
    assert clients("thing1").connect() == "Success"


@pytest.mark.parametrize("clean_session", [False, True], ids=["kept-session", "clean-session"])
def test_a_refused_impostor_does_not_end_the_real_clients_session(
    clients: Any, clean_session: bool
) -> None:
    """Issue 9 item 6: another thing's certificate claiming thing1's client id is refused
    before thing1's session is touched: thing1 stays connected and keeps its replies."""
    service = clients("defender-service")
    agent = clients("thing1", clean_session=clean_session)
    assert service.connect() == agent.connect() == "Success"
    assert agent.subscribe(f"{REPORT_TOPIC}/accepted") == [1]
    for impostor_clean in (True, False):
        impostor = clients("thing2", client_id="thing1", clean_session=impostor_clean)
        assert impostor.connect() == "Not authorized"
        impostor.close()
    for number in range(3):
        payload = json.dumps({"status": "ACCEPTED", "n": number}).encode()
        service.publish(f"{REPORT_TOPIC}/accepted", payload)
        assert agent.next_message() == (f"{REPORT_TOPIC}/accepted", payload)
    assert agent.disconnected.empty()


def test_aws_topics_are_delivered_both_ways(clients: Any) -> None:
    service, thing = clients("defender-service"), clients("thing1")
    assert service.connect() == thing.connect() == "Success"
    assert service.subscribe("$aws/things/+/defender/metrics/+") == [1]
    assert thing.subscribe(f"{REPORT_TOPIC}/accepted") == [1]
    thing.publish(REPORT_TOPIC, b'{"report": 1}')
    assert service.next_message() == (REPORT_TOPIC, b'{"report": 1}')
    service.publish(f"{REPORT_TOPIC}/accepted", b'{"status": "ACCEPTED"}')
    assert thing.next_message() == (f"{REPORT_TOPIC}/accepted", b'{"status": "ACCEPTED"}')


def test_a_thing_may_not_publish_or_subscribe_for_another(clients: Any) -> None:
    service, thing1, thing2 = clients("defender-service"), clients("thing1"), clients("thing2")
    assert service.connect() == thing1.connect() == thing2.connect() == "Success"
    assert service.subscribe("$aws/things/+/defender/metrics/+") == [1]
    # subscribing to another thing's replies: refused in the SUBACK
    assert thing1.subscribe("$aws/things/thing2/defender/metrics/json/accepted") == [0x80]
    assert thing1.subscribe("$aws/things/+/defender/metrics/json/accepted") == [0x80]
    assert thing1.subscribe("$aws/#") == [0x80]
    # thing2 may publish its own report
    thing2.publish("$aws/things/thing2/defender/metrics/cbor", b"\xa0")
    assert service.next_message() == ("$aws/things/thing2/defender/metrics/cbor", b"\xa0")
    # thing1 publishing for thing2: not delivered, and thing1 is disconnected (as AWS IoT does)
    thing1.publish("$aws/things/thing2/defender/metrics/json", b"{}")
    assert thing1.disconnected.get(timeout=WAIT_S)
    assert service.no_message()
    # nor anything outside its Device Defender topics
    thing2.publish("$aws/things/thing2/shadow/update", b"{}")
    assert thing2.disconnected.get(timeout=WAIT_S)
    assert service.no_message()
    thing3 = clients("thing3")
    assert thing3.connect() == "Success"
    thing3.publish("plain/topic", b"{}")
    assert thing3.disconnected.get(timeout=WAIT_S)


def test_the_service_identity_may_use_all_of_aws(clients: Any) -> None:
    service, watcher = clients("defender-service"), clients("thing1")
    assert service.connect() == watcher.connect() == "Success"
    assert service.subscribe("$aws/#") == [1]
    assert watcher.subscribe(f"{REPORT_TOPIC}/rejected") == [1]
    service.publish(f"{REPORT_TOPIC}/rejected", json.dumps({"status": "REJECTED"}).encode())
    assert service.next_message()[0] == f"{REPORT_TOPIC}/rejected"
    assert watcher.next_message()[0] == f"{REPORT_TOPIC}/rejected"


def test_stop_ends_the_thread_and_closes_the_port(sandbox_pki: Any) -> None:
    if not HAVE_AMQTT:
        pytest.skip("the embedded broker needs amqtt 0.12.1 (the 'sandbox' extra)")
    import socket
    import threading

    from defender_agent.sandbox.broker import BrokerSettings, EmbeddedBroker

    broker = EmbeddedBroker(
        BrokerSettings(sandbox_pki.ca_cert, sandbox_pki.server.cert, sandbox_pki.server.key)
    )
    started = time.monotonic()
    broker.start()
    startup = time.monotonic() - started
    port = broker.port
    broker.stop()
    broker.stop()  # idempotent
    assert startup < 1.0, startup
    assert not [t for t in threading.enumerate() if t.name == "sandbox-broker"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
