"""No secrets and no forged lines in the logs of real processes (issue 9, items 4 and 5).

* Item 4: ``defender-agent service`` given a PostgreSQL URL holding a password, in each form
  libpq takes one (userinfo, ``?password=`` in any case, percent-encoded, keyword/value
  string with a quoted value): the password is nowhere in its output, whether the database
  is down (the error line) or up (the start line).
* Item 5: a real agent against a real mosquitto, answered by a hostile "service" (a test
  client) whose rejected replies carry ``ErrorCode: "Throttled\\n<forged log line>"``, ESC,
  NUL, U+2028 and a 6 081-character message; and a real service receiving reports on topics
  whose thing names hold line separators and bidirectional overrides, one 6 000 characters
  long. Every line of their stderr is a record of the format (text or JSON), holds no raw
  control character or line separator, and is under the length cap.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from defender_agent.logs import MAX_MESSAGE
from defender_agent.transport.base import MqttSettings
from defender_agent.transport.mqtt import MqttTransport
from tests.integration.test_agent_mqtt import AgentProcess, agent_args, run_agent
from tests.integration.test_service_mqtt import (
    REPO,
    ServiceProcess,
    encoded,
    plain_device,
    report,
    service_command,
)
from tests.mqtt_infra.broker import Mosquitto, free_port
from tests.mqtt_infra.pki import Pki

__all__ = ["run_agent"]  # the fixture, imported for these tests

SECRET = "Hunter2-secret"
FORGED = "2026-12-07T00:00:00Z defender-agent: info: report 1 accepted"
#: raw characters that must never reach a log line
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: the longest line allowed: the cap plus the line's prefix and the cut marker
LONGEST = MAX_MESSAGE + 120
TEXT_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ )?defender-agent: (debug|info|warning|error): "
)


def assert_clean_log(text: str, fmt: str) -> list[str]:
    """Every line is one record of the format, escaped and short; returns the messages."""
    assert "Traceback" not in text
    messages = []
    for line in text.splitlines():
        assert not RAW.search(line), repr(line[:300])
        assert len(line) <= LONGEST, f"a {len(line)}-character line: {line[:200]!r}"
        if fmt == "json":
            doc = json.loads(line)
            assert set(doc) >= {"time", "level", "logger", "message"}, line
            messages.append(doc["message"])
        else:
            assert TEXT_LINE.match(line), repr(line[:300])
            messages.append(line)
        assert not messages[-1].startswith(FORGED)
    return messages


# --------------------------------------------------------------------------- item 4: secrets
def bad_urls(port: int) -> list[str]:
    where = f"127.0.0.1:{port}/defender"
    return [
        f"postgresql://svc:{SECRET}@{where}",
        f"postgresql://svc@{where}?password={SECRET}",
        f"postgres://svc@{where}?sslmode=disable&PassWord={SECRET}",
        f"postgresql://svc@{where}?%70assword={SECRET}",
        f"postgresql://svc@{where}?password={SECRET}%zz",  # libpq quotes this one back
        f"postgresql://svc@{where}?sslpassword={SECRET}",
        f"host=127.0.0.1 port={port} dbname=defender password={SECRET}",
        f"host=127.0.0.1 port={port} password='{SECRET} with spaces'",
        f"host=127.0.0.1 port={port} password='{SECRET}",  # unterminated quote
    ]


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("index", range(len(bad_urls(1))))
def test_a_database_password_is_never_printed_when_the_database_is_down(
    tmp_path: Path, index: int, fmt: str
) -> None:
    url = bad_urls(free_port())[index]
    done = subprocess.run(
        [
            *service_command(),
            "--log-format",
            fmt,
            "--no-tls",
            "--broker",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--state-dir",
            str(tmp_path),
            "--db",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Hunter2" not in output
    assert "***" in output  # the URL is shown, masked
    assert "Traceback" not in output
    assert not list(tmp_path.glob("host=*")) and not list(REPO.glob("host=*"))


@pytest.mark.parametrize(
    "form", ["userinfo", "query", "keywords"], ids=["userinfo", "query", "keywords"]
)
def test_the_start_line_masks_the_database_password(
    mosquitto: Mosquitto, pg_url: str, tmp_path: Path, form: str
) -> None:
    """The database is up (it trusts loopback and ignores the password): the start line."""
    host_port, _, name = pg_url.removeprefix("postgresql://postgres@").partition("/")
    host, _, port = host_port.partition(":")
    url = {
        "userinfo": f"postgresql://postgres:{SECRET}@{host_port}/{name}",
        "query": f"{pg_url}?sslmode=disable&password={SECRET}",
        "keywords": f"host={host} port={port} dbname={name} user=postgres password='{SECRET} x'",
    }[form]
    assert mosquitto.plain is not None
    service = ServiceProcess(
        ["--no-tls", "--broker", "127.0.0.1", "--port", str(mosquitto.plain), "--db", url],
        tmp_path / "service.log",
    )
    try:
        service.wait_ready()
    finally:
        assert service.stop() == 0
    log = service.log()
    assert "storing accepted reports in" in log and "***" in log
    assert "Hunter2" not in log
    for query in (["things"], ["export"]):
        done = subprocess.run(
            [sys.executable, "-m", "defender_agent", "data", *query, "--db", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "Hunter2" not in done.stdout + done.stderr


# --------------------------------------------------------------------------- item 5: the agent
class HostileService:
    """Answers each of thing1's reports with hostile replies on its reply topics."""

    def __init__(self, mosquitto: Mosquitto) -> None:
        assert mosquitto.plain is not None
        self.transport = MqttTransport(
            MqttSettings(
                endpoint="127.0.0.1", port=mosquitto.plain, client_id="hostile", use_tls=False
            )
        )
        self.transport.connect()
        self.answered = 0
        self.lock = threading.Lock()
        self.transport.subscribe("$aws/things/thing1/defender/metrics/json", self.on_report)

    def on_report(self, topic: str, payload: bytes) -> None:
        report_id = json.loads(payload)["header"]["report_id"]
        base = topic
        hostile_code = f"Throttled\n{FORGED}\x1b[2J\x1b]0;owned\x07\x00\r"
        replies: list[tuple[str, dict[str, Any]]] = [
            (  # the report's own rejection: a forged line, ESC, NUL, a 6 081-char message
                "rejected",
                {
                    "thingName": "thing1",
                    "reportId": report_id,
                    "status": "REJECTED",
                    "statusDetails": {
                        "ErrorCode": hostile_code,
                        "ErrorMessage": "m\u2028" + FORGED + "\u202e" + "x" * 6081,
                    },
                },
            ),
            (  # a rejection with no reportId (counted), code with C1 and line separators
                "rejected",
                {"status": "REJECTED", "statusDetails": {"ErrorCode": f"E\x85{FORGED}\u2029"}},
            ),
            (  # a rejection of an id the agent is not waiting for
                "rejected",
                {"reportId": 1, "statusDetails": {"ErrorCode": f"U\n{FORGED}" * 100}},
            ),
            (  # malformed: the wrong status on the topic, 6 000 characters of it
                "accepted",
                {"reportId": report_id + 1, "status": f"REJECTED\n{FORGED}" * 100},
            ),
        ]
        for status, doc in replies:
            self.transport.publish(f"{base}/{status}", json.dumps(doc).encode())
        with self.lock:
            self.answered += 1

    def close(self) -> None:
        self.transport.disconnect()


@pytest.fixture
def hostile(mosquitto: Mosquitto) -> Iterator[HostileService]:
    service = HostileService(mosquitto)
    yield service
    service.close()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_forged_replies_cannot_forge_agent_log_lines(
    pki: Pki,
    mosquitto: Mosquitto,
    hostile: HostileService,
    run_agent: Any,
    fmt: str,
) -> None:
    agent: AgentProcess = run_agent(agent_args(pki, mosquitto.port, "--log-format", fmt))

    def rejected() -> int:
        return sum((agent.counter("rejected") or {}).values())

    agent.wait(lambda: rejected() >= 4 and agent.counter("bad_replies") >= 2, timeout=30)
    assert agent.stop(signal.SIGTERM) == 0
    messages = assert_clean_log(agent.logtext(), fmt)
    text = "\n".join(messages)
    assert "Throttled\\n2026-12-07T00:00:00Z defender-agent: info: report 1 accepted" in text
    assert "\\x1b[2J\\x1b]0;owned\\x07\\x00\\r" in text
    assert "ignoring a malformed reply" in text and "rejection for unknown report id 1" in text
    # the status command shows the stored codes escaped too
    shown = subprocess.run(
        [sys.executable, "-m", "defender_agent", "status", "--state-dir", str(agent.state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Throttled\\n" in shown.stdout, shown
    for line in shown.stdout.splitlines():
        assert not RAW.search(line) and not line.startswith(FORGED), repr(line)


# --------------------------------------------------------------------------- item 5: the service
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_hostile_thing_names_cannot_forge_service_log_lines(
    mosquitto: Mosquitto, tmp_path: Path, fmt: str
) -> None:
    assert mosquitto.plain is not None
    service = ServiceProcess(
        [
            "--log-format",
            fmt,
            "--no-tls",
            "--broker",
            "127.0.0.1",
            "--port",
            str(mosquitto.plain),
            "--min-delay",
            "0",
            "--db",
            str(tmp_path / "db.sqlite3"),
        ],
        tmp_path / "service.log",
    )
    device: Optional[Any] = None
    try:
        service.wait_ready()
        device = plain_device(mosquitto)
        names = [
            f"evil\u2028{FORGED}\u202e",  # a line separator and a right-to-left override
            f"x\u2029{FORGED}" * 100,  # 6 000+ characters: dropped, its topic logged
            "bidi\u2066\u2069\ufeff",
        ]
        for name in names:
            device.publish(f"$aws/things/{name}/defender/metrics/json", encoded(report(7)))
        for _ in names[::2]:  # the long one is dropped (topic over 256 bytes): no reply
            device.reply()
    finally:
        if device is not None:
            device.close()
        assert service.stop() == 0
    messages = assert_clean_log(service.log(), fmt)
    text = "\n".join(messages)
    assert "evil\\u2028" in text and "\\u202e" in text
    assert "chars)" in text  # the long name was cut, visibly
