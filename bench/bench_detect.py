"""Detect's cost in the service: answered reports/s with and without evaluation, in one run.

The machinery of ``bench_service_load.py`` (a fresh mosquitto, ``defender-agent service``
processes, 1 000 simulated devices in 4 processes, closed loop, every reply counted) runs
each store twice per repetition:

* ``…-off``: ``[detect] enabled = false`` (the figure without Detect);
* ``…-on``: 10 security profiles x 10 behaviors attached to every thing (5 to ``all/things``,
  5 to ``all/registered-things``: AWS's limit is 5 per target; created in the database
  before the service starts): listening TCP/UDP port allow-lists, bytes/packets
  over 300/600 s windows, port and connection counts, a destination CIDR set, the custom
  ``cpu_usage`` number, and a TCP port allow-list that, with ``--fleet violating`` (the
  default), every report violates: every device opens 10 violations at its first report
  (10 000 violations, events and MQTT alerts in all, for 10 000 reports) and every later
  report is a further violating datapoint of each. ``--fleet conforming``: that allow-list
  includes the bench's ports, and no report violates anything (a fleet in its normal
  state: every behavior judged, nothing to open). Detect runs in its worker process
  (``[detect] evaluate_in = process``); ``--evaluate-in process,thread`` adds an
  ``…-on-thread`` run per repetition with Detect on a thread of the service, to compare
  the two in one run.

Figures: answered reports/s (median of the repetitions) and its ratio on/off per store
(target ≥ 0.90), the engine's own time per report in µs (its ``detect stopped`` line:
wall time in ``evaluate`` divided by reports, database work included; on a loaded machine
mostly waiting for a core), the service process's CPU per report off and on (what
Detect costs the service whatever the load: the difference), the worker process's CPU per
report (what it costs on the other core), and
``ListActiveViolations`` over the 10 000 active violations of the SQLite ``-on`` database,
through the API with a real boto3 client (first page and a follow-on page of 250, and of
25; target < 100 ms).

Run: ``.venv/bin/python bench/bench_detect.py`` (about 5 minutes); ``--devices 200
--repeat 1`` for a quick look; ``bench_detect.py engine [--store pg]`` times the engine
alone (:func:`engine_main`). Raw JSON: ``bench/results/detect-<date>.json.tmp`` unless
``--out`` names a file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import bench_service_load as load  # noqa: E402

REGION, ACCOUNT = "us-east-1", "123456789012"
PROFILES, BEHAVIORS = 10, 10


def behaviors(p: int, violated: bool = True) -> list[dict[str, Any]]:
    """Ten behaviors; the last one is violated by every bench report (port 8080) if ``violated``."""

    def b(name: str, metric: str, **criteria: Any) -> dict[str, Any]:
        return {"name": f"{name}-{p}", "metric": metric, "criteria": criteria}

    def lt(count: int, **extra: Any) -> dict[str, Any]:
        return {"comparisonOperator": "less-than", "value": {"count": count}, **extra}

    return [
        b(
            "tcp",
            "aws:listening-tcp-ports",
            comparisonOperator="in-port-set",
            value={"ports": [22, 8080]},
        ),
        b(
            "udp",
            "aws:listening-udp-ports",
            comparisonOperator="in-port-set",
            value={"ports": [68]},
        ),
        b("out", "aws:all-bytes-out", **lt(10_000_000, durationSeconds=300)),
        b("in", "aws:all-bytes-in", **lt(10_000_000, durationSeconds=600)),
        b("pkts", "aws:all-packets-out", **lt(100_000, durationSeconds=300)),
        b("ntcp", "aws:num-listening-tcp-ports", **lt(10)),
        b("conns", "aws:num-established-tcp-connections", **lt(100)),
        b(
            "dest",
            "aws:destination-ip-addresses",
            comparisonOperator="in-cidr-set",
            value={"cidrs": ["203.0.113.0/24", "2001:db8::/32"]},
        ),
        b("cpu", "cpu_usage", comparisonOperator="less-than-equals", value={"number": 90}),
        b(
            "only22",
            "aws:listening-tcp-ports",
            comparisonOperator="in-port-set",
            value={"ports": [22] if violated else [22, 8080]},
        ),
    ]


def seed(db: str) -> None:
    """The profiles and the custom metric, attached to every thing (idempotent).

    ``BENCH_DETECT_FLEET=conforming`` in the environment: no behavior is violated.
    """
    from defender_agent.detect.registry import RegistryError, open_registry
    from defender_agent.service.storage import open_store

    open_store(db).close()
    registry = open_registry(db, region=REGION, account=ACCOUNT)
    try:
        now = time.time()
        try:
            registry.create_custom_metric("cpu_usage", "number", None, now=now)
        except RegistryError:
            return  # seeded by an earlier start
        for p in range(PROFILES):
            violated = os.environ.get("BENCH_DETECT_FLEET", "violating") != "conforming"
            registry.create_profile(f"bench-{p}", {"behaviors": behaviors(p, violated)}, now=now)
            # AWS allows 5 profiles per target: half on all/things, half on
            # all/registered-things (every device here)
            target = "all/things" if p % 2 else "all/registered-things"
            registry.attach(f"bench-{p}", registry.arn(target))
    finally:
        registry.close()


def serve_main(argv: list[str]) -> NoReturn:
    """``serve on|on-thread|off SERVICE-ARGS...``: seed (on), then become the service process.

    ``on``: Detect in its worker process; ``on-thread``: on a thread of the service.
    """
    mode, rest = argv[0], argv[1:]
    env = dict(os.environ)
    if mode.startswith("on"):
        seed(rest[rest.index("--db") + 1])
        env["DEFENDER_AGENT_DETECT_ENABLED"] = "true"
        env["DEFENDER_AGENT_DETECT_EVALUATE_IN"] = "thread" if mode == "on-thread" else "process"
    else:
        env["DEFENDER_AGENT_DETECT_ENABLED"] = "false"
    os.execve(sys.executable, [sys.executable, "-m", "defender_agent", "service", *rest], env)


def _service_argv(mode: str) -> Callable[[], list[str]]:
    """bench_service_load's service command, through ``serve MODE`` of this script."""
    return lambda: [sys.executable, str(Path(__file__).resolve()), "serve", mode]


def _detect_line(log_file: Path) -> dict[str, float]:
    text = log_file.read_text(errors="replace")
    found = re.findall(
        r"detect stopped: (\d+) reports judged \((\d+) us each\)(?: in (\d+) batches)?", text
    )
    if not found:
        return {}
    reports, us, batches = found[-1]
    return {
        "judged": int(reports),
        "us_per_report": int(us),
        **({"batches": int(batches)} if batches else {}),
    }


def list_active(db: str, work: Path) -> dict[str, Any]:
    """ListActiveViolations through the API (boto3) over the database's violations."""
    sys.path.insert(0, str(load.REPO))
    from tests.api_infra import running_api

    timings: dict[str, Any] = {}
    (work / "api").mkdir(exist_ok=True)
    with running_api(work / "api", db) as api:
        client = api.client()
        client.list_active_violations(maxResults=25)  # warm: connection, first query plan
        count = 0
        token = None
        began = time.perf_counter()
        while True:
            kwargs: dict[str, Any] = {"maxResults": 250}
            if token:
                kwargs["nextToken"] = token
            page = client.list_active_violations(**kwargs)
            count += len(page["activeViolations"])
            token = page.get("nextToken")
            if not token:
                break
        timings["active_violations"] = count
        timings["all_pages_of_250_s"] = round(time.perf_counter() - began, 3)
        for size in (250, 25):
            samples = []
            token = None
            for _ in range(5):
                t = time.perf_counter()
                page = client.list_active_violations(
                    maxResults=size, **({"nextToken": token} if token else {})
                )
                samples.append((time.perf_counter() - t) * 1000)
                token = page.get("nextToken")
            timings[f"page_of_{size}_ms_median_max"] = [
                round(statistics.median(samples), 1),
                round(max(samples), 1),
            ]
        t = time.perf_counter()
        client.list_active_violations(thingName="t00042", maxResults=250)
        timings["one_thing_ms"] = round((time.perf_counter() - t) * 1000, 1)
    return timings


def engine_main(argv: list[str]) -> int:
    """``engine [--store sqlite|pg] [--batch N] [--things N] [--rounds N] [--gap S]``: the engine.

    ``DetectRuntime.after_store`` fed batches of decoded bench reports, as the service's
    hand-off thread feeds it, against a fresh database: a first round of every thing (it
    opens the 10 000 violations) is not timed, the further rounds (``--gap`` s apart,
    default 300) are. Prints CPU and wall time per report: the figure to compare a change of
    the engine by, without MQTT (so the alerts of the first round are dropped, and say so
    on stderr). ``BENCH_DETECT_FLEET=conforming``: the conforming fleet's profiles.
    """
    from defender_agent.detect.runtime import DetectRuntime
    from defender_agent.report.decode import decode_report

    parser = argparse.ArgumentParser(prog="bench_detect.py engine")
    parser.add_argument("--store", choices=("sqlite", "pg"), default="sqlite")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--things", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gap", type=float, default=300, help="seconds between a thing's reports")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dd-bench-engine-"))
    pg = load.Postgres() if args.store == "pg" else None
    try:
        db = pg.new_database() if pg is not None else f"sqlite://{work}/engine.sqlite3"
        seed(db)
        runtime = DetectRuntime(db, region=REGION, account=ACCOUNT)
        runtime.engine.tick()
        try:
            n = 0
            rounds = []
            for r in range(args.rounds):
                batch = []
                for t in range(args.things):
                    n += 1
                    doc = json.loads(load._report(n, n))
                    batch.append(
                        (f"t{t:05d}", 1000.0 + r * args.gap + t * 0.001, decode_report(doc))
                    )
                rounds.append(batch)
            for r, items in enumerate(rounds):
                began, cpu = time.perf_counter(), time.process_time()
                for start in range(0, len(items), args.batch):
                    runtime.after_store(items[start : start + args.batch])
                wall, cpu = time.perf_counter() - began, time.process_time() - cpu
                print(
                    f"round {r + 1}{' (opens the violations, not counted)' if r == 0 else ''}: "
                    f"{cpu / len(items) * 1e6:.0f} us CPU, {wall / len(items) * 1e6:.0f} us wall"
                    f" per report ({args.store}, batches of {args.batch}, load "
                    f"{os.getloadavg()[0]:.1f})"
                )
        finally:
            runtime.stop()
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _summary_row(runs: list[dict[str, Any]], on_mode: str) -> dict[str, Any]:
    """One store's off runs against its ``on_mode`` runs (``on``: worker, ``on-thread``)."""
    off_runs = [r for r in runs if r["detect"] == "off"]
    on_runs = [r for r in runs if r["detect"] == on_mode]

    def per_report(rs: list[dict[str, Any]], key: str) -> float:
        # CPU per accepted report (ms): the load-proof figure
        return statistics.median(
            r["cpu_s"].get(key, 0.0) / max(r["accepted"], 1) * 1000 for r in rs
        )

    off = [r["answered_per_s"] for r in off_runs]
    on = [r["answered_per_s"] for r in on_runs]
    return {
        "store": runs[0]["store"],
        "evaluate_in": "thread" if on_mode == "on-thread" else "process",
        "answered_per_s_off": off,
        "answered_per_s_on": on,
        "answered_per_s_off_median": statistics.median(off),
        "answered_per_s_on_median": statistics.median(on),
        "ratio": round(statistics.median(on) / statistics.median(off), 3),
        "ratios_per_repeat": [round(b / a, 3) for a, b in zip(off, on)],
        "engine_us_per_report_median": statistics.median(
            r.get("us_per_report", 0) for r in on_runs
        ),
        "service_cpu_ms_per_report_off_on": [
            round(per_report(off_runs, "service0"), 3),
            round(per_report(on_runs, "service0"), 3),
        ],
        "worker_cpu_ms_per_report_on": round(per_report(on_runs, "worker0"), 3),
        "ok": all(r["ok"] for r in off_runs + on_runs),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        return engine_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=10, help="per device")
    parser.add_argument("--device-procs", type=int, default=4)
    parser.add_argument("--stores", default="sqlite,pg")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--fleet",
        choices=("violating", "conforming"),
        default="violating",
        help="violating: every device violates one behavior per profile from its first"
        " report (10 violations, events and alerts each); conforming: none does",
    )
    parser.add_argument(
        "--evaluate-in",
        default="process",
        help="where Detect runs, comma-separated to compare in one run: process (the worker"
        " process, [detect] evaluate_in = process), thread (a thread of the service)",
    )
    args = parser.parse_args()
    args.on = [
        "on" if w.strip() == "process" else "on-thread"
        for w in args.evaluate_in.split(",")
        if w.strip()
    ]
    os.environ["BENCH_DETECT_FLEET"] = args.fleet
    load._raise_nofile()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="dd-bench-detect-"))
    pg = load.Postgres() if "pg" in stores else None
    runs: list[dict[str, Any]] = []
    listing: dict[str, Any] = {}
    started = time.monotonic()
    try:
        for rep in range(args.repeat):
            for store in stores:
                base = "sqlite-1" if store == "sqlite" else "pg-1"
                for mode in ("off", *args.on):
                    name = f"{base}-detect-{mode}"
                    load.SCENARIOS[name] = dict(load.SCENARIOS[base])
                    load._service_argv = _service_argv(mode)
                    print(f"-- {name} (run {rep + 1}) ...", file=sys.stderr, flush=True)
                    root = work / f"run{rep}"
                    run = load.run_scenario(name, args, root, None, pg)
                    run.update(_detect_line(root / name / "service-0.log"))
                    run["run"] = rep + 1
                    run["store"] = store
                    run["detect"] = mode
                    print(f"   {json.dumps(run)}", file=sys.stderr, flush=True)
                    runs.append(run)
                    if (
                        mode == args.on[0]
                        and store == "sqlite"
                        and rep == 0
                        and args.fleet != "conforming"
                    ):
                        listing = list_active(str(root / name / "service.sqlite3"), root)
                        print(f"   list: {json.dumps(listing)}", file=sys.stderr, flush=True)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = []
    print(
        "| store | Detect in | answered/s without Detect | with 10 x 10 behaviors | ratio | "
        "engine µs per report | service CPU ms per report, off -> on | worker CPU ms per report"
        " | replies all delivered |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for store in stores:
        for on_mode in args.on:
            row = _summary_row([r for r in runs if r["store"] == store], on_mode)
            summary.append(row)
            off, on = row["answered_per_s_off"], row["answered_per_s_on"]
            cpu_off, cpu_on = row["service_cpu_ms_per_report_off_on"]
            print(
                f"| {store} | {row['evaluate_in']}"
                f" | {row['answered_per_s_off_median']:.0f} ({min(off):.0f}-{max(off):.0f})"
                f" | {row['answered_per_s_on_median']:.0f} ({min(on):.0f}-{max(on):.0f})"
                f" | {row['ratio']:.2f} | {row['engine_us_per_report_median']:.0f}"
                f" | {cpu_off:.2f} -> {cpu_on:.2f} | {row['worker_cpu_ms_per_report_on']:.2f}"
                f" | {row['ok']} |"
            )
    if listing:
        print(
            f"\nListActiveViolations over {listing['active_violations']} active violations "
            f"(boto3, SQLite): page of 250 {listing['page_of_250_ms_median_max']} ms "
            f"(median, max), page of 25 {listing['page_of_25_ms_median_max']} ms, one thing "
            f"{listing['one_thing_ms']} ms"
        )
    doc = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": load.machine(),  # (its load average: at the end)
        "args": {k: str(v) for k, v in vars(args).items()},
        "runtime_s": round(time.monotonic() - started, 1),
        "summary": summary,
        "list_active_violations": listing,
        "runs": runs,
    }
    out = args.out or BENCH / "results" / f"detect-{dt.date.today().isoformat()}.json.tmp"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nwritten {out}", file=sys.stderr)
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
