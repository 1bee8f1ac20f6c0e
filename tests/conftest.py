"""Shared fixtures: recorded proc roots, golden files, and the --update-golden option."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).parent
PROC_FIXTURES = TESTS / "fixtures" / "proc"
GOLDEN = TESTS / "golden"
#: The standard metrics of the example report in protocol.md §2.7 (long names).
PROTOCOL_EXAMPLE_METRICS: dict[str, Any] = {
    "listening_tcp_ports": {"ports": [{"interface": "eth0", "port": 22}], "total": 1},
    "listening_udp_ports": {"ports": [{"interface": "eth0", "port": 68}], "total": 1},
    "network_stats": {"bytes_in": 5120, "bytes_out": 2048, "packets_in": 40, "packets_out": 31},
    "tcp_connections": {
        "established_connections": {
            "connections": [
                {
                    "local_interface": "eth0",
                    "local_port": 50312,
                    "remote_addr": "203.0.113.7:8883",
                },
                {"local_port": 50400, "remote_addr": "[2001:db8::5]:443"},
            ],
            "total": 2,
        }
    },
}
#: The test plugin is a distribution the plugin tests lay out themselves, not a test module.
collect_ignore = ["plugins"]
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
