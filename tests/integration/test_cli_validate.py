"""``defender-agent validate`` through real subprocesses: sniffing, streams, huge files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import cbor2
import pytest

from tests.conftest import GOLDEN, proc_fixture

EXE = [sys.executable, "-m", "defender_agent"]
LIMIT = 131072


def run(*args: str, stdin: Optional[bytes] = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*EXE, *args], input=stdin, capture_output=True, timeout=120, check=False
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(result.args, result.returncode, out, err)


def report(rid: int) -> dict[str, object]:
    return {"header": {"report_id": rid, "version": "1.0"}, "metrics": {}}


def line(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------ sniffing (#6)
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"hello world", "$: not JSON or CBOR: text 'hello world'"),
        (b"  [] \n", "$: a JSON array, not a report (a report is a JSON object)"),
        (b'"a report"', "$: a JSON string, not a report (a report is a JSON object)"),
        (b"\xef\xbb\xbf" + line(report(1)), "$: payload starts with a UTF-8 byte order mark"),
        (b" \n\t ", "$: no report: the input is only whitespace"),
        (b"", "$: no report: the input is empty"),
        (cbor2.dumps([1]), "$: a CBOR array, not a report (a report is a CBOR map)"),
    ],
    ids=["text", "array", "string", "bom", "whitespace", "empty", "cbor-array"],
)
def test_what_is_not_a_report_says_what_it_is(payload: bytes, message: str) -> None:
    result = run("validate", "-", stdin=payload)
    assert result.returncode == 1
    assert result.stderr.startswith(f"-: error: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == "-: invalid (1 error(s))\n"


def test_leading_whitespace_before_a_report() -> None:
    result = run("validate", "-", stdin=b"\n\n   " + line(report(1)) + b"\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "-: valid (json, long names)\n"


# ------------------------------------------------------------------------------ streams (#7)
@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_what_collect_writes_with_o_is_valid(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"two.{fmt}"
    collect = run(
        "collect",
        "--proc-root",
        str(proc_fixture("gateway_dualstack")),
        "--state-dir",
        str(tmp_path / "state"),
        "-n",
        "2",
        "-s",
        "0",
        "-f",
        fmt,
        "-o",
        str(out),
    )
    assert collect.returncode == 0, collect.stderr
    if fmt == "json":
        assert len(out.read_bytes().splitlines()) == 2  # JSON lines
    result = run("validate", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}: 2 reports, all valid ({fmt}, long names)\n"


def test_each_report_of_a_stream_is_checked_and_named_by_index(tmp_path: Path) -> None:
    bad = report(0)
    path = tmp_path / "reports.json"
    path.write_bytes(b"\n".join([line(report(1)), line(bad), line(report(3)), b"[1]"]) + b"\n")
    result = run("validate", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: report 2: error: header.report_id: expected an integer from 1 to 2**63-1, got 0",
        f"{path}: report 4: error: $: a JSON array, not a report (a report is a JSON object)",
    ]
    assert result.stdout == f"{path}: 4 reports, 2 invalid (2 error(s))\n"


def test_indented_reports_one_after_another() -> None:
    texts = b"".join(p.read_bytes() for p in sorted(GOLDEN.glob("*.short.json")))
    result = run("validate", "-", stdin=texts)
    assert result.returncode == 0, result.stderr
    count = len(list(GOLDEN.glob("*.short.json")))
    assert result.stdout == f"-: {count} reports, all valid (json, short names)\n"


def test_a_cbor_sequence_with_a_broken_item() -> None:
    items = [bytes.fromhex(p.read_text()) for p in sorted(GOLDEN.glob("*.long.cbor.hex"))]
    result = run("validate", "--format", "cbor", "-", stdin=b"".join(items) + b"\xff\x00")
    assert result.returncode == 1
    index = len(items) + 1
    assert result.stderr.splitlines()[0].startswith(f"-: report {index}: error: $: invalid CBOR")
    after = "the 1 bytes after it are not checked"
    assert result.stderr.splitlines()[1] == f"-: report {index}: error: $: {after}"
    assert result.stdout == f"-: {index} reports, 1 invalid (2 error(s))\n"


def test_a_single_document_still_reads_as_before() -> None:
    path = GOLDEN / "many_connections.short.json"
    result = run("validate", str(path))
    assert result.returncode == 0
    assert result.stdout == f"{path}: valid (json, short names)\n"


# ------------------------------------------------------------------------------ size (#9 item 10)
def test_a_50_mb_file_says_its_size_and_the_limit_in_little_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    size = 50 * 1024 * 1024
    with path.open("wb") as handle:
        handle.write(b'{"header": {"report_id": 1, "version": "1.0"}, "x": "')
        handle.write(b"x" * (size - handle.tell() - 2))
        handle.write(b'"}')
    assert path.stat().st_size == size
    # The peak resident memory of the validating process, from /proc (VmHWM starts afresh
    # at exec, unlike getrusage's maxrss, which keeps the forking parent's).
    code = (
        "import runpy, sys; sys.argv = ['defender-agent', 'validate', sys.argv[1]]"
        "\ntry: runpy.run_module('defender_agent', run_name='__main__')"
        "\nexcept SystemExit as exc:"
        "\n    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]"
        "\n    print(exc.code, hwm[0].split()[1], file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, timeout=120, check=False
    )
    err = result.stderr.decode().splitlines()
    assert err[0] == (
        f"{path}: error: $: the file is {size} bytes, over the {LIMIT}-byte IoT Core limit "
        "of one report"
    )
    status, max_rss_kib = err[-1].split()
    assert status == "1"
    assert int(max_rss_kib) < 40 * 1024  # far less than the file: it is never held whole
    assert result.stdout.decode() == f"{path}: invalid (1 error(s))\n"


def test_a_stream_of_reports_each_under_the_limit_may_be_larger_than_the_limit(
    tmp_path: Path,
) -> None:
    one = line(report(1))
    count = 3 * LIMIT // len(one)
    path = tmp_path / "many.json"
    path.write_bytes(b"\n".join(line(report(i + 1)) for i in range(count)) + b"\n")
    assert path.stat().st_size > LIMIT
    result = run("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: {count} reports, all valid (json, long names)\n"
