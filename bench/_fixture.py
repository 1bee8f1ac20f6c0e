"""Loopback socket fixture and sample runner for ``bench_collect.py``.

Standard library only: this file runs under three interpreters.

* ``python bench/_fixture.py holder`` -- a socket holder. It owns one listener on
  127.0.0.1 and both ends of every connection made to it, so each established
  loopback connection costs it two descriptors. It reads commands on stdin and
  answers one line on stdout per command:

  ``add K``     open K more connections (answer ``ok <total connections>``)
  ``extras T U`` open T TCP listeners (half on 127.0.0.1, half on ::) and U unconnected
               UDP sockets on 127.0.0.1 (answer ``ok <T> <U>``)
  ``quit``/EOF close everything with SO_LINGER 0 (no TIME_WAIT left behind) and exit

  It prints ``ready <pid> <port> <fd limit>`` once it is up. It raises its
  RLIMIT_NOFILE soft limit to the hard limit.

* ``bench/.venvs/sample/bin/python bench/_fixture.py sample --reps K --budget S``
  times ``AWSIoTDeviceDefenderAgentSDK.collector.Collector.collect_metrics()``
  in-process and prints one JSON object on stdout.

* The ``Holders`` class drives a set of holder processes from the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Descriptors one holder may use for connections (two per connection), under ~9 000.
CONNS_PER_HOLDER = 4400
_LINGER_ZERO = struct.pack("ii", 1, 0)


# --------------------------------------------------------------------------- holder side


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        s.close()
    socks.clear()


def _add_connections(listener: socket.socket, addr: tuple[str, int], k: int, conns: list) -> None:
    batch = 256  # connect a batch (the kernel completes loopback handshakes), then accept it
    left = k
    while left > 0:
        m = min(batch, left)
        clients = []
        for _ in range(m):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            conns.append(c)
            c.connect(addr)
            clients.append(c)
        for _ in range(m):
            s, _peer = listener.accept()
            conns.append(s)
        left -= m


def _add_extras(n_tcp: int, n_udp: int, extras: list) -> None:
    for i in range(n_tcp):
        if i % 2 == 0:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
        else:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(("::", 0))
        s.listen(16)
        extras.append(s)
    for _ in range(n_udp):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        extras.append(u)


def holder_main() -> int:
    limit = _raise_nofile()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    addr = listener.getsockname()
    conns: list[socket.socket] = []
    extras: list[socket.socket] = []
    out = sys.stdout
    out.write(f"ready {os.getpid()} {addr[1]} {limit}\n")
    out.flush()
    try:
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            try:
                if parts[0] == "add":
                    _add_connections(listener, addr, int(parts[1]), conns)
                    out.write(f"ok {len(conns) // 2}\n")
                elif parts[0] == "extras":
                    _add_extras(int(parts[1]), int(parts[2]), extras)
                    out.write(f"ok {parts[1]} {parts[2]}\n")
                elif parts[0] == "quit":
                    break
                else:
                    out.write(f"err unknown command {parts[0]!r}\n")
            except OSError as exc:
                out.write(f"err {type(exc).__name__}: {exc}\n")
            out.flush()
    finally:
        _close_all(conns)
        _close_all(extras)
        listener.close()
    return 0


# --------------------------------------------------------------------------- sample side


class _CallTimeoutError(Exception):
    pass


def _on_alarm(_signum: int, _frame: object) -> None:
    raise _CallTimeoutError


def sample_main(reps: int, warmup: int, budget: float, call_cap: float) -> int:
    """Time the public sample's ``collect_metrics()``; print JSON on stdout.

    Stops repeating when the next call would take the total past ``budget`` seconds
    (at least one timed call is made); a call running longer than ``call_cap``
    seconds is interrupted (SIGALRM) and reported as ``skipped``.
    """
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # the sample prints on errors; keep our stdout for the JSON
    t0 = time.perf_counter()
    import psutil
    from AWSIoTDeviceDefenderAgentSDK import collector

    import_s = time.perf_counter() - t0
    c = collector.Collector(short_metrics_names=False)
    times: list[float] = []
    json_times: list[float] = []
    result: dict[str, object] = {}
    spent = 0.0
    signal.signal(signal.SIGALRM, _on_alarm)
    for i in range(warmup + reps):
        t = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, call_cap)
        try:
            m = c.collect_metrics()
        except _CallTimeoutError:
            result["skipped"] = f"call {i} exceeded {call_cap:.0f} s (interrupted)"
            break
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.perf_counter() - t
        t = time.perf_counter()
        m.to_json_string()
        jt = time.perf_counter() - t
        print(f"sample call {i}: {dt:.3f} s", file=sys.stderr, flush=True)
        result["connections_reported"] = len(m.network_connections)
        result["listening_tcp_reported"] = len(m.listening_tcp_ports)
        result["listening_udp_reported"] = len(m.listening_udp_ports)
        if i >= warmup:
            times.append(dt * 1e3)
            json_times.append(jt * 1e3)
        spent += dt
        if times and spent + dt > budget:
            break
    if times:
        result["times_ms"] = times
        result["median_ms"] = statistics.median(times)
        result["to_json_median_ms"] = statistics.median(json_times)
    result.update(
        {
            "warmup_calls": warmup,
            "import_s": import_s,
            "maxrss_kib_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "psutil": psutil.__version__,
            "python": sys.version.split()[0],
        }
    )
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()
    return 0


# --------------------------------------------------------------------------- driver side


class HolderError(RuntimeError):
    """A holder process did not answer as expected."""


class _Holder:
    def __init__(self, python: str, timeout: float) -> None:
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "holder"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.conns = 0
        line = self._read()
        if not line.startswith("ready "):
            raise HolderError(f"holder said {line!r}")
        _, pid, port, limit = line.split()
        self.pid, self.port, self.fd_limit = int(pid), int(port), int(limit)

    def _read(self) -> str:
        assert self.proc.stdout is not None
        # poll the pipe so a stuck holder cannot hang the benchmark
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(self.timeout):
                raise HolderError(f"holder {self.proc.pid} silent for {self.timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise HolderError(f"holder {self.proc.pid} exited (rc={self.proc.poll()})")
        return line.strip()

    def command(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self._read()
        if not line.startswith("ok"):
            raise HolderError(f"holder {self.proc.pid}: {cmd!r} -> {line!r}")
        return line

    def add(self, k: int) -> None:
        line = self.command(f"add {k}")
        self.conns = int(line.split()[1])

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


class Holders:
    """A set of holder processes that together hold N established loopback connections.

    Use as a context manager; ``ramp_to(n)`` only adds connections.
    """

    def __init__(self, python: str | None = None, per_holder: int = CONNS_PER_HOLDER) -> None:
        self.python = python or sys.executable
        self.per_holder = per_holder
        self.holders: list[_Holder] = []

    def __enter__(self) -> Holders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connections(self) -> int:
        return sum(h.conns for h in self.holders)

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self.holders]

    def _spawn(self) -> _Holder:
        h = _Holder(self.python, timeout=30.0)
        self.holders.append(h)
        return h

    def extras(self, n_tcp_listeners: int, n_udp: int) -> None:
        h = self.holders[0] if self.holders else self._spawn()
        h.command(f"extras {n_tcp_listeners} {n_udp}")

    def ramp_to(self, n: int) -> None:
        need = n - self.connections
        if need < 0:
            raise ValueError(f"ramp_to({n}) below current {self.connections}")
        while need > 0:
            h = next((h for h in self.holders if h.conns < self.per_holder), None)
            if h is None:
                h = self._spawn()
            k = min(need, self.per_holder - h.conns)
            # a holder's budget is its fd limit less a little headroom
            k = min(k, max(0, (h.fd_limit - 64) // 2 - h.conns))
            if k <= 0:
                raise HolderError(f"holder {h.pid} cannot take more connections")
            # time bound: ~4 400 loopback connects take well under a few seconds
            h.timeout = 60.0
            h.add(k)
            need -= k

    def stop(self) -> None:
        for h in self.holders:
            try:
                h.stop()
            except Exception:
                h.proc.kill()
        self.holders.clear()


def save_results(out: Path, result: dict[str, object]) -> None:
    """Write a benchmark's results as indented JSON, atomically (temp file, rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)


def count_tcp_sockets() -> int:
    """All TCP sockets of this network namespace, any state (/proc/net/tcp and tcp6)."""
    n = 0
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/net/{name}") as f:
            n += sum(1 for _ in f) - 1
    return n


def count_loopback_established() -> int:
    """Count ESTABLISHED IPv4 TCP sockets between 127.0.0.1 addresses (/proc/net/tcp)."""
    n = 0
    lo = "0100007F:"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split(None, 4)
            if parts[3] == "01" and parts[1].startswith(lo) and parts[2].startswith(lo):
                n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("holder")
    sp = sub.add_parser("sample")
    sp.add_argument("--reps", type=int, default=5)
    sp.add_argument("--warmup", type=int, default=1)
    sp.add_argument("--budget", type=float, default=60.0, help="stop repeating after S seconds")
    sp.add_argument("--call-cap", type=float, default=240.0, help="interrupt a call after S s")
    args = p.parse_args(argv)
    if args.mode == "holder":
        return holder_main()
    return sample_main(args.reps, args.warmup, args.budget, args.call_cap)


if __name__ == "__main__":
    sys.exit(main())
