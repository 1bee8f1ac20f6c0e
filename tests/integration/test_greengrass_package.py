"""The built component: its install step works offline from the artifact, its run step reports.

``packaging/greengrass/build.py`` makes the versioned recipe and ``defender-agent.zip``
(PyPI is needed for that, at build time). The test then does what a nucleus does
with them, in a scratch directory: unpack the artifact, substitute the recipe
variables, run ``install`` with every package index out of reach, and run ``run``
against the fake nucleus, granted exactly the recipe's ``accessControl``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import proc_fixture
from tests.gg_infra.nucleus import FakeNucleus
from tests.integration.test_agent_mqtt import AgentProcess, Service, start_service
from tests.mqtt_infra.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "packaging" / "greengrass" / "build.py"
NAME = "com.example.DefenderAgent"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("gg-build")
    # the wheels are for the python3 the recipe's install step runs (the core's), which need
    # not be the Python running the tests (CI also runs the suite on 3.9)
    core_python = subprocess.run(
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    build = [sys.executable, str(BUILD), "v2", "--out", str(out), "--name", NAME, "--bucket", "b"]
    done = subprocess.run(
        [*build, "--python-version", core_python],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    (recipe_file,) = (out / "recipes").glob("*.json")
    (archive,) = (out / "artifacts" / NAME).glob("*/defender-agent.zip")
    return json.loads(recipe_file.read_text()), archive


def substitute(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


@pytest.fixture
def installed(
    built: tuple[dict[str, Any], Path],
) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    recipe, archive = built
    scratch = Path(tempfile.mkdtemp(prefix="ggpkg", dir="/tmp"))
    unpacked = scratch / "artifacts-unarchived" / NAME / "0"
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(unpacked / archive.stem)
    work = scratch / "work" / NAME
    work.mkdir(parents=True)
    values = {
        "artifacts:decompressedPath": str(unpacked),
        "artifacts:path": str(archive.parent),
        "work:path": str(work),
        "kernel:rootPath": str(scratch),
        "iot:thingName": "thing1",
    }
    try:
        yield recipe, values
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "DEFENDER_AGENT_"))}
    dead = "http://127.0.0.1:9"  # nothing listens: any download attempt fails
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        http_proxy=dead,
        https_proxy=dead,
        HTTP_PROXY=dead,
        HTTPS_PROXY=dead,
        VIRTUAL_ENV="",
    )
    env.pop("VIRTUAL_ENV")
    return env


def test_install_works_offline_and_run_reports(
    installed: tuple[dict[str, Any], dict[str, str]],
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    recipe, values = installed
    (manifest,) = recipe["Manifests"]
    lifecycle = manifest["Lifecycle"]
    work = Path(values["work:path"])
    install = substitute(lifecycle["install"]["Script"], values)
    done = subprocess.run(
        ["sh", "-c", install],
        cwd=work,
        capture_output=True,
        env=offline_env(),
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    version = subprocess.run(
        [str(work / "venv" / "bin" / "defender-agent"), "--version"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert version.stdout.decode().startswith("defender-agent ")

    # the run step, granted exactly what the recipe's accessControl grants
    assert mosquitto.plain is not None
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    grants: dict[str, set[str]] = {}
    for policy in defaults["accessControl"]["aws.greengrass.ipc.mqttproxy"].values():
        for operation in policy["operations"]:
            grants.setdefault(operation, set()).update(
                substitute(r, values) for r in policy["resources"]
            )
    service: Service = start_service(mosquitto)
    short = Path(tempfile.mkdtemp(prefix="gg", dir="/tmp"))
    nucleus = FakeNucleus(short / "ipc.sock", mosquitto.plain, component=NAME)
    nucleus.allow_publish = grants["aws.greengrass#PublishToIoTCore"]
    nucleus.allow_subscribe = grants["aws.greengrass#SubscribeToIoTCore"]
    nucleus.configuration = {
        **defaults,
        "agent": {**defaults["agent"], "interval": 1, "splay": 0, "allow_short_interval": True},
        "collector": {"proc_root": str(proc_fixture("gateway_dualstack"))},
    }
    log = tmp_path / "component.log"
    try:
        nucleus.start()
        run = substitute(lifecycle["run"]["Script"], values)
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                ["sh", "-c", run], cwd=work, stdout=sink, stderr=sink, env=nucleus.env()
            )
        agent = AgentProcess(proc, work / "state", log)
        try:
            agent.wait(lambda: agent.counter("accepted") >= 2, timeout=40)
            assert agent.stop(signal.SIGTERM) == 0  # 'exec': the signal reaches the agent
        finally:
            agent.stop(signal.SIGKILL)
    finally:
        nucleus.stop(bridge=True)
        service.service.stop()
        service.transport.disconnect()
        shutil.rmtree(short, ignore_errors=True)
    assert "accessControl" not in log.read_text()  # no refused operation


def py38() -> Path:
    found = sorted(Path("/root/.pyenv/versions").glob("3.8.*/bin/python"))
    if not found:
        pytest.skip("no Python 3.8 (pyenv) on this machine")
    return found[-1]


def test_the_v1_lambda_zip_runs_on_python_38(tmp_path: Path) -> None:
    """The v1 deployment zip alone (greengrasssdk 1.6.1, cbor2 5.4 pure Python) on Python 3.8."""
    python = py38()
    done = subprocess.run(
        [sys.executable, str(BUILD), "v1", "--out", str(tmp_path / "out")],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    (archive,) = (tmp_path / "out").glob("*.zip")
    unpacked = tmp_path / "lambda"
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        zipped.extractall(unpacked)
    assert not [n for n in names if n.endswith(".so")]  # pure Python: any core's CPU
    script = (
        "import time, defender_agent.greengrass.v1 as v1, cbor2\n"
        "from defender_agent.report.validate import decode_payload\n"
        "print(decode_payload(cbor2.dumps({'hed': {'rid': 7}}))[0]['hed']['rid'])\n"
        "time.sleep(2.5)"
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(unpacked),
        "AWS_IOT_THING_NAME": "core1",
        "PROCFS_PATH": str(proc_fixture("gateway_dualstack")),
        "DEFENDER_AGENT_STATE_DIR": str(tmp_path / "state"),
    }
    run = subprocess.run(
        [str(python), "-c", script], capture_output=True, env=env, timeout=60, check=False
    )
    err = run.stderr.decode()
    assert run.returncode == 0, err
    assert run.stdout.decode().split() == ["7"]  # the zip's cbor2 5.4 decodes (no read_size)
    assert "thing core1, every 300 s" in err
    # outside a v1 core the SDK's client cannot be made: said in one line, retried with backoff
    assert "greengrasssdk is unusable" in err and "greengrass_common" in err
    assert "Traceback" not in err
