"""Footprint of `defender-agent run`: RSS and CPU time of the running agent, and the sample's.

Sets up a test PKI, a mosquitto broker (TLS listener with the AWS-IoT-like ACL, plus a
plain listener), the Device Defender responder in this process on the plain listener
(no throttling), and about 200 sockets on the host (holder processes of
``bench/_fixture.py``: established loopback connections with both ends open, a few TCP
listeners and UDP sockets). Then it runs, one after the other:

1. ``defender-agent run ... -i 2 --allow-short-interval --splay 0
   --include-loopback-connections`` (ours);
2. the same with ``--include-custom-metrics`` (ours + ``cpu_usage``);
3. with ``--greengrass``: ``defender-agent greengrass`` (the Greengrass v2 component, the
   same settings from its component configuration) through ``tests/gg_infra``'s fake
   nucleus, which runs in this process and bridges IPC to the broker's plain listener (the
   nucleus's own cost is not the component's and is not counted);
4. the public sample ``python -m AWSIoTDeviceDefenderAgentSDK.agent ... -i 2``
   (``AWSIoTDeviceDefenderAgentSDK==2.0.0`` in ``bench/.venvs/sample``). It has no port
   option: awsiotsdk picks 443 with ALPN ``x-amzn-mqtt-ca`` when ALPN is available (it is,
   on Linux), else 8883, so the broker gets a second TLS listener (same CA, ACL and
   settings) on 127.0.0.1 at that port. If that port is taken or cannot be bound (not
   root), the sample is started through a shim that only passes ``port=`` to
   ``mtls_from_path`` (reported as such).

Each agent runs for ``--cycles`` cycles (the first is the baseline, which publishes
nothing), after waiting up to ``--quiet-wait`` s for other work's sockets to go away.
This process reads ``/proc/<pid>/status`` (VmRSS, VmHWM, RssAnon, RssFile),
``/proc/<pid>/stat`` (utime + stime, clock ticks) and ``/proc/<pid>/task/*/schedstat``
(run time in ns) of the agent every 0.1 s, and the responder notes when each report
arrives. From those:

* **RSS start**: half an interval before the first report (connected, baseline done);
* **RSS idle**: median RSS half an interval after each report from the 2nd on (between
  cycles, steady state); PSS and the largest mappings (smaps) once, mid-run;
* **RSS peak**: VmHWM at the end;
* **CPU ms/cycle**: CPU time between those mid-interval points, one cycle each, after the
  first two cycles (baseline and first report): the median of the per-cycle deltas and
  the mean over the window, each from the clock ticks (10 ms steps at 100 Hz, so the
  tick median is 0 or 10 for a cycle of a few ms) and from schedstat;
* **startup CPU**: CPU time (ticks) up to the start point.

Replies are checked twice: what the responder answered, and our agent's ``status.json``
counters (the reply lines the sample prints, for the sample). A markdown table goes to
stdout, the full figures to ``--out`` (default ``bench/results/footprint-<date>.json.tmp``,
which git ignores).

Run: ``.venv/bin/python bench/bench_footprint.py`` (under 2 minutes; results and method in
docs/performance.md, "Footprint of `defender-agent run`").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import socket
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
VENV_BIN = REPO / ".venv" / "bin"
for _p in (str(REPO), str(BENCH)):  # tests.mqtt_infra (PKI, broker) and the bench fixture
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.gg_infra.nucleus import FakeNucleus  # noqa: E402
from tests.mqtt_infra.broker import Mosquitto  # noqa: E402
from tests.mqtt_infra.pki import Pki, make_pki  # noqa: E402

import _fixture  # noqa: E402
import bench_collect  # noqa: E402  (machine_info, the sample's venv)
from defender_agent.service.responder import Outcome, Responder, ResponderPolicy  # noqa: E402
from defender_agent.service.responder_service import ResponderService  # noqa: E402
from defender_agent.transport.base import MqttSettings  # noqa: E402
from defender_agent.transport.mqtt import MqttTransport  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
THING = "thing1"
SAMPLE_PY = bench_collect.SAMPLE_PY
SAMPLE_PKG = bench_collect.SAMPLE_PKG
POLL_S = 0.1
QUIET_SLACK = 60  # sockets of the broker, the responder and other processes tolerated


# --------------------------------------------------------------------------- broker


class FootprintMosquitto(Mosquitto):
    """The test broker with extra TLS listeners (same CA, certificate, ACL) on given ports."""

    def __init__(self, directory: Path, pki: Pki, extra_tls_ports: tuple[int, ...] = ()) -> None:
        super().__init__(directory, pki, acl=True, plain_port=True)
        self.extra_tls_ports = extra_tls_ports

    def _write_config(self) -> None:
        super()._write_config()
        lines = []
        for port in self.extra_tls_ports:
            lines += [
                "",
                f"listener {port} 127.0.0.1",
                "protocol mqtt",
                f"cafile {self.pki.ca}",
                f"certfile {self.pki.server_cert}",
                f"keyfile {self.pki.server_key}",
                "tls_version tlsv1.2",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
                f"acl_file {self.directory / 'aws_acl.conf'}",
            ]
        with self.conf.open("a") as f:
            f.write("\n".join(lines) + "\n")


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- responder


@dataclasses.dataclass
class Received:
    t: float
    thing: str
    accepted: bool
    code: Optional[str]
    payload_bytes: int
    connections_total: Optional[int]


class TimingResponder(Responder):
    """The responder, noting when each report arrived and what was answered."""

    def __init__(self) -> None:
        super().__init__(ResponderPolicy(min_delay_s=0))
        self.lock = threading.Lock()
        self.received: list[Received] = []

    def handle(self, topic: str, payload: bytes) -> Outcome:
        t = time.monotonic()
        outcome = super().handle(topic, payload)
        total = None
        with contextlib.suppress(Exception):
            doc = json.loads(payload)
            metrics = doc.get("metrics", doc.get("met", {}))
            tcp = metrics.get("tcp_connections", metrics.get("tc", {}))
            est = tcp.get("established_connections", tcp.get("ec", {}))
            total = est.get("total", est.get("t"))
        if outcome.reply is not None:
            with self.lock:
                self.received.append(
                    Received(
                        t,
                        outcome.reply.thing_name,
                        outcome.reply.accepted,
                        outcome.reply.error_code,
                        len(payload),
                        total,
                    )
                )
        return outcome

    def since(self, index: int) -> list[Received]:
        with self.lock:
            return list(self.received[index:])

    def mark(self) -> int:
        with self.lock:
            return len(self.received)


# --------------------------------------------------------------------------- /proc


@dataclasses.dataclass
class ProcSample:
    t: float
    rss_kib: int
    hwm_kib: int
    anon_kib: int
    file_kib: int
    threads: int
    ticks: int
    sched_ns: int


def _status_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def read_proc(pid: int) -> Optional[ProcSample]:
    """One sample of a process's memory and CPU time; None if it is gone."""
    t = time.monotonic()
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        sched = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
                sched += int(f.read().split()[0])
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return ProcSample(
        t=t,
        rss_kib=_status_kib(status, "VmRSS"),
        hwm_kib=_status_kib(status, "VmHWM"),
        anon_kib=_status_kib(status, "RssAnon"),
        file_kib=_status_kib(status, "RssFile"),
        threads=_status_kib(status, "Threads"),
        ticks=utime + stime,
        sched_ns=sched,
    )


def smaps_breakdown(pid: int, top: int = 8) -> list[tuple[str, int]]:
    """RSS (KiB) per mapping name from /proc/<pid>/smaps, largest first."""
    sizes: dict[str, int] = {}
    name = "?"
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):  # a mapping header
                    parts = line.split()
                    name = os.path.basename(parts[5]) if len(parts) > 5 else "[anon]"
                elif first == "Rss:":
                    sizes[name] = sizes.get(name, 0) + int(line.split()[1])
    except OSError:
        return []
    return sorted(sizes.items(), key=lambda kv: -kv[1])[:top]


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Pss and private/shared totals (KiB) from /proc/<pid>/smaps_rollup."""
    out = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB" and parts[0].endswith(":"):
                out[parts[0][:-1]] = int(parts[1])
    keep = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Clean", "Private_Dirty")
    return {k: out[k] for k in keep if k in out}


def wait_quiet(limit: int, max_wait: float) -> tuple[int, float]:
    """Wait up to ``max_wait`` s until the host has at most ``limit`` sockets.

    Other work on the machine (test suites) opens and closes sockets; the agents count
    them all, and the sample walks every process's descriptors. Returns (sockets, waited).
    """
    t0 = time.monotonic()
    while True:
        n = count_sockets()["total"]
        waited = time.monotonic() - t0
        if n <= limit or waited >= max_wait:
            return n, waited
        time.sleep(0.5)


def count_sockets() -> dict[str, int]:
    """Sockets of this network namespace, any state, from /proc/net (rows, not headers)."""
    out = {}
    for name in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{name}") as f:
                out[name] = sum(1 for _ in f) - 1
        except OSError:
            out[name] = 0
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------- one agent run


@dataclasses.dataclass
class Variant:
    label: str
    cmd: list[str]
    env: dict[str, str]
    state_dir: Optional[Path]  # ours: status.json lives here
    note: str = ""


def _nearest(samples: list[ProcSample], t: float) -> ProcSample:
    return min(samples, key=lambda s: abs(s.t - t))


def run_variant(
    v: Variant,
    responder: TimingResponder,
    workdir: Path,
    cycles: int,
    interval: float,
    deadline: float,
) -> dict[str, Any]:
    """Run one agent until ``cycles`` cycles are done; measure it; stop it."""
    want_reports = cycles - 1  # the first cycle is the baseline
    out_path = workdir / f"{v.label}.stdout"
    err_path = workdir / f"{v.label}.stderr"
    mark = responder.mark()
    samples: list[ProcSample] = []
    sockets: list[int] = []
    smaps: list[tuple[str, int]] = []
    rollup: dict[str, int] = {}
    res: dict[str, Any] = {"label": v.label, "cmd": v.cmd, "note": v.note}
    limit = min(deadline, time.monotonic() + 20 + cycles * interval * 1.5)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            v.cmd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=v.env,
            cwd=workdir,
            start_new_session=True,
        )
    res["pid"] = proc.pid
    reason = "timed out"
    last_socket_count = 0.0
    try:
        while True:
            s = read_proc(proc.pid)
            if proc.poll() is not None or s is None:
                reason = f"exited early (rc={proc.poll()})"
                break
            samples.append(s)
            got = [r for r in responder.since(mark) if r.thing == THING]
            if s.t - last_socket_count >= 1.0:
                sockets.append(count_sockets()["total"])
                last_socket_count = s.t
            if not smaps and len(got) >= want_reports // 2 + 1 and s.t >= got[-1].t + interval / 2:
                smaps = smaps_breakdown(proc.pid)
                rollup = smaps_rollup(proc.pid)
            if len(got) >= want_reports and s.t >= got[want_reports - 1].t + interval / 2 + 0.15:
                reason = "done"
                break
            if time.monotonic() > limit:
                break
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait(10)
    res["wall_s"] = time.monotonic() - t0
    res["rc_after_sigterm"] = rc
    res["end"] = reason
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    got = [r for r in responder.since(mark) if r.thing == THING]
    res["reports_received"] = len(got)
    res["responder_accepted"] = sum(r.accepted for r in got)
    res["responder_rejected"] = {}
    for r in got:
        if not r.accepted:
            res["responder_rejected"][r.code] = res["responder_rejected"].get(r.code, 0) + 1
    res["payload_bytes_median"] = statistics.median(r.payload_bytes for r in got) if got else None
    res["report_connections_total"] = sorted({r.connections_total for r in got} - {None})
    res["sockets_on_host"] = {"min": min(sockets), "max": max(sockets)} if sockets else None
    res["smaps_top_kib"] = smaps
    res["smaps_rollup_kib"] = rollup
    if v.state_dir is not None:
        with contextlib.suppress(OSError, ValueError):
            status = json.loads((v.state_dir / "status.json").read_text())
            res["status_counters"] = status.get("counters")
    else:  # the sample prints each reply it receives
        res["sample_replies_printed"] = {
            "accepted": stdout.count("/accepted'"),
            "rejected": stdout.count("/rejected'"),
        }
    if reason != "done":
        res["error"] = reason
        res["stderr_tail"] = stderr[-1500:]
        res["stdout_tail"] = stdout[-800:]
    res.update(analyse(samples, [r.t for r in got[:want_reports]], interval))
    if "Traceback" in stderr:
        res["traceback_in_stderr"] = stderr[-1500:]
    return res


def analyse(samples: list[ProcSample], reports: list[float], interval: float) -> dict[str, Any]:
    """RSS and CPU figures from the 0.1 s samples and the report arrival times."""
    if not samples:
        return {}
    tick_ms = 1000 / CLK_TCK
    last = samples[-1]
    out: dict[str, Any] = {
        "peak_rss_kib": max(s.hwm_kib for s in samples),
        "last": dataclasses.asdict(last),
        "threads": last.threads,
        "cpu_total_ms": last.ticks * tick_ms,
    }
    if len(reports) < 3:
        out["analysis"] = f"only {len(reports)} reports: no steady state"
        return out
    start = _nearest(samples, reports[0] - interval / 2)
    mids = [_nearest(samples, t + interval / 2) for t in reports]
    steady = mids[1:]  # from half an interval after the 2nd report
    # [m1, m2] holds the 3rd cycle (baseline, 1st report, 2nd report): one cycle per delta
    deltas_ms = [(b.ticks - a.ticks) * tick_ms for a, b in zip(mids, mids[1:])]
    deltas_sched_ms = [(b.sched_ns - a.sched_ns) / 1e6 for a, b in zip(mids, mids[1:])]
    window_cycles = len(mids) - 1
    span = mids[-1].t - mids[0].t
    out.update(
        {
            "start": dataclasses.asdict(start),
            "start_after_launch_s": start.t - samples[0].t,
            "rss_start_kib": start.rss_kib,
            "startup_cpu_ms": start.ticks * tick_ms,
            "startup_cpu_sched_ms": start.sched_ns / 1e6,
            "rss_idle_kib": statistics.median(s.rss_kib for s in steady),
            "rss_idle_min_kib": min(s.rss_kib for s in steady),
            "rss_idle_max_kib": max(s.rss_kib for s in steady),
            "rss_idle_first_last_kib": [steady[0].rss_kib, steady[-1].rss_kib],
            "anon_idle_kib": statistics.median(s.anon_kib for s in steady),
            "file_idle_kib": statistics.median(s.file_kib for s in steady),
            "cpu_per_cycle_deltas_ms": deltas_ms,
            "cpu_per_cycle_median_ms": statistics.median(deltas_ms),
            "cpu_per_cycle_sched_deltas_ms": [round(d, 3) for d in deltas_sched_ms],
            "cpu_per_cycle_median_sched_ms": statistics.median(deltas_sched_ms),
            "cpu_per_cycle_mean_ms": (mids[-1].ticks - mids[0].ticks) * tick_ms / window_cycles,
            "cpu_per_cycle_mean_sched_ms": (mids[-1].sched_ns - mids[0].sched_ns)
            / 1e6
            / window_cycles,
            "window_cycles": window_cycles,
            "window_s": span,
            "cycle_period_s": span / window_cycles,
            "cpu_percent_steady": (mids[-1].ticks - mids[0].ticks) * tick_ms / (span * 10),
        }
    )
    return out


# --------------------------------------------------------------------------- context


def import_rss(python: Path, code: str) -> Optional[dict[str, int]]:
    """VmRSS/VmHWM (KiB) of ``python -c code`` at its end."""
    probe = (
        f"{code}\nimport re\ns = open('/proc/self/status').read()\n"
        "print(*(re.search(k + r':\\s+(\\d+)', s).group(1) for k in ('VmRSS', 'VmHWM')))"
    )
    r = subprocess.run(
        [str(python), "-c", probe], check=False, capture_output=True, text=True, timeout=60
    )
    if r.returncode != 0 or not r.stdout.split():
        return None
    rss, hwm = r.stdout.split()[-2:]
    return {"rss_kib": int(rss), "hwm_kib": int(hwm)}


LADDER = (
    "import json, re, sys\n"
    "def rss():\n"
    "    s = open('/proc/self/status').read()\n"
    "    return int(re.search(r'VmRSS:\\s+(\\d+)', s).group(1))\n"
    "out = [['python', rss()]]\n"
    "for m in sys.argv[1:]:\n"
    "    for name in m.split(','):\n"
    "        __import__(name)\n"
    "    out.append([m, rss()])\n"
    "print(json.dumps(out))\n"
)
#: What `defender-agent run` loads, in order: the CLI and collector, the TLS preflight
#: (the standard library's ssl: OpenSSL), awscrt/awsiot, our transport.
OURS_LADDER = (
    "defender_agent.cli.run",
    "ssl",
    "awscrt.mqtt,awsiot",
    "defender_agent.transport.mqtt",
)


def import_ladder(python: Path, modules: tuple[str, ...]) -> Optional[list[list[Any]]]:
    """VmRSS (KiB) of one interpreter after each import in turn, cumulative."""
    r = subprocess.run(
        [str(python), "-c", LADDER, *modules],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def context_rss() -> dict[str, Any]:
    py = VENV_BIN / "python"
    probes: list[tuple[str, Path, str]] = [
        ("ours: python -c pass", py, "pass"),
        ("ours: import awscrt, awsiot", py, "import awscrt, awsiot"),
        ("ours: import ssl", py, "import ssl"),
        ("ours: import importlib.metadata", py, "import importlib.metadata"),
        ("ours: import defender_agent.cli", py, "import defender_agent.cli"),
        ("sample: python -c pass", SAMPLE_PY, "pass"),
        ("sample: import awscrt, awsiot", SAMPLE_PY, "import awscrt, awsiot"),
        ("sample: import AWSIoTDeviceDefenderAgentSDK.agent", SAMPLE_PY,
         "import AWSIoTDeviceDefenderAgentSDK.agent"),
    ]  # fmt: skip
    out: dict[str, Any] = {}
    for label, python, code in probes:
        out[label] = import_rss(python, code) if python.exists() else None
    out["ours: cumulative imports of `run`"] = import_ladder(py, OURS_LADDER)
    return out


# --------------------------------------------------------------------------- commands


def ours_variant(pki: Pki, port: int, workdir: Path, label: str, *extra: str) -> Variant:
    cert, key = pki.client(THING)
    state = workdir / f"state-{label}"
    exe = VENV_BIN / "defender-agent"
    cmd = [
        str(exe), "run", "--endpoint", "localhost", "--port", str(port),
        "--rootCA", str(pki.ca), "--cert", str(cert), "--key", str(key), "-id", THING,
        "-i", "2", "--allow-short-interval", "--splay", "0", "--state-dir", str(state),
        "--include-loopback-connections", *extra,
    ]  # fmt: skip
    return Variant(label, cmd, dict(os.environ), state)


def greengrass_variant(nucleus: FakeNucleus, workdir: Path) -> Variant:
    """The Greengrass component with ``run``'s settings, from its component configuration."""
    state = workdir / "state-greengrass"
    nucleus.configuration = {
        "agent": {"interval": 2, "allow_short_interval": True, "splay": 0},
        "collector": {"include_loopback_connections": True},
    }
    cmd = [str(VENV_BIN / "defender-agent"), "greengrass", "--state-dir", str(state)]
    note = "IPC to tests/gg_infra's fake nucleus (in the bench process, not counted)"
    return Variant("greengrass", cmd, {**os.environ, **nucleus.env()}, state, note)


SHIM = (
    "import runpy, sys\n"
    "import awsiot.mqtt_connection_builder as b\n"
    "_mtls = b.mtls_from_path\n"
    "b.mtls_from_path = lambda **kw: _mtls(port={port}, **kw)\n"
    "sys.argv[0] = 'agent.py'\n"
    "runpy.run_module('AWSIoTDeviceDefenderAgentSDK.agent', run_name='__main__', alter_sys=True)\n"
)


def sample_default_port() -> int:
    """The port awsiotsdk's mtls_from_path picks with no port: 443 if ALPN, else 8883."""
    r = subprocess.run(
        [str(SAMPLE_PY), "-c", "import awscrt.io; print(int(awscrt.io.is_alpn_available()))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return 443 if r.stdout.strip() == "1" else 8883


def sample_variant(pki: Pki, port: int, shim: bool, default_port: int) -> Variant:
    cert, key = pki.client(THING)
    args = [
        "-e", "localhost", "-r", str(pki.ca), "-c", str(cert), "-k", str(key),
        "-id", THING, "-f", "json", "-i", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its reply lines reach the log file
    if shim:
        cmd = [str(SAMPLE_PY), "-c", SHIM.format(port=port), *args]
        note = (
            f"127.0.0.1:{default_port} (the sample's only port) was taken: started through "
            f"a shim passing port={port} to awsiot.mqtt_connection_builder.mtls_from_path"
        )
    else:
        cmd = [str(SAMPLE_PY), "-m", "AWSIoTDeviceDefenderAgentSDK.agent", *args]
        alpn = " with ALPN x-amzn-mqtt-ca" if port == 443 else ""
        note = (
            f"no port option; awsiotsdk's default port {port}{alpn}: a second mosquitto "
            f"TLS listener (same CA, ACL) on 127.0.0.1:{port}"
        )
    return Variant("sample", cmd, env, None, note)


# --------------------------------------------------------------------------- report


def _mib(kib: Optional[float]) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def _ms(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def accepted_text(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return "not run"
    acc, got = r.get("responder_accepted", 0), r.get("reports_received", 0)
    text = f"{acc}/{got}"
    c = r.get("status_counters")
    if c:
        text += f" (status.json: {c.get('accepted')} accepted / {c.get('sent')} sent)"
    elif "sample_replies_printed" in r:
        text += f" (printed: {r['sample_replies_printed']['accepted']} accepted)"
    return text


def markdown_table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| agent | RSS start MiB | RSS idle MiB | RSS peak MiB | PSS idle MiB "
        "| CPU ms/cycle median (ticks / schedstat) | CPU ms/cycle mean (ticks / schedstat) "
        "| startup CPU ms | threads | report bytes | reports accepted | sockets on host |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        if "skipped" in r:
            lines.append(f"| {r['label']} | " + " | ".join(["n/a"] * 9) + " | not run | n/a |")
            continue
        mean = (
            f"{_ms(r.get('cpu_per_cycle_mean_ms'))} / {_ms(r.get('cpu_per_cycle_mean_sched_ms'))}"
        )
        median = (
            f"{_ms(r.get('cpu_per_cycle_median_ms'))} / "
            f"{_ms(r.get('cpu_per_cycle_median_sched_ms'))}"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    _mib(r.get("rss_start_kib")),
                    _mib(r.get("rss_idle_kib")),
                    _mib(r.get("peak_rss_kib")),
                    _mib(r.get("smaps_rollup_kib", {}).get("Pss")),
                    median,
                    mean,
                    _ms(r.get("startup_cpu_ms")),
                    str(r.get("threads", "n/a")),
                    f"{r['payload_bytes_median']:.0f}" if r.get("payload_bytes_median") else "n/a",
                    accepted_text(r),
                    "{min}-{max}".format(**r["sockets_on_host"])
                    if r.get("sockets_on_host")
                    else "n/a",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def evaluate_targets(runs: list[dict[str, Any]], sockets: Optional[dict[str, int]]) -> list[dict]:
    out = []
    at = f"{sockets['min']}-{sockets['max']} sockets" if sockets else "? sockets"
    for r in runs:
        if not r["label"].startswith("ours") or "rss_idle_kib" not in r:
            continue
        rss = r["rss_idle_kib"]
        out.append(
            {
                "target": f"{r['label']}: idle RSS < 40 MB",
                "measured": f"{rss / 1024:.1f} MiB = {rss * 1024 / 1e6:.1f} MB",
                "met": rss * 1024 < 40e6,
            }
        )
        keys = ("median", "mean", "median_sched", "mean_sched")
        cpu = {k: r[f"cpu_per_cycle_{k}_ms"] for k in keys}
        out.append(
            {
                "target": f"{r['label']}: CPU per cycle < 20 ms at {at}",
                "measured": ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items()),
                "met": max(cpu.values()) < 20,
            }
        )
    return out


# --------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=15, help="cycles per agent, baseline included")
    p.add_argument("--connections", type=int, default=95, help="established loopback conns")
    p.add_argument("--listeners", type=int, default=4, help="extra TCP listeners")
    p.add_argument("--udp", type=int, default=2, help="unconnected UDP sockets")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="max s to wait before each agent for the host's sockets to drop near the fixture's",
    )
    p.add_argument("--no-sample", action="store_true")
    p.add_argument(
        "--greengrass", action="store_true", help="also the Greengrass v2 component (fake nucleus)"
    )
    p.add_argument("--max-seconds", type=float, default=170.0, help="whole-run time bound")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = p.parse_args(argv)
    interval = 2.0
    started = time.monotonic()
    deadline = started + args.max_seconds
    notes: list[str] = []

    def _term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    sample_error = None if args.no_sample else bench_collect.ensure_sample_venv()
    if not args.no_sample and sample_error is None:
        r = subprocess.run(
            [str(SAMPLE_PY), "-c", "import AWSIoTDeviceDefenderAgentSDK.agent"],
            check=False,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            sample_error = f"cannot import the sample's agent: {r.stderr[-300:]}"
    if sample_error:
        notes.append(f"sample not run: {sample_error}")

    sample_port = shim = None
    default_port = 0
    if not (args.no_sample or sample_error):
        default_port = sample_default_port()
        if port_free(default_port):
            sample_port, shim = default_port, False
        else:
            shim = True
            notes.append(f"127.0.0.1:{default_port} taken: the sample runs through a port shim")

    context = context_rss()
    runs: list[dict[str, Any]] = []
    info = bench_collect.machine_info()
    info["clk_tck"] = CLK_TCK
    fixture: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-footprint-")))
        progress("PKI ...")
        pki = make_pki(tmp / "pki")
        extra = (sample_port,) if sample_port else ()
        broker = FootprintMosquitto(tmp / "broker", pki, extra_tls_ports=extra)
        stack.enter_context(broker)
        for port in extra:
            if not listening(port):
                raise RuntimeError(f"mosquitto does not listen on {port}: {broker.log()[-800:]}")
        if shim:
            sample_port = broker.port
        progress(f"mosquitto TLS {broker.port}, plain {broker.plain}, extra TLS {extra}")

        assert broker.plain is not None
        transport = MqttTransport(
            MqttSettings(
                endpoint="127.0.0.1",
                port=broker.plain,
                client_id="dd-service-footprint",
                use_tls=False,
                reconnect_min_s=1.0,
                reconnect_max_s=2.0,
            )
        )
        transport.connect()
        stack.callback(transport.disconnect)
        responder = TimingResponder()
        service = ResponderService(transport, responder)
        service.start()
        stack.callback(service.stop)

        holders = stack.enter_context(_fixture.Holders(python=sys.executable))
        holders.extras(args.listeners, args.udp)
        holders.ramp_to(args.connections)
        fixture = {
            "connections": args.connections,
            "fixture_sockets": 2 * args.connections + 1 + args.listeners + args.udp,
            "holder_pids": holders.pids,
            "sockets_on_host_before": count_sockets(),
            "loopback_established_v4_before": _fixture.count_loopback_established(),
        }
        progress(f"fixture: {fixture}")

        variants = [
            ours_variant(pki, broker.port, tmp, "ours"),
            ours_variant(pki, broker.port, tmp, "ours+cpu_usage", "--include-custom-metrics"),
        ]
        if args.greengrass:
            nucleus = FakeNucleus(tmp / "ipc.sock", broker.plain, thing=THING)
            nucleus.start()
            stack.callback(nucleus.stop, True)
            variants.append(greengrass_variant(nucleus, tmp))
        if sample_port:
            variants.append(sample_variant(pki, sample_port, bool(shim), default_port))
        for v in variants:
            need = 25 + args.cycles * interval
            if time.monotonic() + need > deadline:
                runs.append({"label": v.label, "skipped": "whole-run time bound reached"})
                notes.append(f"{v.label} not run: whole-run time bound reached")
                continue
            n, waited = wait_quiet(fixture["fixture_sockets"] + QUIET_SLACK, args.quiet_wait)
            progress(
                f"running {v.label} for {args.cycles} cycles ({n} sockets, waited {waited:.1f} s)"
            )
            load_before = os.getloadavg()
            r = run_variant(v, responder, tmp, args.cycles, interval, deadline)
            r["loadavg_before_after"] = [load_before, os.getloadavg()]
            r["quiet_wait"] = {"sockets": n, "waited_s": waited}
            runs.append(r)
            progress(
                f"  {v.label}: {r.get('end')}, rss idle {_mib(r.get('rss_idle_kib'))} MiB, "
                f"cpu/cycle {_ms(r.get('cpu_per_cycle_median_ms'))} ms, {accepted_text(r)}"
            )
        if not sample_port and not args.no_sample:
            runs.append({"label": "sample", "skipped": sample_error or "no port"})
        fixture["sockets_on_host_after"] = count_sockets()
        progress("cleaning up ...")

    all_sockets = [r["sockets_on_host"] for r in runs if r.get("sockets_on_host")]
    sockets = (
        {"min": min(s["min"] for s in all_sockets), "max": max(s["max"] for s in all_sockets)}
        if all_sockets
        else None
    )
    targets = evaluate_targets(runs, sockets)
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "sample_package": SAMPLE_PKG,
        "interval_s": interval,
        "cycles": args.cycles,
        "fixture": fixture,
        "sockets_on_host_during_runs": sockets,
        "context_rss_kib": context,
        "runs": runs,
        "targets": targets,
        "notes": notes,
        "elapsed_s": time.monotonic() - started,
    }
    out = args.out or BENCH / "results" / f"footprint-{dt.date.today().isoformat()}.json.tmp"
    _fixture.save_results(out, result)

    print(markdown_table(runs))
    print()
    if sockets:
        print(
            f"- sockets on the host during the runs: {sockets['min']}-{sockets['max']} "
            f"(fixture {fixture['fixture_sockets']}: {args.connections} established loopback "
            f"connections with both ends, {args.listeners} TCP listeners + the holder's, "
            f"{args.udp} UDP)"
        )
    for label, v in context.items():
        if isinstance(v, dict):
            print(f"- context, `{label}`: RSS {_mib(v['rss_kib'])} MiB (peak {_mib(v['hwm_kib'])})")
        elif isinstance(v, list):
            steps = [f"{m} {_mib(k)}" for m, k in v]
            print(f"- context, {label} (MiB): " + " -> ".join(steps))
    for r in runs:
        if r.get("smaps_top_kib"):
            top = ", ".join(f"{n} {k / 1024:.1f}" for n, k in r["smaps_top_kib"][:6])
            print(
                f"- {r['label']} at idle: anon {_mib(r.get('anon_idle_kib'))} MiB, file "
                f"{_mib(r.get('file_idle_kib'))} MiB; largest mappings (MiB): {top}"
            )
        if r.get("note"):
            print(f"- {r['label']}: {r['note']}")
        if r.get("error"):
            print(f"- {r['label']}: ERROR {r['error']}: {r.get('stderr_tail', '')[-300:]}")
    for t in targets:
        print(f"- target {t['target']}: {'met' if t['met'] else 'NOT met'} ({t['measured']})")
    for note in notes:
        print(f"- note: {note}")
    print(f"\nJSON: {out}  ({result['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
