"""Nearest-rank percentiles (detect/statistics.py): ranks, ties, p0/p100, empty, negatives."""

from __future__ import annotations

import pytest

from defender_agent.detect.behaviors import STATISTICS
from defender_agent.detect.statistics import percentile, rank

TEN = [10, 1, 9, 2, 8, 3, 7, 4, 6, 5]

CASES = [
    (TEN, "p0", 1),
    (TEN, "p0.01", 1),
    (TEN, "p0.1", 1),
    (TEN, "p1", 1),
    (TEN, "p10", 1),
    (TEN, "p50", 5),
    (TEN, "p90", 9),
    (TEN, "p99", 10),
    (TEN, "p99.9", 10),
    (TEN, "p99.99", 10),
    (TEN, "p100", 10),
    ([42], "p0", 42),
    ([42], "p100", 42),
    ([3, 3, 3, 3], "p50", 3),  # ties: every rank is the same value
    ([1, 5, 5, 5, 9], "p21", 5),  # rank ceil(1.05) = 2
    ([1, 5, 5, 5, 9], "p20", 1),  # rank exactly 1
    ([1, 5, 5, 5, 9], "p80", 5),  # rank exactly 4
    ([1, 5, 5, 5, 9], "p81", 9),
    ([0.5, 0.25], "p50", 0.25),
    ([0, 0, 0], "p100", 0),
    ([float("nan"), 2.0, float("inf"), 1.0], "p100", 2.0),  # non-finite values left out
]


@pytest.mark.parametrize(("values", "statistic", "expected"), CASES)
def test_nearest_rank(values: list[float], statistic: str, expected: float) -> None:
    assert percentile(values, statistic) == expected


def test_no_percentile_for_empty_or_negative_populations() -> None:
    assert percentile([], "p50") is None
    assert percentile([float("nan")], "p50") is None
    assert percentile([5, -0.1, 7], "p90") is None


def test_ranks_are_exact_for_every_aws_statistic() -> None:
    expected = {"p0": 1, "p0.01": 1, "p0.1": 10, "p1": 100, "p10": 1000, "p50": 5000}
    expected |= {"p90": 9000, "p99": 9900, "p99.9": 9990, "p99.99": 9999, "p100": 10000}
    assert {s: rank(s, 10_000) for s in STATISTICS} == expected
    values = list(range(1, 10_001))
    assert all(percentile(values, s) == expected[s] for s in STATISTICS)


@pytest.mark.parametrize("statistic", ["p101", "p-1", "90", "pNaN", "p", "pinf", "Average"])
def test_bad_statistics_raise(statistic: str) -> None:
    with pytest.raises(ValueError, match="not a percentile statistic"):
        percentile([1, 2], statistic)


def test_rank_needs_values() -> None:
    with pytest.raises(ValueError, match="no values"):
        rank("p50", 0)
