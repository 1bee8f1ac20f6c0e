"""``defender-agent data`` through real subprocesses, on a SQLite file the test fills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from defender_agent.service.metrics_map import MetricValue
from defender_agent.service.storage import open_store

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


EXE = [sys.executable, "-m", "defender_agent", "data"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def lines(stdout: str) -> list[Any]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "service.sqlite3"
    with open_store(str(path)) as store:
        for i in range(3):
            values = [
                MetricValue("aws:all-bytes-out", count=100 * i),
                MetricValue("aws:listening-tcp-ports", ports=(22, 443)),
            ]
            store.record("gw-1", 1000 + i, T0 + 300 * i, "json", values)
        store.record("gw-2", None, T0 + 60, "cbor", [MetricValue("cpu_usage", number=26.5)])
        # recent values, for the relative times (now = when the module's tests start, not when
        # the suite was collected)
        now = time.time()
        for ago in (7200, 1800, 60):
            store.record("gw-3", int(now - ago), now - ago, "json", [MetricValue("m", count=ago)])
    return path


# --------------------------------------------------------------------------- things
def test_things_table(db: Path) -> None:
    result = run("things", "--db", str(db))
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].split() == [
        "THING",
        "FIRST",
        "SEEN",
        "(UTC)",
        "LAST",
        "SEEN",
        "(UTC)",
        "REPORTS",
    ]
    assert rows[1].split() == ["gw-1", "2023-11-14", "22:13:20", "2023-11-14", "22:23:20", "3"]
    assert [row.split()[0] for row in rows[1:]] == ["gw-1", "gw-2", "gw-3"]


def test_things_json(db: Path) -> None:
    result = run("things", "--db", f"sqlite://{db}", "--json")
    assert result.returncode == 0, result.stderr
    things = lines(result.stdout)
    assert things[0] == {"thing": "gw-1", "first_seen": T0, "last_seen": T0 + 600, "reports": 3}
    assert [t["thing"] for t in things] == ["gw-1", "gw-2", "gw-3"]


def test_things_of_an_empty_database(tmp_path: Path) -> None:
    open_store(str(tmp_path / "empty.sqlite3")).close()
    result = run("things", "--db", str(tmp_path / "empty.sqlite3"))
    assert result.returncode == 0
    assert result.stdout == ""
    assert "no reports stored" in result.stderr


# --------------------------------------------------------------------------- list-metric-values
def test_list_metric_values_table(db: Path) -> None:
    result = run(
        "list-metric-values", "--db", str(db), "--thing", "gw-1", "--metric", "aws:all-bytes-out"
    )
    assert result.returncode == 0, result.stderr
    rows = [row.split() for row in result.stdout.splitlines()]
    assert rows[0] == ["TIME", "(UTC)", "REPORT", "ID", "VALUE"]
    assert rows[1:] == [
        ["2023-11-14", "22:13:20", "1000", "count", "0"],
        ["2023-11-14", "22:18:20", "1001", "count", "100"],
        ["2023-11-14", "22:23:20", "1002", "count", "200"],
    ]


def test_list_metric_values_json_with_a_range(db: Path) -> None:
    result = run(
        "list-metric-values",
        "--db", str(db),
        "--thing-name", "gw-1",
        "--metric-name", "aws:listening-tcp-ports",
        "--since", "2023-11-14T22:18:20Z",
        "--until", str(int(T0 + 600)),
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [
        {
            "thing": "gw-1",
            "metric": "aws:listening-tcp-ports",
            "timestamp": T0 + 300,
            "report_id": 1001,
            "value": {"ports": [22, 443]},
        }
    ]


@pytest.mark.parametrize(
    ("since", "expected"),
    [(["--since", "-1h"], [1800, 60]), (["--since=-45m"], [1800, 60]), (["--since", "-2m"], [60])],
)
def test_relative_times(db: Path, since: list[str], expected: list[int]) -> None:
    result = run(
        "list-metric-values", "--db", str(db), "--thing", "gw-3", "--metric", "m", "--json", *since
    )
    assert result.returncode == 0, result.stderr
    assert [v["value"]["count"] for v in lines(result.stdout)] == expected


def test_limit(db: Path) -> None:
    args = [
        "list-metric-values",
        "--db",
        str(db),
        "--thing",
        "gw-1",
        "--metric",
        "aws:all-bytes-out",
    ]
    result = run(*args, "--limit", "2", "--json")
    assert [v["report_id"] for v in lines(result.stdout)] == [1000, 1001]
    result = run(*args, "--limit", "2")
    assert "the first 2" in result.stderr
    assert len(lines(run(*args, "--limit", "0", "--json").stdout)) == 3


def test_nothing_found_says_why(db: Path) -> None:
    base = ["list-metric-values", "--db", str(db)]
    result = run(*base, "--thing", "gw-9", "--metric", "m")
    assert (result.returncode, result.stdout) == (0, "")
    assert "no reports from thing 'gw-9'" in result.stderr
    result = run(*base, "--thing", "gw-2", "--metric", "aws:all-bytes-out")
    assert "it has: cpu_usage" in result.stderr
    result = run(*base, "--thing", "gw-2", "--metric", "cpu_usage", "--until", "2000-01-01")
    assert "in that range" in result.stderr


# --------------------------------------------------------------------------- export
def test_export_to_stdout(db: Path) -> None:
    result = run("export", "--db", str(db))
    assert result.returncode == 0, result.stderr
    records = lines(result.stdout)
    assert len(records) == 3 * 2 + 1 + 3
    assert [r["timestamp"] for r in records] == sorted(r["timestamp"] for r in records)
    assert records[0] == {
        "thing": "gw-1",
        "metric": "aws:all-bytes-out",
        "timestamp": T0,
        "report_id": 1000,
        "value": {"count": 0},
        "format": "json",
    }
    assert {"thing": "gw-2", "metric": "cpu_usage", "timestamp": T0 + 60, "report_id": None,
            "value": {"number": 26.5}, "format": "cbor"} in records  # fmt: skip


def test_export_range_to_a_file(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    result = run(
        "export", "--db", str(db), "--since", str(T0), "--until", str(T0 + 300), "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "exported 3 values" in result.stderr
    records = lines(out.read_text())
    assert [(r["thing"], r["metric"]) for r in records] == [
        ("gw-1", "aws:all-bytes-out"),
        ("gw-1", "aws:listening-tcp-ports"),
        ("gw-2", "cpu_usage"),
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["export.jsonl"]  # no temporary left


def test_export_to_an_unwritable_place(db: Path, tmp_path: Path) -> None:
    one_line_error(run("export", "--db", str(db), "-o", str(tmp_path / "no" / "such" / "x")))


# --------------------------------------------------------------------------- database choice, errors
def test_default_database_is_in_the_state_dir(db: Path) -> None:
    result = run("things", "--json", env={"DEFENDER_AGENT_STATE_DIR": str(db.parent)})
    assert result.returncode == 0, result.stderr
    assert len(lines(result.stdout)) == 3


def test_missing_database_is_one_line(tmp_path: Path) -> None:
    err = one_line_error(run("things", "--db", str(tmp_path / "none.sqlite3")))
    assert "no service database at" in err
    assert not (tmp_path / "none.sqlite3").exists()  # a query never creates one


@pytest.mark.parametrize(
    "args",
    [
        ["export", "--since", "yesterday"],
        ["export", "--until", "-5"],
        ["export", "--since", "2024-13-01"],
        ["export", "--since", "-1h", "--until", "-2h"],
        ["list-metric-values", "--thing", "gw-1"],
        ["list-metric-values", "--thing", "gw-1", "--metric", "m", "--limit", "-1"],
        ["list-metric-values", "--thing", "gw-1", "--metric", "m", "--limit", "x"],
        ["things", "--db", "mysql://db/x"],
        ["nonsense"],
    ],
)
def test_bad_options_are_one_line_and_exit_2(db: Path, args: list[str]) -> None:
    if "--db" not in args:
        args = [*args, "--db", str(db)]
    one_line_error(run(*args))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://svc:Hunter2-pw@127.0.0.1:1/defender",
        "postgresql://svc@127.0.0.1:1/defender?password=Hunter2-pw",
        "postgresql://svc@127.0.0.1:1/defender?sslmode=disable&PASSWORD=Hunter2-pw",
        "postgresql://svc@127.0.0.1:1/defender?%70assword=Hunter2-pw",
        "postgresql://svc@127.0.0.1:1/defender?password=Hunter2-pw%zz",  # libpq quotes it
        "postgresql://svc@127.0.0.1:1/defender?password=Hunter2-pw&bogus=1",
        "host=127.0.0.1 port=1 dbname=defender password=Hunter2-pw",
        "host=127.0.0.1 port=1 password='Hunter2-pw with spaces'",
        "host=127.0.0.1 port=1 password='Hunter2-pw",  # unterminated: libpq's own error
        "host=127.0.0.1 password=Hunter2-pw junk",  # libpq quotes the text after it
    ],
)
@pytest.mark.parametrize("query", [["things"], ["export"], ["list-metric-values"]])
def test_a_database_password_is_never_printed(url: str, query: list[str]) -> None:
    """Issue 9 item 4: every form libpq takes a password in is masked, errors included."""
    if query == ["list-metric-values"]:
        query = [*query, "--thing", "gw-1", "--metric", "m"]
    result = run(*query, "--db", url)
    err = one_line_error(result)
    assert "Hunter2" not in result.stdout + err
    assert "service database" in err and "***" in err


def test_an_error_naming_a_hostile_path_is_one_escaped_line(tmp_path: Path) -> None:
    forged = "defender-agent: info: all good"
    err = one_line_error(run("things", "--db", f"{tmp_path}/x\n{forged}\x1b[2J"))
    assert f"x\\n{forged}\\x1b[2J" in err and "\x1b" not in err


def test_help() -> None:
    result = run("list-metric-values", "--help")
    assert result.returncode == 0
    assert "--since" in result.stdout and "--thing" in result.stdout
