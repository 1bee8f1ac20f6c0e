"""Fairness benchmark of the local Device Defender service under a flood (issue #9, item 9).

A real ``defender-agent service`` subprocess (SQLite, default throttle of 300 s, default
``--max-tracked-things``) against a real mosquitto on 127.0.0.1 (bench_service_load's
broker: plain TCP, QoS 1, deep queues). Two scenarios, each with a fresh broker and service:

* ``flood``: one thing publishes ``--flood`` reports (default 20 000) on one connection as
  fast as awscrt takes them, while ``--good`` well-behaved things (default 50, one
  connection each) report once each at times spread evenly over ``--spread`` seconds from
  the flood's start. Figures: the reply latency of the well-behaved things (p50 / p99 / max;
  target p99 < 1 s), how long the flood took to publish and to be answered, the replies
  the flooder got (Throttled), the service's CPU and peak RSS.
* ``many``: ``--things`` distinct things (default 50 000) report once each, published at
  ``--rate`` reports/s (default 500, which the service sustains on a busy 2-core machine;
  above its capacity the figures measure the backlog) over ``--conns`` connections, one of
  which subscribes to every reply topic. Figures: the service's peak RSS (target < 150 MB;
  sampled every 50 ms, and the kernel's VmHWM), the reply latency p50 / p99 / max, replies
  / expected.

Every process is bounded: each scenario stops by itself after ``--timeout`` s at most.
Output: a table on stdout, JSON to ``--out`` (default
``bench/results/service-flood-<date>.json.tmp``, which git ignores).

Run: ``.venv/bin/python bench/bench_service_flood.py`` (about 3 minutes);
``--scenarios flood --flood 5000`` for a quick look.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from bench_service_load import (  # noqa: E402
    Broker,
    _proc_cpu,
    _raise_nofile,
    _report,
    _service_argv,
    machine,
)

# --------------------------------------------------------------------------- client processes


def _pcts(values: list[float]) -> dict[str, Optional[float]]:
    """p50 / p99 / max in ms (None when there are no values)."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def pick(q: float) -> float:  # the value at or above the q quantile: p99 of 50 = the worst
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": round(ordered[-1] * 1000, 1)}


def _connection(client: Any, port: int, client_id: str) -> Any:
    from awscrt import mqtt

    return mqtt.Connection(
        client=client,
        host_name="127.0.0.1",
        port=port,
        client_id=client_id,
        clean_session=True,
        keep_alive_secs=600,
        ping_timeout_ms=10_000,
        protocol_operation_timeout_ms=0,
    )


def _client() -> Any:
    from awscrt import io, mqtt

    return mqtt.Client(io.ClientBootstrap.get_or_create_static_default(), None)


def flooder_main(args: argparse.Namespace) -> int:
    """One thing, one connection: ``count`` reports as fast as possible; counts its replies."""
    from awscrt import mqtt

    conn = _connection(_client(), args.port, f"flooder-{os.getpid()}")
    conn.connect().result(30)
    lock = threading.Lock()
    state = {"replies": 0, "accepted": 0, "throttled": 0, "other": 0, "last": 0.0}
    done = threading.Event()

    def on_reply(topic: str, payload: bytes, **_kw: object) -> None:
        with lock:
            state["replies"] += 1
            if topic.endswith("/accepted"):
                state["accepted"] += 1
            elif b"Throttled" in payload:
                state["throttled"] += 1
            else:
                state["other"] += 1
            state["last"] = time.monotonic()
            if state["replies"] >= args.count:
                done.set()

    thing = "flooder"
    future, _ = conn.subscribe(
        f"$aws/things/{thing}/defender/metrics/json/+", mqtt.QoS.AT_LEAST_ONCE, on_reply
    )
    future.result(30)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    topic = f"$aws/things/{thing}/defender/metrics/json"
    t0 = time.monotonic()
    for n in range(1, args.count + 1):
        conn.publish(topic, _report(n, n), mqtt.QoS.AT_LEAST_ONCE)
    published_s = time.monotonic() - t0
    done.wait(args.timeout)
    with lock:
        result: dict[str, Any] = dict(state)
    last = result.pop("last")
    result.update(
        sent=args.count,
        publish_calls_s=round(published_s, 3),
        answered_s=round(last - t0, 3) if last else None,
    )
    print(json.dumps(result), flush=True)
    with contextlib.suppress(Exception):
        conn.disconnect().result(10)
    return 0


def good_main(args: argparse.Namespace) -> int:
    """``count`` well-behaved things, one connection each, one report each at spread times."""
    from awscrt import mqtt

    client = _client()
    lock = threading.Lock()
    latencies: list[float] = []
    codes: dict[str, int] = {}
    sent_at: dict[str, float] = {}
    done = threading.Event()

    def handler(thing: str) -> Any:
        def on_reply(topic: str, payload: bytes, **_kw: object) -> None:
            now = time.monotonic()
            code = "ACCEPTED" if topic.endswith("/accepted") else "REJECTED"
            with lock:
                if thing in sent_at:
                    latencies.append(now - sent_at[thing])
                codes[code] = codes.get(code, 0) + 1
                if len(latencies) >= args.count:
                    done.set()

        return on_reply

    things = [f"good-{i:03d}" for i in range(args.count)]
    conns = [_connection(client, args.port, f"{t}-{os.getpid()}") for t in things]
    for conn in conns:
        conn.connect().result(30)
    subs = [
        conn.subscribe(
            f"$aws/things/{t}/defender/metrics/json/+", mqtt.QoS.AT_LEAST_ONCE, handler(t)
        )[0]
        for t, conn in zip(things, conns)
    ]
    for future in subs:
        future.result(30)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    t0 = time.monotonic()
    step = args.spread / max(1, args.count)
    for i, (thing, conn) in enumerate(zip(things, conns)):
        delay = t0 + (i + 0.5) * step - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with lock:
            sent_at[thing] = time.monotonic()
        conn.publish(
            f"$aws/things/{thing}/defender/metrics/json", _report(1, i), mqtt.QoS.AT_LEAST_ONCE
        )
    done.wait(args.timeout)
    with lock:
        result = {"replies": len(latencies), "codes": dict(codes), **_pcts(latencies)}
    print(json.dumps(result), flush=True)
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.disconnect().result(10)
    return 0


def many_main(args: argparse.Namespace) -> int:
    """``count`` distinct things from ``conns`` connections at ``rate`` reports/s."""
    from awscrt import mqtt

    client = _client()
    lock = threading.Lock()
    latencies: list[float] = []
    codes: dict[str, int] = {}
    sent_at: dict[str, float] = {}
    done = threading.Event()

    def on_reply(topic: str, payload: bytes, **_kw: object) -> None:
        now = time.monotonic()
        thing = topic.split("/", 3)[2]
        code = "ACCEPTED" if topic.endswith("/accepted") else "REJECTED"
        with lock:
            at = sent_at.pop(thing, None)
            if at is not None:
                latencies.append(now - at)
            codes[code] = codes.get(code, 0) + 1
            if len(latencies) >= args.count:
                done.set()

    conns = [_connection(client, args.port, f"many-{k}-{os.getpid()}") for k in range(args.conns)]
    for conn in conns:
        conn.connect().result(30)
    reply_filter = "$aws/things/+/defender/metrics/json/+"  # one subscriber for every reply
    conns[0].subscribe(reply_filter, mqtt.QoS.AT_MOST_ONCE, on_reply)[0].result(30)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    payloads = [_report(1, 0)]
    t0 = time.monotonic()
    for i in range(args.count):
        due = t0 + i / args.rate
        if (delay := due - time.monotonic()) > 0.002:
            time.sleep(delay)
        thing = f"many-{i:06d}"
        with lock:
            sent_at[thing] = time.monotonic()
        conns[i % len(conns)].publish(
            f"$aws/things/{thing}/defender/metrics/json", payloads[0], mqtt.QoS.AT_LEAST_ONCE
        )
    sent_s = time.monotonic() - t0
    done.wait(args.timeout)
    with lock:
        result = {
            "replies": len(latencies),
            "codes": dict(codes),
            "sent_s": round(sent_s, 2),
            **_pcts(latencies),
        }
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- orchestration


class RssSampler:
    """Samples a process's VmRSS every ``every`` s in a thread; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid = pid
        self.every = every
        self.peak_kb = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _status(self, key: str) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.every):
            kb = self._status("VmRSS")
            self.peak_kb = max(self.peak_kb, kb)
            self.samples.append((round(time.monotonic() - t0, 2), kb))

    def hwm_kb(self) -> int:
        return self._status("VmHWM")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def _spawn(mode: str, args: argparse.Namespace, port: int, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), mode, "--port", str(port)]
    argv += ["--timeout", str(args.timeout), *extra]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def _go(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def _wait_answering(port: int, service: subprocess.Popen[bytes], log_file: Path) -> None:
    """Wait until the service answers a probe report (at any log level); at most 30 s."""
    from awscrt import mqtt

    conn = _connection(_client(), port, f"probe-{os.getpid()}")
    conn.connect().result(30)
    answered = threading.Event()
    base = "$aws/things/probe/defender/metrics/json"
    sub, _ = conn.subscribe(f"{base}/+", mqtt.QoS.AT_LEAST_ONCE, lambda **_kw: answered.set())
    sub.result(30)
    deadline = time.monotonic() + 30
    try:
        while not answered.wait(0.2):
            if time.monotonic() > deadline or service.poll() is not None:
                raise RuntimeError(f"service did not start: {log_file.read_text()[-800:]}")
            conn.publish(base, _report(1, 0), mqtt.QoS.AT_LEAST_ONCE)
    finally:
        conn.disconnect().result(10)


def run_scenario(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root = work / name
    root.mkdir(parents=True)
    broker = Broker(root, None, False)
    log_file = root / "service.log"
    argv = [
        *_service_argv(),
        "--broker",
        "127.0.0.1",
        "--port",
        str(broker.port),
        "--no-tls",
        "--db",
        str(root / "service.sqlite3"),
        "--state-dir",
        str(root),
        "--client-id",
        "bench-flood-service",
        *args.service_args.split(),
    ]
    if args.log_level:
        argv += ["--log-level", args.log_level]
    clients: list[subprocess.Popen[str]] = []
    service: Optional[subprocess.Popen[bytes]] = None
    sampler: Optional[RssSampler] = None
    try:
        with log_file.open("wb") as out:
            service = subprocess.Popen(argv, stdout=out, stderr=out)
        _wait_answering(broker.port, service, log_file)
        if name == "flood":
            clients = [
                _spawn("flooder", args, broker.port, "--count", str(args.flood)),
                _spawn(
                    "good",
                    args,
                    broker.port,
                    "--count",
                    str(args.good),
                    "--spread",
                    str(args.spread),
                ),
            ]
        else:
            clients = [
                _spawn(
                    "many",
                    args,
                    broker.port,
                    "--count",
                    str(args.things),
                    "--rate",
                    str(args.rate),
                    "--conns",
                    str(args.conns),
                )
            ]
        for proc in clients:
            if (line := _line(proc)) != "ready":
                raise RuntimeError(f"client not ready: {line!r}")
        sampler = RssSampler(service.pid)
        rss_start_kb = sampler._status("VmRSS")
        cpu0, broker0 = _proc_cpu(service.pid), broker.cpu()
        _go(clients)
        results = [json.loads(_line(proc) or "{}") for proc in clients]
        cpu1, broker1 = _proc_cpu(service.pid), broker.cpu()
        sampler.stop()
        hwm_kb = sampler.hwm_kb()
        for proc in clients:
            proc.wait(30)
        service.send_signal(signal.SIGTERM)
        service.wait(60)
    finally:
        if sampler is not None:
            sampler.stop()
        procs: list[subprocess.Popen[Any]] = [*clients]
        if service is not None:
            procs.append(service)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        broker.stop()
    summary = [ln for ln in log_file.read_text().splitlines() if "service stopped" in ln]
    run: dict[str, Any] = {
        "scenario": name,
        "service_cpu_s": round(cpu1 - cpu0, 2),
        "broker_cpu_s": round(broker1 - broker0, 2),
        "service_rss_start_mb": round(rss_start_kb / 1024, 1),
        "service_rss_peak_mb": round(sampler.peak_kb / 1024, 1),
        "service_vmhwm_mb": round(hwm_kb / 1024, 1),
        "service_summary": summary[-1].split("service stopped", 1)[1] if summary else "",
    }
    if name == "flood":
        run["flooder"], run["good"] = results
        good = run["good"]
        run["ok"] = (
            good.get("replies") == args.good and good.get("codes", {}).get("ACCEPTED") == args.good
        )
    else:
        run["many"] = results[0]
        run["ok"] = results[0].get("replies") == args.things
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    for mode in ("flooder", "good", "many"):
        p = sub.add_parser(mode)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--timeout", type=float, default=120)
        p.add_argument("--spread", type=float, default=3.0)
        p.add_argument("--rate", type=float, default=2000)
        p.add_argument("--conns", type=int, default=4)
    parser.add_argument("--scenarios", default="flood,many")
    parser.add_argument("--flood", type=int, default=20_000, help="reports of the flooding thing")
    parser.add_argument("--good", type=int, default=50, help="well-behaved things")
    parser.add_argument("--spread", type=float, default=3.0, help="s over which they report")
    parser.add_argument("--things", type=int, default=50_000, help="distinct things (many)")
    parser.add_argument("--rate", type=float, default=500, help="reports/s (many)")
    parser.add_argument("--conns", type=int, default=4, help="connections (many)")
    parser.add_argument("--log-level", default="", help="the service's --log-level")
    parser.add_argument("--service-args", default="", help="more service options, one string")
    parser.add_argument("--timeout", type=float, default=90, help="per client process")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.mode == "flooder":
        return flooder_main(args)
    if args.mode == "good":
        return good_main(args)
    if args.mode == "many":
        return many_main(args)
    _raise_nofile()
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    work = Path(tempfile.mkdtemp(prefix="dd-bench-flood-"))
    runs = []
    started = time.monotonic()
    try:
        for rep in range(args.repeat):
            for name in names:
                print(f"-- {name} (run {rep + 1}) ...", file=sys.stderr, flush=True)
                run = run_scenario(name, args, work / f"run{rep}")
                run["run"] = rep + 1
                print(f"   {json.dumps(run)}", file=sys.stderr, flush=True)
                runs.append(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        "| scenario | run | well-behaved / distinct replies | latency p50 / p99 / max ms "
        "| flood publish s / answered s | service CPU s | service RSS start / peak MB |"
    )
    print("|" + " --- |" * 7)
    for run in runs:
        if run["scenario"] == "flood":
            who, fl = run["good"], run["flooder"]
            replies = f"{who.get('replies')}/{args.good}"
            flood = f"{fl.get('publish_calls_s')} / {fl.get('answered_s')}"
        else:
            who, flood = run["many"], "-"
            replies = f"{who.get('replies')}/{args.things}"
        lat = f"{who.get('p50_ms')} / {who.get('p99_ms')} / {who.get('max_ms')}"
        print(
            f"| {run['scenario']} | {run['run']} | {replies} | {lat} | {flood} "
            f"| {run['service_cpu_s']} | {run['service_rss_start_mb']} / "
            f"{max(run['service_rss_peak_mb'], run['service_vmhwm_mb'])} |"
        )
    doc = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),  # (its load average: at the end)
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runtime_s": round(time.monotonic() - started, 1),
        "runs": runs,
    }
    if not args.no_save:
        out = args.out or (
            BENCH / "results" / f"service-flood-{dt.date.today().isoformat()}.json.tmp"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwritten {out}", file=sys.stderr)
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
