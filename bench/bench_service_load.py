"""Load benchmark of the local Device Defender service (``defender-agent service``).

N simulated devices (default 1 000), each its own MQTT connection (awscrt, MQTT 3.1.1,
QoS 1) to a mosquitto on 127.0.0.1, spread over ``--device-procs`` processes (default 4).
Each device subscribes to its thing's ``json/+`` reply topics, then, once every device is
connected, sends ``--reports`` reports (distinct thing names, ``--min-delay 0`` so none is
throttled) closed-loop: the next report when the reply to the previous one came. Every
reply is counted; a missing or unexpected reply fails the run.

Scenarios (each with a fresh broker, fresh service processes, fresh devices):

* ``sqlite-1``: one service process, SQLite (the default store);
* ``pg-1``: one service process, PostgreSQL;
* ``pg-2``: two service processes in one ``--shared-group``, one PostgreSQL database.
  mosquitto 2.0 never matches ``$aws/...`` against a shared subscription, so the broker
  runs a loopback bridge that republishes reports as ``dd/$aws/...`` and the services use
  ``--topic-prefix dd/``;
* ``pg-1-bridge``: one process behind the same bridge (the bridge's own cost);
* ``sqlite-1-tls``: ``sqlite-1`` with mutual TLS everywhere (handshakes before the clock);
* ``sqlite-1-reply-first``, ``pg-1-reply-first``: ``sqlite-1`` and ``pg-1`` with
  ``--reply-before-store`` (the ACCEPTED reply before the commit), run right after them, so
  that one run compares the two orders.
* ``sqlite-1-baseline``, ``pg-1-baseline``: ``sqlite-1`` and ``pg-1`` served by another
  checkout of the project (``--baseline-src DIR``, e.g. a ``git worktree`` of an older
  commit, run from ``DIR/src`` with this interpreter), so that one run compares today's code
  with the code a target was set against.

``--kill N`` measures durability instead: N times, start one service, let 6 devices (in this
process) publish open-loop, kill -9 the service at a random moment; then count the ACCEPTED
replies the devices received against the reports in the database, for SQLite (alone, and
with another connection taking the write lock 0.3 s of every 0.5 s) and PostgreSQL, storing
first and replying first (tests/integration/test_service_durability.py does the same, 5
kills each).

Figures: reports answered per second (replies received by the devices, first publish to
last reply), reports stored per second (first publish to the moment the database holds them
all), reply latency percentiles, CPU seconds of each process. The PostgreSQL cluster is
made with initdb/pg_ctl on a free port (as the ``postgres`` user when run as root), default
settings (fsync on). Output: a table on stdout, JSON to ``--out`` (default
``bench/results/service-load-<date>.json.tmp``, which git ignores).

Run: ``.venv/bin/python bench/bench_service_load.py`` (about 2-3 minutes);
``--scenarios sqlite-1 --devices 200`` for a quick look.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))  # tests.mqtt_infra.pki for the TLS scenario
with contextlib.suppress(ImportError):
    import defender_agent  # noqa: F401
if "defender_agent" not in sys.modules:
    sys.path.insert(0, str(REPO / "src"))

SCENARIOS: dict[str, dict[str, Any]] = {
    "sqlite-1": {"procs": 1, "db": "sqlite", "bridge": False, "tls": False},
    "sqlite-1-reply-first": {
        "procs": 1,
        "db": "sqlite",
        "bridge": False,
        "tls": False,
        "reply_first": True,
    },
    "pg-1": {"procs": 1, "db": "pg", "bridge": False, "tls": False},
    "pg-1-reply-first": {
        "procs": 1,
        "db": "pg",
        "bridge": False,
        "tls": False,
        "reply_first": True,
    },
    "sqlite-1-baseline": {
        "procs": 1,
        "db": "sqlite",
        "bridge": False,
        "tls": False,
        "baseline": True,
    },
    "pg-1-baseline": {"procs": 1, "db": "pg", "bridge": False, "tls": False, "baseline": True},
    "pg-1-bridge": {"procs": 1, "db": "pg", "bridge": True, "tls": False},
    "pg-2": {"procs": 2, "db": "pg", "bridge": True, "tls": False},
    "sqlite-1-tls": {"procs": 1, "db": "sqlite", "bridge": False, "tls": True},
}
DEFAULT_SCENARIOS = (
    "sqlite-1,sqlite-1-reply-first,pg-1,pg-1-reply-first,pg-2,pg-1-bridge,sqlite-1-tls"
)
PREFIX = "dd/"


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _report(report_id: int, n: int) -> bytes:
    """A realistic report (long names, all four groups, one custom metric): ~700 bytes."""
    doc = {
        "header": {"report_id": report_id, "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": {
                "ports": [{"interface": "eth0", "port": 22}, {"port": 8080}],
                "total": 2,
            },
            "listening_udp_ports": {"ports": [{"interface": "eth0", "port": 68}], "total": 1},
            "network_stats": {
                "bytes_in": 5120 + n,
                "bytes_out": 2048,
                "packets_in": 40,
                "packets_out": 31,
            },
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
        },
        "custom_metrics": {"cpu_usage": [{"number": 12.5}]},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- device process


def device_main(args: argparse.Namespace) -> int:
    """Connect ``count`` devices, wait for ``go`` on stdin, run, print one JSON line."""
    _raise_nofile()
    from awscrt import io, mqtt

    tls_ctx = None
    if args.tls:
        opts = io.TlsContextOptions.create_client_with_mtls_from_path(args.cert, args.key)
        opts.override_default_trust_store_from_path(None, args.ca)
        tls_ctx = io.ClientTlsContext(opts)
    client = mqtt.Client(io.ClientBootstrap.get_or_create_static_default(), tls_ctx)
    lock = threading.Lock()
    done = threading.Event()
    state: dict[str, Any] = {"replies": 0, "accepted": 0, "rejected": 0, "unexpected": 0}
    latencies: list[float] = []
    total = args.count * args.reports
    last_reply = [0.0]

    class Device:
        def __init__(self, index: int) -> None:
            self.thing = f"bench-{index:05d}"
            self.topic = f"$aws/things/{self.thing}/defender/metrics/json"
            self.sent = 0
            self.sent_at = 0.0
            self.conn = mqtt.Connection(
                client=client,
                host_name="localhost" if args.tls else "127.0.0.1",
                port=args.port,
                client_id=f"{self.thing}-{os.getpid()}",
                clean_session=True,
                keep_alive_secs=600,
                ping_timeout_ms=10_000,
                protocol_operation_timeout_ms=0,
            )

        def send(self) -> None:
            self.sent += 1
            self.sent_at = time.monotonic()
            self.conn.publish(self.topic, _report(self.sent, self.sent), mqtt.QoS.AT_LEAST_ONCE)

        def on_reply(self, topic: str, payload: bytes, **_kw: object) -> None:
            now = time.monotonic()
            ok = topic.endswith("/accepted")
            try:
                rid = json.loads(payload).get("reportId")
            except ValueError:
                rid = None
            with lock:
                state["replies"] += 1
                state["accepted" if ok else "rejected"] += 1
                if rid != self.sent:
                    state["unexpected"] += 1
                latencies.append(now - self.sent_at)
                last_reply[0] = now
                finished = state["replies"] >= total
            if self.sent < args.reports:
                self.send()
            if finished:
                done.set()

    devices = [Device(i) for i in range(args.first, args.first + args.count)]
    for chunk in range(0, len(devices), 100):  # connect in waves: mosquitto's backlog
        futures = [d.conn.connect() for d in devices[chunk : chunk + 100]]
        for future in futures:
            future.result(60)
    subs = []
    for d in devices:
        future, _ = d.conn.subscribe(
            f"$aws/things/{d.thing}/defender/metrics/json/+", mqtt.QoS.AT_LEAST_ONCE, d.on_reply
        )
        subs.append(future)
    for future in subs:
        future.result(60)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    t0 = time.monotonic()
    for d in devices:
        d.send()
    done.wait(args.timeout)
    elapsed = (last_reply[0] or time.monotonic()) - t0
    with lock:
        result = dict(state)
        lat = sorted(latencies)
    result.update(
        sent=sum(d.sent for d in devices),
        expected=total,
        elapsed=elapsed,
        t0_wall=time.time() - (time.monotonic() - t0),
        lat_ms=[round(x * 1000, 2) for x in _percentiles(lat)],
        cpu_s=_cpu(),
    )
    print(json.dumps(result), flush=True)
    with contextlib.suppress(Exception):
        futures = [d.conn.disconnect() for d in devices]
        for future in futures:
            future.result(10)
    return 0


def _percentiles(values: list[float]) -> list[float]:
    if not values:
        return [0.0, 0.0, 0.0]
    return [values[int(q * (len(values) - 1))] for q in (0.5, 0.9, 0.99)]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 2)


# --------------------------------------------------------------------------- infrastructure


class Broker:
    """mosquitto on 127.0.0.1: plain (or mutual TLS) listener, optional loopback bridge."""

    def __init__(self, root: Path, tls: Optional[Any], bridge: bool) -> None:
        self.root = root
        self.port = _free_port()
        self.bridge_port = _free_port()
        lines = [
            "per_listener_settings false",
            "persistence false",
            f"log_dest file {root / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "max_connections -1",
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            "allow_anonymous true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        lines.append(f"listener {self.port} 127.0.0.1")
        if tls is not None:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        if bridge:
            lines += [
                f"listener {self.bridge_port} 127.0.0.1",
                "connection dd-loopback",
                f"address 127.0.0.1:{self.bridge_port}",
                f'topic $aws/things/+/defender/metrics/+ out 1 "" {PREFIX}',
                "cleansession true",
                "try_private false",
                "bridge_protocol_version mqttv311",
            ]
        conf = root / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                break
            time.sleep(0.02)
        time.sleep(0.5 if bridge else 0.05)  # the bridge connects itself

    def cpu(self) -> float:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Postgres:
    """A throwaway PostgreSQL cluster on a free port, fsync on (tests/pg_infra.py)."""

    def __init__(self) -> None:
        from tests.pg_infra import Cluster, pg_bin

        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries are not installed")
        self.cluster = Cluster(bindir, durable=True)
        self.cluster.start()

    def new_database(self) -> str:
        from tests.pg_infra import create_database

        return create_database(self.cluster)

    def stop(self) -> None:
        self.cluster.stop()


def _stored_count(db: str) -> int:
    try:
        if db.startswith("postgresql://"):
            import psycopg

            with psycopg.connect(db, autocommit=True) as conn:
                row = conn.execute("SELECT COUNT(*) FROM reports").fetchone()
                return int(row[0]) if row else 0
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0])
    except Exception:  # not created yet
        return 0


def _service_argv() -> list[str]:
    return [sys.executable, "-m", "defender_agent", "service"]


def _commit(checkout: Path) -> Optional[str]:
    """The commit ``checkout`` has out, or None when git cannot tell."""
    done = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"],
        check=False,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or None


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def _children_cpu(pid: int) -> float:
    """CPU seconds of a process's children (Detect's worker process), 0 without any."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            total += sum(_proc_cpu(int(child)) for child in task.read_text().split())
        except OSError:
            continue
    return round(total, 2)


def run_scenario(
    name: str, args: argparse.Namespace, work: Path, pki: Any, pg: Optional[Postgres]
) -> dict[str, Any]:
    spec = SCENARIOS[name]
    root = work / name
    root.mkdir(parents=True)
    tls = pki if spec["tls"] else None
    broker = Broker(root, tls, spec["bridge"])
    services: list[subprocess.Popen[bytes]] = []
    devices: list[subprocess.Popen[str]] = []
    logs: list[Path] = []
    try:
        if spec["db"] == "pg":
            assert pg is not None
            db = pg.new_database()
        else:
            db = str(root / "service.sqlite3")
        for i in range(spec["procs"]):
            argv = [
                *_service_argv(),
                "--broker",
                "localhost" if tls else "127.0.0.1",
                "--port",
                str(broker.port),
                "--db",
                db,
                "--state-dir",
                str(root),
                "--min-delay",
                "0",
                "--log-level",
                args.log_level,
                "--client-id",
                f"bench-service-{i}",
            ]
            if tls:
                cert, key = pki.client("responder")
                argv += ["--ca-file", str(pki.ca), "--cert-file", str(cert), "--key-file", str(key)]
            else:
                argv += ["--no-tls"]
            if spec["bridge"]:
                argv += ["--topic-prefix", PREFIX]
            if spec["procs"] > 1:
                argv += ["--shared-group", "bench"]
            if spec.get("reply_first"):
                argv += ["--reply-before-store"]
            env = None
            if spec.get("baseline"):
                env = {**os.environ, "PYTHONPATH": str(Path(args.baseline_src, "src").resolve())}
            log_file = root / f"service-{i}.log"
            logs.append(log_file)
            with log_file.open("wb") as out:
                services.append(subprocess.Popen(argv, stdout=out, stderr=out, env=env))
        deadline = time.monotonic() + 30
        while (
            not all("service answering reports" in p.read_text() for p in logs if p.exists())
            or len(logs) != spec["procs"]
        ):
            if time.monotonic() > deadline or any(s.poll() is not None for s in services):
                raise RuntimeError(f"service did not start: {[p.read_text()[-800:] for p in logs]}")
            time.sleep(0.05)
        per = [
            args.devices // args.device_procs + (1 if k < args.devices % args.device_procs else 0)
            for k in range(args.device_procs)
        ]
        first = 0
        t_connect = time.monotonic()
        for count in per:
            argv = [
                sys.executable,
                str(Path(__file__).resolve()),
                "device",
                "--port",
                str(broker.port),
                "--first",
                str(first),
                "--count",
                str(count),
                "--reports",
                str(args.reports),
                "--timeout",
                str(args.timeout),
            ]
            if tls:
                cert, key = pki.client("subscriber")
                argv += ["--tls", "--ca", str(pki.ca), "--cert", str(cert), "--key", str(key)]
            first += count
            devices.append(
                subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
        for d in devices:
            assert d.stdout is not None
            line = d.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"device process not ready: {line!r}")
        connect_s = time.monotonic() - t_connect
        cpu0 = {
            "broker": broker.cpu(),
            **{f"service{i}": _proc_cpu(s.pid) for i, s in enumerate(services)},
            **{f"worker{i}": _children_cpu(s.pid) for i, s in enumerate(services)},
        }
        for d in devices:
            assert d.stdin is not None
            d.stdin.write("go\n")
            d.stdin.flush()
        results = []
        for d in devices:
            assert d.stdout is not None
            results.append(json.loads(d.stdout.readline()))
        expected = args.devices * args.reports
        stored_at = None
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            if _stored_count(db) >= expected:
                stored_at = time.time()
                break
            time.sleep(0.05)
        cpu1 = {
            "broker": broker.cpu(),
            **{f"service{i}": _proc_cpu(s.pid) for i, s in enumerate(services)},
            **{f"worker{i}": _children_cpu(s.pid) for i, s in enumerate(services)},
        }
        for d in devices:
            d.wait(30)
        for s in services:
            s.send_signal(signal.SIGTERM)
        for s in services:
            s.wait(60)
        stored = _stored_count(db)
    finally:
        for proc in [*devices, *services]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        broker.stop()
    t_start = min(r["t0_wall"] for r in results)
    t_end = max(r["t0_wall"] + r["elapsed"] for r in results)
    replies = sum(r["replies"] for r in results)
    lat_all = [r["lat_ms"] for r in results]
    summaries = []
    for p in logs:
        lines = [ln for ln in p.read_text().splitlines() if "service stopped:" in ln]
        summaries.append(lines[-1].split("service stopped: ", 1)[1] if lines else "")
    answered_s = t_end - t_start
    return {
        "scenario": name,
        **spec,
        "devices": args.devices,
        "reports_per_device": args.reports,
        "expected": expected,
        "sent": sum(r["sent"] for r in results),
        "replies": replies,
        "accepted": sum(r["accepted"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "unexpected": sum(r["unexpected"] for r in results),
        "stored": stored,
        "connect_s": round(connect_s, 2),
        "answered_s": round(answered_s, 3),
        "answered_per_s": round(replies / answered_s, 1) if answered_s > 0 else 0,
        "stored_s": round(stored_at - t_start, 3) if stored_at else None,
        "stored_per_s": round(expected / (stored_at - t_start), 1) if stored_at else None,
        "latency_ms_p50_p90_p99_worst_process": [max(x[i] for x in lat_all) for i in range(3)],
        "cpu_s": {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0},
        "device_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        "service_summaries": summaries,
        "ok": replies == expected
        and sum(r["unexpected"] for r in results) == 0
        and stored == expected,
    }


def kill_main(args: argparse.Namespace) -> int:
    """``--kill N``: acknowledged vs stored after N kill -9 per database and reply order."""
    import types

    from tests.integration.test_service_durability import (
        kill_while_publishing,
        pg_rows,
        sqlite_rows,
    )

    work = Path(tempfile.mkdtemp(prefix="dd-bench-kill-"))
    pg = Postgres()
    runs = []
    started = time.monotonic()
    try:
        for store in ("sqlite", "sqlite-contended", "pg"):
            for order in ("store-first", "reply-first"):
                root = work / f"{store}-{order}"
                root.mkdir()
                broker = Broker(root, None, False)
                try:
                    if store == "pg":
                        db = pg.new_database()
                        rows = functools.partial(pg_rows, db)
                    else:
                        db = str(root / "service.sqlite3")
                        rows = functools.partial(sqlite_rows, Path(db))
                    print(f"-- {store} {order}: {args.kill} kills ...", file=sys.stderr, flush=True)
                    t0 = time.monotonic()
                    acked, stored, missing = kill_while_publishing(
                        types.SimpleNamespace(plain=broker.port),  # type: ignore[arg-type]
                        db,
                        rows,
                        root,
                        Path(db) if store == "sqlite-contended" else None,
                        kills=args.kill,
                        extra=["--reply-before-store"] if order == "reply-first" else [],
                    )
                finally:
                    broker.stop()
                run = {
                    "store": store,
                    "order": order,
                    "kills": args.kill,
                    "acknowledged": acked,
                    "stored": stored,
                    "acknowledged_missing": missing,
                    "seconds": round(time.monotonic() - t0, 1),
                }
                print(f"   {json.dumps(run)}", file=sys.stderr, flush=True)
                runs.append(run)
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("| store | order | kill -9 | acknowledged | stored | acknowledged but not stored |")
    print("|" + " --- |" * 6)
    for r in runs:
        print(
            f"| {r['store']} | {r['order']} | {r['kills']} | {r['acknowledged']} "
            f"| {r['stored']} | {r['acknowledged_missing']} |"
        )
    if not args.no_save:
        out = args.out or (
            BENCH / "results" / f"service-kill-{dt.date.today().isoformat()}.json.tmp"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "runtime_s": round(time.monotonic() - started, 1),
            "runs": runs,
        }
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"\nwritten {out}", file=sys.stderr)
    return (
        0 if all(r["acknowledged_missing"] == 0 for r in runs if r["order"] == "store-first") else 1
    )


def machine(**extra: object) -> dict[str, object]:
    """This machine, as every service benchmark's JSON records it (load average: now)."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_avg": os.getloadavg(),
        **extra,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    dev = sub.add_parser("device")
    dev.add_argument("--port", type=int, required=True)
    dev.add_argument("--first", type=int, required=True)
    dev.add_argument("--count", type=int, required=True)
    dev.add_argument("--reports", type=int, required=True)
    dev.add_argument("--timeout", type=float, default=120)
    dev.add_argument("--tls", action="store_true")
    dev.add_argument("--ca")
    dev.add_argument("--cert")
    dev.add_argument("--key")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output path (default: bench/results/service-load-<date>.json.tmp, git-ignored;"
        " keep a run as a record by naming it under bench/results/ without .tmp)",
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=10, help="per device")
    parser.add_argument("--device-procs", type=int, default=4)
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    parser.add_argument("--log-level", default="info", help="the services' --log-level")
    parser.add_argument("--timeout", type=float, default=120, help="per scenario run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (median shown)")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="the checkout that serves the *-baseline scenarios (its src/ is put first on"
        " PYTHONPATH)",
    )
    parser.add_argument(
        "--kill", type=int, default=0, metavar="N", help="durability mode: N kill -9 per case"
    )
    args = parser.parse_args()
    if args.mode == "device":
        return device_main(args)
    _raise_nofile()
    if args.kill:
        return kill_main(args)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if any(SCENARIOS[n].get("baseline") for n in names) and (
        args.baseline_src is None or not (args.baseline_src / "src" / "defender_agent").is_dir()
    ):
        parser.error("the *-baseline scenarios need --baseline-src DIR with DIR/src/defender_agent")
    work = Path(tempfile.mkdtemp(prefix="dd-bench-service-"))
    pg = Postgres() if any(SCENARIOS[n]["db"] == "pg" for n in names) else None
    pki = None
    if any(SCENARIOS[n]["tls"] for n in names):
        from tests.mqtt_infra.pki import make_pki

        pki = make_pki(work / "pki")
    runs = []
    started = time.monotonic()
    try:
        for rep in range(args.repeat):
            for name in names:
                print(f"-- {name} (run {rep + 1}) ...", file=sys.stderr, flush=True)
                run = run_scenario(name, args, work / f"run{rep}", pki, pg)
                run["run"] = rep + 1
                print(f"   {json.dumps(run)}", file=sys.stderr, flush=True)
                runs.append(run)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    header = (
        "| scenario | service procs | store | TLS | replies / expected (every run) "
        "| answered/s median (min-max) | stored/s median (min-max) "
        "| latency p50 / p90 / p99 ms (median run) "
        "| CPU s per 10k reports: services / broker / devices |"
    )
    print(header)
    print("|" + " --- |" * 9)
    summary = []
    for name in names:
        group = [r for r in runs if r["scenario"] == name]
        mid = sorted(group, key=lambda r: r["answered_per_s"])[len(group) // 2]
        answered = [r["answered_per_s"] for r in group]
        stored = [r["stored_per_s"] or 0.0 for r in group]
        ok = all(r["ok"] for r in group)
        scale = 10_000 / mid["expected"]
        svc_cpu = " + ".join(
            str(round(v * scale, 2)) for k, v in mid["cpu_s"].items() if k.startswith("service")
        )
        lat = " / ".join(str(x) for x in mid["latency_ms_p50_p90_p99_worst_process"])
        row = {
            "scenario": name,
            "answered_per_s_median": statistics.median(answered),
            "answered_per_s_min_max": [min(answered), max(answered)],
            "stored_per_s_median": statistics.median(stored),
            "stored_per_s_min_max": [min(stored), max(stored)],
            "all_replies_delivered": ok,
        }
        summary.append(row)
        replies = "/".join(str(r["replies"]) for r in group)
        print(
            f"| {name} | {mid['procs']} | {'PostgreSQL' if mid['db'] == 'pg' else 'SQLite'}"
            f"{' (bridge)' if mid['bridge'] else ''} | {'mTLS' if mid['tls'] else 'no'} "
            f"| {replies} / {mid['expected']}{'' if ok else ' FAILED'} "
            f"| {row['answered_per_s_median']:.0f} ({min(answered):.0f}-{max(answered):.0f}) "
            f"| {row['stored_per_s_median']:.0f} ({min(stored):.0f}-{max(stored):.0f}) | {lat} "
            f"| {svc_cpu} / {round(mid['cpu_s']['broker'] * scale, 2)} "
            f"/ {round(mid['device_cpu_s'] * scale, 2)} |"
        )
    doc = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(
            mosquitto=subprocess.run(
                [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.splitlines()[0]
        ),
        "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "mode"
        },
        "baseline_commit": _commit(args.baseline_src) if args.baseline_src else None,
        "runtime_s": round(time.monotonic() - started, 1),
        "summary": summary,
        "runs": runs,
    }
    if not args.no_save:
        out = args.out or (
            BENCH / "results" / f"service-load-{dt.date.today().isoformat()}.json.tmp"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"\nwritten {out}", file=sys.stderr)
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
