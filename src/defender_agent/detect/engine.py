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

import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Optional

from defender_agent.detect import ml
from defender_agent.detect.alerts import Alerts
from defender_agent.detect.behaviors import Behavior, parse_behavior
from defender_agent.detect.contract import ProfileView, Registry
from defender_agent.detect.evaluate import INITIAL, BehaviorState, measurement, step
from defender_agent.detect.metrics import datapoint
from defender_agent.detect.statistics import percentile
from defender_agent.detect.store import Batch, DetectStore, EventRow
from defender_agent.logs import shown
from defender_agent.model import Report

__all__ = ["DetectEngine", "EngineSettings", "Judged", "target_resource"]

log = logging.getLogger(__name__)

_TICK_S: Final = 1.0  # the ticker wakes this often to see what is due
_STALE_EVERY_S: Final = 5.0  # checks for silent things at most this often
_NO_WINDOW_S: Final = 3600.0  # a statistical behavior without durationSeconds, invalidate_after 0
_DECODED_MAX: Final = 20_000  # things whose decoded states are kept between batches


@dataclass(frozen=True)
class EngineSettings:
    """The engine's ``[detect]`` settings.

    Attributes:
        invalidate_after_s: Seconds without a report after which a thing's violations are
            invalidated; 0: never.
        statistics_every_s: Seconds between recomputations of statistical thresholds.
    """

    invalidate_after_s: float = 3600.0
    statistics_every_s: float = 60.0


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
    names: tuple[str, str] = ("", "")  # (profile, behavior): its threshold's key

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", (self.profile.name, self.behavior.name))


@dataclass
class _Plan:
    """The registry, compiled: which rules apply to which things."""

    generation: int
    everyone: list[_Rule] = field(default_factory=list)
    by_group: dict[str, list[_Rule]] = field(default_factory=dict)
    rules: dict[tuple[str, str], _Rule] = field(default_factory=dict)  # (profile, behavior)
    profiles: dict[str, ProfileView] = field(default_factory=dict)

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


def _compile(generation: int, profiles: Sequence[ProfileView]) -> _Plan:
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
            rule = _Rule(
                profile, raw, behavior, f"{profile.name}/{behavior.name}", _fingerprint(raw)
            )
            plan.rules[(profile.name, behavior.name)] = rule
            if behavior.kind != "none" and not behavior.cloud_side:
                rules.append(rule)
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
        self._thresholds: dict[tuple[str, str], Optional[float]] = {}
        # thing -> (the states' JSON text this process last wrote, those states decoded)
        self._decoded: dict[str, tuple[str, dict[str, BehaviorState]]] = {}
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
        """Stop the ticker thread (the store and the alerts are the caller's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

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
                if self.settings.invalidate_after_s > 0 and now >= self._next_stale:
                    self._next_stale = now + _STALE_EVERY_S
                    self._invalidate_silent(now)
                if now >= self._next_statistics:
                    self._next_statistics = now + self.settings.statistics_every_s
                    self.recompute_statistics(now)
        except Exception as exc:  # the ticker's top level: log, count, go on
            with self._lock:
                self.errors += 1
            log.error("detect: periodic work failed: %s", exc, exc_info=not _is_db_error(exc))  # noqa: TRY400 - a database error needs no traceback

    # ------------------------------------------------------------------ the registry
    def _current_plan(self, now: float) -> _Plan:
        generation = self.registry.generation()
        plan = self._plan
        if plan is not None and plan.generation == generation:
            return plan
        plan = _compile(generation, self.registry.profiles())
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

    def _rules_for(self, plan: _Plan, thing: str) -> list[_Rule]:
        if not plan.by_group:
            return plan.everyone
        rules = list(plan.everyone)
        for group in sorted(self._groups_of(thing)):
            rules.extend(r for r in plan.by_group.get(group, ()) if r not in rules)
        return rules

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
        self._thresholds = {
            key: value for key, (value, _n, _at) in self.store.thresholds().items() if key in keep
        }

    # ------------------------------------------------------------------ invalidation
    def _invalidate(
        self, which: Mapping[str, Sequence[tuple[str, str]]], now: float, why: str
    ) -> None:
        events: list[EventRow] = []
        with self.store.batch(which, now=now) as tx:
            for thing, keys in which.items():
                for profile_name, name in keys:
                    row = tx.active.get((thing, profile_name, name))
                    if row is None:  # another process was first
                        continue
                    tx.end_violation(row, "alarm-invalidated", now, row.last_value)
                    tx.states[thing].pop(f"{profile_name}/{name}", None)
                tx.save_state(thing)
            events = list(tx.events)
        if events:
            log.info("detect: %d violation(s) invalidated: %s", len(events), why)
        self._deliver(events)

    def _invalidate_silent(self, now: float) -> None:
        cutoff = now - self.settings.invalidate_after_s
        things = self.store.things_with_violations_since(cutoff)
        if not things:
            return
        events: list[EventRow] = []
        with self.store.batch(things, now=now) as tx:
            for key, row in list(tx.active.items()):
                thing = key[0]
                if tx.last_report.get(thing, 0.0) >= cutoff:  # reported meanwhile
                    continue
                tx.end_violation(row, "alarm-invalidated", now, row.last_value)
                tx.states[thing].pop(f"{row.profile}/{row.behavior_name}", None)
                tx.save_state(thing)
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
            rules = [r for r in self._rules_for(plan, thing) if r.behavior.kind == "ml"]
        if not rules:
            return {}
        with self.store.batch([thing], now=now) as tx:  # (read under the row's lock)
            raw = tx.states[thing]
        out: dict[str, dict[str, Any]] = {}
        for rule in rules:
            model = (raw.get(rule.key) or {}).get("ml")
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
        per_thing = {item.thing: self._rules_for(plan, item.thing) for item in reports}
        judged = [item for item in reports if per_thing[item.thing]]
        if not judged:
            return []
        with self.store.batch({item.thing for item in judged}, now=now) as tx:
            states: dict[str, dict[str, BehaviorState]] = {}
            for item in judged:
                rules = per_thing[item.thing]
                mine = states.get(item.thing)
                if mine is None:
                    mine = states[item.thing] = self._load_states(tx, item.thing, rules)
                self._judge_report(tx, item, rules, mine)
                tx.save_state(item.thing, item.received_at)
            for thing, mine in states.items():
                text = _encode_states(mine)
                tx.texts[thing] = text
                self._remember(thing, text, mine)
            return list(tx.events)

    def _remember(self, thing: str, text: str, states: dict[str, BehaviorState]) -> None:
        """Keep the decoded states of the text just written (bounded, least recent out)."""
        cache = self._decoded
        cache.pop(thing, None)
        cache[thing] = (text, states)  # (not changed after the batch: loads copy it)
        while len(cache) > _DECODED_MAX:
            del cache[next(iter(cache))]

    def _load_states(
        self, tx: Batch, thing: str, rules: Sequence[_Rule]
    ) -> dict[str, BehaviorState]:
        """The thing's states as loaded; decoded again only when another writer changed them."""
        text = tx.texts.get(thing, "{}")
        known = self._decoded.get(thing)
        if known is not None and known[0] == text:  # this process wrote it last
            return dict(known[1])
        try:
            raw = json.loads(text)
        except ValueError:
            raw = {}
        mine: dict[str, BehaviorState] = {}
        for rule in rules:
            doc = raw.get(rule.key) if isinstance(raw, dict) else None
            if doc is None:
                continue
            try:
                mine[rule.key] = BehaviorState.from_json(doc)
            except ValueError:  # a hand-edited or older row: start again
                continue
        return mine

    def _judge_report(
        self, tx: Batch, item: Judged, rules: Sequence[_Rule], mine: dict[str, BehaviorState]
    ) -> None:
        points: dict[str, object] = {}
        at, thing = item.received_at, item.thing
        thresholds, active_rows = self._thresholds, tx.active
        for rule in rules:
            b = rule.behavior
            if b.metric in points:
                value = points[b.metric]
            else:
                value = points[b.metric] = datapoint(item.report, b.metric)
            if value is None:
                continue
            state = mine.get(rule.key, INITIAL)
            threshold = thresholds.get(rule.names) if thresholds else None
            new, transition = step(b, state, value, at, threshold)
            if new is state:
                continue
            mine[rule.key] = new
            if b.kind == "statistical":
                measured = measurement(b, new, at)
                if measured is not None and math.isfinite(measured):
                    tx.observe(rule.profile.name, b.name, thing, measured, at)
            active = active_rows.get((thing, *rule.names)) if active_rows else None
            if transition is None:
                if active is not None and new.in_alarm and new.conforming_run == 0:
                    tx.still_violating(active, new.last_value, at)
            elif transition.event == "in-alarm":
                if active is None:
                    tx.open_violation(
                        thing,
                        rule.profile.name,
                        rule.raw,
                        b.criteria_type,
                        b.suppress_alerts,
                        transition.value,
                        transition.time,
                        _additional_info(b),
                    )
                else:  # (a state reset while the violation stayed): same violation
                    tx.still_violating(active, transition.value, transition.time)
            elif transition.event == "alarm-cleared" and active is not None:
                tx.end_violation(active, "alarm-cleared", transition.time, transition.value)

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


_KEYS: dict[str, str] = {}  # a state's key -> its JSON string (keys repeat across things)


def _number(x: float) -> str:
    text = repr(x)  # a finite float's repr is its JSON; inf and nan contain an "n"
    return json.dumps(x) if "n" in text else text


def _encode_states(states: Mapping[str, BehaviorState]) -> str:
    """A thing's states as the JSON text of ``detect_things.states``, quickly.

    Each state is :meth:`~.evaluate.BehaviorState.to_json` without ``last_value`` and
    ``last_time`` (what a violation needs of them is in its row: ``lastViolationValue``/
    ``…Time``; :meth:`~.evaluate.BehaviorState.from_json` reads the missing keys as None)
    and without ``ml`` when there is no model. Formatted directly: the engine writes every
    judged thing's states after each batch, and ``json.dumps`` of 100 states was a fifth of
    its time.

    >>> from defender_agent.detect.evaluate import BehaviorState
    >>> _encode_states({"p/b": BehaviorState(True, 2, 0, ((1.5, 2.0),), {"count": 2}, 1.5)})
    '{"p/b":{"in_alarm":true,"violating_run":2,"conforming_run":0,"window":[[1.5,2.0]]}}'
    >>> doc = json.loads(_encode_states({'q/"x"': BehaviorState(ml={"values": [1.0]})}))
    >>> BehaviorState.from_json(doc['q/"x"']) == BehaviorState(ml={"values": [1.0]})
    True
    """
    parts = []
    keys = _KEYS
    for key, state in states.items():
        name = keys.get(key)
        if name is None:
            if len(keys) >= 100_000:
                keys.clear()
            name = keys[key] = json.dumps(key)
        window = ",".join(f"[{_number(t)},{_number(v)}]" for t, v in state.window)
        model = "" if state.ml is None else ',"ml":' + json.dumps(state.ml, separators=(",", ":"))
        parts.append(
            f'{name}:{{"in_alarm":{"true" if state.in_alarm else "false"},'
            f'"violating_run":{state.violating_run:d},"conforming_run":{state.conforming_run:d},'
            f'"window":[{window}]{model}}}'
        )
    return "{" + ",".join(parts) + "}"


def _additional_info(behavior: Behavior) -> Optional[dict[str, Any]]:
    if behavior.kind == "ml" and behavior.confidence is not None:
        return {"confidenceLevel": behavior.confidence}
    return None


def _is_db_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "StateError"
