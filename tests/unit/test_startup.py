"""What ``defender-agent collect`` imports before its first report (docs/performance.md, start-up).

The start-up of ``collect`` is a benchmark target (whole process at most 3 times ``ss -tanu``), so the
heavy modules it no longer needs must not come back unnoticed: ``dataclasses`` (with
``inspect``), ``logging`` (with ``traceback`` and ``threading``) and ``cbor2`` for a JSON
report. A run that logs still gets its lines, formatted as ever.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Runs collect in a fresh interpreter, then writes the names of the modules it imported.
CODE = """
import sys
from defender_agent.cli import main
status = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    out.write("\\n".join(sorted(sys.modules)))
sys.exit(status)
"""

NOT_AT_START_UP = ("dataclasses", "inspect", "logging", "traceback", "threading", "cbor2")
if sys.version_info < (3, 10):  # 3.9's bz2 (which argparse's shutil imports) takes threading
    NOT_AT_START_UP = tuple(name for name in NOT_AT_START_UP if name != "threading")


def run_collect(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    listing = tmp_path / "modules.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFENDER_AGENT_")}
    env["DEFENDER_AGENT_CONFIG"] = str(tmp_path / "none.toml")  # not /etc/defender-agent
    (tmp_path / "none.toml").write_text("", encoding="utf-8")
    command = ["collect", "-n", "1", "-s", "0", "--state-dir", str(tmp_path / "state"), *args]
    proc = subprocess.run(
        [sys.executable, "-c", CODE, str(listing), *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    modules = set(listing.read_text(encoding="utf-8").split()) if listing.exists() else set()
    return proc, modules


def test_collect_starts_without_the_heavy_modules(tmp_path: Path) -> None:
    proc, modules = run_collect(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"report_id"' in proc.stdout
    assert "defender_agent.cycle" in modules  # the listing is of the run itself
    assert sorted(set(NOT_AT_START_UP) & modules) == []


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_collect_that_warns_imports_logging_and_formats_the_line(
    tmp_path: Path, fmt: str
) -> None:
    empty = tmp_path / "proc"
    empty.mkdir()
    args = ("--proc-root", str(empty), "--socket-source", "proc", "--log-format", fmt)
    proc, modules = run_collect(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert "logging" in modules
    first = proc.stderr.splitlines()[0]
    expected = f"cannot read {empty}/net/dev (No such file or directory)"
    if fmt == "text":
        assert first.startswith(f"defender-agent: warning: {expected}")
    else:
        assert first.startswith('{"time": ') and f'"message": "{expected}' in first


def test_cbor_output_imports_cbor2(tmp_path: Path) -> None:
    proc, modules = run_collect(tmp_path, "-f", "cbor", "-o", str(tmp_path / "r.cbor"))
    assert proc.returncode == 0, proc.stderr
    assert "cbor2" in modules and (tmp_path / "r.cbor").stat().st_size > 0
