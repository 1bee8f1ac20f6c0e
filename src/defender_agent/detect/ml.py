"""The local ML Detect model: a per-device baseline learnt from the device's own datapoints.

This is **not** AWS's ML Detect model (AWS does not publish it; AWS trains on 14 days of a
fleet's data). It is a small, honest statistical model that gives ``mlDetectionConfig``
behaviors a meaning on a self-hosted service:

* **Baseline.** For each (thing, behavior) the model keeps the last :data:`WINDOW` (120)
  datapoints of the metric. Its centre is their **median** ``m`` and its spread the
  **scaled median absolute deviation** ``s = max(1.4826 * MAD, 0.1 * |m|, 1)``: the floor
  keeps a perfectly steady baseline (MAD 0: three listening ports, always) from turning
  every small change into an anomaly.
* **Status.** Until the baseline holds :data:`MIN_DATAPOINTS` (30) datapoints the model is
  ``PENDING_BUILD`` and judges nothing ("not enough data yet"); then it is ``ACTIVE``.
* **Judgement.** A datapoint ``x`` is anomalous when its robust z-score ``(x - m) / s`` is
  above the confidence level's threshold; for custom ``number`` metrics also when it is
  below minus the threshold (a battery that drops is as odd as one that jumps), for the
  device-side counts (traffic, ports, connections) only above (less traffic is no threat).
  The datapoint is judged against the baseline *before* it is learnt.
* **Confidence levels** (AWS's meaning: how sure the model must be that a datapoint is an
  anomaly): ``LOW`` z > 3 (most sensitive, most alarms), ``MEDIUM`` z > 4, ``HIGH`` z > 5
  (fewest alarms).
* **Learning.** Every datapoint is learnt, anomalous or not: a lasting change becomes the new
  normal once it fills half the window (60 datapoints), and the alarm then clears.

The state is plain JSON: ``{"values": [...]}`` (oldest first).

>>> state = None
>>> for x in [10.0, 11.0, 9.0] * 10:
...     state = learn(state, x)
>>> model_status(state), datapoints_needed(state)
('ACTIVE', 0)
>>> anomalous(state, 10.5, "HIGH", two_sided=False), anomalous(state, 99.0, "HIGH", two_sided=False)
(False, True)
>>> anomalous(learn(None, 1.0), 100.0, "LOW", two_sided=True) is None   # not enough data yet
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Optional

__all__ = [
    "MIN_DATAPOINTS",
    "WINDOW",
    "Z_THRESHOLDS",
    "anomalous",
    "baseline",
    "datapoints_needed",
    "learn",
    "model_status",
]

#: Datapoints kept in a baseline.
WINDOW: Final = 120
#: Datapoints a baseline needs before the model judges (status ``ACTIVE``).
MIN_DATAPOINTS: Final = 30
#: Robust z-score a datapoint must exceed to be anomalous, per confidence level.
Z_THRESHOLDS: Final[Mapping[str, float]] = {"LOW": 3.0, "MEDIUM": 4.0, "HIGH": 5.0}


def _values(state: object) -> list[float]:
    """The baseline's values; ``state`` is the ML state or anything with an ``ml`` attribute."""
    if not isinstance(state, Mapping):
        state = getattr(state, "ml", None)
    if not isinstance(state, Mapping):
        return []
    values = state.get("values")
    if not isinstance(values, list):
        return []
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _median(ordered: Sequence[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def learn(state: Optional[Mapping[str, Any]], value: float) -> dict[str, Any]:
    """The state after learning one datapoint (the oldest beyond :data:`WINDOW` forgotten)."""
    values = _values(state)
    if math.isfinite(value):
        values.append(float(value))
    return {"values": values[-WINDOW:]}


def model_status(state: object) -> str:
    """``PENDING_BUILD`` until the baseline has :data:`MIN_DATAPOINTS`, then ``ACTIVE``.

    ``state`` is the ML state (``BehaviorState.ml``) or the ``BehaviorState`` itself.

    >>> model_status(None), model_status({"values": [1] * 30})
    ('PENDING_BUILD', 'ACTIVE')
    """
    return "ACTIVE" if datapoints_needed(state) == 0 else "PENDING_BUILD"


def datapoints_needed(state: object) -> int:
    """How many more datapoints the model needs before it judges.

    >>> datapoints_needed(None), datapoints_needed({"values": [1, 2]})
    (30, 28)
    """
    return max(0, MIN_DATAPOINTS - len(_values(state)))


def baseline(state: Optional[Mapping[str, Any]]) -> Optional[tuple[float, float]]:
    """The baseline's (median, scale); None while ``PENDING_BUILD``.

    >>> baseline({"values": [3] * 30})
    (3.0, 1.0)
    >>> median, scale = baseline({"values": [100, 110, 90] * 10}); median, round(scale, 3)
    (100.0, 14.826)
    """
    values = _values(state)
    if len(values) < MIN_DATAPOINTS:
        return None
    ordered = sorted(values)
    median = _median(ordered)
    mad = _median(sorted(abs(v - median) for v in ordered))
    return median, max(1.4826 * mad, 0.1 * abs(median), 1.0)


def anomalous(
    state: Optional[Mapping[str, Any]], value: float, confidence: str, *, two_sided: bool
) -> Optional[bool]:
    """Whether ``value`` is an anomaly for the baseline; None while ``PENDING_BUILD``.

    Raises:
        KeyError: ``confidence`` is not LOW, MEDIUM or HIGH.
    """
    limit = Z_THRESHOLDS[confidence]
    fitted = baseline(state)
    if fitted is None:
        return None
    median, scale = fitted
    z = (value - median) / scale
    return z > limit or (two_sided and z < -limit)
