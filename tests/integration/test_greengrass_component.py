"""``defender-agent greengrass`` end to end: the component process, the real IPC client, a fake nucleus.

The component runs as the nucleus would start it (a subprocess with
``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT``, ``SVCUID`` and
``AWS_IOT_THING_NAME``); awsiotsdk's ``GreengrassCoreIPCClientV2`` talks
eventstream-RPC to :class:`~tests.gg_infra.nucleus.FakeNucleus`, which bridges
IoT Core to a real mosquitto where the project's Device Defender responder answers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from defender_agent.report.decode import read_report_id
from defender_agent.report.validate import decode_payload
from tests.conftest import proc_fixture
from tests.gg_infra.nucleus import FakeNucleus
from tests.integration import test_agent_mqtt
from tests.integration.test_agent_mqtt import AgentProcess, Service
from tests.mqtt_infra.broker import Mosquitto

THING = "thing1"
FAST = {"interval": 1, "splay": 0, "allow_short_interval": True}
REPORTS = f"$aws/things/{THING}/defender/metrics/"

#: The Device Defender responder on the broker (the fixture of the agent's MQTT tests).
dd = test_agent_mqtt.dd


@pytest.fixture
def nucleus(mosquitto: Mosquitto) -> Iterator[FakeNucleus]:
    assert mosquitto.plain is not None
    short = Path(tempfile.mkdtemp(prefix="gg", dir="/tmp"))  # a Unix socket path is short
    fake = FakeNucleus(short / "ipc.sock", mosquitto.plain, thing=THING)
    try:
        yield fake
    finally:
        fake.stop(bridge=True)
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def component(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(env: dict[str, str], *extra: str) -> AgentProcess:
        state = tmp_path / f"state{len(started)}"
        log = tmp_path / f"component{len(started)}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("DEFENDER_AGENT_")}
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "defender_agent.greengrass",
                    "--state-dir",
                    str(state),
                    "--proc-root",
                    str(proc_fixture("gateway_dualstack")),
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=sink,
                env={**clean, **env},
            )
        agent = AgentProcess(proc, state, log)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(signal.SIGKILL)


def report_ids(nucleus: FakeNucleus, fmt: str = "json") -> list[int]:
    return [read_report_id(decode_payload(p)[0]) or 0 for p in nucleus.published_on(fmt)]


@pytest.mark.parametrize(("fmt", "short"), [("json", False), ("cbor", True)])
def test_reports_are_accepted_end_to_end(
    dd: Service,
    nucleus: FakeNucleus,
    component: Callable[..., AgentProcess],
    fmt: str,
    short: bool,
) -> None:
    nucleus.configuration = {"agent": {**FAST, "format": fmt, "short_names": short}}
    nucleus.start()
    agent = component(nucleus.env())
    agent.wait(lambda: agent.counter("accepted") >= 2)
    assert agent.stop() == 0, agent.logtext()
    ops = nucleus.operations
    first_publish = ops.index("aws.greengrass#PublishToIoTCore")
    assert ops[:first_publish].count("aws.greengrass#SubscribeToIoTCore") == 2  # before it
    assert ops[0] == "aws.greengrass#GetConfiguration"
    topics = {t for t, _, _ in nucleus.published}
    assert topics == {REPORTS + fmt}
    assert {q for _, q, _ in nucleus.published} == {"1"}  # AT_LEAST_ONCE
    payload = nucleus.published_on(fmt)[0]
    document = json.loads(payload) if fmt == "json" else None
    if document is not None:
        assert "header" in document and "metrics" in document  # long names
    else:
        assert payload[:1] != b"{"  # CBOR
        assert b"hed" in payload  # short names
    with dd.responder.lock:
        assert set(report_ids(nucleus, fmt)) >= set(dd.responder.accepted[:2])
    assert "Traceback" not in agent.logtext()
    assert agent.status()["connected"] is False  # written at the clean stop


def test_a_configuration_update_changes_the_interval_live(
    dd: Service, nucleus: FakeNucleus, component: Callable[..., AgentProcess]
) -> None:
    nucleus.configuration = {"agent": {**FAST, "interval": 600}}
    nucleus.start()
    agent = component(nucleus.env())
    agent.wait(lambda: "baseline taken" in agent.logtext())
    assert agent.counter("accepted") == 0
    nucleus.set_configuration({"agent": dict(FAST)}, ["agent", "interval"])
    agent.wait(lambda: agent.counter("accepted") >= 2, timeout=15)
    assert agent.status()["interval"] == 1
    log = agent.logtext()
    assert log.count("baseline taken") == 1  # the baseline was kept
    assert "configuration applied: every 1 s" in log

    # a bad update: one line naming the key, the running configuration stays
    nucleus.set_configuration({"agent": {**FAST, "interval": "soon"}}, ["agent", "interval"])
    agent.wait(lambda: "configuration update refused" in agent.logtext())
    before = agent.counter("accepted")
    agent.wait(lambda: agent.counter("accepted") >= before + 2)
    refused = [line for line in agent.logtext().splitlines() if "update refused" in line]
    assert len(refused) == 1
    assert "component configuration: agent.interval" in refused[0]
    assert agent.status()["interval"] == 1
    assert agent.stop() == 0


def test_sample_interval_seconds_of_aws_component_is_accepted(
    nucleus: FakeNucleus, component: Callable[..., AgentProcess]
) -> None:
    nucleus.configuration = {"SampleIntervalSeconds": "120", "accessControl": {"x": {}}}
    nucleus.start()
    agent = component(nucleus.env())
    assert agent.proc.wait(20) == 2
    log = agent.logtext()
    assert "component configuration: SampleIntervalSeconds: interval 120 s is under" in log
    assert "Traceback" not in log


def test_unauthorized_publish_is_one_clear_line_and_retried(
    dd: Service, nucleus: FakeNucleus, component: Callable[..., AgentProcess]
) -> None:
    nucleus.configuration = {"agent": dict(FAST)}
    nucleus.allow_publish = ()
    nucleus.start()
    agent = component(nucleus.env())
    agent.wait(lambda: agent.counter("dropped") >= 3)
    lines = [ln for ln in agent.logtext().splitlines() if "accessControl needs" in ln]
    assert len(lines) == 1, agent.logtext()
    assert "aws.greengrass.ipc.mqttproxy" in lines[0]
    assert "aws.greengrass#PublishToIoTCore" in lines[0]
    assert REPORTS + "json" in lines[0]
    nucleus.allow_publish = None  # the deployment fixed the policy
    agent.wait(lambda: agent.counter("accepted") >= 1)
    assert agent.stop() == 0


def test_a_nucleus_restart_is_survived_without_a_spike(
    dd: Service, nucleus: FakeNucleus, component: Callable[..., AgentProcess]
) -> None:
    nucleus.configuration = {"agent": dict(FAST)}
    nucleus.start()
    agent = component(nucleus.env())
    agent.wait(lambda: agent.counter("accepted") >= 2)
    nucleus.stop()
    agent.wait(lambda: "IPC connection to the nucleus is down" in agent.logtext())
    time.sleep(1.5)
    nucleus.start()
    accepted = agent.counter("accepted")
    agent.wait(lambda: agent.counter("accepted") >= accepted + 3, timeout=40)
    assert agent.stop() == 0
    log = agent.logtext()
    assert "the IPC connection to the nucleus is back" in log
    ids = report_ids(nucleus)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # strictly increasing
    for payload in nucleus.published_on("json"):  # no raw since-boot totals after the restart
        stats = json.loads(payload)["metrics"].get("network_stats", {})
        assert all(v == 0 for v in stats.get("metrics", stats).values()), stats
    assert log.count("baseline taken") == 1


def test_waits_with_backoff_while_the_nucleus_is_not_up(
    dd: Service, nucleus: FakeNucleus, component: Callable[..., AgentProcess]
) -> None:
    nucleus.configuration = {"agent": dict(FAST)}
    agent = component(nucleus.env())
    agent.wait(lambda: agent.logtext().count("the nucleus is not up") >= 3)
    delays = [
        float(line.rsplit("retrying in ", 1)[1].split()[0])
        for line in agent.logtext().splitlines()
        if "the nucleus is not up" in line
    ]
    assert all(d > 0 for d in delays) and delays[2] > delays[0]  # backs off, never busy
    nucleus.start()
    agent.wait(lambda: agent.counter("accepted") >= 1, timeout=30)
    assert agent.stop() == 0


def test_a_bad_token_is_a_clear_error(
    nucleus: FakeNucleus, component: Callable[..., AgentProcess]
) -> None:
    nucleus.start()
    agent = component({**nucleus.env(), "SVCUID": "not-the-token"})
    agent.wait(lambda: "token was not accepted" in agent.logtext())
    assert nucleus.rejected_tokens >= 1 and nucleus.connects == 0
    assert agent.stop() == 0
    assert "Traceback" not in agent.logtext()


def test_outside_a_nucleus_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SVCUID",)}
    env.pop("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", None)
    done = subprocess.run(
        [sys.executable, "-m", "defender_agent", "greengrass", "--state-dir", str(tmp_path)],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.count("\n") == 1 and "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT" in err


def test_service_errors_in_a_row_make_the_connection_afresh(
    dd: Service, nucleus: FakeNucleus, component: Callable[..., AgentProcess]
) -> None:
    nucleus.configuration = {"agent": dict(FAST)}
    nucleus.start()
    agent = component(nucleus.env())
    agent.wait(lambda: agent.counter("accepted") >= 1)
    connects = nucleus.connects
    nucleus.publish_error = "aws.greengrass#ServiceError"
    agent.wait(lambda: "3 ServiceErrors in a row" in agent.logtext())
    nucleus.publish_error = None
    agent.wait(lambda: "the IPC connection to the nucleus is back" in agent.logtext())
    accepted = agent.counter("accepted")
    agent.wait(lambda: agent.counter("accepted") >= accepted + 2)
    assert nucleus.connects == connects + 1
    failed = [ln for ln in agent.logtext().splitlines() if "spooler is full" in ln]
    assert len(failed) >= 3  # each failed report is one line with the nucleus's message
    assert agent.stop() == 0
