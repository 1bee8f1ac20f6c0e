"""User-defined metrics without code: a command whose standard output is the value.

A command runs with its arguments as given (no shell), standard input from
``/dev/null``, the working directory ``/`` and a minimal environment (``PATH``
of the agent, ``LC_ALL=C`` so numbers are printed with a dot). It runs in a
session of its own, so that it and everything it started can be killed as one
process group:

* when its time is up (the metric is skipped: ``timeout``);
* when it prints more than :data:`MAX_OUTPUT` bytes (skipped: ``output``);
* when it has exited: what it left running in the background is killed too,
  and a metric command must not leave anything running behind it.

All the commands of a cycle run at once, so a cycle waits for the slowest
command, never for the sum. The output is parsed by the metric's type:

* ``number``: one number (``42``, ``-3.5``, ``1e3``), surrounding white space ignored;
* the list types: one value per line, blank lines ignored; values are then
  checked as every custom metric's are (:mod:`.checks`).

A non-zero exit status, death by a signal, a timeout, an output that is too
long, not UTF-8 or not of the type → :class:`~._base.MetricError` with the
reason, and the metric is left out of that report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import signal
import subprocess  # noqa: TID251 - the one place that runs commands: user-configured exec metrics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Final, Optional, Union

from defender_agent.custom._base import MetricError
from defender_agent.model import CustomMetricType

__all__ = [
    "MAX_OUTPUT",
    "CommandBatch",
    "ExecSpec",
    "parse_output",
    "run_commands",
]

log = logging.getLogger(__name__)

#: The most bytes of standard output a command may print.
MAX_OUTPUT: Final = 64 * 1024
_MAX_STDERR: Final = 4096  # kept for the warning; the rest is read and dropped
_POLL_S: Final = 0.02  # how often exits are checked while pipes stay open
_DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NUMBER: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class ExecSpec:
    """A metric whose value a command prints.

    Attributes:
        name: the custom metric name.
        command: the program and its arguments (no shell: write
            ``("sh", "-c", "...")`` for one).
        type: the metric type, which says how the output is parsed.
        timeout_s: how long the command may run before it is killed.
    """

    name: str
    command: tuple[str, ...]
    type: CustomMetricType
    timeout_s: float = 5.0


Parsed = Union[int, float, list[Union[int, float]], list[str]]


def _number(token: str) -> Union[int, float]:
    if _INTEGER.fullmatch(token):
        return int(token)
    if _NUMBER.fullmatch(token):
        return float(token)
    shown = token if len(token) <= 40 else token[:39] + "…"
    raise MetricError("output", f"not a number: {shown!r}")


def parse_output(metric_type: CustomMetricType, data: bytes) -> Parsed:
    r"""Parse a command's standard output as a raw value of ``metric_type``.

    >>> parse_output(CustomMetricType.NUMBER, b" 42\n")
    42
    >>> parse_output(CustomMetricType.NUMBER_LIST, b"1.5\n\n-2\n")
    [1.5, -2]
    >>> parse_output(CustomMetricType.STRING_LIST, b"eth0\r\nwlan0\n")
    ['eth0', 'wlan0']

    Raises:
        MetricError: not UTF-8, or not of the type (``kind`` is ``output``).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MetricError("output", "the output is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if metric_type is CustomMetricType.NUMBER:
        if len(lines) != 1 or len(lines[0].split()) != 1:
            what = "nothing" if not lines else f"{len(text.split())} words"
            raise MetricError("output", f"expected one number, got {what}")
        return _number(lines[0])
    if metric_type is CustomMetricType.NUMBER_LIST:
        return [_number(line) for line in lines]
    return lines


@dataclass(eq=False)  # identity: jobs are found in and removed from lists
class _Job:
    """One running command and what it has printed so far."""

    spec: ExecSpec
    proc: subprocess.Popen[bytes]
    deadline: float
    out: list[bytes] = field(default_factory=list)
    out_size: int = 0
    err: bytearray = field(default_factory=bytearray)
    open_pipes: int = 2
    exited: bool = False
    result: Optional[Union[bytes, MetricError]] = None


def _minimal_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH") or _DEFAULT_PATH, "LC_ALL": "C", "LANG": "C"}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group (its pid: it leads a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGKILL)


def _leader_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the command has exited, without reaping it.

    Not reaping keeps its pid (the process group id) from being reused until
    the group has been killed.
    """
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped
        return True
    return info is not None


def _stderr_line(err: bytes) -> str:
    for line in err.decode("utf-8", "replace").splitlines():
        if line.strip():
            text = line.strip()
            return f": {text[:200]}"
    return ""


def _status_failure(returncode: int, err: bytes) -> MetricError:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return MetricError("exit", f"killed by {name}{_stderr_line(err)}")
    return MetricError("exit", f"exited with status {returncode}{_stderr_line(err)}")


class CommandBatch:
    r"""The commands of one cycle, started together and waited for together.

    >>> batch = CommandBatch([ExecSpec("x", ("echo", "5"), CustomMetricType.NUMBER)])
    >>> batch.wait()
    [b'5\n']

    Args:
        specs: the commands to run; they start at once.
        max_output: the most bytes of standard output each may print.
    """

    def __init__(self, specs: Sequence[ExecSpec], *, max_output: int = MAX_OUTPUT) -> None:
        self._max_output = max_output
        self._selector = selectors.DefaultSelector()
        self._jobs: list[_Job] = []
        self._results: list[Union[bytes, MetricError, _Job]] = []
        env = _minimal_env()
        for spec in specs:
            self._results.append(self._start(spec, env))

    def _start(self, spec: ExecSpec, env: dict[str, str]) -> Union[MetricError, _Job]:
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv from the operator's config, no shell
                list(spec.command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd="/",
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError:
            return MetricError("start", f"command not found: {spec.command[0]!r}")
        except PermissionError:
            return MetricError("start", f"not allowed to run {spec.command[0]!r}")
        except OSError as exc:
            return MetricError("start", f"cannot run {spec.command[0]!r}: {exc.strerror or exc}")
        job = _Job(spec, proc, time.monotonic() + spec.timeout_s)
        assert proc.stdout is not None  # narrowing: both are PIPEs
        assert proc.stderr is not None
        self._selector.register(proc.stdout, selectors.EVENT_READ, (job, True))
        self._selector.register(proc.stderr, selectors.EVENT_READ, (job, False))
        self._jobs.append(job)
        return job

    # ------------------------------------------------------------------ the wait loop
    def _close_pipes(self, job: _Job) -> None:
        for pipe in (job.proc.stdout, job.proc.stderr):
            if pipe is None or pipe.closed:
                continue
            with contextlib.suppress(KeyError):  # already unregistered at its EOF
                self._selector.unregister(pipe)
            pipe.close()
        job.open_pipes = 0

    def _finish(self, job: _Job, failure: Optional[MetricError] = None) -> None:
        """Kill what is left of the group, reap the command and settle the job's result."""
        _kill_group(job.proc)
        returncode = job.proc.wait()
        self._close_pipes(job)
        if failure is None:
            if returncode == 0:
                job.result = b"".join(job.out)
            else:
                failure = _status_failure(returncode, bytes(job.err))
        if failure is not None:
            job.result = failure
        self._jobs.remove(job)

    def _read(self, job: _Job, pipe: IO[bytes], is_stdout: bool) -> None:
        chunk = os.read(pipe.fileno(), 65536)
        if not chunk:
            self._selector.unregister(pipe)
            pipe.close()
            job.open_pipes -= 1
        elif is_stdout:
            job.out.append(chunk)
            job.out_size += len(chunk)
            if job.out_size > self._max_output:
                limit = self._max_output
                self._finish(job, MetricError("output", f"printed more than {limit} bytes"))
        elif len(job.err) < _MAX_STDERR:
            job.err += chunk[: _MAX_STDERR - len(job.err)]

    def _step(self) -> None:
        """Wait for output or the next deadline, then settle the jobs that are done."""
        now = time.monotonic()
        for job in list(self._jobs):
            if now >= job.deadline:
                if job.exited:  # exited in time; only a background process kept the pipes open
                    self._finish(job)
                else:
                    reason = f"no result within {job.spec.timeout_s:g} s; killed"
                    self._finish(job, MetricError("timeout", reason))
        if not self._jobs:
            return
        wait = min(min(job.deadline for job in self._jobs) - now, _POLL_S)
        for key, _ in self._selector.select(max(wait, 0.0)):
            job, is_stdout = key.data
            if job in self._jobs:
                self._read(job, key.fileobj, is_stdout)  # type: ignore[arg-type]
        for job in list(self._jobs):
            if not job.exited and _leader_exited(job.proc):
                job.exited = True
                _kill_group(job.proc)  # background leftovers; what they printed stays readable
            if job.exited and job.open_pipes == 0:
                self._finish(job)

    def wait(self) -> list[Union[bytes, MetricError]]:
        """Wait for every command; return each one's standard output or why it failed.

        Commands still running at their deadline are killed; this returns
        within the longest timeout (plus the time to reap the killed).
        """
        try:
            while self._jobs:
                self._step()
        finally:
            for job in list(self._jobs):  # only after an unexpected error: leave nothing behind
                self._finish(job, MetricError("error", "interrupted"))
            self._selector.close()
        results: list[Union[bytes, MetricError]] = []
        for item in self._results:
            if isinstance(item, _Job):
                assert item.result is not None  # every job was finished above
                results.append(item.result)
            else:
                results.append(item)
        return results


def run_commands(
    specs: Sequence[ExecSpec], *, max_output: int = MAX_OUTPUT
) -> list[Union[bytes, MetricError]]:
    """Run the commands at once; return, in order, each one's output or why it failed."""
    return CommandBatch(specs, max_output=max_output).wait()
