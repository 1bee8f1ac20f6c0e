"""Behaviors compiled for the engine's hot loop, and a thing's Detect state in compact form.

:func:`~defender_agent.detect.evaluate.step` is the readable model of one datapoint against
one behavior. The engine judges every report against every behavior that targets its thing
(10 profiles x 10 behaviors is 100 judgements a report), so it runs the same model in a
compiled form:

* each behavior becomes a :class:`Rule`: which measurement it reads, a verdict function
  (``CONFORMS``, ``VIOLATES``, ``CLEARS`` for an empty set, None for no verdict) and a
  transition table over *run codes*;
* a behavior's ``(in_alarm, violating_run, conforming_run)`` is one small integer
  (:func:`run_code`, keeping only the run that can still matter), and one datapoint is one
  table lookup: ``table[code * 3 + verdict]`` gives the new code and the event
  (:data:`IN_ALARM`, :data:`CLEARED`, :data:`STILL` for a further violating datapoint of
  an alarm, or :data:`QUIET`);
* a report's datapoint of a metric, and a window's sum, are computed once per report,
  however many behaviors read them.

It is the model of :func:`~defender_agent.detect.evaluate.step` (``tests/unit/
test_detect_compiled.py`` replays random datapoints through both and compares every event)
with three differences, all on purpose:

1. **A traffic window belongs to the thing, not to the behavior.** For each traffic delta
   metric a thing keeps one window of ``(arrival time, delta)`` pairs: the deltas received
   within the longest ``durationSeconds`` of the behaviors that judge it, and a behavior
   with ``durationSeconds`` ``d`` sums those received in the last ``d`` seconds. A behavior
   added later sums the deltas already received (the device's traffic does not depend on
   which behaviors exist), and an invalidated alarm restarts its counters, not the window.
2. A datapoint without a verdict (a statistical threshold not computed yet, an ML model
   still ``PENDING_BUILD``) changes no counter and does not update an active violation's
   ``lastViolationValue``.
3. Only what a later datapoint needs is kept (:class:`ThingState`): the run codes, the
   windows of the traffic metrics, the ML baselines.
4. A window holds about :data:`WINDOW_SLOTS` entries: deltas that arrive within the same
   slot of 1/60 of its length (5 s of a 300 s window) are one entry with the latest
   arrival's time, so a sum may count a delta up to one slot longer than
   ``durationSeconds`` (too high, never too low), and a device reporting every second
   costs no more than one reporting every minute.

>>> from defender_agent.detect.behaviors import parse_behavior
>>> from defender_agent.detect.metrics import Ports
>>> b = parse_behavior({"name": "p", "metric": "aws:listening-tcp-ports", "criteria": {
...     "comparisonOperator": "in-port-set", "value": {"ports": [22, 443]},
...     "consecutiveDatapointsToClear": 2}})
>>> rule = compile_rule(b, "prof/p", {})
>>> rule.verdict(Ports({22, 8123})), rule.verdict(Ports({22})), rule.verdict(Ports())
(1, 0, 2)
>>> code, event = rule.table[0 * 3 + VIOLATES]; run_parts(code), event == IN_ALARM
((True, 0, 0), True)
>>> code, event = rule.table[code * 3 + CONFORMS]; run_parts(code), event
((True, 0, 1), 0)
>>> code, event = rule.table[code * 3 + CONFORMS]; run_parts(code), event == CLEARED
((False, 0, 0), True)
"""

from __future__ import annotations

import functools
import json
import math
import operator
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Optional, Union

from defender_agent.detect import ml
from defender_agent.detect.behaviors import Behavior
from defender_agent.detect.evaluate import MAX_RUN, MAX_WINDOW, BehaviorState
from defender_agent.detect.metrics import Addresses, Numbers, Ports, Strings, datapoint
from defender_agent.model import Report

__all__ = [
    "CLEARED",
    "CLEARS",
    "CONFORMS",
    "IN_ALARM",
    "OBSERVED",
    "QUIET",
    "STILL",
    "VIOLATES",
    "Outcome",
    "Rule",
    "RuleSet",
    "ThingState",
    "compile_rule",
    "decode_state",
    "encode_state",
    "judge",
    "run_code",
    "run_parts",
    "spans",
    "transitions",
]

#: Verdicts: the datapoint conforms, violates, or is an empty set (conforms, clears at once).
CONFORMS: Final = 0
VIOLATES: Final = 1
CLEARS: Final = 2
#: Events of a datapoint: none, an alarm starts, an alarm clears, an alarm goes on.
QUIET: Final = 0
IN_ALARM: Final = 1
CLEARED: Final = 2
STILL: Final = 3
#: Not an event: a statistical behavior's measurement, for its population.
OBSERVED: Final = 4

#: A traffic window keeps about this many entries (deltas within one slot merge).
WINDOW_SLOTS: Final = 60

_RUNS: Final = MAX_RUN + 1  # a run is 0..MAX_RUN
_CODES: Final = 2 * _RUNS * _RUNS
_OBSERVED: Final = 1  # a rule's special handling in judge()
_ML: Final = 2

_FITS: Final[Mapping[str, frozenset[type]]] = {
    "count": frozenset({int}),
    "number": frozenset({int, float}),
    "ports": frozenset({Ports}),
    "cidrs": frozenset({Addresses}),
    "numbers": frozenset({Numbers}),
    "strings": frozenset({Strings}),
}
_COMPARE: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "less-than": operator.lt,
    "less-than-equals": operator.le,
    "greater-than": operator.gt,
    "greater-than-equals": operator.ge,
}
_ALLOW: Final = frozenset({"in-port-set", "in-cidr-set", "in-set"})


def run_code(in_alarm: bool, violating: int, conforming: int) -> int:
    """The code of a behavior's counters (runs are capped at ``MAX_RUN``).

    >>> run_code(False, 0, 0), run_code(True, 10, 0), run_parts(run_code(False, 3, 12))
    (0, 231, (False, 3, 10))
    """
    violating, conforming = min(max(violating, 0), MAX_RUN), min(max(conforming, 0), MAX_RUN)
    return (_RUNS * _RUNS if in_alarm else 0) + violating * _RUNS + conforming


def run_parts(code: int) -> tuple[bool, int, int]:
    """``(in_alarm, violating_run, conforming_run)`` of a code."""
    alarm, rest = divmod(code, _RUNS * _RUNS)
    violating, conforming = divmod(rest, _RUNS)
    return bool(alarm), violating, conforming


@functools.cache
def transitions(to_alarm: int, to_clear: int) -> tuple[tuple[int, int], ...]:
    """The table ``[code * 3 + verdict] -> (new code, event)`` for these two settings.

    The rules of :func:`~defender_agent.detect.evaluate.step`: a violating datapoint adds one
    to the violating run and zeroes the conforming one, and the alarm starts when the run
    reaches ``to_alarm``; a conforming one the reverse, and the alarm clears when the
    conforming run reaches ``to_clear`` (an empty set clears at once).

    The new code keeps only the counters that can still matter (:func:`_canonical`).

    >>> table = transitions(2, 1)
    >>> table[run_code(False, 1, 0) * 3 + VIOLATES] == (run_code(True, 0, 0), IN_ALARM)
    True
    >>> table[run_code(True, 0, 0) * 3 + VIOLATES] == (run_code(True, 0, 0), STILL)
    True
    >>> table[run_code(False, 1, 0) * 3 + CONFORMS]
    (0, 0)
    """
    table: list[tuple[int, int]] = []
    for code in range(_CODES):
        alarm, violating, conforming = run_parts(code)
        for verdict in (CONFORMS, VIOLATES, CLEARS):
            event = QUIET
            if verdict == VIOLATES:
                new = (alarm, min(violating + 1, MAX_RUN), 0)
                if alarm:
                    event = STILL
                elif new[1] >= to_alarm:
                    new, event = (True, new[1], 0), IN_ALARM
            else:
                new = (alarm, 0, min(conforming + 1, MAX_RUN))
                if alarm and (verdict == CLEARS or new[2] >= to_clear):
                    new, event = (False, 0, new[2]), CLEARED
            table.append((_canonical(*new), event))
    return tuple(table)


def _canonical(alarm: bool, violating: int, conforming: int) -> int:
    """The code of the counters that can still matter.

    In alarm only the conforming run (towards ``…ToClear``), out of it only the violating
    run (towards ``…ToAlarm``). So a behavior that keeps conforming, or keeps violating in
    alarm, has one code from its first datapoint on (out of alarm and conforming: 0, which
    is not even stored).
    """
    return run_code(True, 0, conforming) if alarm else run_code(False, violating, 0)


@functools.lru_cache(maxsize=1024)
def _ranges(networks: tuple[Any, ...]) -> tuple[tuple[int, int, int], ...]:
    return tuple((n.version, int(n.network_address), int(n.broadcast_address)) for n in networks)


@functools.lru_cache(maxsize=4096, typed=True)
def _addresses_in(
    ranges: tuple[tuple[int, int, int], ...], values: frozenset[Any]
) -> tuple[bool, bool]:
    """(every address is in a range, some address is), once per distinct (ranges, set)."""
    hits = [
        any(v == a.version and low <= int(a) <= high for v, low, high in ranges) for a in values
    ]
    return all(hits), any(hits)


def _static_verdict(b: Behavior) -> Callable[[Any], Optional[int]]:
    value, op = b.value, b.operator
    if b.value_kind in ("count", "number"):
        compare = _COMPARE[op or ""]
        return lambda m: CONFORMS if compare(m, value) else VIOLATES
    allow = op in _ALLOW
    if b.value_kind == "cidrs":
        assert isinstance(value, tuple)
        ranges = _ranges(value)
        index = 0 if allow else 1  # allow: all in; deny: none in

        def cidrs(m: Any) -> Optional[int]:  # noqa: ANN401 - a measurement
            if not m:
                return CLEARS
            hit = _addresses_in(ranges, m)[index]
            return CONFORMS if hit is allow else VIOLATES

        return cidrs
    assert isinstance(value, frozenset)
    if allow:
        return lambda m: (CONFORMS if m <= value else VIOLATES) if m else CLEARS
    return lambda m: (CONFORMS if m.isdisjoint(value) else VIOLATES) if m else CLEARS


def _statistical_verdict(
    b: Behavior, thresholds: Mapping[tuple[str, str], Optional[float]], names: tuple[str, str]
) -> Callable[[Any], Optional[int]]:
    compare = _COMPARE[b.operator or ""]

    def verdict(m: Any) -> Optional[int]:  # noqa: ANN401 - a measurement
        threshold = thresholds.get(names)
        if threshold is None or not math.isfinite(threshold):
            return None
        return CONFORMS if compare(m, threshold) else VIOLATES

    return verdict


@dataclass(frozen=True, eq=False)
class Rule:
    """One behavior of one profile, compiled (compared by identity).

    Attributes:
        key: ``"PROFILE/BEHAVIOR"``: its key in a thing's run codes and ML baselines.
        behavior: The behavior.
        measure: The measurement it reads: ``(metric, value kind, window seconds or 0)``.
        verdict: Measurement -> ``CONFORMS``/``VIOLATES``/``CLEARS``, None for no verdict
            (ML behaviors: unused, see :func:`judge`).
        table: :func:`transitions` of its ``…ToAlarm``/``…ToClear``.
        observed: A statistical behavior: its measurements feed the population.
    """

    key: str
    behavior: Behavior
    measure: tuple[str, str, int]
    verdict: Callable[[Any], Optional[int]]
    table: tuple[tuple[int, int], ...]
    observed: bool = False
    ml: bool = False
    fits: frozenset[type] = field(default_factory=frozenset)
    row: tuple[Any, ...] = ()  # (measure, verdict, key, table, special): the loop's view

    def __post_init__(self) -> None:
        special = _ML if self.ml else _OBSERVED if self.observed else 0
        row = (self.measure, self.verdict, self.key, self.table, special)
        object.__setattr__(self, "row", row)


def compile_rule(
    behavior: Behavior,
    key: str,
    thresholds: Mapping[tuple[str, str], Optional[float]],
    profile: str = "",
) -> Rule:
    """The compiled form of a judged behavior (not ``none``, not cloud-side).

    ``thresholds`` is the engine's ``(profile, behavior) -> percentile`` mapping, read at
    each verdict of a statistical behavior (the engine updates it in place).
    """
    window = behavior.duration_s if behavior.delta and behavior.duration_s else 0
    measure = (behavior.metric, behavior.value_kind, window)
    if behavior.kind == "statistical":
        verdict = _statistical_verdict(behavior, thresholds, (profile, behavior.name))
    elif behavior.kind == "static":
        verdict = _static_verdict(behavior)
    else:  # ml: judged by its baseline in judge()
        verdict = _no_verdict
    return Rule(
        key,
        behavior,
        measure,
        verdict,
        transitions(behavior.to_alarm, behavior.to_clear),
        observed=behavior.kind == "statistical",
        ml=behavior.kind == "ml",
        fits=_FITS[behavior.value_kind],
    )


def _no_verdict(_m: Any) -> Optional[int]:  # noqa: ANN401 - any measurement
    return None


def spans(rules: Sequence[Rule]) -> dict[str, int]:
    """Metric -> the longest window its rules sum (what the thing's window must keep).

    >>> from defender_agent.detect.behaviors import parse_behavior
    >>> def out(d): return compile_rule(parse_behavior({"name": f"o{d}",
    ...     "metric": "aws:all-bytes-out", "criteria": {"comparisonOperator": "less-than",
    ...     "value": {"count": 1}, "durationSeconds": d}}), f"p/o{d}", {})
    >>> spans([out(300), out(900)])
    {'aws:all-bytes-out': 900}
    """
    found: dict[str, int] = {}
    for rule in rules:
        metric, _kind, window = rule.measure
        if window:
            found[metric] = max(found.get(metric, 0), window)
    return found


class ThingState:
    """What Detect keeps of one thing between its reports.

    Attributes:
        runs: ``"PROFILE/BEHAVIOR"`` -> its :func:`run_code` (absent: 0, nothing seen).
        windows: Traffic metric -> ``[[arrival time, delta], ...]``, oldest first.
        ml: ``"PROFILE/BEHAVIOR"`` -> its ML baseline (:mod:`defender_agent.detect.ml`).
    """

    __slots__ = ("_runs_text", "ml", "runs", "windows")

    def __init__(
        self,
        runs: Optional[dict[str, int]] = None,
        windows: Optional[dict[str, list[list[float]]]] = None,
        model: Optional[dict[str, dict[str, Any]]] = None,
    ) -> None:
        self.runs: dict[str, int] = runs if runs is not None else {}
        self.windows: dict[str, list[list[float]]] = windows if windows is not None else {}
        self.ml: dict[str, dict[str, Any]] = model if model is not None else {}
        self._runs_text: Optional[str] = None  # the runs' JSON while unchanged

    def forget(self, key: str) -> None:
        """Restart a behavior: its counters and its ML baseline (not the thing's windows)."""
        if self.runs.pop(key, None) is not None:
            self._runs_text = None
        self.ml.pop(key, None)

    def behavior_state(self, key: str) -> BehaviorState:
        """The behavior's counters as a :class:`~.evaluate.BehaviorState` (for reading)."""
        alarm, violating, conforming = run_parts(self.runs.get(key, 0))
        return BehaviorState(alarm, violating, conforming, ml=self.ml.get(key))


Outcome = tuple[Rule, int, Any]
"""``(rule, event, measurement)``: an event of :func:`judge`, or ``OBSERVED``."""


def _feed(window: list[list[float]], at: float, delta: float, span: int) -> None:
    """Add a delta to a window kept for ``span`` seconds.

    Deltas arriving in the same slot of ``span / WINDOW_SLOTS`` seconds are one entry (its
    time the latest arrival), so a window holds about :data:`WINDOW_SLOTS` entries however
    often the device reports. Entries older than ``span`` are dropped; beyond
    ``MAX_WINDOW`` (out-of-order arrivals) the two oldest merge.

    >>> w = []
    >>> for at in (0.0, 2.0, 4.9, 5.0, 12.0): _feed(w, at, 1.0, 300)
    >>> w
    [[4.9, 3.0], [5.0, 1.0], [12.0, 1.0]]
    >>> _feed(w, 305.0, 1.0, 300); w   # (what arrived exactly 300 s ago is out)
    [[12.0, 1.0], [305.0, 1.0]]
    """
    slot = span / WINDOW_SLOTS
    last = window[-1] if window else None
    if last is not None and last[0] <= at and last[0] // slot == at // slot:
        last[0], last[1] = at, last[1] + delta
    else:
        window.append([at, delta])
    start = at - span
    if window[0][0] <= start:
        window[:] = [entry for entry in window if entry[0] > start]
    while len(window) > MAX_WINDOW:
        (_, v0), (t1, v1) = window[0], window[1]
        window[:2] = [[t1, v0 + v1]]


class RuleSet:
    """Rules grouped by what they measure, for :func:`judge` (make it once, judge often).

    Rules reading the same measurement (metric, value kind, window) are judged together:
    the measurement is taken once and each rule only gives its verdict and moves its run.

    Attributes:
        rules: The rules, in order (outcomes come in this order).
        span: :func:`spans` of the rules.
    """

    __slots__ = ("_groups", "rules", "span")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.span = spans(self.rules)
        grouped: dict[tuple[str, str, int], list[tuple[Any, ...]]] = {}
        for index, rule in enumerate(self.rules):
            measure, verdict, key, table, special = rule.row
            grouped.setdefault(measure, []).append((index, verdict, key, table, special, rule))
        # (the group's first rule, for its measurement; its members)
        self._groups = tuple((members[0][-1], tuple(members)) for members in grouped.values())

    def __len__(self) -> int:
        return len(self.rules)


def judge(
    rules: Union[Sequence[Rule], RuleSet],
    state: ThingState,
    report: Report,
    at: float,
) -> list[Outcome]:
    """One report of a thing against its rules; updates ``state``, returns the outcomes.

    ``rules``: a :class:`RuleSet` (or the rules, grouped on each call). The outcomes are
    the events (``IN_ALARM``, ``CLEARED``, ``STILL``) with the measurement that made them,
    and an ``OBSERVED`` for each measurement of a statistical behavior, in rule order.
    """
    ruleset = rules if isinstance(rules, RuleSet) else RuleSet(rules)
    span = ruleset.span
    runs = state.runs
    runs_get = runs.get
    points: dict[str, Any] = {}
    found: list[tuple[int, Rule, int, Any]] = []
    changed = False
    for first, members in ruleset._groups:
        m = _measure(first, report, at, points, state, span=span)
        if m is None:
            continue
        for index, verdict_of, key, table, special, rule in members:
            if special:
                if special == _ML:
                    verdict = _ml_verdict(rule, state, m)
                else:
                    verdict = verdict_of(m)
                    found.append((index, rule, OBSERVED, m))
            else:
                verdict = verdict_of(m)
            if verdict is None:
                continue
            old = runs_get(key, 0)
            new, event = table[old * 3 + verdict]
            if new != old:
                if new:
                    runs[key] = new
                else:
                    del runs[key]
                changed = True
            if event:
                found.append((index, rule, event, m))
    if changed:
        state._runs_text = None
    if len(found) > 1:
        found.sort(key=operator.itemgetter(0))  # rule order (stable: OBSERVED first)
    return [(rule, event, m) for _index, rule, event, m in found]


def _measure(
    rule: Rule,
    report: Report,
    at: float,
    points: dict[str, Any],
    state: ThingState,
    *,
    span: Mapping[str, int],
) -> Any:  # noqa: ANN401 - a datapoint or a window's sum
    metric, kind, window = rule.measure
    if metric in points:
        point = points[metric]
    else:
        point = points[metric] = datapoint(report, metric)
        if point is not None and metric in span and type(point) is int:
            _feed(state.windows.setdefault(metric, []), at, float(point), span[metric])
    if point is None or type(point) not in rule.fits:
        return None
    if not window:
        return point
    start = at - window
    total = sum(v for t, v in state.windows.get(metric, ()) if t > start)
    return int(total) if kind == "count" else total


def _ml_verdict(rule: Rule, state: ThingState, m: Any) -> Optional[int]:  # noqa: ANN401
    b = rule.behavior
    if b.confidence is None:
        return None
    model = state.ml.get(rule.key)
    judged = ml.anomalous(model, float(m), b.confidence, two_sided=b.value_kind == "number")
    state.ml[rule.key] = ml.learn(model, float(m))
    return None if judged is None else (VIOLATES if judged else CONFORMS)


# ---------------------------------------------------------------------- the stored form
_KEYS: dict[str, str] = {}  # a key -> its JSON string (keys repeat across things)


def _json_key(key: str) -> str:
    text = _KEYS.get(key)
    if text is None:
        if len(_KEYS) >= 100_000:
            _KEYS.clear()
        text = _KEYS[key] = json.dumps(key)
    return text


def _number(x: float) -> str:
    text = repr(x)  # a finite float's repr is its JSON; inf and nan contain an "n"
    return json.dumps(x) if "n" in text else text


def encode_state(state: ThingState, writer: str) -> str:
    """The JSON text of ``detect_things.states`` (format 2), quickly.

    ``writer`` names this write (the engine's process and a counter; letters, digits and
    dots): a text equal to the one a process wrote last proves nobody wrote since, so it
    may go on from what it holds.

    >>> s = ThingState({"p/b": 5}, {"aws:all-bytes-out": [[1.5, 20.0]]}, {"p/m": {"values": [1.0]}})
    >>> encode_state(s, "w1")
    '{"v":2,"w":"w1","runs":{"p/b":5},"windows":{"aws:all-bytes-out":[[1.5,20.0]]},"ml":{"p/m":{"values":[1.0]}}}'
    >>> t = decode_state(encode_state(s, "w1"), {})
    >>> (t.runs, t.windows, t.ml) == (s.runs, s.windows, s.ml)
    True
    """
    runs = state._runs_text
    if runs is None:
        runs = state._runs_text = (
            "{" + ",".join(f"{_json_key(k)}:{c:d}" for k, c in state.runs.items()) + "}"
        )
    windows = ",".join(
        f"{_json_key(metric)}:[" + ",".join(f"[{_number(t)},{_number(v)}]" for t, v in w) + "]"
        for metric, w in state.windows.items()
    )
    model = json.dumps(state.ml, separators=(",", ":")) if state.ml else "{}"
    return f'{{"v":2,"w":"{writer}","runs":{runs},"windows":{{{windows}}},"ml":{model}}}'


def decode_state(
    text: str, metrics: Mapping[str, str], windowed: Optional[Container[str]] = None
) -> ThingState:
    """A thing's state from its stored text; an unreadable text is a fresh state.

    Reads format 2 (:func:`encode_state`) and the first format (``{"PROFILE/BEHAVIOR":
    BehaviorState.to_json()}``); ``metrics`` maps a key to its behavior's metric, so that a
    traffic window of the first format becomes the thing's window of that metric. With
    ``windowed`` (the metrics some behavior sums over a window), only the keys of
    ``metrics`` and the windows of ``windowed`` are kept: what a removed behavior left
    behind is dropped when the thing is next written.

    >>> old = '{"p/o": {"in_alarm": true, "violating_run": 2, "window": [[1, 7]]}}'
    >>> s = decode_state(old, {"p/o": "aws:all-bytes-out"})
    >>> s.runs == {"p/o": run_code(True, 0, 0)}, s.windows
    (True, {'aws:all-bytes-out': [[1.0, 7.0]]})
    >>> decode_state("not json", {}).runs
    {}
    """
    try:
        doc = json.loads(text)
    except ValueError:
        return ThingState()
    if not isinstance(doc, dict):
        return ThingState()
    state = _decode_v2(doc) if doc.get("v") == 2 else _decode_v1(doc, metrics)
    if windowed is not None:
        state.runs = {k: c for k, c in state.runs.items() if k in metrics}
        state.ml = {k: m for k, m in state.ml.items() if k in metrics}
        state.windows = {m: w for m, w in state.windows.items() if m in windowed}
    return state


def _decode_v1(doc: Mapping[str, Any], metrics: Mapping[str, str]) -> ThingState:
    state = ThingState()
    for key, raw in doc.items():
        if not isinstance(raw, dict):
            continue
        try:
            old = BehaviorState.from_json(raw)
        except ValueError:  # a hand-edited row: that behavior starts again
            continue
        code = _canonical(old.in_alarm, old.violating_run, old.conforming_run)
        if code:
            state.runs[key] = code
        if old.ml is not None:
            state.ml[key] = dict(old.ml)
        metric = metrics.get(key)
        if (
            metric is not None
            and old.window
            and len(old.window) >= len(state.windows.get(metric, ()))
        ):
            state.windows[metric] = [[t, v] for t, v in old.window]
    return state


def _decode_v2(doc: Mapping[str, Any]) -> ThingState:
    runs, windows, model = doc.get("runs"), doc.get("windows"), doc.get("ml")
    state = ThingState()
    if isinstance(runs, dict):
        state.runs = {k: c for k, c in runs.items() if type(c) is int and 0 <= c < _CODES}
    if isinstance(windows, dict):
        for metric, entries in windows.items():
            try:
                state.windows[metric] = [[float(t), float(v)] for t, v in entries]
            except (TypeError, ValueError):
                continue
    if isinstance(model, dict):
        state.ml = {k: m for k, m in model.items() if isinstance(m, dict)}
    return state
