"""The state directory: small JSON documents written atomically, and the report-id sequence.

State files are written to a temporary file in the same directory, fsynced
and renamed over the old one, so a crash or power loss leaves either the old
or the new file, never a torn one. They are read tolerantly: a missing,
corrupt or foreign file is treated as absent (and logged), never a crash; a
value out of range (:class:`OutOfRange`: a report id beyond the ms-epoch range,
a time in the future, a counter beyond 64 bits) discards the file with one
warning naming it and the value.

Report ids are epoch milliseconds, raised to one more than the last id ever
handed out when the clock is behind (NTP stepped it back, a board without an
RTC booted at 1970): ``max(now_ms, last + 1)``. The last id is kept in the
state directory under an exclusive lock, so ids increase across restarts and
between processes sharing the directory.

One process at a time owns a state directory: :meth:`StateDir.acquire_lock`
takes an exclusive ``flock`` on its ``lock`` file and writes the holder's pid
in it. The kernel drops the lock when the holder exits, crashes included, so
a stale pid in the file never blocks anyone.
"""

from __future__ import annotations

import _thread  # get_ident without importing threading (start-up of collect)
import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

from defender_agent.errors import StateError
from defender_agent.logs import get_logger

__all__ = [
    "MAX_SAVED_REPORT_ID",
    "OutOfRange",
    "ReportIdSequence",
    "StateDir",
    "StateLock",
    "default_state_dir",
    "saved_report_id_problem",
]

log = get_logger(__name__)

STATE_VERSION = 1

#: The file whose ``flock`` says which process owns the directory.
LOCK_FILE = "lock"


class StateLock:
    """An exclusive hold on a state directory, from :meth:`StateDir.acquire_lock`.

    Released by :meth:`release`, at the end of a ``with`` block, or by the
    kernel when the process ends.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: Optional[int] = fd

    @property
    def held(self) -> bool:
        """Whether this process still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Give the directory up (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _holder(fd: int) -> Optional[int]:
    """The pid the holder wrote in the lock file (``None`` if not written yet or garbled)."""
    for _ in range(20):  # the holder writes its pid just after taking the lock
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(0.005)
    return None


def default_state_dir(environ: Optional[dict[str, str]] = None) -> Path:
    """``$DEFENDER_AGENT_STATE_DIR``, else ``/var/lib/defender-agent`` for root, else XDG state.

    >>> default_state_dir({"DEFENDER_AGENT_STATE_DIR": "/tmp/x"})
    PosixPath('/tmp/x')
    """
    env = os.environ if environ is None else environ
    if env.get("DEFENDER_AGENT_STATE_DIR"):
        return Path(env["DEFENDER_AGENT_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/defender-agent")
    base = env.get("XDG_STATE_HOME") or str(
        Path(env.get("HOME", "~")).expanduser() / ".local/state"
    )
    return Path(base) / "defender-agent"


class StateDir:
    """A directory of JSON state documents.

    Args:
        path: the directory; created (mode 0700) on first use.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def ensure(self) -> None:
        """Create the directory if needed and check that it is writable.

        Raises:
            StateError: it cannot be created or written.
        """
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"state directory {self.path}: {exc.strerror or exc}") from exc
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StateError(f"state directory {self.path}: not writable")

    def load(self, name: str) -> Optional[dict[str, Any]]:
        """Read ``<name>.json``; ``None`` when missing, corrupt or of another schema version."""
        file = self.path / f"{name}.json"
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state file %s: %s", file, exc)
            return None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            log.warning(
                "ignoring state file %s: not a version %d state document", file, STATE_VERSION
            )
            return None
        return data

    def save(self, name: str, data: dict[str, Any]) -> None:
        """Write ``<name>.json`` atomically (temp file, fsync, rename, fsync of the directory).

        Raises:
            StateError: the file cannot be written.
        """
        payload = json.dumps({"version": STATE_VERSION, **data}, sort_keys=True).encode()
        try:
            self.ensure()
            # one temporary name per process and thread (tempfile would add ~10 ms to start-up)
            tmp = self.path / f".{name}.{os.getpid()}.{_thread.get_ident()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                Path(tmp).replace(self.path / f"{name}.json")
            except BaseException:
                with contextlib.suppress(OSError):
                    Path(tmp).unlink()
                raise
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StateError(f"cannot write state file {self.path / name}.json: {exc}") from exc

    def acquire_lock(self) -> StateLock:
        """Own the directory: an exclusive, non-blocking ``flock`` on its ``lock`` file.

        Returns:
            The held lock; keep it for as long as the directory is in use.

        Raises:
            StateError: another process holds it ("state directory /x is in use by
                pid 1234; stop it or use --state-dir"), or the lock file cannot be opened.
        """
        self.ensure()
        file = self.path / LOCK_FILE
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot lock state directory {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd) if exc.errno in (errno.EAGAIN, errno.EACCES) else None
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise StateError(f"cannot lock state directory {self.path}: {exc}") from exc
            who = f"pid {holder}" if holder is not None else "another process"
            raise StateError(
                f"state directory {self.path} is in use by {who}; stop it or use --state-dir"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # the lock is held all the same; only the pid is missing
            log.debug("cannot write the pid into %s: %s", file, exc)
        return StateLock(file, fd)

    @contextlib.contextmanager
    def lock(self) -> Iterator[StateLock]:
        """:meth:`acquire_lock` for the length of a ``with`` block.

        Raises:
            StateError: the directory is in use by another process.
        """
        held = self.acquire_lock()
        try:
            yield held
        finally:
            held.release()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold a short exclusive lock (``.lock``) for a read-modify-write of one file.

        Not the ownership lock of :meth:`acquire_lock`: processes that share a
        directory (``collect`` beside a running agent) take this one briefly.

        Raises:
            StateError: the lock file cannot be opened.
        """
        self.ensure()
        try:
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot lock state directory {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class OutOfRange(str):
    """Why a saved value is not to be trusted: a reason that is logged as a warning.

    Values read back from the state directory are bounded (report ids, times,
    counters); one out of range means the file was corrupted or tampered with,
    so it is discarded with one warning and the agent starts fresh.

    >>> isinstance(OutOfRange("last_published 1e+30 is in the future"), str)
    True
    """

    __slots__ = ()


#: The largest saved report id taken on trust: the last millisecond of the year 9999 (ids are
#: epoch milliseconds). A saved id above it (2**63, from a corrupted or forged file) would make
#: every later id too large for the validator's 1 to 2**63-1 range, for good.
MAX_SAVED_REPORT_ID = 253_402_300_799_999


def saved_report_id_problem(value: object) -> Optional[OutOfRange]:
    """Why a saved ``last_report_id`` cannot be trusted, or ``None`` when it can.

    >>> saved_report_id_problem(1700000000000) is None
    True
    >>> saved_report_id_problem(2**63)
    'last_report_id 9223372036854775808 is out of range (1 to 253402300799999, epoch ms)'
    >>> saved_report_id_problem("12")
    "last_report_id '12' is not a whole number"
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return OutOfRange(f"last_report_id {value!r} is not a whole number")
    if not 1 <= value <= MAX_SAVED_REPORT_ID:
        return OutOfRange(
            f"last_report_id {value} is out of range (1 to {MAX_SAVED_REPORT_ID}, epoch ms)"
        )
    return None


class ReportIdSequence:
    """Strictly increasing report ids, persisted when a state directory is given.

    A saved id that is not a whole number from 1 to :data:`MAX_SAVED_REPORT_ID` is
    discarded with one warning naming the file and the value, and the sequence starts
    again from the clock.

    >>> seq = ReportIdSequence(None, clock=lambda: 1700000000.0)
    >>> seq.next(), seq.next()
    (1700000000000, 1700000000001)
    """

    def __init__(self, state: Optional[StateDir], clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._clock = clock
        self._last = 0

    def _persisted(self, state: StateDir) -> int:
        """The saved last id, or 0 when there is none or it is not to be trusted."""
        saved = state.load("report-id") or {}
        if "last_report_id" not in saved:
            return 0
        last = saved["last_report_id"]
        problem = saved_report_id_problem(last)
        if problem is None:
            assert isinstance(last, int)
            return last
        log.warning(
            "ignoring state file %s: %s; report ids start again from the clock",
            state.path / "report-id.json",
            problem,
        )
        return 0

    def next(self) -> int:
        """Return the next id: ``max(now in ms, last + 1, last persisted + 1)``.

        If the state directory cannot be used, a warning names it once and the
        sequence goes on in memory (still strictly increasing in this process).
        """
        now_ms = int(self._clock() * 1000)
        if self._state is not None:
            try:
                with self._state.locked():
                    persisted = self._persisted(self._state)
                    candidate = max(now_ms, self._last + 1, persisted + 1)
                    self._state.save("report-id", {"last_report_id": candidate})
            except StateError as exc:
                log.warning("%s; report ids are kept in memory only", exc)
                self._state = None
            else:
                self._last = candidate
                return candidate
        self._last = max(now_ms, self._last + 1)
        return self._last
