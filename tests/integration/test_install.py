"""packaging/install.sh, run as root into a scratch root: twice, then --uninstall, then --purge.

The wheel is built from this checkout; its dependencies come from a wheelhouse (pip
download, cached between runs in /tmp), so the installs themselves use no network
(``--pip-args "--no-index --find-links DIR"``). The units are checked with
``systemd-analyze verify --root`` against the scratch root, where ExecStart must exist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "packaging" / "install.sh"
PYTHON = "/usr/bin/python3"
#: Dependencies' wheels, kept between runs (the install itself is offline).
WHEELHOUSE = Path("/tmp/defender-agent-test-wheelhouse")
UNITS = ("defender-agent.service", "defender-agent-service.service")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root"),
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"),
    pytest.mark.skipif(not Path(PYTHON).exists(), reason=f"needs {PYTHON}"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd"),
]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with this checkout's wheel and its dependencies' wheels."""
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        timeout=300,
        cwd=out,
    )
    if not any(WHEELHOUSE.glob("awscrt-*.whl")):
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELHOUSE)),
                *("--python-version", "3.11", "--only-binary", ":all:"),
                *("awsiotsdk>=1.21", "cbor2>=5.6"),
            ],
            check=True,
            timeout=600,
        )
    for wheel in WHEELHOUSE.glob("*.whl"):
        shutil.copy(wheel, out)
    return out


def scratch_root(path: Path) -> Path:
    """A root with the account files useradd needs and systemd's own units (for verify)."""
    etc = path / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    for f in ("shadow", "gshadow"):
        (etc / f).chmod(0o600)
    shutil.copytree("/lib/systemd/system", path / "lib/systemd/system", symlinks=True)
    return path


def install(root: Path, wheels: Path, *extra: str) -> str:
    wheel = next(wheels.glob("defender_agent-*.whl"))
    result = subprocess.run(
        [
            *("sh", str(SCRIPT), "--root", str(root), "--python", PYTHON, "--from", str(wheel)),
            *("--pip-args", f"--no-index --find-links {wheels}", *extra),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def uninstall(root: Path, *extra: str) -> str:
    result = subprocess.run(
        ["sh", str(SCRIPT), "--root", str(root), "--uninstall", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    units = [f"/etc/systemd/system/{unit}" for unit in UNITS]
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tree(root: Path) -> dict[str, str]:
    """Every path under etc/ and usr/ with its mode (the installed configuration and units)."""
    found = {}
    for top in ("etc/defender-agent", "etc/systemd/system", "usr/local/bin"):
        for path in sorted((root / top).rglob("*")):
            if path.is_symlink():
                found[str(path.relative_to(root))] = "-> " + str(path.readlink())
            else:
                found[str(path.relative_to(root))] = oct(path.stat().st_mode & 0o7777)
    return found


def test_install_twice_upgrade_in_place_verify_then_uninstall(tmp_path: Path, wheels: Path) -> None:
    root = scratch_root(tmp_path / "root")
    started = time.monotonic()
    first = install(root, wheels)
    venv = root / "opt/defender-agent"
    exe = venv / "bin/defender-agent"
    assert "made the venv" in first and "wrote" in first
    version = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert version.stdout.startswith("defender-agent ")
    # the user, the configuration, the units
    passwd = (root / "etc/passwd").read_text()
    assert "defender-agent:x:" in passwd and ":/usr/sbin/nologin" in passwd
    gid = next(
        line.split(":")[2]
        for line in (root / "etc/group").read_text().splitlines()
        if line.startswith("defender-agent:")
    )
    config = root / "etc/defender-agent/config.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o640" and str(config.stat().st_gid) == gid
    assert (root / "etc/defender-agent/agent.toml.example").exists()
    # the configuration written is one the agent and the service read (no unknown keys)
    from defender_agent.config import load_config

    assert load_config({}, config, environ={}, command="status").agent.interval == 300
    service_toml = root / "etc/defender-agent/service.toml"
    assert str(load_config({}, service_toml, environ={}, command="status").service.state_dir) == (
        "/var/lib/defender-agent-service"
    )
    assert (
        'state_dir = "/var/lib/defender-agent-service"'
        in (root / "etc/defender-agent/service.toml").read_text()
    )
    for unit in UNITS:
        text = (root / "etc/systemd/system" / unit).read_text()
        assert "Type=notify" in text and "WatchdogSec=" in text and "NotifyAccess=main" in text
        assert "ExecStart=/opt/defender-agent/bin/defender-agent " in text
    assert (
        str((root / "usr/local/bin/defender-agent").readlink())
        == "/opt/defender-agent/bin/defender-agent"
    )
    checked = verify(root)
    assert checked.returncode == 0, checked.stderr

    # the second run: an upgrade in place that keeps the configuration and the state
    config.write_text(config.read_text() + "# edited by the admin\n")
    state = root / "var/lib/defender-agent"
    state.mkdir(parents=True)
    (state / "status.json").write_text('{"version": 1}')
    before = tree(root)
    marker = (venv / "pyvenv.cfg").stat().st_ino
    second = install(root, wheels)
    assert "made the venv" not in second and "kept" in second
    assert (venv / "pyvenv.cfg").stat().st_ino == marker  # the same venv, upgraded
    assert tree(root) == before
    assert config.read_text().endswith("# edited by the admin\n")
    assert (state / "status.json").read_text() == '{"version": 1}'
    assert (root / "etc/passwd").read_text() == passwd  # no second user
    assert verify(root).returncode == 0
    took = time.monotonic() - started
    assert took < 60, f"two installs took {took:.0f} s"

    # --uninstall keeps configuration and state; then verify fails (no ExecStart)
    uninstall(root)
    assert not venv.exists()
    assert not any((root / "etc/systemd/system").glob("defender-agent*"))
    assert config.exists() and (state / "status.json").exists()
    assert "defender-agent:" in (root / "etc/passwd").read_text()
    # --purge removes the rest
    uninstall(root, "--purge")
    assert not (root / "etc/defender-agent").exists() and not state.exists()
    assert "defender-agent:" not in (root / "etc/passwd").read_text()


def test_the_unit_check_can_fail(tmp_path: Path) -> None:
    """systemd-analyze verify --root refuses units whose ExecStart is missing."""
    root = scratch_root(tmp_path / "root")
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(REPO / "packaging/systemd" / unit, units / unit)
    checked = verify(root)
    assert checked.returncode != 0
    assert "/opt/defender-agent/bin/defender-agent is not executable" in checked.stderr


def test_bad_options_exit_2_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", str(SCRIPT), "--root", "relative/path"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "install.sh: error: --root must be an absolute path"
