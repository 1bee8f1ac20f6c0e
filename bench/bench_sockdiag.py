"""Time netlink sock_diag against /proc/net/tcp and ss on a host with N loopback connections.

Usage: python bench/bench_sockdiag.py [N]   (N established connections, default 5000)

Every connection is a client and an accepted socket, so the host gains 2N established
sockets. The open-file limit is raised to its hard limit; when 2N + 100 descriptors do
not fit, the connections are spread over child processes that each hold a share and
wait on a pipe until told to close them. Sockets close with SO_LINGER 0 (a reset), so
no TIME_WAIT sockets are left behind to skew the next run.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from defender_agent.readers import _sockdiag

REPEAT = 15
RESERVE = 100
SETUP_TIMEOUT_S = 180.0
STATES = (1 << 1) | (1 << 10)  # ESTABLISHED | LISTEN
_LINGER0 = struct.pack("ii", 1, 0)


def open_connections(n: int) -> list[socket.socket]:
    """A loopback listener and n accepted connections (2n + 1 sockets)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    socks = [listener]
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        address = listener.getsockname()
        for _ in range(n):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(client)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            client.connect(address)
            accepted, _ = listener.accept()
            socks.append(accepted)
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in reversed(socks):
        sock.close()
    socks.clear()


def hold(n: int, conn) -> None:
    """Child process: open n connections, report, wait for the word (or EOF), close."""
    socks: list[socket.socket] = []
    try:
        socks = open_connections(n)
        conn.send(("ready", n))
        conn.recv()
    except EOFError:
        pass
    except OSError as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        close_all(socks)
        conn.close()


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def median_ms(func, repeat: int = REPEAT) -> tuple[float, float, object]:
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times), result


def netlink_dump() -> list:
    rows = _sockdiag.dump_sockets(socket.IPPROTO_TCP, socket.AF_INET, STATES)
    return rows + _sockdiag.dump_sockets(socket.IPPROTO_TCP, socket.AF_INET6, STATES)


def raw_datagrams(family: int) -> list[bytes]:
    """The datagrams of one dump, to time parse_messages alone."""
    out = []
    buf = bytearray(1 << 20)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _sockdiag.NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(5.0)
        sock.sendto(_sockdiag.build_request(socket.IPPROTO_TCP, family, STATES), (0, 0))
        done = False
        while not done:
            n = sock.recv_into(buf)
            out.append(bytes(buf[:n]))
            done = _sockdiag.parse_messages(out[-1])[1]
    return out


def parse_only(datagrams: list[bytes]) -> int:
    return sum(len(_sockdiag.parse_messages(d)[0]) for d in datagrams)


def proc_read() -> int:
    lines = Path("/proc/net/tcp").read_bytes().splitlines()
    return len(lines) + len(Path("/proc/net/tcp6").read_bytes().splitlines())


def proc_parse() -> int:
    from defender_agent.readers._inet import parse_socket_table

    wanted = frozenset((1, 10))
    rows, _ = parse_socket_table(Path("/proc/net/tcp").read_bytes(), socket.AF_INET, wanted)
    rows6, _ = parse_socket_table(Path("/proc/net/tcp6").read_bytes(), socket.AF_INET6, wanted)
    return len(rows) + len(rows6)


def run_ss(ss: str) -> int:
    args = [ss, "-Htan", "state", "established"]
    out = subprocess.run(args, capture_output=True, check=True, timeout=60).stdout
    return len(out.splitlines())


def benchmark(n: int) -> None:
    table = []
    table.append(("netlink dump_sockets TCP v4+v6, EST|LISTEN", *median_ms(netlink_dump)))
    datagrams = raw_datagrams(socket.AF_INET) + raw_datagrams(socket.AF_INET6)
    table.append(("  of which parse_messages only", *median_ms(lambda: parse_only(datagrams))))
    table.append(("/proc/net/tcp+tcp6 read().splitlines()", *median_ms(proc_read)))
    try:
        table.append(("/proc/net/tcp+tcp6 read + _inet parse", *median_ms(proc_parse)))
    except (ImportError, AttributeError, TypeError) as exc:
        print(f"(skipping the /proc parser row: {exc})")
    ss = shutil.which("ss")
    if ss:
        table.append(("ss -Htan state established (subprocess)", *median_ms(lambda: run_ss(ss))))
    print(
        f"\n{n} established loopback connections; median/min of {REPEAT} runs, Python "
        f"{sys.version.split()[0]}; {len(datagrams)} netlink datagrams per dump pair"
    )
    print(f"{'method':<46}{'median ms':>10}{'min ms':>9}{'rows':>9}")
    for name, med, best, result in table:
        count = len(result) if isinstance(result, list) else result
        print(f"{name:<46}{med:>10.2f}{best:>9.2f}{count:>9}")
    rows = table[0][3]
    per_row = table[1][1] / max(1, len(rows)) * 1e6
    print(f"parse cost: {per_row:.0f} ns per socket row ('rows' for /proc is lines incl. headers)")


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    if not _sockdiag.available():
        print("netlink sock_diag is not available here")
        return 1
    limit = raise_nofile()
    per_process = (limit - RESERVE) // 2
    own: list[socket.socket] = []
    children = []
    started = time.perf_counter()
    try:
        if 2 * n + RESERVE <= limit:
            own = open_connections(n)
        else:
            parts = math.ceil(n / per_process)
            shares = [n // parts + (i < n % parts) for i in range(parts)]
            for share in shares:
                parent_end, child_end = multiprocessing.Pipe()
                proc = multiprocessing.Process(target=hold, args=(share, child_end), daemon=True)
                proc.start()
                child_end.close()
                children.append((proc, parent_end))
            for proc, conn in children:
                if not conn.poll(SETUP_TIMEOUT_S):
                    raise RuntimeError(f"child {proc.pid} did not open its connections in time")
                try:
                    status, detail = conn.recv()
                except EOFError:
                    status, detail = "error", "exited without a word"
                if status != "ready":
                    raise RuntimeError(f"child {proc.pid} failed: {detail}")
        where = "this process" if own else f"{len(children)} child processes"
        print(
            f"opened {n} connections in {time.perf_counter() - started:.1f} s "
            f"(fd limit {limit}, held by {where})"
        )
        benchmark(n)
    finally:
        close_all(own)
        for _proc, conn in children:
            with contextlib.suppress(OSError):
                conn.send("close")
            conn.close()
        for proc, _ in children:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
