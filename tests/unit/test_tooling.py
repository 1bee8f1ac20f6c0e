"""The development tools: linters pinned in pyproject.toml, and the venv has those versions."""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).parents[2]
PINNED = ("ruff", "mypy")


def extra_requirements() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra: list[str] = pyproject["project"]["optional-dependencies"]["test"]
    return extra


def pin(tool: str) -> str:
    """The exact version the test extra pins ``tool`` to."""
    for requirement in extra_requirements():
        match = re.match(rf"{tool}==([\w.]+)\s*(;.*)?$", requirement)
        if match:
            return match.group(1)
    raise AssertionError(f"{tool} is not pinned with == in the test extra")


@pytest.mark.parametrize("tool", PINNED)
def test_linters_are_pinned(tool: str) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", pin(tool))


@pytest.mark.parametrize("tool", PINNED)
def test_the_venv_has_the_pinned_version(tool: str) -> None:
    try:
        installed = version(tool)
    except PackageNotFoundError:
        pytest.skip(f"{tool} is not installed here (mypy needs Python 3.10+)")
    assert installed == pin(tool), f"run scripts/test (or pip install -e '.[test]') to get {tool}"


def test_coverage_measures_branches_of_the_library() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    run = pyproject["tool"]["coverage"]["run"]
    assert run["branch"] is True and run["source"] == ["defender_agent"]
    assert any(r.startswith("pytest-cov") for r in extra_requirements())
    script = (ROOT / "scripts" / "test").read_text(encoding="utf-8")
    assert "--cov" in script and "coverage report --format=total" in script
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert ".coverage" in ignored and ".coverage.*" in ignored
