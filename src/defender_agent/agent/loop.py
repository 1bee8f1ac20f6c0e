"""The agent's loop: the schedule, the connector thread, one cycle, the saved state."""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
from typing import IO, Optional

from defender_agent.agent.clock import Clock, report_topic
from defender_agent.config import AgentConfig
from defender_agent.cycle import Collector
from defender_agent.errors import (
    ConnectError,
    ReportError,
    StateError,
    TlsSetupError,
    TransportError,
)
from defender_agent.replies import ReplyLedger
from defender_agent.report.fit import encode_fitted
from defender_agent.report.validate import validate_document
from defender_agent.schedule import backoff_delay, boot_id
from defender_agent.state import StateDir
from defender_agent.transport.base import Transport

__all__ = ["Agent"]

log = logging.getLogger("defender_agent.agent")


class Agent:
    """Runs the report schedule until stopped.

    Args:
        config: the resolved configuration.
        collector: the metrics collector (its report ids come from the state dir).
        transport: the MQTT transport; ``None`` in dry-run mode.
        state: the state directory (baseline, status); ``None`` keeps nothing.
        out: where dry-run reports are printed.
        clock: the clocks.
        rng: the random source for the start splay and backoff jitter.
    """

    def __init__(
        self,
        config: AgentConfig,
        collector: Collector,
        transport: Optional[Transport],
        state: Optional[StateDir],
        *,
        out: IO[str] = sys.stdout,
        clock: Optional[Clock] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.config = config
        self.collector = collector
        self.transport = transport
        self.state = state
        self.out = out
        self.clock = clock or Clock()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.thing = config.effective_thing_name
        self.topic = report_topic(self.thing, config.format)
        self.interval = float(config.interval)
        self.ledger = ReplyLedger(self.interval, clock=self.clock.boot, wall=self.clock.wall)
        self.stop_event = threading.Event()
        self.ready = threading.Event()  # connected and subscribed
        self.fatal: Optional[str] = None
        self._boot_id = boot_id()
        self._last_published: Optional[float] = None  # boot time of the last published report
        self._started = self.clock.wall()
        self._connector: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ connection
    def _connect_loop(self) -> None:
        assert self.transport is not None
        transport = self.transport
        attempt = 0
        where = f"{self.config.endpoint}:{self.config.effective_port}"
        while not self.stop_event.is_set():
            try:
                transport.connect()
                for suffix in ("accepted", "rejected"):
                    transport.subscribe(f"{self.topic}/{suffix}", self.ledger.on_message)
            except TlsSetupError as exc:
                self.fatal = str(exc)
                log.error("cannot connect to %s: %s", where, exc)  # noqa: TRY400 - one line
                self.stop_event.set()
                return
            except (ConnectError, TransportError) as exc:
                delay = backoff_delay(attempt, rng=self.rng)
                attempt += 1
                self.ledger.count("cycle_errors", f"connect: {exc}")
                log.warning("cannot connect to %s (%s); retrying in %.1f s", where, exc, delay)
                self.stop_event.wait(delay)
                continue
            log.info(
                "connected to %s as %s; reporting for thing %s on %s",
                where,
                self.config.effective_client_id,
                self.thing,
                self.topic,
            )
            transport.set_connection_listener(self._on_link)
            self.ready.set()
            return

    def _on_link(self, connected: bool, reason: str) -> None:
        if connected:
            log.info("connection restored")
        else:
            log.warning("connection lost: %s; the client reconnects by itself", reason)

    # ------------------------------------------------------------------ state
    def _resume(self) -> Optional[float]:
        """Reuse a saved baseline from this boot; return when the next report is due."""
        if self.state is None:
            return None
        saved = self.state.load("baseline")
        if not saved:
            return None
        now = self.clock.boot()
        window = self.config.resume_window or 1.5 * self.interval
        age = now - float(saved.get("boottime", -1e18))
        if saved.get("boot_id") != self._boot_id or self._boot_id is None:
            log.info("machine rebooted since the last run: starting with a fresh baseline")
            return None
        if not 0 <= age <= window:
            log.info("saved baseline is %.0f s old (window %.0f s): starting fresh", age, window)
            return None
        if saved.get("thing_name") != self.thing or not self.collector.import_baseline(
            saved.get("collector")
        ):
            return None
        last = saved.get("last_published")
        self._last_published = float(last) if isinstance(last, (int, float)) else None
        anchor = (
            self._last_published if self._last_published is not None else float(saved["boottime"])
        )
        log.info("resuming with the baseline saved %.0f s ago", age)
        return max(now, anchor + self.interval)

    def _save(self) -> None:
        if self.state is None:
            return
        try:
            self.state.save(
                "baseline",
                {
                    "boot_id": self._boot_id,
                    "boottime": self.clock.boot(),
                    "thing_name": self.thing,
                    "last_published": self._last_published,
                    "collector": self.collector.export_baseline(),
                },
            )
            self.state.save("status", self.status())
        except StateError as exc:
            log.warning("%s", exc)

    def status(self) -> dict[str, object]:
        """The status document written to ``status.json``."""
        import os  # noqa: PLC0415 - only the pid, only here

        return {
            "pid": os.getpid(),
            "thing_name": self.thing,
            "topic": self.topic,
            "endpoint": self.config.endpoint,
            "started_at": self._started,
            "updated_at": self.clock.wall(),
            "interval": self.interval,
            "dry_run": bool(self.config.dry_run),
            "connected": bool(self.transport is not None and self.transport.connected),
            "counters": self.ledger.snapshot(),
        }

    # ------------------------------------------------------------------ the cycle
    def _tick(self) -> None:
        """One cycle: collect, check, publish or drop; never raises."""
        self.ledger.expire()
        try:
            report = self.collector.cycle()
        except Exception as exc:  # the schedule must survive any collector bug
            log.exception("collection cycle failed")
            self.ledger.count("cycle_errors", f"collect: {exc}")
            return
        if report is None:
            log.info("baseline taken; the first report follows in %.0f s", self.interval)
            return
        self.ledger.built(report.report_id)
        try:
            encoded = encode_fitted(report, self.config.format, short_names=self.config.short_names)
        except ReportError as exc:
            log.error("report %d not sent: %s", report.report_id, exc)  # noqa: TRY400
            self.ledger.count("invalid", str(exc))
            return
        problems = [p for p in validate_document(encoded.document) if p.severity.value == "error"]
        if problems:
            log.error(
                "report %d not sent, it is invalid: %s",
                report.report_id,
                "; ".join(map(str, problems)),
            )
            self.ledger.count("invalid", str(problems[0]))
            return
        if self.config.dry_run:
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
        self._last_published = self.clock.boot()
        log.info("report %d published (%d bytes)", report_id, len(payload))

        def done(fut: object) -> None:
            exc = future.exception()
            if exc is None:
                self.ledger.sent(report_id)
            else:
                log.warning("report %d was not acknowledged: %s", report_id, exc)
                self.ledger.failed(report_id, f"publish: {exc}")

        future.add_done_callback(done)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Run until :meth:`stop`; return the exit status (0, or 2 after a fatal error)."""
        if self.transport is not None:
            self._connector = threading.Thread(
                target=self._connect_loop, name="defender-agent-connect", daemon=True
            )
            self._connector.start()
        due = self._resume()
        if due is None:
            splay = self.rng.uniform(0, float(self.config.splay))
            if splay:
                log.info("start splay: first sample in %.1f s", splay)
            due = self.clock.boot() + splay
        try:
            while not self.stop_event.is_set():
                delay = due - self.clock.boot()
                if delay > 0 and self.stop_event.wait(delay):
                    break
                now = self.clock.boot()
                due += self.interval
                if due <= now:  # slept through ticks (suspend, a stopped process): skip them
                    skipped = int((now - due) // self.interval) + 1
                    due += skipped * self.interval
                self._tick()
                self._save()
        finally:
            self._shutdown()
        if self.fatal:
            return 2
        return 0

    def stop(self) -> None:
        """Ask the loop to finish (signal-safe)."""
        self.stop_event.set()

    def _shutdown(self) -> None:
        if self.transport is not None:
            try:
                self.transport.disconnect()
            except TransportError as exc:
                log.warning("disconnect: %s", exc)
        if self._connector is not None:
            self._connector.join(timeout=5)
        self._save()  # after the disconnect, so the status says "not connected"
        log.info("stopped; state saved")
