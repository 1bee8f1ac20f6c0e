"""The systemd unit runs the agent as an unprivileged user with its state directory."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "packaging" / "systemd" / "defender-agent.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_runs_the_agent_unprivileged() -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/defender-agent") and argv[1] == "run"
    assert "--config" in argv
    assert service["User"] not in ("", "root")
    assert service["StateDirectory"] == "defender-agent"
    assert service["Environment"] == "DEFENDER_AGENT_STATE_DIR=/var/lib/defender-agent"
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "always"
    assert "AF_NETLINK" in service["RestrictAddressFamilies"]  # the sock_diag socket source
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "Unknown key" not in result.stderr and "Invalid" not in result.stderr, result.stderr
