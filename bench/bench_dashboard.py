"""Dashboard benchmark: a big fleet's pages answer fast, and the dashboard does not slow ingest.

The database is made the way the service makes it (``open_store``: the same schema,
migrations and indexes), then filled in SQL (not report by report, which would take hours
here): ``--things`` things (default 10 000) with ``--reports`` reports each spread over the
last 24 h (default 112: about one every 13 min), 9 metric values per report (6 counts, the
listening TCP ports, the destination addresses, the UDP port count) -- 10 080 000 values by
default -- plus one *heavy* thing reporting every 10 s for 24 h (8 640 reports, 77 760
values), whose chart needs the downsampling. Indexes are dropped for the bulk load and made
again (the service's own definitions); PostgreSQL gets a ``VACUUM ANALYZE`` (what
autovacuum does for an insert-only table since PostgreSQL 13: statistics, and the visibility
map that lets the charts' index-only scans skip the table), SQLite none (the service never
runs ``ANALYZE``).

Measured, through the real HTTP server with the dashboard installed (:mod:`defender_agent.web`),
from a client process (like a browser):

* ``fleet``: ``GET /dashboard/api/fleet`` (every thing with its state, counts, ports);
* ``thing``: ``GET /dashboard/api/thing`` for 24 h of an ordinary thing and of the heavy one;
* ``metrics``: a ``/metrics`` scrape;

each ``--runs`` times (median, max; the first, cold, reported apart). Then ingest: batches
of 500 reports (9 values each, the writer's ``record_many``) written for ``--ingest-s``
seconds into the same database in this process (where the service's HTTP server also runs)
with no dashboard client, with ``--browsers`` dashboards open (each polls the fleet every 5 s
and a thing page every 10 s, as the pages do), and with one client asking for the fleet
without pause (a worst case); the three alternate for ``--rounds`` rounds, in an order that
turns each round (the machine is shared: its load falls on all three alike; and a run right
after the worst case pays for the WAL checkpoints it left behind). Reported: the medians of
reports/s and their ratio, and the median of the per-round ratios (each run against the run
without a client of the same round, which cancels the drift of a growing database and of
others' load).

Run: ``.venv/bin/python bench/bench_dashboard.py`` (SQLite and PostgreSQL, about 10 minutes
here); ``--db sqlite --things 1000 --reports 20`` for a quick look. JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from defender_agent.config import load_config  # noqa: E402
from defender_agent.service.http import HttpContext, HttpServer  # noqa: E402
from defender_agent.service.metrics_map import MetricValue  # noqa: E402
from defender_agent.service.runner import RunnerStats  # noqa: E402
from defender_agent.service.storage import MIGRATIONS, Store, StoredReport, open_store  # noqa: E402
from defender_agent.web.app import install  # noqa: E402

DAY = 86_400.0
HEAVY = "thing-heavy"
COUNTS = (
    ("aws:all-bytes-in", "1000 + ({k} * 37 + {t}) % 5000"),
    ("aws:all-bytes-out", "2000 + ({k} * 53 + {t}) % 9000"),
    ("aws:all-packets-in", "10 + ({k} + {t}) % 50"),
    ("aws:all-packets-out", "20 + ({k} * 3 + {t}) % 70"),
    ("aws:num-established-tcp-connections", "({k} + {t}) % 12"),
    ("aws:num-listening-tcp-ports", "2 + {t} % 3"),
    ("aws:num-listening-udp-ports", "1"),
)
DOC = json.dumps(
    {
        "header": {"report_id": 1, "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": {"ports": [{"port": 22}, {"port": 443}], "total": 2},
            "network_stats": {"bytes_in": 1, "bytes_out": 2, "packets_in": 3, "packets_out": 4},
        },
    }
)
POLLER = r"""
import sys, time, urllib.request
url, mode, seconds, thing = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
time.sleep(max(0.0, float(sys.argv[5]) - time.time()))  # started: wait for the window
end = time.monotonic() + seconds
n = 0
next_fleet = next_thing = time.monotonic()
while time.monotonic() < end:
    now = time.monotonic()
    if mode == "hammer" or now >= next_fleet:
        urllib.request.urlopen(url + "/dashboard/api/fleet", timeout=60).read(); n += 1
        next_fleet = now + 5
    if mode == "browser" and now >= next_thing:
        t = time.time()
        q = f"name={thing}&since={t - 86400}&until={t}"
        urllib.request.urlopen(f"{url}/dashboard/api/thing?{q}", timeout=60).read(); n += 1
        next_thing = now + 10
    if mode == "browser":
        time.sleep(0.2)
print(n)
"""


def _numbers(n: int, name: str, dialect: str) -> str:
    """A row source of 0..n-1 as column ``name``."""
    if dialect == "postgresql":
        return f"generate_series(0, {n - 1}) AS g_{name}({name})"
    return (
        f"(WITH RECURSIVE c({name}) AS (SELECT 0 UNION ALL SELECT {name} + 1 FROM c "
        f"WHERE {name} < {n - 1}) SELECT {name} FROM c)"
    )


def _index_statements() -> list[str]:
    """The CREATE INDEX statements of the schema as the migrations leave it."""
    indexes: dict[str, str] = {}
    for migration in MIGRATIONS:
        for statement in migration.statements:
            words = statement.split()
            if statement.startswith("CREATE INDEX"):
                indexes[words[2]] = statement
            elif statement.startswith("DROP INDEX"):
                indexes.pop(words[2], None)
    return list(indexes.values())


def fill(db: str, things: int, reports: int, now: float) -> dict[str, Any]:
    """Fill an empty service database in SQL; returns counts and timings."""
    store = open_store(db)
    dialect = store.dialect
    store.close()
    began = time.monotonic()
    every = DAY / reports
    t0 = now - every * (reports - 1) - 30
    heavy_reports = int(DAY / 10)
    name = "'thing-' || " + (
        "lpad(t::text, 5, '0')" if dialect == "postgresql" else "substr('00000' || t, -5, 5)"
    )
    statements = [f"DROP INDEX {s.split()[2]}" for s in _index_statements()]
    statements += [
        (
            f"INSERT INTO things (name, first_seen, last_seen, reports, last_report, last_format)"
            f" SELECT {name}, {t0}, {t0 + every * (reports - 1)} + t % 60, {reports},"
            f" '{DOC}', 'json'"
            f" FROM {_numbers(things, 't', dialect)}"
        ),
        (
            f"INSERT INTO things (name, first_seen, last_seen, reports, last_report, last_format)"
            f" VALUES ('{HEAVY}', {now - DAY}, {now - 10}, {heavy_reports}, '{DOC}', 'cbor')"
        ),
        (
            f"INSERT INTO reports (id, thing, report_id, received_at, format)"
            f" SELECT t * {reports} + k + 1, {name}, k + 1, {t0} + k * {every} + t % 60, 'json'"
            f" FROM {_numbers(things, 't', dialect)} CROSS JOIN {_numbers(reports, 'k', dialect)}"
        ),
        (
            f"INSERT INTO reports (id, thing, report_id, received_at, format)"
            f" SELECT {things * reports} + k + 1, '{HEAVY}', k + 1, {now - DAY} + k * 10, 'cbor'"
            f" FROM {_numbers(heavy_reports, 'k', dialect)}"
        ),
    ]
    for metric, expr in COUNTS:
        value = expr.format(k="(report_id - 1)", t="(id % 97)")
        statements.append(
            "INSERT INTO metric_values (report, thing, metric, received_at, count, number, value)"
            f" SELECT id, thing, '{metric}', received_at, c, NULL, '{{\"count\":' || c || '}}'"
            f" FROM (SELECT id, thing, received_at, {value} AS c FROM reports) AS s"
        )
    for metric, text in (
        ("aws:listening-tcp-ports", '{"ports":[22,443]}'),
        ("aws:destination-ip-addresses", '{"cidrs":["10.0.0.1/32","192.0.2.7/32"]}'),
    ):
        statements.append(
            "INSERT INTO metric_values (report, thing, metric, received_at, count, number, value)"
            f" SELECT id, thing, '{metric}', received_at, NULL, NULL, '{text}' FROM reports"
        )
    statements += _index_statements()
    if dialect == "postgresql":
        statements.append(
            "SELECT setval(pg_get_serial_sequence('reports', 'id'), (SELECT MAX(id) FROM reports))"
        )
        statements.append("VACUUM ANALYZE")  # autovacuum's work on insert-only tables
    _execute(db, dialect, statements)
    loaded = time.monotonic() - began
    counts = _execute(
        db,
        dialect,
        [
            "SELECT COUNT(*) FROM metric_values",
            "SELECT COUNT(*) FROM reports",
            "SELECT COUNT(*) FROM things",
        ],
        fetch=True,
    )
    return {
        "load_s": round(loaded, 1),
        "values": counts[0],
        "reports": counts[1],
        "things": counts[2],
    }


def _execute(db: str, dialect: str, statements: list[str], fetch: bool = False) -> list[int]:
    out = []
    if dialect == "postgresql":
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            for sql in statements:
                cur = conn.execute(sql)
                if fetch:
                    row = cur.fetchone()
                    out.append(int(row[0]) if row else 0)
        return out
    import sqlite3

    lite = sqlite3.connect(db, isolation_level=None)
    try:
        lite.execute("BEGIN")
        for sql in statements:
            cursor = lite.execute(sql)
            found = cursor.fetchone() if fetch else None
            if found:
                out.append(int(found[0]))
        lite.execute("COMMIT")
    finally:
        lite.close()
    return out


def _stats() -> RunnerStats:
    return RunnerStats(0, 0, 0, {}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


class _NoRegistry:
    def generation(self) -> int:
        return 0

    def profiles(self) -> list[Any]:
        return []

    def custom_metric_types(self) -> dict[str, str]:
        return {}

    def groups_of(self, thing_name: str) -> frozenset[str]:
        return frozenset()


def _get(url: str) -> tuple[float, int]:
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:
        body = resp.read()
    return (time.perf_counter() - began) * 1000, len(body)


def _timed(url: str, runs: int) -> dict[str, Any]:
    cold, size = _get(url)
    times = [_get(url)[0] for _ in range(runs)]
    return {
        "cold_ms": round(cold, 1),
        "median_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
        "bytes": size,
        "runs": runs,
    }


def _ingest(store: Store, seconds: float, offset: int) -> float:
    """Reports/s written in batches of 500 (9 values each) for ``seconds``."""
    values = [MetricValue(m, count=5) for m, _ in COUNTS] + [
        MetricValue("aws:listening-tcp-ports", ports=(22, 443)),
        MetricValue("aws:destination-ip-addresses", cidrs=("10.0.0.1/32",)),
    ]
    done, batch_no = 0, 0
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        at = time.time()
        batch = [
            StoredReport(f"ingest-{offset + batch_no}-{i % 50:02d}", i, at, "json", values, DOC)
            for i in range(500)
        ]
        store.record_many(batch)
        done += len(batch)
        batch_no += 1
    return done / (time.monotonic() - began)


_SETTLE_S = 2.0  # pollers start (an interpreter each) before the measured window


def _pollers(
    url: str, mode: str, count: int, seconds: float, start_at: float
) -> list[subprocess.Popen[str]]:
    """Dashboard clients in processes of their own, polling from ``start_at`` on."""
    return [
        subprocess.Popen(
            [sys.executable, "-c", POLLER, url, mode, str(seconds), "thing-00042", str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]


def run_case(db: str, args: argparse.Namespace) -> dict[str, Any]:
    now = time.time()
    result: dict[str, Any] = {"fill": fill(db, args.things, args.reports, now)}
    print(f"  filled: {result['fill']}", flush=True)
    config = load_config(
        {"service_tls": False, "http_listen": "127.0.0.1:0"}, None, command="service"
    )
    context = HttpContext(config, db, _NoRegistry(), None, _stats)
    server = HttpServer("127.0.0.1", 0, context, [install])
    server.start()
    try:
        url = server.url
        t = time.time()
        result["fleet"] = _timed(f"{url}/dashboard/api/fleet", args.runs)
        result["thing_24h"] = _timed(
            f"{url}/dashboard/api/thing?name=thing-00042&since={t - DAY}&until={t}", args.runs
        )
        result["heavy_thing_24h"] = _timed(
            f"{url}/dashboard/api/thing?name={HEAVY}&since={t - DAY}&until={t}", args.runs
        )
        result["metrics"] = _timed(f"{url}/metrics", args.runs)
        for key in ("fleet", "thing_24h", "heavy_thing_24h", "metrics"):
            print(f"  {key}: {result[key]}", flush=True)
        store = open_store(db)
        try:
            # the modes alternate, round after round, so that the load the other users of
            # the machine put on it falls on all of them alike; medians are compared
            rates: dict[str, list[float]] = {"none": [], "browser": [], "hammer": []}
            requests = dict.fromkeys(rates, 0)
            counts = {"none": 0, "browser": args.browsers, "hammer": 1}
            modes = list(counts)
            for round_no in range(args.rounds):
                # the order turns each round: a run after the worst case pays for the
                # checkpoints it left (SQLite's WAL), and that must not fall on one mode
                for mode in modes[round_no % 3 :] + modes[: round_no % 3]:
                    count = counts[mode]
                    start_at = time.time() + _SETTLE_S
                    procs = _pollers(url, mode, count, args.ingest_s, start_at) if count else []
                    time.sleep(max(0.0, start_at - time.time()))
                    offset = (round_no * 3 + len(rates[mode])) * 100_000 + hash(mode) % 1000
                    rates[mode].append(_ingest(store, args.ingest_s, offset))
                    requests[mode] += sum(int(p.communicate(timeout=120)[0] or 0) for p in procs)
                print(
                    f"  ingest round {round_no + 1}: "
                    + ", ".join(f"{m} {r[-1]:.0f}/s" for m, r in rates.items()),
                    flush=True,
                )
            base = statistics.median(rates["none"])
            result["ingest"] = {
                mode: {
                    "reports_per_s": [round(r) for r in rates[mode]],
                    "median": round(statistics.median(rates[mode])),
                    "ratio": round(statistics.median(rates[mode]) / base, 3),
                    # each run against the run without a client of its round: drift
                    # (the database grows, other users' load) cancels out
                    "round_ratios": [round(r / n, 3) for r, n in zip(rates[mode], rates["none"])],
                    "round_ratio_median": round(
                        statistics.median(r / n for r, n in zip(rates[mode], rates["none"])), 3
                    ),
                    "dashboard_requests": requests[mode],
                }
                for mode in rates
            }
            print(f"  ingest: {result['ingest']}", flush=True)
        finally:
            store.close()
    finally:
        server.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--things", type=int, default=10_000)
    parser.add_argument("--reports", type=int, default=112)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--browsers", type=int, default=4)
    parser.add_argument("--ingest-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out: dict[str, Any] = {
        "benchmark": "dashboard",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_at_start": os.getloadavg(),
        },
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        if args.db in ("sqlite", "both"):
            print("sqlite", flush=True)
            out["cases"]["sqlite"] = run_case(str(Path(tmp) / "service.sqlite3"), args)
        if args.db in ("postgresql", "both"):
            from tests.pg_infra import Cluster, create_database, pg_bin

            bindir = pg_bin()
            if bindir is None:
                print("PostgreSQL is not installed: skipped", flush=True)
            else:
                cluster = Cluster(bindir, durable=True)
                cluster.start()
                try:
                    print("postgresql", flush=True)
                    out["cases"]["postgresql"] = run_case(create_database(cluster), args)
                finally:
                    cluster.stop()
    out["machine"]["load_at_end"] = os.getloadavg()
    path = args.out or BENCH / "results" / f"dashboard-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def _stop_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C: the PostgreSQL cluster and the files are removed."""
    import signal

    def stop(_signo: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    _stop_on_sigterm()
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
