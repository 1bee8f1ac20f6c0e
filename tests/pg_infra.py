"""A throwaway PostgreSQL cluster for the tests (the storage tests and the service scale-out).

The cluster is made with initdb and started with pg_ctl on a free loopback port in a temporary
directory, as the ``postgres`` user when the tests run as root. ``pg_cluster`` (session) and
``pg_url`` (a fresh database per test) are the fixtures, in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.mqtt_infra.broker import free_port

__all__ = ["Cluster", "create_database", "pg_bin", "unavailable_reason"]


def pg_bin() -> Path | None:
    found = sorted(  # Debian: /usr/lib/postgresql/<major>/bin; the newest major wins
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """A PostgreSQL cluster in a temporary directory, run as ``user`` when we are root."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable  # fsync on (benchmarks); off for tests
        self.root = Path(tempfile.mkdtemp(prefix="defender-agent-pg-"))
        self.as_root = os.geteuid() == 0
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.data = self.root / "data"
        self.port = 0

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / tool), *args]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> None:
        done = self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        for _ in range(5):  # the port may be taken between choosing and binding
            self.port = free_port()
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            if not self.durable:
                options += " -c fsync=off -c max_connections=50"
            log = str(self.root / "server.log")
            done = self.run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")
            if done.returncode == 0:
                return
        raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why no cluster can be started here, or ``None``."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed (the postgresql extra)"
    if pg_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _has_user("postgres")):
        return "running as root needs runuser and a 'postgres' user for initdb"
    return None


def create_database(cluster: Cluster) -> str:
    """Create an empty database in ``cluster`` and return its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.url(name)
