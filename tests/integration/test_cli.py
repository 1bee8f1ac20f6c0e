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
    validated = run("validate", str(out))  # a CBOR sequence: each report is checked
    assert validated.returncode == 0, validated.stderr
    piped = run("collect", "-n", "1", "-s", "0", "--format", "cbor", "--state-dir", str(tmp_path))
    assert piped.returncode == 0
    assert cbor2.loads(piped.stdout)["header"]["version"] == "1.0"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-n", "-1"], "expected 0 or more"),
        (["-n", "x"], "expected a whole number"),
        (["-s", "abc"], "expected a number of seconds"),
        (["-s", "nan"], "finite"),
        (["-l", "0"], "option --list-size: expected a whole number from 1 to 100000, got 0"),
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


# --------------------------------------------------------------------------- configuration
def test_collect_several_reports_to_a_file_are_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "two.json"
    fixture = str(proc_fixture("gateway_dualstack"))
    args = ["-n", "2", "-s", "0", "--proc-root", fixture, "--state-dir", str(tmp_path)]
    result = run("collect", *args, "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["header"]["report_id"] < second["header"]["report_id"]
    assert b"\n" not in lines[0] and lines[0].startswith(b'{"header":')
    validated = run("validate", str(out))  # validate checks each report of the stream
    assert validated.returncode == 0, validated.stderr
    assert b"2 reports" in validated.stdout
    to_stdout = run("collect", *args, "-o", "-")
    assert [json.loads(line)["metrics"] for line in to_stdout.stdout.splitlines()] == [
        first["metrics"],
        second["metrics"],
    ]
    pretty = run("collect", *args)  # no -o: indented for people
    assert b'\n  "header": {' in pretty.stdout


def test_collect_reads_the_config_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        "[agent]\nshort_names = true\n[collector]\nlist_size = 1\n"
        '[custom_metrics]\nenabled = ["uptime"]\n'
    )
    fixture = str(proc_fixture("gateway_dualstack"))
    args = ["-n", "1", "-s", "0", "--proc-root", fixture, "--state-dir", str(tmp_path)]
    result = run("collect", "--config", str(config), *args)
    assert result.returncode == 0, result.stderr
    [doc] = documents(result.stdout)
    assert set(doc) == {"hed", "met"}  # the fixture has no uptime file: the metric is left out
    assert len(doc["met"]["tp"]["pts"]) == 1 and doc["met"]["tp"]["t"] > 1
    live = run(
        "collect", "--config", str(config), "-n", "1", "-s", "0", "--state-dir", str(tmp_path)
    )
    assert live.returncode == 0, live.stderr
    [doc] = documents(live.stdout)
    assert set(doc) == {"hed", "met", "cmet"} and doc["cmet"]["uptime"][0]["number"] > 0
    # the environment overrides the file, an option overrides both
    env = {"DEFENDER_AGENT_CONFIG": str(config), "DEFENDER_AGENT_LIST_SIZE": "2"}
    [doc] = documents(run("collect", *args, env=env).stdout)
    assert len(doc["met"]["tp"]["pts"]) == 2
    [doc] = documents(run("collect", *args, "-l", "3", env=env).stdout)
    assert len(doc["met"]["tp"]["pts"]) == 3


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[collector]\nlist_size = "5"\n', "collector.list_size: expected a whole number, got the"),
        ("[collector]\nlist_sise = 5\n", "did you mean 'collector.list_size'?"),
        ('[custom_metrics]\nenabled = ["uptme"]\n', "did you mean 'uptime'?"),
        (b"[agent]\n# caf\xe9\n", "is not UTF-8 text"),
    ],
)
def test_collect_bad_config_file_is_one_line(
    tmp_path: Path, text: str | bytes, fragment: str
) -> None:
    config = tmp_path / "c.toml"
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    result = run("collect", "--config", str(config), "-n", "1", "-s", "0")
    assert result.returncode == 2
    assert fragment in one_line_error(result)


@pytest.mark.parametrize("before", [True, False])
def test_global_options_before_and_after_collect(tmp_path: Path, before: bool) -> None:
    root = tmp_path / "proc"
    shutil.copytree(proc_fixture("gateway_dualstack"), root)
    (root / "net" / "udp").unlink()  # one warning
    args = ["-n", "1", "-s", "0", "--proc-root", str(root), "--state-dir", str(tmp_path)]
    quiet = ["--log-level", "error"]
    words = [*quiet, "collect", *args] if before else ["collect", *args, *quiet]
    result = run(*words)
    assert result.returncode == 0 and result.stderr == b""
    as_json = ["--log-format", "json"]
    words = [*as_json, "collect", *args] if before else ["collect", *args, *as_json]
    [line] = run(*words).stderr.decode().splitlines()
    assert json.loads(line)["level"] == "warning"


@pytest.mark.parametrize(
    "name", ["run", "status", "collect", "validate", "sandbox", "service", "data", "aws-setup"]
)
@pytest.mark.parametrize("before", [True, False])
def test_every_command_takes_the_global_options_on_either_side(name: str, before: bool) -> None:
    bad = ["--log-level", "loud"]
    result = run(*bad, name) if before else run(name, *bad)
    assert result.returncode == 2
    assert "argument --log-level: invalid choice: 'loud'" in one_line_error(result)


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--versions", "abc"], {}, "option --versions: expected versions such as 1.0,1.1"),
        (["--versions", "1.0,x"], {}, "(each <int>.<int>), got 'x'"),
        (["--no-tls", "--min-delay", "-1"], {}, "option --min-delay: expected 0 to 86400"),
        (["--no-tls"], {"DEFENDER_AGENT_SERVICE_PORT": "0"}, "DEFENDER_AGENT_SERVICE_PORT:"),
        ([], {}, "mutual TLS needs --cert-file and --key-file"),
    ],
)
def test_service_bad_options_one_line_exit_2(
    args: list[str], env: dict[str, str], fragment: str
) -> None:
    result = run("service", *args, env=env, timeout=30)
    assert result.returncode == 2
    assert fragment in one_line_error(result)


def test_service_reads_its_table_of_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "service.toml"
    config.write_text("[service]\ntls = false\nversions = ['1.0', 'one']\n")
    result = run("service", "--config", str(config), timeout=30)
    assert result.returncode == 2
    assert f"{config}: service.versions: expected versions such as" in one_line_error(result)


def test_sandbox_reads_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[sandbox]\ninterval = 0\n")
    result = run("sandbox", "--config", str(config), "--state-dir", str(tmp_path), timeout=30)
    assert result.returncode == 2
    assert f"{config}: sandbox.interval: expected a whole number from 1" in one_line_error(result)
    result = run("sandbox", "-t", "a/b", "--state-dir", str(tmp_path), timeout=30)
    assert "option --thing-name: invalid thing name 'a/b'" in one_line_error(result)


def test_collect_help_says_how_streams_are_written() -> None:
    text = " ".join(run("collect", "--help").stdout.decode().split())
    assert "JSON lines (one compact report per line) or a CBOR sequence (RFC 8742)" in text
    assert "'total' keeps" not in text


def test_collect_does_not_build_the_service_and_sandbox_sections(tmp_path: Path) -> None:
    code = (
        "import sys; from defender_agent.cli import main; "
        f"main(['collect', '-n', '1', '-s', '0', '--state-dir', {str(tmp_path)!r}]); "
        "print('defender_agent.config.extra_sections' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, check=False
    )
    assert result.stderr.decode().strip().splitlines()[-1] == "False"
