"""Detect in a worker process of its own, as the service sees it (``[detect] evaluate_in``).

Python runs one thread at a time in a process. On a thread of the service, Detect's
evaluation takes its CPU from the service's replies; in a child process
(:mod:`defender_agent.detect.worker`) it runs on another core, and the service only hands
the stored reports over a pipe. :class:`DetectProcess` is that hand-over, with the same
surface as :class:`~defender_agent.detect.runtime.DetectRuntime` for the service:

* :meth:`DetectProcess.after_store` sends a committed batch as the stored JSON documents
  and waits until the worker judged it (on the service's hand-off thread, which waits
  without holding the interpreter: the replies go on), so batches are judged in store
  order, one at a time, and a stop judges what was stored first;
* the worker publishes its MQTT alerts on a connection of its own
  (:mod:`.alert_link`), or sends them back over the pipe to go out on the service's
  connection (:meth:`DetectProcess.bind_publish`); its webhooks it posts itself;
* :attr:`DetectProcess.store` is Detect's store opened in the service process, for the
  HTTP API (after the worker migrated the database);
* a worker that dies is logged, started again (backoff from 1 s to 30 s), and the batch it
  held fails as an evaluation error (the reports are stored and answered; only their
  evaluation is lost, and counted). A worker that cannot start at all fails the service's
  start with its one-line reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess  # noqa: TID251 - the service's own worker: this interpreter, our module
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Optional

from defender_agent.config.extra_sections import DetectSection
from defender_agent.detect.alerts import AlertSettings
from defender_agent.detect.runtime import alert_settings
from defender_agent.detect.store import DetectStore
from defender_agent.detect.worker import Start, receive, send
from defender_agent.errors import StateError
from defender_agent.schedule import backoff_delay
from defender_agent.service.storage import open_store
from defender_agent.transport.base import MqttSettings

if TYPE_CHECKING:
    from defender_agent.service.runner import HandedOver

__all__ = ["DetectProcess"]

log = logging.getLogger(__name__)

_START_TIMEOUT_S: Final = 60.0  # importing, migrating, loading the plan
_STOP_TIMEOUT_S: Final = 15.0  # the worker's own stop (engine, alerts) after "stop"
_RESTART_CAP_S: Final = 30.0
_STEADY_S: Final = 60.0  # a worker that lived this long restarts its backoff
_POLL_S: Final = 1.0


class _DiedError(Exception):
    """The worker went away (its exit code, if known)."""


class DetectProcess:
    """Detect judged by a worker process; see the module docstring.

    Args:
        db_url: The service's database.
        detect: ``[detect]`` (None: the defaults).
        region: ``[http] region``.
        account: ``[http] account_id``.
        log_level: The service's log level (the worker logs to the same stderr).
        log_format: ``text`` or ``json``.
        mqtt: The worker's own connection for its MQTT alerts (``[detect] alert_connection
            = "own"``); None: they come back here (:meth:`bind_publish`).

    Attributes:
        store: Detect's store in this process (for the API); set by :meth:`start`.
        alert_settings: Where alerts go (for the service's log line).
        restarts: Workers started again after one died.
        lost: Reports handed to a worker that died before judging them.
    """

    def __init__(
        self,
        db_url: str,
        detect: Optional[DetectSection] = None,
        *,
        region: str = "us-east-1",
        account: str = "123456789012",
        log_level: str = "info",
        log_format: str = "text",
        mqtt: Optional[MqttSettings] = None,
    ) -> None:
        detect = detect or DetectSection()
        self._start = Start(db_url, detect, region, account, log_level, log_format, mqtt)
        self.alert_settings: AlertSettings = alert_settings(detect)
        self.store: Optional[DetectStore] = None
        self.restarts = 0
        self.lost = 0
        self._publish: Optional[Callable[[str, bytes], object]] = None
        self._lock = threading.Lock()  # the worker's pipes and process
        self._call = threading.Lock()  # one batch at a time
        self._replies: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._to: Optional[Connection] = None
        self._from: Optional[Connection] = None
        self._stopping = threading.Event()
        self._supervisor: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker (it opens and migrates the database), then open the store here.

        Raises:
            StateError: The worker could not open Detect (its reason), or did not start.
        """
        self._spawn()
        try:
            service_store = open_store(self._start.db_url)
            try:
                self.store = DetectStore.beside(service_store)
            finally:
                service_store.close()
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(
            target=self._supervise, name="dd-detect-worker", daemon=True
        )
        self._supervisor.start()

    def bind_publish(self, publish: Callable[[str, bytes], object]) -> None:
        """Where the worker's MQTT alerts are published (the service's connection)."""
        with self._lock:
            self._publish = publish

    def stop(self, timeout: float = _STOP_TIMEOUT_S) -> None:
        """Let the worker judge what it holds and stop (bounded), close the store."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        acquired = self._call.acquire(timeout=timeout)  # a batch in progress finishes
        try:
            with self._lock:
                proc, to = self._proc, self._to
            if proc is not None and to is not None and proc.poll() is None:
                with contextlib.suppress(OSError):
                    send(to, ("stop",))
                try:
                    proc.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    log.error(  # noqa: TRY400 - a timeout, no traceback to show
                        "the detect worker did not stop within %g s: killed", timeout
                    )
                    proc.kill()
                    proc.wait()
        finally:
            if acquired:
                self._call.release()
        if self._supervisor is not None:
            self._supervisor.join(5)
        self._close_pipes()
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------------ the hook
    def after_store(self, items: Sequence[HandedOver]) -> None:
        """The runner's hook: the worker judges a committed batch; returns once it has.

        Raises:
            StateError: The worker failed the batch (its reason), died, or is not running.
        """
        batch = [(item[0], item[1], item[3]) for item in items]
        with self._call:
            while not self._replies.empty():  # a death already seen, or a stale reply
                self._replies.get_nowait()
            with self._lock:
                to = self._to
            if to is None or self._stopping.is_set():
                self.lost += len(batch)
                raise StateError("the detect worker is not running (it is being started again)")
            try:
                send(to, ("judge", batch))
                reply = self._reply()
            except (OSError, _DiedError) as exc:
                self.lost += len(batch)
                raise StateError(f"the detect worker died ({exc}) before judging") from None
            if reply[2]:
                raise StateError(f"the detect worker failed the batch: {reply[2]}")

    def _reply(self) -> tuple[Any, ...]:
        while True:
            try:
                reply = self._replies.get(timeout=_POLL_S)
            except queue.Empty:
                with self._lock:
                    proc = self._proc
                if proc is None or proc.poll() is not None:
                    raise _DiedError(f"exit code {proc.returncode if proc else None}") from None
                continue
            if reply[0] == "died":
                raise _DiedError(reply[1])
            return reply

    # ------------------------------------------------------------------ the worker
    def _spawn(self) -> None:
        """Start a worker and wait for its ``ready``.

        Raises:
            StateError: It failed (its reason) or did not answer in time.
        """
        package_root = str(Path(__file__).resolve().parents[2])  # a checkout's src too
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        child_in, to_fd = os.pipe()
        from_fd, child_out = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "defender_agent.detect.worker"],
                stdin=child_in,
                stdout=child_out,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            for fd in (child_in, to_fd, from_fd, child_out):
                os.close(fd)
            raise StateError(f"cannot start the detect worker: {exc}") from None
        os.close(child_in)
        os.close(child_out)
        to, from_ = Connection(to_fd, readable=False), Connection(from_fd, writable=False)
        try:
            send(to, ("start", self._start))
            ready = from_.poll(_START_TIMEOUT_S)
            kind, detail = receive(from_) if ready else ("failed", "")
        except (OSError, EOFError) as exc:
            kind, detail = "exited", str(exc)
        if kind != "ready":
            to.close()
            from_.close()
            proc.kill()
            code = proc.wait()
            if kind == "failed" and detail:
                raise StateError(detail)
            if kind == "failed":
                raise StateError(f"the detect worker did not start in {_START_TIMEOUT_S:g} s")
            raise StateError(f"the detect worker exited at its start (code {code}): {detail}")
        with self._lock:
            self._proc, self._to, self._from = proc, to, from_
        log.info("detect: evaluating in worker process %d", proc.pid)

    def _supervise(self) -> None:
        """Read the worker's messages; start it again when it dies (until stopped)."""
        attempt = 0
        while True:
            began = time.monotonic()
            why = f"exit code {self._read()}"
            if self._stopping.is_set():
                return
            self._replies.put(("died", why))
            if time.monotonic() - began > _STEADY_S:
                attempt = 0
            while not self._stopping.is_set():
                delay = backoff_delay(attempt, base=1.0, cap=_RESTART_CAP_S)
                attempt += 1
                log.error("the detect worker stopped (%s); starting it again in %.1f s", why, delay)
                if self._stopping.wait(delay):
                    return
                try:
                    self._close_pipes()
                    self._spawn()
                except StateError as exc:
                    why = str(exc)
                    continue
                self.restarts += 1
                break

    def _read(self) -> Optional[int]:
        """Handle the worker's messages until it goes away; its exit code."""
        with self._lock:
            from_, proc = self._from, self._proc
        assert from_ is not None
        assert proc is not None
        while True:
            try:
                message = receive(from_)
            except (EOFError, OSError):
                try:
                    return proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    return proc.wait()
            kind = message[0]
            if kind == "publish":
                self._forward(message[1], message[2])
            elif kind == "judged":
                self._replies.put(message)

    def _forward(self, topic: str, payload: bytes) -> None:
        with self._lock:
            publish = self._publish
        if publish is None:
            log.warning("detect alert on %r not published: no MQTT connection yet", topic)
            return
        try:
            publish(topic, payload)
        except Exception as exc:  # a closed connection: one line, never raised
            log.warning("detect alert on %r not published: %s", topic, exc)

    def _close_pipes(self) -> None:
        with self._lock:
            for conn in (self._to, self._from):
                if conn is not None:
                    conn.close()
            self._to = self._from = None
