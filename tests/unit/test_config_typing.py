"""The configuration is typed: mypy --strict rejects a misspelt setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """\
from pathlib import Path
from typing import Optional

from defender_agent.config import Config, load_config


def interval(c: Config) -> int:
    return c.agent.interval


def state_dir(c: Config) -> Optional[Path]:
    return c.agent.state_dir


def min_delay() -> float:
    return load_config({"dry_run": True}).service.min_delay
"""

BAD = """\
from defender_agent.config import Config


def section_typo(c: Config) -> int:
    return c.agent.intervl


def flat_typo(c: Config) -> int:
    return c.intervl


def wrong_type(c: Config) -> str:
    return c.agent.interval
"""


@pytest.mark.slow
def test_mypy_catches_a_misspelt_setting(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    pytest.importorskip("mypy", reason="mypy is pinned for Python 3.10+ only")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            "good.py",
            "bad.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 1, result.stdout + result.stderr
    assert not [line for line in errors if line.startswith("good.py")], errors
    assert any(
        line.startswith("bad.py:5:") and '"AgentSection" has no attribute "intervl"' in line
        for line in errors
    ), errors
    assert any(
        line.startswith("bad.py:9:") and '"Config" has no attribute "intervl"' in line
        for line in errors
    ), errors
    assert any(
        line.startswith("bad.py:13:") and 'Incompatible return value type (got "int"' in line
        for line in errors
    ), errors
