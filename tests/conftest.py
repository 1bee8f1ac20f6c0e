"""Shared fixtures: recorded proc roots, golden files, and the --update-golden option."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
PROC_FIXTURES = TESTS / "fixtures" / "proc"
GOLDEN = TESTS / "golden"
SCENARIOS = sorted(p.name for p in PROC_FIXTURES.iterdir() if p.is_dir())


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current output (review the diff!)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def proc_fixture(name: str) -> Path:
    """The path of a recorded proc root under tests/fixtures/proc."""
    path = PROC_FIXTURES / name
    assert path.is_dir(), f"no fixture {name}"
    return path


@pytest.fixture
def proc_copy(tmp_path: Path):
    """Copy a proc fixture into tmp_path (so a test can advance it to its '.next' sample)."""

    def make(name: str) -> Path:
        dest = tmp_path / "proc" / name
        shutil.copytree(proc_fixture(name), dest)
        return dest

    return make


def advance(root: Path) -> None:
    """Replace net/dev and stat by their recorded second sample, where there is one."""
    for rel in ("net/dev", "stat"):
        nxt = root / (rel + ".next")
        if nxt.exists():
            shutil.copyfile(nxt, root / rel)


def all_keys(node: object) -> set[str]:
    """Every mapping key anywhere in a decoded document."""
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in all_keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in all_keys(v)}
    return set()
