"""Detect's engine: every accepted report judged against the profiles its thing is targeted by.

The service's writer thread hands each committed batch of accepted reports to
:meth:`DetectEngine.evaluate` after their ACCEPTED replies went out (an engine error is one
log line and a counter; it never costs a reply). For each report:

1. **Targets.** The profiles whose targets include ``…:all/things``,
   ``…:all/registered-things`` (every thing the service has stored a report of: the reporting
   thing always is one) or ``…:thinggroup/NAME`` for a group the thing is in
   (:meth:`~.contract.Registry.groups_of`). The registry is read again whenever its
   :meth:`~.contract.Registry.generation` changes (checked once per batch); thing groups are
   cached per thing until then.
2. **Per behavior**: the report's datapoint (:func:`~.metrics.datapoint`) and the
   (thing, profile, behavior)'s state go through :func:`~.evaluate.step` (the exact model
   is documented there); an ``in-alarm`` transition opens a violation and its event, an
   ``alarm-cleared`` ends it, a further violating datapoint updates its
   ``lastViolationValue``/``lastViolationTime``. Behaviors on cloud-side metrics and
   without criteria are never judged.
3. **One transaction per batch** (:meth:`.store.DetectStore.batch`): the state rows of the
   batch's things are locked in name order, read, judged in arrival order, and written back
   with the violations and events. Two service processes over one PostgreSQL database may
   each receive reports of one thing: the second waits for the first's commit and goes on
   from its counters, so ``consecutiveDatapointsToAlarm``/``…ToClear`` and violations stay
   exact. A crash between the reports' commit and the engine's loses that batch's
   evaluation (never a report).
4. **Alerts** for the batch's events (unless ``suppressAlerts``) go to
   :class:`~.alerts.Alerts` after the commit.

**Statistical thresholds** (``statisticalThreshold``). Each evaluated datapoint of a
statistical behavior records the thing's measurement (:func:`~.evaluate.measurement`: the
sum of its deltas over ``durationSeconds`` for traffic, else its latest value) in the
behavior's population. Every ``statistics_every`` seconds the engine computes, for each
statistical behavior, the percentile (:func:`~.statistics.percentile`, nearest rank) of the
measurements of the things that recorded one within the last ``durationSeconds`` (without
one: within ``invalidate_after``, or an hour) and keeps it in the database; datapoints are
judged against the latest such threshold, and there is no verdict before the first one.
The population is the things the profile targets (every thing that was evaluated against the
behavior); a thing whose targeting ended drops out once its measurement is older than the
window.

**alarm-invalidated** ends an active violation, with its last value, when

* its behavior was removed from the profile, or changed (another ``criteria``, metric or
  ``suppressAlerts``: the alarm was judged under rules that no longer exist), or the profile
  was deleted or no longer targets the thing: checked whenever the registry's generation
  changes, and at start;
* its thing sent no report for ``invalidate_after`` seconds (checked every few seconds).

The behavior's state is reset (counters and windows start again).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Optional

from defender_agent.detect import ml
from defender_agent.detect.alerts import Alerts
from defender_agent.detect.behaviors import Behavior, parse_behavior
from defender_agent.detect.compiled import (
    CLEARED,
    IN_ALARM,
    OBSERVED,
    STILL,
    Rule,
    RuleSet,
    ThingState,
    compile_rule,
    decode_state,
    encode_state,
    judge,
)
from defender_agent.detect.contract import ProfileView, Registry
from defender_agent.detect.metrics import metric_value_json
from defender_agent.detect.statistics import percentile
from defender_agent.detect.store import ActiveRow, Batch, DetectStore, EventRow
from defender_agent.logs import shown
from defender_agent.model import Report

__all__ = ["DetectEngine", "EngineSettings", "Judged", "target_resource"]

log = logging.getLogger(__name__)

_TICK_S: Final = 1.0  # the ticker wakes this often to see what is due
_STALE_EVERY_S: Final = 5.0  # checks for silent things at most this often
_NO_WINDOW_S: Final = 3600.0  # a statistical behavior without durationSeconds, invalidate_after 0
_DECODED_MAX: Final = 20_000  # things whose decoded states are kept between batches
_ActiveMap = dict[tuple[str, str, str], ActiveRow]


@dataclass(frozen=True)
class EngineSettings:
    """The engine's ``[detect]`` settings.

    Attributes:
        invalidate_after_s: Seconds without a report after which a thing's violations are
            invalidated; 0: never.
        statistics_every_s: Seconds between recomputations of statistical thresholds.
        last_violation_every_s: An active violation whose value did not change has its
            ``lastViolationTime`` written at most this often (the engine holds the newer
            one meanwhile, and writes it within a few seconds of going quiet and at stop);
            0: at every violating datapoint.
    """

    invalidate_after_s: float = 3600.0
    statistics_every_s: float = 60.0
    last_violation_every_s: float = 30.0


@dataclass(frozen=True)
class Judged:
    """One accepted report for the engine.

    Attributes:
        thing: The thing name.
        received_at: When it arrived (POSIX seconds; the service's clock).
        report: The decoded report.
    """

    thing: str
    received_at: float
    report: Report


def target_resource(arn: str) -> str:
    """The resource part of a target ARN (after the account).

    >>> target_resource("arn:aws:iot:us-east-1:123456789012:thinggroup/lab")
    'thinggroup/lab'
    """
    parts = arn.split(":", 5)
    return parts[5] if len(parts) == 6 else arn


@dataclass(frozen=True)
class _Rule:
    """One judged behavior of one profile."""

    profile: ProfileView
    raw: Mapping[str, Any]
    behavior: Behavior
    key: str  # "PROFILE/BEHAVIOR": its key in a thing's states
    fingerprint: str  # the behavior as canonical JSON: a change invalidates its alarms
    compiled: Optional[Rule]  # None: never judged (no criteria, cloud-side)
    names: tuple[str, str] = ("", "")  # (profile, behavior): its threshold's key

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", (self.profile.name, self.behavior.name))


@dataclass(frozen=True)
class _Bundle:
    """The rules one thing is judged by, compiled."""

    rules: tuple[_Rule, ...]
    compiled: RuleSet
    by_key: dict[str, _Rule]

    @classmethod
    def of(cls, rules: Sequence[_Rule]) -> _Bundle:
        compiled = RuleSet([r.compiled for r in rules if r.compiled is not None])
        return cls(tuple(rules), compiled, {r.key: r for r in rules})


@dataclass
class _Plan:
    """The registry, compiled: which rules apply to which things."""

    generation: int
    everyone: list[_Rule] = field(default_factory=list)
    by_group: dict[str, list[_Rule]] = field(default_factory=dict)
    rules: dict[tuple[str, str], _Rule] = field(default_factory=dict)  # (profile, behavior)
    profiles: dict[str, ProfileView] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # rule key -> metric
    windowed: set[str] = field(default_factory=set)  # metrics some rule sums over a window
    bundles: dict[frozenset[str], _Bundle] = field(default_factory=dict)  # by groups

    def targets(self, profile: ProfileView, groups: frozenset[str]) -> bool:
        for arn in profile.targets:
            resource = target_resource(arn)
            if resource in ("all/things", "all/registered-things"):
                return True
            if resource.startswith("thinggroup/") and resource[11:] in groups:
                return True
        return False


def _fingerprint(raw: Mapping[str, Any]) -> str:
    return json.dumps(raw, sort_keys=True, separators=(",", ":"))


def _compile(
    generation: int,
    profiles: Sequence[ProfileView],
    thresholds: Mapping[tuple[str, str], Optional[float]],
) -> _Plan:
    plan = _Plan(generation)
    for profile in profiles:
        plan.profiles[profile.name] = profile
        rules = []
        for raw in profile.behaviors:
            try:
                behavior = parse_behavior(raw)
            except ValueError as exc:  # validated by the API: a bug or a hand-edited row
                log.warning(
                    "detect: security profile %s: behavior skipped: %s", shown(profile.name), exc
                )
                continue
            key = f"{profile.name}/{behavior.name}"
            judged = behavior.kind != "none" and not behavior.cloud_side
            compiled = compile_rule(behavior, key, thresholds, profile.name) if judged else None
            rule = _Rule(profile, raw, behavior, key, _fingerprint(raw), compiled)
            plan.rules[(profile.name, behavior.name)] = rule
            plan.metrics[key] = behavior.metric
            if compiled is not None:
                rules.append(rule)
                if compiled.measure[2]:
                    plan.windowed.add(behavior.metric)
        for arn in profile.targets:
            resource = target_resource(arn)
            if resource in ("all/things", "all/registered-things"):
                plan.everyone.extend(r for r in rules if r not in plan.everyone)
            elif resource.startswith("thinggroup/"):
                bucket = plan.by_group.setdefault(resource[11:], [])
                bucket.extend(r for r in rules if r not in bucket)
    return plan


class DetectEngine:
    """Judges reports, keeps violations, invalidates, recomputes statistical thresholds.

    Args:
        store: Detect's tables.
        registry: The control plane (profiles, custom metrics, groups).
        alerts: Where alerts go (None: no alerts).
        settings: The ``[detect]`` settings.
        clock: POSIX seconds (the service's clock).
        on_event: Called with each event after its batch was committed (the sandbox prints
            them); its exceptions are logged.
    """

    def __init__(
        self,
        store: DetectStore,
        registry: Registry,
        *,
        alerts: Optional[Alerts] = None,
        settings: EngineSettings = EngineSettings(),
        clock: Callable[[], float] = time.time,
        on_event: Optional[Callable[[EventRow], None]] = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.alerts = alerts
        self.settings = settings
        self._clock = clock
        self._on_event = on_event
        self._lock = threading.RLock()
        self._plan: Optional[_Plan] = None
        self._groups: dict[str, frozenset[str]] = {}
        # (updated in place: the compiled statistical rules read it)
        self._thresholds: dict[tuple[str, str], Optional[float]] = {}
        # thing -> (the states' text this process wrote last, them decoded, its active
        # violations): while the stored text is that one, nobody else judged the thing since
        self._decoded: dict[str, tuple[str, ThingState, _ActiveMap]] = {}
        self._writer = f"{os.getpid():x}.{uuid.uuid4().hex[:12]}"
        self._writes = 0
        self._next_statistics = 0.0
        self._next_stale = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.reports = 0
        self.events = 0
        self.errors = 0
        self.batches = 0
        self.busy_s = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Reconcile with the registry, load thresholds, and start the ticker thread."""
        self.tick()
        self._thread = threading.Thread(target=self._tick_loop, name="dd-detect", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the ticker thread and write the last values held back.

        (The store and the alerts are the caller's.)
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.write_held(0.0)
        except Exception as exc:  # the database is gone: those times were not written
            log.warning("detect: the last violation values held back were not written: %s", exc)

    def counters(self) -> dict[str, float]:
        """``reports``, ``events``, ``errors``, ``batches``, ``busy_s``, ``us_per_report``."""
        with self._lock:
            per = self.busy_s / self.reports * 1e6 if self.reports else 0.0
            return {
                "reports": self.reports,
                "events": self.events,
                "errors": self.errors,
                "batches": self.batches,
                "busy_s": self.busy_s,
                "us_per_report": per,
            }

    def _tick_loop(self) -> None:
        while not self._stop.wait(_TICK_S):
            self.tick()

    def tick(self, now: Optional[float] = None) -> None:
        """What is due: reconcile on a new generation, invalidate silent things, statistics.

        Never raises (errors are logged and counted).
        """
        now = self._clock() if now is None else now
        try:
            with self._lock:
                self._current_plan(now)
                if now >= self._next_stale:
                    self._next_stale = now + _STALE_EVERY_S
                    self.write_held(self.settings.last_violation_every_s, now)
                    if self.settings.invalidate_after_s > 0:
                        self._invalidate_silent(now)
                if now >= self._next_statistics:
                    self._next_statistics = now + self.settings.statistics_every_s
                    self.recompute_statistics(now)
        except Exception as exc:  # the ticker's top level: log, count, go on
            with self._lock:
                self.errors += 1
            log.error("detect: periodic work failed: %s", exc, exc_info=not _is_db_error(exc))  # noqa: TRY400 - a database error needs no traceback

    def write_held(self, older_than: float, now: Optional[float] = None) -> int:
        """Write the last violation values held back for ``older_than`` seconds or more.

        Returns how many violations were written.
        """
        now = self._clock() if now is None else now
        with self._lock:
            held = [
                row
                for _text, _state, rows in self._decoded.values()
                for row in rows.values()
                if row.last_time != row.written[1] and now - row.written[1] >= older_than
            ]
            if held:
                self.store.write_last_values(held)
            return len(held)

    # ------------------------------------------------------------------ the registry
    def _current_plan(self, now: float) -> _Plan:
        generation = self.registry.generation()
        plan = self._plan
        if plan is not None and plan.generation == generation:
            return plan
        plan = _compile(generation, self.registry.profiles(), self._thresholds)
        if self._plan is not None:  # what is held was judged under the old plan: read again
            self._forget_all()
        self._plan = plan
        self._groups.clear()
        self._reconcile(plan, now)
        return plan

    def _groups_of(self, thing: str) -> frozenset[str]:
        groups = self._groups.get(thing)
        if groups is None:
            if len(self._groups) >= 100_000:
                self._groups.clear()
            groups = self._groups[thing] = self.registry.groups_of(thing)
        return groups

    def _bundle_for(self, plan: _Plan, thing: str) -> _Bundle:
        groups = self._groups_of(thing) if plan.by_group else frozenset()
        bundle = plan.bundles.get(groups)
        if bundle is None:
            rules = list(plan.everyone)
            for group in sorted(groups):
                rules.extend(r for r in plan.by_group.get(group, ()) if r not in rules)
            if len(plan.bundles) >= 10_000:
                plan.bundles.clear()
            bundle = plan.bundles[groups] = _Bundle.of(rules)
        return bundle

    def _reconcile(self, plan: _Plan, now: float) -> None:
        """Invalidate the active violations whose behavior or targeting is gone."""
        gone: dict[str, list[tuple[str, str]]] = {}
        for thing, profile_name, name, behavior_json in self.store.active_keys():
            rule = plan.rules.get((profile_name, name))
            valid = (
                rule is not None
                and _fingerprint(json.loads(behavior_json)) == rule.fingerprint
                and plan.targets(rule.profile, self._groups_of(thing))
            )
            if not valid:
                gone.setdefault(thing, []).append((profile_name, name))
        if gone:
            self._invalidate(gone, now, "the behavior or the profile's targeting changed")
        keep = [k for k, r in plan.rules.items() if r.behavior.kind == "statistical"]
        self.store.forget_population(keep)
        self._thresholds.clear()
        self._thresholds.update(
            (key, value) for key, (value, _n, _at) in self.store.thresholds().items() if key in keep
        )

    # ------------------------------------------------------------------ thing states
    def _known(self, thing: str, text: str) -> Optional[_ActiveMap]:
        """The active violations this process holds for ``thing``, if it wrote ``text``."""
        held = self._decoded.get(thing)
        return held[2] if held is not None and held[0] == text else None

    def _state_of(self, tx: Batch, thing: str) -> ThingState:
        """The thing's state as loaded; decoded only when another writer changed it."""
        text = tx.texts.get(thing, "{}")
        held = self._decoded.get(thing)
        if held is not None and held[0] == text:
            return held[1]
        plan = self._plan
        if plan is None:
            return decode_state(text, {})
        return decode_state(text, plan.metrics, plan.windowed)

    @contextmanager
    def _judging(
        self, things: Iterable[str], now: float
    ) -> Iterator[tuple[Batch, dict[str, ThingState]]]:
        """A store batch over ``things`` whose states the block fills in and this writes.

        The block puts each thing it changed in the dict with its state; they are encoded
        into the batch, and held (with the things' active violations) once it committed.
        A failed batch forgets what this process held of its things.
        """
        names = set(things)
        changed: dict[str, ThingState] = {}
        try:
            with self.store.batch(names, now=now, known=self._known) as tx:
                yield tx, changed
                self._writes += 1
                writer = f"{self._writer}.{self._writes}"
                for thing, state in changed.items():
                    tx.texts[thing] = encode_state(state, writer)
                    tx.save_state(thing)
        except BaseException:
            for thing in names:
                self._decoded.pop(thing, None)
            raise
        rows: dict[str, _ActiveMap] = {thing: {} for thing in changed}
        for key, row in tx.active.items():
            mine = rows.get(key[0])
            if mine is not None:
                mine[key] = row
        cache = self._decoded
        for thing, state in changed.items():
            cache.pop(thing, None)
            cache[thing] = (tx.texts[thing], state, rows[thing])
        while len(cache) > _DECODED_MAX:
            self._forget_oldest()

    def _forget_all(self) -> None:
        held = [row for _t, _s, rows in self._decoded.values() for row in rows.values()]
        self._decoded.clear()
        self.store.write_last_values(held)

    def _forget_oldest(self) -> None:
        thing, (_text, _state, rows) = next(iter(self._decoded.items()))
        del self._decoded[thing]
        self.store.write_last_values(list(rows.values()))

    # ------------------------------------------------------------------ invalidation
    def _invalidate(
        self, which: Mapping[str, Sequence[tuple[str, str]]], now: float, why: str
    ) -> None:
        with self._judging(which, now) as (tx, changed):
            for thing, keys in which.items():
                state = changed[thing] = self._state_of(tx, thing)
                for profile_name, name in keys:
                    state.forget(f"{profile_name}/{name}")
                    row = tx.active.get((thing, profile_name, name))
                    if row is not None:  # (else another process was first)
                        tx.end_violation(row, "alarm-invalidated", now, row.last_value)
        events = list(tx.events)
        if events:
            log.info("detect: %d violation(s) invalidated: %s", len(events), why)
        self._deliver(events)

    def _invalidate_silent(self, now: float) -> None:
        cutoff = now - self.settings.invalidate_after_s
        things = self.store.things_with_violations_since(cutoff)
        if not things:
            return
        with self._judging(things, now) as (tx, changed):
            for key, row in list(tx.active.items()):
                thing = key[0]
                if tx.last_report.get(thing, 0.0) >= cutoff:  # reported meanwhile
                    continue
                tx.end_violation(row, "alarm-invalidated", now, row.last_value)
                state = changed.get(thing) or self._state_of(tx, thing)
                state.forget(f"{row.profile}/{row.behavior_name}")
                changed[thing] = state
        events = list(tx.events)
        if events:
            log.info(
                "detect: %d violation(s) invalidated: no report for %g s",
                len(events),
                self.settings.invalidate_after_s,
            )
        self._deliver(events)

    def ml_models(self, thing: str) -> dict[str, dict[str, Any]]:
        """The ML Detect models of a thing: ``{"PROFILE/BEHAVIOR": {"modelStatus", ...}}``.

        ``modelStatus`` is ``PENDING_BUILD`` ("not enough data yet") until the baseline holds
        enough datapoints, then ``ACTIVE``; ``datapointsNeeded`` says how many are missing.
        """
        now = self._clock()
        with self._lock:
            plan = self._current_plan(now)
            rules = [r for r in self._bundle_for(plan, thing).rules if r.behavior.kind == "ml"]
            if not rules:
                return {}
            with self.store.batch([thing], now=now) as tx:  # (read under the row's lock)
                state = self._state_of(tx, thing)
        out: dict[str, dict[str, Any]] = {}
        for rule in rules:
            model = state.ml.get(rule.key)
            out[rule.key] = {
                "modelStatus": ml.model_status(model),
                "datapointsNeeded": ml.datapoints_needed(model),
                "confidenceLevel": rule.behavior.confidence,
            }
        return out

    # ------------------------------------------------------------------ statistics
    def recompute_statistics(
        self, now: Optional[float] = None
    ) -> dict[tuple[str, str], Optional[float]]:
        """Recompute every statistical threshold now; returns them."""
        now = self._clock() if now is None else now
        with self._lock:
            plan = self._current_plan(now)
            for (profile_name, name), rule in plan.rules.items():
                b = rule.behavior
                if b.kind != "statistical" or b.statistic is None:
                    continue
                window = b.duration_s or self.settings.invalidate_after_s or _NO_WINDOW_S
                values = self.store.population(profile_name, name, now - window)
                value = percentile(values, b.statistic)
                threshold = None if value is None else float(value)
                self.store.set_threshold(profile_name, name, threshold, len(values), now)
                self._thresholds[(profile_name, name)] = threshold
            return dict(self._thresholds)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, reports: Sequence[Judged]) -> list[EventRow]:
        """Judge a committed batch of accepted reports; returns the events it made.

        Raises:
            StateError: The database failed (nothing of the batch's evaluation was kept).
        """
        if not reports:
            return []
        began = time.perf_counter()
        now = self._clock()
        with self._lock:
            plan = self._current_plan(now)
            if not plan.everyone and not plan.by_group:
                self._count(len(reports), 0, began)
                return []
            events = self._judge(plan, reports, now)
            self._count(len(reports), len(events), began)
        self._deliver(events)
        return events

    def _count(self, reports: int, events: int, began: float) -> None:
        self.reports += reports
        self.events += events
        self.batches += 1
        self.busy_s += time.perf_counter() - began

    def _judge(self, plan: _Plan, reports: Sequence[Judged], now: float) -> list[EventRow]:
        per_thing = {item.thing: self._bundle_for(plan, item.thing) for item in reports}
        judged = [item for item in reports if per_thing[item.thing].compiled]
        if not judged:
            return []
        with self._judging({item.thing for item in judged}, now) as (tx, changed):
            for item in judged:
                state = changed.get(item.thing)
                if state is None:
                    state = changed[item.thing] = self._state_of(tx, item.thing)
                self._judge_report(tx, item, per_thing[item.thing], state)
                tx.save_state(item.thing, item.received_at)
        return list(tx.events)  # (as written: the commit fills in verification states)

    def _judge_report(self, tx: Batch, item: Judged, bundle: _Bundle, state: ThingState) -> None:
        at, thing = item.received_at, item.thing
        outcomes = judge(bundle.compiled, state, item.report, at)
        if not outcomes:
            return
        active_rows, every = tx.active, self.settings.last_violation_every_s
        for compiled, event, measured in outcomes:
            rule = bundle.by_key[compiled.key]
            if event == OBSERVED:
                if math.isfinite(measured):
                    tx.observe(rule.profile.name, rule.behavior.name, thing, measured, at)
                continue
            active = active_rows.get((thing, *rule.names)) if active_rows else None
            shown = _shown(measured)
            if event == STILL:
                if active is not None:
                    tx.still_violating(active, shown, at, every)
            elif event == IN_ALARM:
                if active is None:
                    b = rule.behavior
                    tx.open_violation(
                        thing,
                        rule.profile.name,
                        rule.raw,
                        b.criteria_type,
                        b.suppress_alerts,
                        shown,
                        at,
                        _additional_info(b),
                    )
                else:  # (a state reset while the violation stayed): same violation
                    tx.still_violating(active, shown, at)
            elif event == CLEARED and active is not None:
                tx.end_violation(active, "alarm-cleared", at, shown)

    def _deliver(self, events: Iterable[EventRow]) -> None:
        plan = self._plan
        for event in events:
            if self.alerts is not None:
                profile = plan.profiles.get(event.profile) if plan is not None else None
                try:
                    self.alerts.submit(event, profile.alert_targets if profile else None)
                except Exception:  # a bug there must not cost the next events
                    log.exception("detect: handing an alert over failed")
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("detect: the on_event callback failed")


@functools.lru_cache(maxsize=4096, typed=True)  # typed: Ports({1}) == Numbers({1.0})
def _shown_set(value: frozenset[Any]) -> dict[str, Any]:
    return metric_value_json(value)


def _shown(measured: Any) -> dict[str, Any]:  # noqa: ANN401 - a datapoint or a sum
    """The ``MetricValue`` of a measurement (a set's once per distinct set; read-only)."""
    if isinstance(measured, frozenset):
        return _shown_set(measured)
    return metric_value_json(measured)


def _additional_info(behavior: Behavior) -> Optional[dict[str, Any]]:
    if behavior.kind == "ml" and behavior.confidence is not None:
        return {"confidenceLevel": behavior.confidence}
    return None


def _is_db_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "StateError"
