"""The Greengrass v1 Lambda handler, with a fake ``greengrasssdk`` (it only exists inside a v1 core).

These tests run on Python 3.8 (the v1 Lambda runtime; ``.ci/run`` runs this
directory there) and with the rest of the suite. The fake SDK records each
``publish`` and can fail; the core's routing of the replies is played by calling
:func:`function_handler` as the core does (the decoded JSON message, the topic in
the client context). The schedule runs on the simulated clock: 300 s intervals
pass at once.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import pytest

from defender_agent.errors import ConfigError, ReportDecodeError
from defender_agent.greengrass import v1
from tests.conftest import proc_fixture
from tests.sim_clock import SimClock

THING = "core1"
TOPIC = f"$aws/things/{THING}/defender/metrics/json"
SRC = Path(__file__).resolve().parents[2] / "src"

FAKE_SDK = '''
"""A stand-in for greengrasssdk 1.x: client("iot-data").publish(...) is recorded."""
import json, os

published = []


class _IotData:
    def publish(self, **kwargs):
        if os.environ.get("FAKE_GG_FAIL"):
            raise RuntimeError("queue is full")
        published.append(kwargs)
        record = os.environ.get("FAKE_GG_RECORD")
        if record:
            with open(record, "a") as out:
                out.write(json.dumps({"topic": kwargs["topic"]}) + "\\n")


def client(name):
    if name != "iot-data":
        raise ValueError(name)
    return _IotData()
'''


class FakeClient:
    """greengrasssdk's iot-data client: records publishes; answers like the core routes replies."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.fail = 0  # how many publishes fail next
        self.answer = True

    def publish(self, **kwargs: Any) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("Function greengrass queue is full")
        self.published.append(kwargs)
        if self.answer:
            report_id = json.loads(kwargs["payload"])["header"]["report_id"]
            reply = {"thingName": THING, "reportId": report_id, "status": "ACCEPTED"}
            context = SimpleNamespace(
                client_context=SimpleNamespace(custom={"subject": kwargs["topic"] + "/accepted"})
            )
            v1.function_handler(reply, context)  # the core routes IoT Cloud -> the Lambda


def environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "AWS_IOT_THING_NAME": THING,
        "PROCFS_PATH": str(proc_fixture("gateway_dualstack")),
        "DEFENDER_AGENT_STATE_DIR": str(tmp_path / "state"),
        **extra,
    }


def run(agent: Any, clock: SimClock, seconds: float) -> int:
    code: int = clock.run(agent, seconds)
    return code


@pytest.mark.parametrize(
    ("raw", "interval", "warned"),
    [
        (None, 300, False),
        ("", 300, False),
        ("300", 300, False),
        ("900", 900, False),
        ("600.0", 600, False),
        ("120", 300, True),  # the sample compares a string to an int and never enforces this
        ("five", 300, True),
        ("nan", 300, True),
        ("-1", 300, True),
    ],
)
def test_sample_interval(raw: Optional[str], interval: int, warned: bool) -> None:
    value, warning = v1.sample_interval(raw)
    assert value == interval
    assert (warning is not None) == warned
    if warning:
        assert "SAMPLE_INTERVAL_SECONDS" in warning and "300" in warning


def test_reports_every_interval_with_replies_matched(tmp_path: Path) -> None:
    client, clock = FakeClient(), SimClock()
    agent = v1.build(environ(tmp_path, SAMPLE_INTERVAL_SECONDS="300"), client=client, clock=clock)
    assert run(agent, clock, 1000) == 0
    assert [p["topic"] for p in client.published] == [TOPIC] * 3  # after the baseline: 3
    assert {p["queueFullPolicy"] for p in client.published} == {"AllOrException"}
    ids = [json.loads(p["payload"])["header"]["report_id"] for p in client.published]
    assert ids == sorted(ids) and len(set(ids)) == 3
    for payload in (json.loads(p["payload"]) for p in client.published):
        assert "network_stats" in payload["metrics"]  # every report has its delta
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["counters"]["accepted"] == 3
    assert status["interval"] == 300
    assert status["thing_name"] == THING


def test_a_failing_publish_is_counted_and_the_schedule_goes_on(tmp_path: Path) -> None:
    client, clock = FakeClient(), SimClock()
    client.fail = 2
    agent = v1.build(environ(tmp_path), client=client, clock=clock)
    assert run(agent, clock, 1600) == 0
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["counters"]["dropped"] == 2
    assert "queue is full" in status["counters"]["last_error"]
    assert status["counters"]["accepted"] == len(client.published) >= 2


def test_a_low_interval_is_raised_to_300_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SimClock()
    with caplog.at_level(logging.WARNING, logger="defender_agent"):
        agent = v1.build(environ(tmp_path, SAMPLE_INTERVAL_SECONDS="60"), FakeClient(), clock)
    assert agent.interval == 300
    warnings = [r for r in caplog.records if "SAMPLE_INTERVAL_SECONDS" in r.getMessage()]
    assert len(warnings) == 1


def test_procfs_path_defaults_to_host_proc(tmp_path: Path) -> None:
    env = environ(tmp_path)
    del env["PROCFS_PATH"]
    if Path("/host-proc").is_dir():
        pytest.skip("this machine has a /host-proc")
    with pytest.raises(ConfigError, match=r"PROCFS_PATH: '/host-proc' is not a directory"):
        v1.build(env, FakeClient(), SimClock())


def test_a_missing_thing_name_is_one_clear_error(tmp_path: Path) -> None:
    env = environ(tmp_path)
    del env["AWS_IOT_THING_NAME"]
    with pytest.raises(ConfigError, match="AWS_IOT_THING_NAME"):
        v1.build(env, FakeClient(), SimClock())


def test_messages_that_are_not_replies_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = v1.build(environ(tmp_path), FakeClient(), SimClock())
    agent._subscribe_replies()  # what the connector does once connected
    context = SimpleNamespace(client_context=SimpleNamespace(custom={"subject": "other/topic"}))
    with caplog.at_level(logging.DEBUG, logger="defender_agent"):
        v1.function_handler({"x": 1}, context)  # no subscription: ignored
        v1.function_handler({"x": 1}, SimpleNamespace())  # no topic: a warning, no exception
        reply = SimpleNamespace(client_context=SimpleNamespace(custom={"subject": TOPIC + "/x"}))
        v1.function_handler({"reportId": 5}, reply)  # not a reply topic of this agent
    text = caplog.text
    assert "not a reply to this agent" in text and "without a topic" in text
    assert agent.ledger.snapshot()["accepted"] == 0


def test_inside_a_core_it_starts_at_import_with_the_sdk(tmp_path: Path) -> None:
    """The module as the v1 core loads it: greengrasssdk importable, the loop starts by itself."""
    sdk = tmp_path / "sdk"
    (sdk / "greengrasssdk").mkdir(parents=True)
    (sdk / "greengrasssdk" / "__init__.py").write_text(textwrap.dedent(FAKE_SDK))
    record = tmp_path / "published.jsonl"
    script = textwrap.dedent(
        """
        import sys, time
        import defender_agent.greengrass.v1 as v1
        assert v1._runner is not None and v1._runner.is_alive()
        assert v1.start() is False  # once per process
        time.sleep(1.0)
        print("alive", v1._runner.is_alive())
        """
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DEFENDER_AGENT_")},
        **environ(tmp_path, SAMPLE_INTERVAL_SECONDS="7"),
        "PYTHONPATH": os.pathsep.join([str(sdk), str(SRC)]),
        "FAKE_GG_RECORD": str(record),
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env=env, timeout=60, check=False
    )
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert done.stdout.decode().strip() == "alive True"
    assert err.count("SAMPLE_INTERVAL_SECONDS='7' is under") == 1
    assert "thing core1, every 300 s" in err
    assert (tmp_path / "state" / "status.json").exists()  # the loop wrote its "started" status
    assert time.monotonic() - started < 60


def test_cbor_reports_encode_here(tmp_path: Path) -> None:
    """The collector and the CBOR encoder on the v1 Lambda's Python and its cbor2 (5.x on 3.8)."""
    import cbor2

    from defender_agent.cycle import Collector, CollectorConfig
    from defender_agent.report.fit import encode_fitted

    collector = Collector(CollectorConfig(proc_root=proc_fixture("gateway_dualstack")))
    assert collector.cycle() is None
    report = collector.cycle()
    assert report is not None
    encoded = encode_fitted(report, "cbor", short_names=True)
    assert cbor2.loads(encoded.payload)["hed"]["rid"] == report.report_id


def test_cbor_reports_decode_and_validate_here() -> None:
    """The validator decodes CBOR with the v1 zip's cbor2 (5.4.6: its decoder takes no read_size)."""
    from defender_agent.cycle import Collector, CollectorConfig
    from defender_agent.report.fit import encode_fitted
    from defender_agent.report.validate import PayloadFormat, decode_payload, validate_payload

    collector = Collector(CollectorConfig(proc_root=proc_fixture("gateway_dualstack")))
    collector.cycle()
    report = collector.cycle()
    assert report is not None
    payload = encode_fitted(report, "cbor", short_names=True).payload
    result = validate_payload(payload, PayloadFormat.CBOR)
    assert result.problems == ()
    assert result.report is not None
    assert result.report.report_id == report.report_id
    with pytest.raises(ReportDecodeError, match=r"1 trailing byte\(s\) after the data item"):
        decode_payload(payload + b"\x00", PayloadFormat.CBOR)
