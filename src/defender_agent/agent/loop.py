"""The agent's loop: the schedule, the connector thread, one guarded cycle, the saved state."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
from typing import IO, Callable, Optional

from defender_agent.agent.baseline import baseline_source, why_not_resume
from defender_agent.agent.clock import Clock, report_topic
from defender_agent.config import Config
from defender_agent.cycle import Collector
from defender_agent.errors import (
    ConnectError,
    ReportError,
    StateError,
    TlsSetupError,
    TransportError,
)
from defender_agent.health import agent_summary
from defender_agent.replies import ReplyLedger
from defender_agent.report.fit import encode_fitted
from defender_agent.report.validate import validate_document
from defender_agent.schedule import backoff_delay, boot_id
from defender_agent.sdnotify import Notifier
from defender_agent.state import OutOfRange, StateDir, StateLock
from defender_agent.transport.base import Transport

__all__ = ["Agent"]

log = logging.getLogger("defender_agent.agent")


def _one_line(exc: BaseException) -> str:
    r"""An exception as one line: its message, or its type when the message is empty.

    >>> _one_line(KeyError("x")), _one_line(RuntimeError()), _one_line(ValueError("a\n b"))
    ("KeyError: 'x'", 'RuntimeError', 'ValueError: a b')
    """
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if isinstance(exc, (TransportError, StateError, ReportError)):
        return text or name
    return f"{name}: {text}" if text else name


class Agent:
    """Runs the report schedule until stopped.

    Args:
        config: the resolved configuration.
        collector: the metrics collector (its report ids come from the state dir).
        transport: the MQTT transport; ``None`` in dry-run mode.
        state: the state directory (baseline, status), owned (locked) while
            :meth:`run` runs; ``None`` keeps nothing.
        out: where dry-run reports are printed.
        clock: the clocks, the waits and the thread starter.
        rng: the random source for the start splay and backoff jitter.
        notifier: systemd's notifications (``READY=1`` once connected and subscribed, or
            after the first dry-run cycle; ``STATUS=`` after each cycle and reply;
            ``WATCHDOG=1`` from this loop, so a hung cycle stops the pings); default:
            from ``$NOTIFY_SOCKET``, inert outside systemd.
    """

    def __init__(
        self,
        config: Config,
        collector: Collector,
        transport: Optional[Transport],
        state: Optional[StateDir],
        *,
        out: IO[str] = sys.stdout,
        clock: Optional[Clock] = None,
        rng: Optional[random.Random] = None,
        notifier: Optional[Notifier] = None,
    ) -> None:
        self.config = config
        self.collector = collector
        self.transport = transport
        self.state = state
        self.out = out
        self.clock = clock or Clock()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.notifier = notifier or Notifier.from_environment()
        self._disconnected_since: Optional[float] = self.clock.wall()  # wall time, or None
        self._last_cycle: Optional[dict[str, object]] = None  # at, ok, error
        self.thing = config.effective_thing_name
        self.topic = report_topic(self.thing, config.agent.format)
        self.interval = float(config.agent.interval)
        self.ledger = ReplyLedger(self.interval, clock=self.clock.boot, wall=self.clock.wall)
        self.stop_event = threading.Event()
        self._wake = threading.Event()  # the schedule's wait: set by stop() and reconfigure()
        self._pending: Optional[tuple[Config, Optional[Collector]]] = None
        self.ready = threading.Event()  # connected and subscribed
        self.fatal: Optional[str] = None
        self._boot_id = boot_id()
        self._source = baseline_source(collector.config)
        self._last_published: Optional[float] = None  # boot time of the last published report
        self._started = self.clock.wall()
        self._connector: Optional[threading.Thread] = None
        self._lock: Optional[StateLock] = None
        self._state_error: Optional[str] = None  # why the last state write failed
        self._stage = "collect"
        # going deaf: the streak of unanswered reports at which the next remedy is tried,
        # and the last one tried ("resubscribe", then "reconnect", in turn)
        self._remedy_at = config.agent.resubscribe_after
        self._last_remedy: Optional[str] = None

    # ------------------------------------------------------------------ connection
    def _connect_loop(self) -> None:
        assert self.transport is not None
        transport = self.transport
        attempt = 0
        # a transport that is not a broker connection (Greengrass IPC) names itself
        where = getattr(transport, "where", None) or (
            f"{self.config.mqtt.endpoint}:{self.config.effective_port} "
            f"as {self.config.effective_client_id}"
        )
        while not self.stop_event.is_set():
            try:
                transport.connect()
                self._subscribe_replies()
            except TlsSetupError as exc:
                self.fatal = str(exc)
                log.error("cannot connect to %s: %s", where, exc)  # noqa: TRY400 - one line
                self.stop()
                return
            except Exception as exc:  # ConnectError, TransportError, or a bug: back off, retry
                delay = backoff_delay(attempt, rng=self.rng)
                attempt += 1
                reason = _one_line(exc)
                self.ledger.count("cycle_errors", f"connect: {reason}")
                log.warning("cannot connect to %s (%s); retrying in %.1f s", where, reason, delay)
                if not isinstance(exc, (ConnectError, TransportError)):
                    log.debug("connect attempt failed", exc_info=True)
                self.clock.wait(self.stop_event, delay)
                continue
            log.info(
                "connected to %s; reporting for thing %s on %s",
                where,
                self.thing,
                self.topic,
            )
            transport.set_connection_listener(self._on_link)
            self.ready.set()
            self._disconnected_since = None
            self.notifier.ready(self._summary())
            return

    def _subscribe_replies(self) -> None:
        assert self.transport is not None
        for suffix in ("accepted", "rejected"):
            self.transport.subscribe(f"{self.topic}/{suffix}", self._on_reply)

    def _on_reply(self, topic: str, payload: bytes) -> None:
        """A reply (awscrt's thread): counted by the ledger, then shown in systemd's STATUS=."""
        self.ledger.on_message(topic, payload)
        if self.notifier.enabled:
            self.notifier.status(self._summary())

    def _check_replies(self) -> None:
        """Reports go unanswered in a row: subscribe again, then reconnect, in turn.

        After ``agent.resubscribe_after`` unanswered reports in a row the reply
        topics are subscribed again (a broker may have dropped the subscription
        while the link stayed up); if the next report is unanswered too, the agent
        disconnects and connects afresh; then again after as many more. A reply
        ends the streak.
        """
        streak = self.ledger.unanswered_in_a_row()
        limit = self.config.agent.resubscribe_after
        if streak == 0:
            if self._last_remedy is not None:
                log.info("replies arrive again (after the %s)", self._last_remedy)
            self._remedy_at, self._last_remedy = limit, None
            return
        if streak < self._remedy_at or self.transport is None or not self.ready.is_set():
            return
        if self._last_remedy != "resubscribe":
            self._last_remedy, self._remedy_at = "resubscribe", streak + 1
            log.warning(
                "%d reports in a row got no reply: subscribing to the replies again", streak
            )
            self._subscribe_replies()
            return
        self._last_remedy, self._remedy_at = "reconnect", streak + limit
        log.warning("%d reports in a row got no reply: reconnecting", streak)
        self.ready.clear()
        self.transport.set_connection_listener(None)
        self.transport.disconnect()
        self._connector = self.clock.start_thread(self._connect_loop, "defender-agent-connect")

    def _on_link(self, connected: bool, reason: str) -> None:
        # debug: the transport logs each drop and return of the link in one line already
        if connected:
            self._disconnected_since = None
            log.debug("connection restored")
        else:
            if self._disconnected_since is None:
                self._disconnected_since = self.clock.wall()
            log.debug("connection lost: %s; the client reconnects by itself", reason)

    # ------------------------------------------------------------------ state
    def _resume(self) -> Optional[float]:
        """Reuse a saved baseline from this boot; return when the next report is due."""
        if self.state is None:
            return None
        saved = self.state.load("baseline")
        if not saved:
            return None
        now = self.clock.boot()
        window = self.config.agent.resume_window or 1.5 * self.interval
        reason = why_not_resume(
            saved,
            boot_id=self._boot_id,
            now=now,
            window=window,
            thing_name=self.thing,
            source=self._source,
        )
        if reason is None:
            reason = self.collector.baseline_problem(saved.get("collector"))
        if reason is None and not self.collector.import_baseline(saved.get("collector")):
            reason = "its readings are unusable"
        if isinstance(reason, OutOfRange):  # corrupted or tampered with: say so, once
            log.warning(
                "ignoring state file %s: %s; starting fresh",
                self.state.path / "baseline.json",
                reason,
            )
            return None
        if reason is not None:
            log.info("not resuming the saved baseline: %s; starting fresh", reason)
            return None
        last = saved.get("last_published")
        self._last_published = float(last) if isinstance(last, (int, float)) else None
        anchor = (
            self._last_published if self._last_published is not None else float(saved["boottime"])
        )
        due = max(now, anchor + self.interval)
        log.info(
            "resuming with the baseline saved %.0f s ago: next report in %.1f s",
            now - float(saved["boottime"]),
            due - now,
        )
        return due

    def _save(self, *, baseline: bool = True) -> None:
        """Write the baseline and the status; a failure is remembered and shown in the status."""
        if self.state is None:
            return
        errors: list[str] = []
        try:
            if baseline:
                self._save_baseline(self.state)
        except StateError as exc:
            errors.append(str(exc))
        # the status carries the baseline's failure, or the previous status write's
        status = self.status()
        status["state_error"] = errors[0] if errors else self._state_error
        try:
            self.state.save("status", status)
        except StateError as exc:
            errors.append(str(exc))
        error = errors[0] if errors else None
        if error is not None and error != self._state_error:
            log.warning("state not saved: %s", error)
        elif error is None and self._state_error is not None:
            log.info("state saved again")
        self._state_error = error

    def _save_baseline(self, state: StateDir) -> None:
        state.save(
            "baseline",
            {
                "boot_id": self._boot_id,
                "boottime": self.clock.boot(),
                "thing_name": self.thing,
                "source": self._source,
                "last_published": self._last_published,
                "collector": self.collector.export_baseline(),
            },
        )

    def status(self) -> dict[str, object]:
        """The status document written to ``status.json``."""
        connected = bool(self.transport is not None and self.transport.connected)
        if connected:
            self._disconnected_since = None
        elif self._disconnected_since is None:
            self._disconnected_since = self.clock.wall()
        return {
            "pid": os.getpid(),
            "thing_name": self.thing,
            "topic": self.topic,
            "endpoint": None if self.config.agent.dry_run else self.config.mqtt.endpoint,
            "started_at": self._started,
            "updated_at": self.clock.wall(),
            "interval": self.interval,
            "dry_run": self.config.agent.dry_run,
            "connected": connected,
            "disconnected_since": None if connected else self._disconnected_since,
            "last_cycle": self._last_cycle,
            "counters": self.ledger.snapshot(),
            "replies_missing": self.ledger.unanswered_in_a_row()
            >= self.config.agent.resubscribe_after,
            "collector": self.collector.health(),
            "state_error": self._state_error,
        }

    # ------------------------------------------------------------------ the cycle
    def _cycle(self) -> None:
        """One cycle and the save after it, each under a guard: never raises.

        Any exception (a bug in collecting, encoding, validating, publishing or
        saving) is logged in one line naming the stage (the traceback at debug
        level), counted in ``cycle_errors``, and the schedule goes on.
        """
        errors = self.ledger.counters.cycle_errors
        self._guarded("collect", self._tick)
        failure = self.ledger.counters.last_cycle_error
        failed = self.ledger.counters.cycle_errors != errors and isinstance(failure, dict)
        self._last_cycle = {
            "at": self.clock.wall(),
            "ok": not failed,
            "error": f"{failure['stage']}: {failure['error']}" if failed and failure else None,
        }
        self._guarded("save", self._save)
        self._guarded("notify", self._notify)

    def _notify(self) -> None:
        """systemd: the watchdog ping when due, the status line when it changed, READY."""
        notifier = self.notifier
        if not notifier.enabled:
            return
        notifier.ping()
        summary = self._summary()
        if self.config.agent.dry_run and self._last_cycle is not None:
            notifier.ready(summary)
        notifier.status(summary)

    def _summary(self) -> str:
        """The one-line state for systemd's ``STATUS=``."""
        return agent_summary(
            {
                "dry_run": self.config.agent.dry_run,
                "connected": bool(self.transport is not None and self.transport.connected),
                "counters": self.ledger.snapshot(),
                "replies_missing": self.ledger.unanswered_in_a_row()
                >= self.config.agent.resubscribe_after,
            }
        )

    def _wait(self, seconds: float) -> bool:
        """``clock.wait`` on the wake event, pinging systemd's watchdog meanwhile.

        The pings come from this loop, between waits: a cycle that hangs stops them.
        """
        end = self.clock.boot() + seconds
        while True:
            self._guarded("notify", self._notify)
            left = end - self.clock.boot()
            if left <= 0:
                return self._wake.is_set()
            due = self.notifier.watchdog_due()
            step = left if due is None else min(left, max(due, 0.01))
            if self.clock.wait(self._wake, step):
                return True

    def _guarded(self, stage: str, step: Callable[[], None]) -> None:
        self._stage = stage
        try:
            step()
        except Exception as exc:  # the schedule must survive any bug
            self._cycle_error(self._stage, exc)

    def _cycle_error(self, stage: str, exc: BaseException) -> None:
        reason = _one_line(exc)
        log.error("cycle failed at %s: %s; the schedule goes on", stage, reason)
        log.debug("the failure at %s", stage, exc_info=exc)
        self.ledger.cycle_error(stage, reason)

    def _tick(self) -> None:
        """One cycle: collect, encode, check, publish or drop (stages in ``self._stage``)."""
        self.ledger.expire()
        self._guarded("replies", self._check_replies)  # a failed remedy must not skip a report
        self._stage = "collect"
        report = self.collector.cycle()
        if report is None:
            log.info("baseline taken; the first report follows in %.0f s", self.interval)
            return
        self.ledger.built(report.report_id)
        self._stage = "encode"
        try:
            agent = self.config.agent
            encoded = encode_fitted(report, agent.format, short_names=agent.short_names)
        except ReportError as exc:
            log.error("report %d not sent: %s", report.report_id, exc)  # noqa: TRY400
            self.ledger.count("invalid", str(exc))
            return
        self._stage = "validate"
        problems = [p for p in validate_document(encoded.document) if p.severity.value == "error"]
        if problems:
            log.error(
                "report %d not sent, it is invalid: %s",
                report.report_id,
                "; ".join(map(str, problems)),
            )
            self.ledger.count("invalid", str(problems[0]))
            return
        self._stage = "publish"
        if self.config.agent.dry_run:
            self.out.write(json.dumps(encoded.document, indent=2) + "\n")
            self.out.flush()
            self._last_published = self.clock.boot()
            return
        if self.ledger.take_hold():
            log.warning("report %d held after a Throttled rejection", report.report_id)
            self.ledger.count("held")
            return
        assert self.transport is not None
        if not (self.ready.is_set() and self.transport.connected):
            log.warning(
                "not connected: report %d dropped (the next one replaces it)", report.report_id
            )
            self.ledger.count("dropped", "not connected")
            return
        self._publish(report.report_id, encoded.payload)

    def _publish(self, report_id: int, payload: bytes) -> None:
        assert self.transport is not None
        self.ledger.expect(report_id)
        try:
            future = self.transport.publish(self.topic, payload)
        except TransportError as exc:
            log.warning("report %d dropped: %s", report_id, exc)
            self.ledger.failed(report_id, str(exc))
            return
        except Exception as exc:
            self.ledger.failed(report_id, f"publish: {_one_line(exc)}")
            raise  # the cycle's guard logs and counts it
        self._last_published = self.clock.boot()
        log.info("report %d published (%d bytes)", report_id, len(payload))

        def done(fut: object) -> None:
            exc = future.exception()
            if exc is None:
                self.ledger.sent(report_id)
            else:
                log.warning("report %d was not acknowledged: %s", report_id, _one_line(exc))
                self.ledger.failed(report_id, f"publish: {_one_line(exc)}")

        future.add_done_callback(done)

    # ------------------------------------------------------------------ the loop
    def _first_due(self) -> float:
        """When the first cycle runs: at the resumed schedule, or after the start splay."""
        due = self._resume()
        if due is not None:
            return due
        # the splay spreads a fleet's reports; more than an interval only delays the first one
        splay = self.rng.uniform(0, min(self.config.agent.splay, self.interval))
        log.info(
            "first sample in %.1f s, first report one interval (%.0f s) later",
            splay,
            self.interval,
        )
        return self.clock.boot() + splay

    def run(self) -> int:
        """Run until :meth:`stop`; return the exit status (0, or 2 after a fatal error).

        Raises:
            StateError: the state directory is in use by another process.
        """
        if self.state is not None:
            self._lock = self.state.acquire_lock()
        try:
            try:
                due = self._first_due()
                self._guarded("save", lambda: self._save(baseline=False))  # "started"
                if self.transport is not None:
                    self._connector = self.clock.start_thread(
                        self._connect_loop, "defender-agent-connect"
                    )
                while not self.stop_event.is_set():
                    delay = due - self.clock.boot()
                    if delay > 0 and self._wait(delay):
                        if self.stop_event.is_set():
                            break
                        self._wake.clear()
                        due = self._apply_pending(due)
                        continue
                    now = self.clock.boot()
                    due += self.interval
                    if due <= now:  # slept through ticks (suspend, a stopped process): skip them
                        skipped = int((now - due) // self.interval) + 1
                        due += skipped * self.interval
                    self._cycle()
            finally:
                self._shutdown()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
        if self.fatal:
            return 2
        return 0

    def stop(self) -> None:
        """Ask the loop to finish (signal-safe)."""
        self.stop_event.set()
        self._wake.set()

    def reconfigure(self, config: Config, collector: Optional[Collector] = None) -> None:
        """Apply a new configuration now, between cycles, keeping the baseline (thread-safe).

        The interval, format, names and reply handling take ``config``'s values; a new
        ``collector`` (list size, custom metrics, interfaces) takes over the current one's
        baseline, so the next report's deltas continue where they were. The next report
        is due one new interval after the last one (at once when that time has passed).
        """
        self._pending = (config, collector)
        self._wake.set()

    def _apply_pending(self, due: float) -> float:
        """Take the configuration given to :meth:`reconfigure`; return the next due time."""
        pending, self._pending = self._pending, None
        if pending is None:
            return due
        config, collector = pending
        if collector is not None and collector is not self.collector:
            baseline = self.collector.export_baseline()
            if baseline is not None and collector.baseline_problem(baseline) is None:
                collector.import_baseline(baseline)
            self.collector = collector
        old_topic, old_interval = self.topic, self.interval
        self.config = config
        self.thing = config.effective_thing_name
        self.topic = report_topic(self.thing, config.agent.format)
        self.interval = float(config.agent.interval)
        self.ledger.answer_timeout = self.interval
        self._remedy_at = config.agent.resubscribe_after
        if self.topic != old_topic and self.transport is not None and self.ready.is_set():
            self._guarded("replies", self._subscribe_replies)
        log.info(
            "configuration applied: every %.0f s, %s on %s",
            self.interval,
            config.agent.format,
            self.topic,
        )
        if self.interval == old_interval:
            return due
        anchor = self._last_published
        start = due - old_interval if anchor is None else anchor
        return max(self.clock.boot(), start + self.interval)

    def _shutdown(self) -> None:
        self.stop_event.set()  # the connector stops retrying too
        self.notifier.stopping()
        self.notifier.close()
        if self.transport is not None:
            try:
                self.transport.disconnect()
            except Exception as exc:  # shutting down: say it and go on
                log.warning("disconnect: %s", _one_line(exc))
        if self._connector is not None:
            self._connector.join(timeout=5)
        self._guarded("save", self._save)  # after the disconnect: the status says "not connected"
        if self._state_error is None:
            log.info("stopped; state saved")
        else:
            log.info("stopped; state NOT saved: %s", self._state_error)
