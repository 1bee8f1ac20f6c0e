"""`defender-agent service` start-up lines: the plain-TCP warning, and a database error alone."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_cli_run import run


def test_a_database_error_at_start_is_not_preceded_by_service_stopped(tmp_path: Path) -> None:
    done = run(
        "service", "--no-tls", "--port", "1", "--db", "/proc/nonexistent/x.db",
        "--state-dir", str(tmp_path / "s"),
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert "Traceback" not in done.stderr.decode()
    assert not [line for line in lines if "service stopped" in line], lines
    assert lines[-1] == (
        "defender-agent: error: service database /proc/nonexistent/x.db: No such file or directory"
    )
    # plain TCP (to loopback: the default broker is localhost) is a warning at every start
    assert lines[0].endswith(
        "defender-agent: warning: plain TCP to localhost:1: no TLS, no server verification"
    )
    assert len(lines) == 2, lines
