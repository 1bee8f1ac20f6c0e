"""One datapoint against one behavior: the exact evaluation model of the local Detect.

:func:`step` is pure: it takes a :class:`~defender_agent.detect.behaviors.Behavior`, the
(thing, behavior)'s :class:`BehaviorState` (plain data the engine keeps as JSON), one
datapoint (:func:`defender_agent.detect.metrics.datapoint`) and the time the report arrived,
and returns the new state and the :class:`Transition`, if any. The model:

1. **Datapoints.** Each accepted report that carries the metric is one datapoint; a report
   without it (datapoint None) changes nothing. A behavior on a cloud-side metric, or one
   without criteria, only records the value.
2. **The measurement** the criteria judge:

   * traffic deltas (``aws:all-bytes-*``, ``aws:all-packets-*``) with ``durationSeconds``
     ``d``: the **sum of the deltas received in (now - d, now]**. A delta received exactly
     ``d`` seconds ago is *out*: a delta covers the time since the previous report, so with
     a report every 300 s and ``d = 300`` the sum is exactly the current report's delta.
     The window keeps at most :data:`MAX_WINDOW` entries; beyond that the two oldest merge
     (keeping the later time), so with more than one report a second the sum may count a
     delta a little longer than ``d`` (too high, never too low);
   * any other metric (``durationSeconds`` or not): the datapoint itself. For the counts and
     custom numbers ``durationSeconds`` only sets which devices count in a statistical
     population (those that reported within it, see :func:`measurement`).

3. **The verdict** (criteria say what is *normal*; a datapoint that does not meet them
   violates):

   * ``less-than`` / ``less-than-equals`` / ``greater-than`` / ``greater-than-equals``:
     ``measurement OP value`` conforms;
   * ``in-port-set``, ``in-cidr-set``, ``in-set`` are **allow-lists**: every reported port,
     address or item must be in the set (an address is in a CIDR set when any network of the
     set contains it; IPv4 addresses never match IPv6 networks, and IPv4-mapped addresses and
     networks were made IPv4 on both sides);
   * ``not-in-port-set``, ``not-in-cidr-set``, ``not-in-set`` are **deny-lists**: no
     reported item may be in the set;
   * **an empty list conforms and clears** an alarm at once, whatever
     ``consecutiveDatapointsToClear`` says (AWS: an empty list always conforms, and a
     behavior in violation then clears);
   * statistical: ``measurement OP threshold``, where ``threshold`` is the population's
     percentile the engine computes (:func:`defender_agent.detect.statistics.percentile` of
     every targeted device's :func:`measurement`); with no threshold yet there is no
     verdict;
   * ML: :func:`defender_agent.detect.ml.anomalous` (no verdict while the model is
     ``PENDING_BUILD``); every datapoint is then learnt.

4. **Consecutive datapoints.** A violating datapoint adds one to ``violating_run`` and zeroes
   ``conforming_run``; a conforming one the reverse (runs stop counting at 10, the largest
   setting). Not in alarm and ``violating_run >= consecutiveDatapointsToAlarm`` ->
   ``in-alarm``. In alarm and ``conforming_run >= consecutiveDatapointsToClear`` ->
   ``alarm-cleared``. A datapoint without a verdict leaves both runs as they are.

A datapoint whose type does not fit the behavior (a custom metric re-created with another
type) is no datapoint. Times are POSIX seconds from one clock; a datapoint older than the
previous one is still counted in arrival order.

>>> from defender_agent.detect.behaviors import parse_behavior
>>> from defender_agent.detect.metrics import Ports
>>> b = parse_behavior({"name": "p", "metric": "aws:listening-tcp-ports", "criteria": {
...     "comparisonOperator": "in-port-set", "value": {"ports": [22, 443]},
...     "consecutiveDatapointsToClear": 2}})
>>> s, t = step(b, INITIAL, Ports({22, 8123}), 100.0)
>>> t
Transition(event='in-alarm', value={'ports': [22, 8123]}, time=100.0)
>>> s, t = step(b, s, Ports({22}), 400.0); t is None, s.conforming_run
(True, 1)
>>> step(b, s, Ports({22}), 700.0)[1].event
'alarm-cleared'
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Optional, Union

from defender_agent.detect import ml
from defender_agent.detect.behaviors import Behavior, IPNetwork
from defender_agent.detect.metrics import Addresses, Numbers, Ports, Strings, metric_value_json
from defender_agent.rules import IPAddress

__all__ = [
    "INITIAL",
    "MAX_RUN",
    "MAX_WINDOW",
    "BehaviorState",
    "Transition",
    "compare",
    "measurement",
    "step",
    "window_sum",
]

#: The most (time, delta) entries a duration window keeps.
MAX_WINDOW: Final = 720
#: Runs of consecutive datapoints stop counting here (the largest setting is 10).
MAX_RUN: Final = 10

_SET_TYPES: Final[Mapping[str, type]] = {
    "ports": Ports,
    "cidrs": Addresses,
    "numbers": Numbers,
    "strings": Strings,
}


@dataclass(frozen=True)
class BehaviorState:
    """What the engine keeps for one (thing, behavior) between datapoints.

    Attributes:
        in_alarm: An ``in-alarm`` has happened and no ``alarm-cleared`` since.
        violating_run: Consecutive violating datapoints (up to :data:`MAX_RUN`).
        conforming_run: Consecutive conforming datapoints (up to :data:`MAX_RUN`).
        window: ``(time, value)`` pairs, oldest first: the deltas within ``durationSeconds``
            for the traffic metrics with one, else the latest numeric datapoint.
        last_value: The last measurement as AWS's ``MetricValue`` JSON.
        last_time: When it arrived.
        ml: The ML model's baseline (:mod:`defender_agent.detect.ml`), for ML behaviors.
    """

    in_alarm: bool = False
    violating_run: int = 0
    conforming_run: int = 0
    window: tuple[tuple[float, float], ...] = ()
    last_value: Optional[dict[str, Any]] = None
    last_time: Optional[float] = None
    ml: Optional[dict[str, Any]] = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (:meth:`from_json` reads it back).

        >>> BehaviorState(window=((1.0, 5.0),)).to_json()["window"]
        [[1.0, 5.0]]
        """
        return {
            "in_alarm": self.in_alarm,
            "violating_run": self.violating_run,
            "conforming_run": self.conforming_run,
            "window": [[t, v] for t, v in self.window],
            "last_value": self.last_value,
            "last_time": self.last_time,
            "ml": self.ml,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BehaviorState:
        """The state :meth:`to_json` wrote; missing keys take their defaults.

        Raises:
            ValueError: a key has the wrong type.

        >>> BehaviorState.from_json({"in_alarm": True, "window": [[1, 2]]}).window
        ((1.0, 2.0),)
        """
        try:
            window = tuple((float(t), float(v)) for t, v in d.get("window") or ())
            in_alarm = d.get("in_alarm", False)
            runs = (d.get("violating_run", 0), d.get("conforming_run", 0))
            last_time = d.get("last_time")
            last_value, model = d.get("last_value"), d.get("ml")
            if not isinstance(in_alarm, bool) or not all(
                isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in runs
            ):
                raise TypeError("in_alarm or a run is not of its type")  # noqa: TRY301
            if not all(v is None or isinstance(v, dict) for v in (last_value, model)):
                raise TypeError("last_value or ml is not an object")  # noqa: TRY301
            return cls(
                in_alarm=in_alarm,
                violating_run=runs[0],
                conforming_run=runs[1],
                window=window,
                last_value=last_value,
                last_time=None if last_time is None else float(last_time),
                ml=model,
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a behavior state: {exc}") from None


#: The state of a (thing, behavior) that has seen no datapoint.
INITIAL: Final = BehaviorState()


@dataclass(frozen=True)
class Transition:
    """A change of alarm: ``in-alarm`` or ``alarm-cleared``, with the datapoint that made it.

    Attributes:
        event: ``in-alarm`` or ``alarm-cleared``.
        value: The measurement as AWS's ``MetricValue`` JSON (``lastViolationValue``).
        time: The datapoint's time.
    """

    event: str
    value: dict[str, Any]
    time: float


def window_sum(state: BehaviorState, now: float, duration_s: int) -> float:
    """The sum of the window's values received in (now - duration_s, now].

    >>> s = BehaviorState(window=((0.0, 1.0), (300.0, 2.0), (400.0, 4.0)))
    >>> window_sum(s, 600.0, 300), window_sum(s, 600.0, 600), window_sum(s, 300.0, 300)
    (4.0, 6.0, 2.0)
    """
    start = now - duration_s
    return float(sum(v for t, v in state.window if start < t <= now))


def measurement(behavior: Behavior, state: BehaviorState, now: float) -> Optional[float]:
    """The device's measurement for a statistical population at ``now``; None if none.

    For a traffic delta with ``durationSeconds`` ``d``: the sum of its deltas in (now - d,
    now], None when it sent none then. For other ``count``/``number`` metrics: the latest
    datapoint, None when older than ``d`` (when the behavior has one). Other kinds: None.

    >>> from defender_agent.detect.behaviors import parse_behavior
    >>> b = parse_behavior({"name": "o", "metric": "aws:all-bytes-out", "criteria": {
    ...     "comparisonOperator": "less-than", "durationSeconds": 300,
    ...     "statisticalThreshold": {"statistic": "p90"}}})
    >>> s = BehaviorState(window=((0.0, 5.0), (200.0, 7.0)))
    >>> measurement(b, s, 250.0), measurement(b, s, 400.0), measurement(b, s, 600.0)
    (12.0, 7.0, None)
    """
    if behavior.value_kind not in ("count", "number") or not state.window:
        return None
    d = behavior.duration_s
    if behavior.delta and d is not None:
        if not any(now - d < t <= now for t, _ in state.window):
            return None
        return window_sum(state, now, d)
    t, v = state.window[-1]
    return None if d is not None and t <= now - d else v


def compare(operator: str, measured: float, value: float) -> bool:
    """Whether ``measured OP value`` holds (i.e. the datapoint conforms).

    >>> compare("less-than", 1, 2), compare("less-than-equals", 2, 2), compare("greater-than", 2, 2)
    (True, True, False)
    """
    if operator == "less-than":
        return measured < value
    if operator == "less-than-equals":
        return measured <= value
    if operator == "greater-than":
        return measured > value
    if operator == "greater-than-equals":
        return measured >= value
    raise ValueError(f"not a comparison operator: {operator!r}")


@functools.lru_cache(maxsize=1024)
def _ranges(networks: tuple[IPNetwork, ...]) -> tuple[tuple[int, int, int], ...]:
    """(version, first, last) of each network, as integers (``in`` on networks is slow)."""
    return tuple((n.version, int(n.network_address), int(n.broadcast_address)) for n in networks)


def _in_networks(address: IPAddress, ranges: tuple[tuple[int, int, int], ...]) -> bool:
    version, number = address.version, int(address)
    return any(v == version and low <= number <= high for v, low, high in ranges)


def _state(
    *,
    in_alarm: bool,
    violating_run: int,
    conforming_run: int,
    window: tuple[tuple[float, float], ...],
    last_value: Optional[dict[str, Any]],
    last_time: Optional[float],
    model: Optional[dict[str, Any]],
) -> BehaviorState:
    """A :class:`BehaviorState` without the frozen dataclass's slow ``__init__``."""
    state = _new(BehaviorState)
    _set(
        state,
        "__dict__",
        {
            "in_alarm": in_alarm,
            "violating_run": violating_run,
            "conforming_run": conforming_run,
            "window": window,
            "last_value": last_value,
            "last_time": last_time,
            "ml": model,
        },
    )
    return state


_new: Final = object.__new__
_set: Final = object.__setattr__


@functools.lru_cache(maxsize=4096, typed=True)  # typed: Ports({1}) == Numbers({1.0})
def _shown_set(value: frozenset[Any]) -> dict[str, Any]:
    """:func:`metric_value_json` of a set datapoint, once per distinct set (shared: read-only).

    Profiles repeat a metric across behaviors and devices repeat their sets: sorting and
    formatting each time was a tenth of :func:`step`.
    """
    return metric_value_json(value)


@functools.lru_cache(maxsize=4096, typed=True)
def _addresses_conform(
    ranges: tuple[tuple[int, int, int], ...], allow: bool, values: frozenset[Any]
) -> bool:
    """An address set against CIDR ranges, once per distinct (ranges, set)."""
    if allow:
        return all(_in_networks(a, ranges) for a in values)
    return not any(_in_networks(a, ranges) for a in values)


def _set_conforms(behavior: Behavior, values: frozenset[Any]) -> bool:
    allowed = behavior.value
    allow = behavior.operator in ("in-port-set", "in-cidr-set", "in-set")
    if behavior.value_kind == "cidrs":
        assert isinstance(allowed, tuple)
        return _addresses_conform(_ranges(allowed), allow, values)
    assert isinstance(allowed, frozenset)
    return values <= allowed if allow else values.isdisjoint(allowed)


def _fits(behavior: Behavior, value: object) -> bool:
    kind = behavior.value_kind
    if kind == "count":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _SET_TYPES[kind])


def _pruned(window: tuple[tuple[float, float], ...], now: float, d: int) -> tuple[Any, ...]:
    start = now - d
    if window and window[0][0] <= start:
        window = tuple(entry for entry in window if entry[0] > start)
    if len(window) <= MAX_WINDOW:
        return window
    kept = list(window)
    while len(kept) > MAX_WINDOW:
        (_, v0), (t1, v1) = kept[0], kept[1]
        kept[:2] = [(t1, v0 + v1)]
    return tuple(kept)


def _verdict(
    behavior: Behavior,
    state: BehaviorState,
    measured: Union[float, frozenset[Any]],
    threshold: Optional[float],
) -> tuple[Optional[bool], Optional[dict[str, Any]]]:
    """(violates or None for no verdict, the new ML state)."""
    if behavior.kind == "static":
        if isinstance(measured, frozenset):
            return not _set_conforms(behavior, measured), state.ml
        assert isinstance(behavior.value, (int, float))
        assert behavior.operator is not None
        return not compare(behavior.operator, measured, behavior.value), state.ml
    assert not isinstance(measured, frozenset)
    if behavior.kind == "statistical":
        if threshold is None or not math.isfinite(threshold) or behavior.operator is None:
            return None, state.ml
        return not compare(behavior.operator, measured, threshold), state.ml
    if behavior.kind == "ml" and behavior.confidence is not None:
        two_sided = behavior.value_kind == "number"
        judged = ml.anomalous(state.ml, float(measured), behavior.confidence, two_sided=two_sided)
        return judged, ml.learn(state.ml, float(measured))
    return None, state.ml


def step(
    behavior: Behavior,
    state: BehaviorState,
    value: object,
    now: float,
    threshold: Optional[float] = None,
) -> tuple[BehaviorState, Optional[Transition]]:
    """One datapoint: the new state and the transition it makes, if any (module docstring).

    Args:
        behavior: The behavior.
        state: The (thing, behavior)'s state before the datapoint (:data:`INITIAL` at first).
        value: The report's datapoint for ``behavior.metric``; None for no datapoint.
        now: When the report arrived (POSIX seconds).
        threshold: For a statistical behavior, the population's percentile value; None when
            there is none yet (then no verdict).
    """
    if value is None or not _fits(behavior, value):
        return state, None
    window = state.window
    measured: Union[float, frozenset[Any]] = value  # type: ignore[assignment]
    if behavior.value_kind in ("count", "number"):
        d = behavior.duration_s
        if behavior.delta and d is not None:
            window = _pruned((*window, (now, float(value))), now, d)  # type: ignore[arg-type]
            total = sum(v for _, v in window)
            measured = int(total) if behavior.value_kind == "count" else total
        else:
            window = ((now, float(value)),)  # type: ignore[arg-type]
    shown = (
        _shown_set(measured)  # (the same type and members: the same JSON)
        if isinstance(measured, frozenset)
        else metric_value_json(measured)
    )
    in_alarm, violating, conforming = state.in_alarm, state.violating_run, state.conforming_run
    model, transition = state.ml, None
    if behavior.kind != "none" and not behavior.cloud_side:
        violates, model = _verdict(behavior, state, measured, threshold)
        if violates:
            violating, conforming = min(violating + 1, MAX_RUN), 0
            if not in_alarm and violating >= behavior.to_alarm:
                in_alarm, transition = True, Transition("in-alarm", shown, now)
        elif violates is not None:
            violating, conforming = 0, min(conforming + 1, MAX_RUN)
            empty = isinstance(measured, frozenset) and not measured
            if in_alarm and (empty or conforming >= behavior.to_clear):
                in_alarm, transition = False, Transition("alarm-cleared", shown, now)
    new = _state(
        in_alarm=in_alarm,
        violating_run=violating,
        conforming_run=conforming,
        window=window,
        last_value=shown,
        last_time=now,
        model=model,
    )
    return new, transition
