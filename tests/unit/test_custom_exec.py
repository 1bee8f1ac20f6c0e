"""Exec metrics: real commands that succeed, fail, hang, print garbage or far too much."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

from defender_agent.custom import CustomMetrics, CustomMetricsConfig
from defender_agent.custom._base import MetricError
from defender_agent.custom.exec_metric import (
    MAX_OUTPUT,
    CommandBatch,
    ExecSpec,
    parse_output,
    run_commands,
)
from defender_agent.model import CustomMetric, CustomMetricType
from defender_agent.procfs import ProcFS

N = CustomMetricType.NUMBER
NL = CustomMetricType.NUMBER_LIST
SL = CustomMetricType.STRING_LIST
IPL = CustomMetricType.IP_ADDRESS_LIST


def sh(
    script: str, metric_type: CustomMetricType = N, timeout: float = 5.0, name: str = "m"
) -> ExecSpec:
    return ExecSpec(name, ("sh", "-c", script), metric_type, timeout)


def run_one(spec: ExecSpec) -> bytes | MetricError:
    (result,) = run_commands([spec])
    return result


def failure(spec: ExecSpec) -> MetricError:
    result = run_one(spec)
    assert isinstance(result, MetricError), result
    assert "\n" not in result.reason
    return result


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes (its parent, not us, may reap it late)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_dead(pid: int, within: float = 2.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("metric_type", "output", "expected"),
    [
        (N, b"42\n", 42),
        (N, b"  -3.5  \n\n", -3.5),
        (N, b"1e3", 1000.0),
        (N, b"+.5\r\n", 0.5),
        (NL, b"1\n2.5\n\n-3\n", [1, 2.5, -3]),
        (NL, b"", []),
        (SL, b"eth0\r\n  wlan0  \n\n", ["eth0", "wlan0"]),
        (IPL, b"192.0.2.1\n2001:db8::1\n", ["192.0.2.1", "2001:db8::1"]),
    ],
)
def test_parse_output(metric_type: CustomMetricType, output: bytes, expected: object) -> None:
    assert parse_output(metric_type, output) == expected


@pytest.mark.parametrize(
    ("metric_type", "output", "reason"),
    [
        (N, b"", "expected one number, got nothing"),
        (N, b"12 %\n", "expected one number, got 2 words"),
        (N, b"1\n2\n", "expected one number, got 2 words"),
        (N, b"hello\n", "not a number: 'hello'"),
        (N, b"nan\n", "not a number: 'nan'"),
        (N, b"inf\n", "not a number: 'inf'"),
        (N, b"1_000\n", "not a number"),
        (N, b"0x10\n", "not a number"),
        (N, b"x" * 500, "not a number: 'xxxxxxxx"),
        (NL, b"1\ntwo\n", "not a number: 'two'"),
        (NL, b"1 2\n", "not a number: '1 2'"),
        (SL, b"\xff\xfe garbage", "not UTF-8"),
    ],
)
def test_parse_output_garbage(metric_type: CustomMetricType, output: bytes, reason: str) -> None:
    with pytest.raises(MetricError) as info:
        parse_output(metric_type, output)
    assert info.value.kind == "output"
    assert reason in info.value.reason
    assert len(info.value.reason) < 100


# --------------------------------------------------------------------------- running
def test_good_number() -> None:
    assert run_one(ExecSpec("m", ("echo", "42"), N)) == b"42\n"


def test_good_lists() -> None:
    number_list, string_list = run_commands(
        [sh("printf '1\\n2.5\\n'", NL), ExecSpec("s", ("printf", "eth0\\nwlan0\\n"), SL)]
    )
    assert number_list == b"1\n2.5\n"
    assert string_list == b"eth0\nwlan0\n"


def test_failing_exit_code_names_the_status_and_stderr() -> None:
    result = failure(sh("echo 5; echo 'sensor not found' >&2; echo second line >&2; exit 3"))
    assert result.kind == "exit"
    assert result.reason == "exited with status 3: sensor not found"


def test_killed_by_a_signal() -> None:
    result = failure(sh("kill -TERM $$"))
    assert (result.kind, result.reason) == ("exit", "killed by SIGTERM")


def test_slow_command_is_killed_within_its_timeout(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # the shell and a grandchild that holds the output pipe open: both must die
    spec = sh(f"echo $$ > {pids}; sleep 60 & echo $! >> {pids}; wait", timeout=0.5)
    start = time.monotonic()
    result = failure(spec)
    elapsed = time.monotonic() - start
    assert result.kind == "timeout"
    assert result.reason == "no result within 0.5 s; killed"
    assert 0.5 <= elapsed < 0.5 + 1
    shell, sleeper = (int(line) for line in pids.read_text().split())
    assert not alive(shell)
    assert wait_dead(sleeper), "the grandchild survived the timeout"


def test_a_hung_command_that_ignores_sigterm_is_killed() -> None:
    start = time.monotonic()
    result = failure(sh("trap '' TERM HUP INT; while :; do :; done", timeout=0.3))
    assert result.kind == "timeout"
    assert time.monotonic() - start < 1.3


def test_background_leftovers_are_killed_after_a_success() -> None:
    start = time.monotonic()
    result = run_one(sh("sleep 60 & echo $!", timeout=10))
    assert isinstance(result, bytes)
    assert time.monotonic() - start < 2, "waited for the background process"
    assert wait_dead(int(result)), "the background process was left running"


def test_output_after_exit_is_still_read() -> None:
    # the shell exits at once; its child writes after a short while, then the pipe closes
    assert run_one(sh("(sleep 0.2; echo late) & echo early; wait")) == b"early\nlate\n"


def test_garbage_output_is_returned_for_the_parser() -> None:
    garbage = run_one(sh("head -c 300 /dev/urandom; printf '\\000\\377'"))
    assert isinstance(garbage, bytes) and len(garbage) == 302


def test_huge_output_is_capped() -> None:
    start = time.monotonic()
    result = failure(ExecSpec("m", ("yes",), SL, timeout_s=10))
    assert (result.kind, result.reason) == ("output", f"printed more than {MAX_OUTPUT} bytes")
    assert time.monotonic() - start < 2


def test_output_at_the_cap_is_fine() -> None:
    exact = run_one(sh(f"head -c {MAX_OUTPUT} /dev/zero"))
    assert isinstance(exact, bytes) and len(exact) == MAX_OUTPUT
    (small,) = CommandBatch([sh("head -c 101 /dev/zero")], max_output=100).wait()
    assert isinstance(small, MetricError) and small.reason == "printed more than 100 bytes"


def test_huge_stderr_does_not_block_or_grow() -> None:
    assert run_one(sh("head -c 1000000 /dev/zero >&2; echo 7")) == b"7\n"


def test_command_that_does_not_exist() -> None:
    result = failure(ExecSpec("m", ("/nonexistent/metric-command", "--x"), N))
    assert (result.kind, result.reason) == (
        "start",
        "command not found: '/nonexistent/metric-command'",
    )
    result = failure(ExecSpec("m", ("no-such-command-on-path-xyz",), N))
    assert result.reason == "command not found: 'no-such-command-on-path-xyz'"


def test_command_that_is_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "metric.sh"
    script.write_text("#!/bin/sh\necho 1\n")
    script.chmod(0o644)
    result = failure(ExecSpec("m", (str(script),), N))
    assert result.kind == "start"
    if os.geteuid() != 0:
        assert result.reason.startswith("not allowed to run")


def test_no_shell_is_involved(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    assert (
        run_one(ExecSpec("m", ("echo", f"1; touch {marker}"), SL))
        == f"1; touch {marker}\n".encode()
    )
    assert not marker.exists()


def test_minimal_environment_stdin_and_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    env, cwd, stdin = run_commands(
        [ExecSpec("e", ("env",), SL), ExecSpec("c", ("pwd",), SL), ExecSpec("i", ("cat",), SL)]
    )
    assert isinstance(env, bytes)
    names = {line.split("=", 1)[0] for line in env.decode().splitlines()}
    assert names == {"PATH", "LC_ALL", "LANG"}
    assert cwd == b"/\n"
    assert stdin == b""


def test_commands_run_at_once() -> None:
    specs = [sh("sleep 0.4; echo 1", name=f"m{i}") for i in range(4)]
    start = time.monotonic()
    results = run_commands(specs)
    assert results == [b"1\n"] * 4
    assert time.monotonic() - start < 1.2  # not 4 x 0.4 s


def test_results_keep_the_order_of_the_specs() -> None:
    results = run_commands(
        [sh("sleep 0.3; echo slow"), ExecSpec("x", ("/nonexistent",), N), sh("echo fast")]
    )
    assert results[0] == b"slow\n"
    assert isinstance(results[1], MetricError)
    assert results[2] == b"fast\n"
    assert run_commands([]) == []


# --------------------------------------------------------------------------- through CustomMetrics
def test_exec_metrics_in_collect(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = CustomMetricsConfig(
        exec_metrics=(
            sh("echo 12.5", name="good_number"),
            sh("printf '192.0.2.1\\n::ffff:192.0.2.1\\n2001:DB8::1\\n'", IPL, name="good_ips"),
            sh("printf 'ok\\nnot ok\\n'", SL, name="bad_strings"),
            sh("echo garbage", name="garbage"),
            sh("exit 2", name="failing"),
            sh("sleep 30", timeout=0.3, name="slow"),
            ExecSpec("missing", ("/nonexistent",), N),
            sh("seq 1 500", NL, name="long_list"),
        ),
        list_size=100,
    )
    metrics = CustomMetrics(config, ProcFS(tmp_path))
    with caplog.at_level(logging.DEBUG, logger="defender_agent"):
        start = time.monotonic()
        first = metrics.collect()
        assert time.monotonic() - start < 1.3
        second = metrics.collect()
    assert (
        first
        == second
        == [
            CustomMetric("good_number", N, 12.5),
            CustomMetric("good_ips", IPL, ("192.0.2.1", "2001:db8::1")),
            CustomMetric("long_list", NL, tuple(range(1, 101))),
        ]
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "custom metric bad_strings: left out: invalid string-list: item 1: 'not ok' has characters outside [A-Za-z0-9:_-/.]",
        "custom metric garbage: left out: not a number: 'garbage'",
        "custom metric failing: left out: exited with status 2",
        "custom metric slow: left out: no result within 0.3 s; killed",
        "custom metric missing: left out: command not found: '/nonexistent'",
    ]
    assert (
        len(
            [
                r
                for r in caplog.records
                if r.levelno == logging.DEBUG and "left out" in r.getMessage()
            ]
        )
        == 5
    )


def test_python_commands_work_too() -> None:
    spec = ExecSpec("py", (sys.executable, "-c", "print(sum(range(10)))"), N)
    assert run_one(spec) == b"45\n"
