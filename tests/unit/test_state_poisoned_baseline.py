"""A poisoned baseline (times in the future, counters beyond 64 bits or above the reading).

The agent discards it with one warning naming baseline.json and the value, starts
fresh on schedule and never reports a spike.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from defender_agent.config import CollectorConfig
from defender_agent.cycle import Collector
from tests.conftest import advance, proc_fixture
from tests.fakes import FakeTransport
from tests.unit.test_agent import Run, make_config


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def _restart_with(
    root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    poison: Callable[[dict[str, Any]], None],
) -> tuple[Run, list[str]]:
    config = make_config(root, tmp_path / "s", interval=2)
    first = Run(config, FakeTransport())
    first.run(2.5)
    saved = first.state.load("baseline")
    assert saved is not None
    saved.pop("version")
    poison(saved)
    first.state.save("baseline", saved)
    advance(root)
    second = Run(config, FakeTransport(), clock=first.clock)
    with caplog.at_level(logging.INFO, logger="defender_agent"):
        second.run(4.5)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "baseline.json" in r.getMessage()
    ]
    return second, warnings


def test_last_published_far_in_the_future_does_not_silence_the_agent(
    proc_copy: Callable[[str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def poison(saved: dict[str, Any]) -> None:
        saved["last_published"] = 1e12  # ~31 700 years of boot time

    second, warnings = _restart_with(proc_copy("gateway_dualstack"), tmp_path, caplog, poison)
    baseline = tmp_path / "s" / "baseline.json"
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        f"ignoring state file {baseline}: last_published 1000000000000.0 is ahead of the "
        "boot-time clock ("
    )
    assert warnings[0].endswith(" s); starting fresh")
    assert second.times == [4.5, 6.5]  # a fresh baseline at 2.5 s, then on schedule
    saved = second.state.load("baseline")
    assert saved is not None and saved["last_published"] < 1e6  # not saved back


@pytest.mark.parametrize(
    ("counter", "message"),
    [
        (2**70, "interface eth0 bytes_out 1180591620717411303424 is beyond 64 bits"),
        (10**15, "interface eth0 bytes_out 1000000000000000 is above the current reading"),
    ],
)
def test_baseline_counters_out_of_range_give_a_fresh_baseline_not_a_spike(
    proc_copy: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    counter: int,
    message: str,
) -> None:
    def poison(saved: dict[str, Any]) -> None:
        interfaces = saved["collector"]["interfaces"]
        assert "eth0" in interfaces
        interfaces["eth0"][2] = counter  # bytes_out

    second, warnings = _restart_with(proc_copy("gateway_dualstack"), tmp_path, caplog, poison)
    assert len(warnings) == 1, warnings
    assert message in warnings[0] and warnings[0].endswith("; starting fresh")
    assert second.times == [4.5, 6.5]
    assert second.reports()[0]["metrics"]["network_stats"]["bytes_out"] == 0  # no spike


def test_a_future_boottime_is_out_of_range(
    proc_copy: Callable[[str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def poison(saved: dict[str, Any]) -> None:
        saved["boottime"] = float("inf")

    second, warnings = _restart_with(proc_copy("gateway_dualstack"), tmp_path, caplog, poison)
    assert len(warnings) == 1 and "boottime inf is not a time" in warnings[0], warnings
    assert second.times == [4.5, 6.5]


def _collector() -> Collector:
    config = CollectorConfig(proc_root=proc_fixture("gateway_dualstack"), socket_source="proc")
    return Collector(config)


def test_baseline_problem_bounds_cpu_times_and_allows_a_32_bit_wrap() -> None:
    collector = _collector()
    current = {"eth0": [1654, 21, 2090, 27]}  # the fixture's net/dev
    assert collector.baseline_problem({"interfaces": current, "cpu": [10, 5]}) is None
    wrapped = {"eth0": [2**32 - 10, 21, 2090, 27]}  # a 32-bit driver wrapped since the save
    assert collector.baseline_problem({"interfaces": wrapped}) is None
    assert collector.baseline_problem({"interfaces": None, "cpu": [2**65, 1]}) == (
        f"cpu total {2**65} is beyond 64 bits"
    )
    assert collector.baseline_problem("not a baseline") is None  # import_baseline refuses it
    assert not collector.import_baseline({"interfaces": None, "cpu": [-1, 0]})
