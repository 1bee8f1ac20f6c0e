"""The systemd unit: it runs what the README installs, and ``systemd-analyze verify`` passes.

``systemd-analyze verify`` needs the unit's ``ExecStart`` binary to exist, and CI machines
have no ``/opt/defender-agent``: the test verifies a copy of the unit whose ``ExecStart``
points at this environment's ``defender-agent``, and checks separately that the committed
unit's path is the one the README installs to. Warnings count as failures (``verify``
exits 0 on an unknown key). No booted systemd is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "packaging" / "systemd" / "defender-agent.service"
README = ROOT / "README.md"
INSTALL = ROOT / "packaging" / "install.sh"
INSTALLED = "/opt/defender-agent/bin/defender-agent"


def exec_start(unit_text: str) -> str:
    match = re.search(r"^ExecStart=(\S+)(.*)$", unit_text, re.MULTILINE)
    assert match is not None
    return match[1]


def test_the_unit_runs_what_the_install_script_installs() -> None:
    unit = UNIT.read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    script = INSTALL.read_text(encoding="utf-8")
    assert exec_start(unit) == INSTALLED
    venv = str(Path(INSTALLED).parents[1])
    assert f"\nPREFIX={venv}\n" in script  # the script's default prefix is the unit's venv
    assert f"a venv in `{venv}`" in readme
    assert "sudo packaging/install.sh" in readme
    # The configuration the unit names is where the script and the README put it.
    assert "--config /etc/defender-agent/config.toml" in unit
    assert "ETC=$ROOT/etc/defender-agent\n" in script and '"$ETC/config.toml"' in script
    assert "/etc/defender-agent/config.toml" in readme


def agent_binary() -> Path:
    """This environment's ``defender-agent`` script (next to the interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "defender-agent"
    if beside.is_file():
        return beside
    found = shutil.which("defender-agent")
    if found is None:
        pytest.skip("no defender-agent script installed")
    return Path(found)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    unit = UNIT.read_text(encoding="utf-8").replace(INSTALLED, str(agent_binary()))
    copy = tmp_path / UNIT.name
    copy.write_text(unit, encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "cat"},
    )
    # Only what concerns this unit: verify may also comment on the host's own units.
    about_us = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if UNIT.name in line or str(copy) in line
    ]
    assert result.returncode == 0, result.stdout + result.stderr
    assert not about_us, "\n".join(about_us)


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key in the same unit is reported."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    unit = UNIT.read_text(encoding="utf-8").replace(INSTALLED, str(agent_binary()))
    copy = tmp_path / UNIT.name
    copy.write_text(unit.replace("Restart=always", "Restrat=always"), encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120, check=False
    )
    assert "Restrat" in result.stdout + result.stderr
