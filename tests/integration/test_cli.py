"""The command line through real subprocesses: collect, validate, the sample's spellings, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

from tests.conftest import GOLDEN, proc_fixture

EXE = [sys.executable, "-m", "defender_agent"]


def run(
    *args: str, stdin: bytes | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*EXE, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def documents(stdout: bytes) -> list[Any]:
    """Split concatenated pretty JSON documents."""
    text, decoder, docs, pos = stdout.decode(), json.JSONDecoder(), [], 0
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            break
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)
    return docs


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------- collect
def test_collect_fixture_matches_the_golden_sockets(tmp_path: Path) -> None:
    result = run(
        "collect",
        "--proc-root",
        str(proc_fixture("gateway_dualstack")),
        "-n",
        "1",
        "-s",
        "0",
        "-l",
        "50",
        "--state-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    [doc] = documents(result.stdout)
    golden = json.loads((GOLDEN / "gateway_dualstack.long.json").read_text())
    for group in ("listening_tcp_ports", "listening_udp_ports", "tcp_connections"):
        assert doc["metrics"][group] == golden["metrics"][group]
    # baseline and sample read the same files: a zero delta, and no CPU metric asked for
    assert doc["metrics"]["network_stats"] == {
        "bytes_in": 0,
        "bytes_out": 0,
        "packets_in": 0,
        "packets_out": 0,
    }
    assert "custom_metrics" not in doc
    assert result.stderr == b""


def test_collect_live_n1_s1_is_complete(tmp_path: Path) -> None:
    start = time.monotonic()
    result = run(
        "collect", "-n", "1", "-s", "1", "--include-custom-metrics", "--state-dir", str(tmp_path)
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    [doc] = documents(result.stdout)
    assert set(doc) == {"header", "metrics", "custom_metrics"}
    assert set(doc["metrics"]) == {
        "listening_tcp_ports",
        "listening_udp_ports",
        "network_stats",
        "tcp_connections",
    }
    assert doc["header"]["version"] == "1.0"
    assert 0 <= doc["custom_metrics"]["cpu_usage"][0]["number"] <= 100
    assert elapsed >= 1.0


def test_the_sample_spelling_of_the_collector(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "defender_agent.collector",
            "-n",
            "1",
            "-s",
            "1",
            "--short-names",
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [doc] = documents(result.stdout)
    assert set(doc) == {"hed", "met"}
    assert {"tp", "up", "ns", "tc"} == set(doc["met"])


def test_several_samples_have_increasing_ids(tmp_path: Path) -> None:
    result = run("collect", "-n", "3", "-s", "0.1", "--state-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    ids = [d["header"]["report_id"] for d in documents(result.stdout)]
    assert len(ids) == 3 and ids == sorted(set(ids))
    again = run("collect", "-n", "1", "-s", "0", "--state-dir", str(tmp_path))
    [doc] = documents(again.stdout)
    assert doc["header"]["report_id"] > ids[-1]


def test_collect_cbor_to_a_file_and_to_stdout(tmp_path: Path) -> None:
    out = tmp_path / "report.cbor"
    result = run(
        "collect",
        "-n",
        "2",
        "-s",
        "0",
        "--format",
        "cbor",
        "--short-names",
        "-o",
        str(out),
        "--state-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    data = out.read_bytes()
    import io

    stream = io.BytesIO(data)
    first, second = cbor2.load(stream), cbor2.load(stream)
    assert stream.read() == b""
    assert first["hed"]["rid"] < second["hed"]["rid"]
    piped = run("collect", "-n", "1", "-s", "0", "--format", "cbor", "--state-dir", str(tmp_path))
    assert piped.returncode == 0
    assert cbor2.loads(piped.stdout)["header"]["version"] == "1.0"
    validated = run("validate", str(out), "--format", "cbor")  # a CBOR sequence is not one report
    assert validated.returncode == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-n", "-1"], "expected 0 or more"),
        (["-n", "x"], "expected a whole number"),
        (["-s", "abc"], "expected a number of seconds"),
        (["-s", "nan"], "finite"),
        (["-l", "0"], "expected 1 or more"),
        (["--proc-root", "/nonexistent/proc"], "is not a directory"),
        (["--format", "xml"], "invalid choice"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_options_one_line_exit_2(args: list[str], fragment: str) -> None:
    result = run("collect", *args)
    assert result.returncode == 2
    assert fragment in one_line_error(result)


def test_missing_proc_file_drops_its_group_with_one_warning(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    shutil.copytree(proc_fixture("gateway_dualstack"), root)
    (root / "net" / "udp").unlink()
    result = run(
        "collect",
        "--proc-root",
        str(root),
        "-n",
        "3",
        "-s",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert result.returncode == 0
    docs = documents(result.stdout)
    assert len(docs) == 3
    assert all("listening_udp_ports" not in d["metrics"] for d in docs)
    assert all("listening_tcp_ports" in d["metrics"] for d in docs)
    err = result.stderr.decode()
    assert err.count("warning") == 1 and f"{root}/net/udp" in err


def test_malformed_lines_are_skipped_with_a_warning(tmp_path: Path) -> None:
    result = run(
        "collect",
        "--proc-root",
        str(proc_fixture("malformed")),
        "-n",
        "2",
        "-s",
        "0",
        "--state-dir",
        str(tmp_path),
    )
    assert result.returncode == 0
    err = result.stderr.decode()
    assert "skipped 4 malformed line(s) in" in err and "net/tcp" in err
    assert "skipped 1 malformed line(s) in" in err and "net/udp" in err
    assert "net/dev" in err
    assert err.count("warning") == 3  # once per file, not once per sample
    assert len(documents(result.stdout)) == 2


def test_unwritable_state_dir_still_reports(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("collect", "-n", "1", "-s", "0", "--state-dir", str(blocker / "state"))
    assert result.returncode == 0
    assert len(documents(result.stdout)) == 1
    assert "report ids are kept in memory only" in result.stderr.decode()


def test_procfs_path_environment_variable(tmp_path: Path) -> None:
    result = run(
        "collect",
        "-n",
        "1",
        "-s",
        "0",
        "--state-dir",
        str(tmp_path),
        env={"PROCFS_PATH": str(proc_fixture("idle_container"))},
    )
    assert result.returncode == 0, result.stderr
    [doc] = documents(result.stdout)
    assert doc["metrics"]["listening_tcp_ports"] == {"ports": [], "total": 0}
    assert doc["metrics"]["tcp_connections"] == {
        "established_connections": {"connections": [], "total": 0}
    }


def test_version_and_help() -> None:
    assert run("--version").stdout.decode().startswith("defender-agent ")
    helptext = run("collect", "--help").stdout.decode()
    for flag in (
        "--number-samples",
        "--sample-rate",
        "--list-size",
        "--short-names",
        "--format",
        "--include-custom-metrics",
        "--custom-metrics",
        "--proc-root",
    ):
        assert flag in helptext


# --------------------------------------------------------------------------- validate
def test_validate_golden_files() -> None:
    for path in (GOLDEN / "gateway_dualstack.short.json", GOLDEN / "many_connections.long.json"):
        result = run("validate", str(path))
        assert result.returncode == 0, result.stderr
        assert b"valid (json" in result.stdout
    cbor = bytes.fromhex((GOLDEN / "gateway_dualstack.short.cbor.hex").read_text())
    result = run("validate", "-", stdin=cbor)
    assert result.returncode == 0 and b"valid (cbor, short names)" in result.stdout


def test_validate_lists_every_problem_with_its_path(tmp_path: Path) -> None:
    bad = {
        "header": {"report_id": 0, "version": "1.0"},
        "metrics": {"listening_tcp_ports": {"ports": [{"port": 70000}], "total": -1}},
        "custom_metrics": {"m": {"number": 0}},
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    result = run("validate", str(path))
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "header.report_id" in err
    assert "metrics.listening_tcp_ports.ports[0].port" in err
    assert "metrics.listening_tcp_ports.total" in err
    assert "custom_metrics.m" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x01\x02\xff" * 100,
        b"[" * 200_000 + b"]" * 200_000,
        b"\x81" * 200_000,
        b"not json at all",
        b'{"header": NaN}',
        os.urandom(4096),
    ],
    ids=["empty", "binary", "deep-json", "deep-cbor", "text", "nan", "random"],
)
def test_validate_garbage_is_reported_cleanly(payload: bytes) -> None:
    result = run("validate", "-", stdin=payload)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr.decode()
    assert b"invalid" in result.stdout


def test_validate_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_bytes(b'{"a":"' + b"x" * (20 * 1024 * 1024) + b'"}')
    result = run("validate", str(path))
    assert result.returncode == 1
    assert b"131072" in result.stderr


def test_validate_missing_file() -> None:
    result = run("validate", "/nonexistent/report.json")
    assert result.returncode == 2
    assert "cannot read /nonexistent/report.json" in one_line_error(result)


def test_only_the_requested_command_is_imported() -> None:
    code = (
        "import sys; from defender_agent.cli import main; main(['status', '--state-dir', '/nonexistent']);"
        "print(sorted(m for m in sys.modules if m.startswith(('defender_agent.service',"
        " 'defender_agent.sandbox', 'sqlite3', 'importlib.metadata', 'boto3'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, check=False
    )
    assert result.stdout.decode().strip().splitlines()[-1] == "[]"


def test_every_command_has_help() -> None:
    from defender_agent.cli._common import COMMANDS

    for name in COMMANDS:
        result = run(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert f"usage: defender-agent {name}" in result.stdout.decode()
