"""Percentiles for statistical thresholds (``statisticalThreshold.statistic``).

The method is the **nearest rank**: sort the n values; the p-th percentile is the value at
rank ``ceil(p / 100 * n)`` (counting from 1), and at rank 1 when that is 0. So the result is
always one of the values (never an interpolation), ``p0`` is the smallest and ``p100`` the
largest, and ties need no rule: equal values share the ranks they fill. The rank is computed
in exact decimal arithmetic (``p99.99`` of 10 000 values is rank 9 999, not 10 000 through a
rounding error).

Following AWS (docs: percentile statistics are not available for a metric once any of its
values is negative), a population with a negative value has no percentile; nor has an empty
one. Values that are not finite numbers are left out.

>>> percentile([5, 1, 4, 2, 3], "p50"), percentile([5, 1, 4, 2, 3], "p90")
(3, 5)
>>> percentile([7, 7, 7, 1], "p10"), percentile([7, 7, 7, 1], "p26")
(1, 7)
>>> percentile([], "p90") is None, percentile([1, -1], "p90") is None
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Optional, TypeVar

__all__ = ["percentile", "rank"]

_N = TypeVar("_N", int, float)


def rank(statistic: str, count: int) -> int:
    """The 1-based nearest rank of ``statistic`` (``p0``...``p100``) among ``count`` values.

    Raises:
        ValueError: ``statistic`` is not ``p`` and a number from 0 to 100, or count < 1.

    >>> rank("p0", 10), rank("p10", 10), rank("p11", 10), rank("p100", 10), rank("p99.99", 10_000)
    (1, 1, 2, 10, 9999)
    """
    if count < 1:
        raise ValueError("no values")
    try:
        p = Decimal(statistic[1:]) if statistic.startswith("p") else Decimal("NaN")
    except InvalidOperation:
        p = Decimal("NaN")
    if not p.is_finite() or not 0 <= p <= 100:
        raise ValueError(f"not a percentile statistic: {statistic!r}")
    position = (p * count / 100).to_integral_value(rounding=ROUND_CEILING)
    return max(1, int(position))


def percentile(values: Sequence[_N], statistic: str) -> Optional[_N]:
    """The nearest-rank percentile of ``values``; None when empty or any value is negative.

    Args:
        values: One measurement per device (any order).
        statistic: ``p0``, ``p0.1``, ..., ``p100``.

    Raises:
        ValueError: ``statistic`` is not a percentile.
    """
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite or finite[0] < 0:
        return None
    return finite[rank(statistic, len(finite)) - 1]
