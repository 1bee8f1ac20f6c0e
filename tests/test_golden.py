"""Golden reports: every recorded proc scenario, collected in-process with a fixed clock.

The first cycle takes the baseline from the fixture; the fixture is then advanced to its
recorded second sample (``net/dev.next``, ``stat.next``) and the second cycle's report is
compared byte for byte with ``tests/golden/<scenario>.<names>.json`` and ``.cbor.hex``.
Run ``pytest --update-golden`` to rewrite them, then review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defender_agent.cycle import Collector, CollectorConfig
from defender_agent.model import Report
from defender_agent.report.serialize import encode_report, pretty_json
from defender_agent.report.validate import PayloadFormat, validate_payload
from tests.conftest import GOLDEN, SCENARIOS, advance, all_keys

FIXED_CLOCK = 1_700_000_000.0


def collect_report(root: Path, *, list_size: int) -> Report:
    config = CollectorConfig(
        proc_root=root,
        include_custom_metrics=True,
        socket_source="proc",
        list_size=list_size,
    )
    collector = Collector(config, state_dir=None, clock=lambda: FIXED_CLOCK)
    assert collector.cycle() is None
    advance(root)
    report = collector.cycle()
    assert report is not None
    return report


def check(path: Path, actual: str, update: bool) -> None:
    if update:
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual)
        return
    assert path.exists(), f"missing golden file {path.name}: run pytest --update-golden"
    assert actual == path.read_text(), f"{path.name} differs (pytest --update-golden to accept)"


@pytest.mark.parametrize("names", ["long", "short"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_golden_report(scenario: str, names: str, proc_copy, update_golden: bool) -> None:
    short = names == "short"
    report = collect_report(proc_copy(scenario), list_size=50)
    text = pretty_json(report, short_names=short) + "\n"
    check(GOLDEN / f"{scenario}.{names}.json", text, update_golden)
    cbor_hex = encode_report(report, "cbor", short_names=short).hex() + "\n"
    check(GOLDEN / f"{scenario}.{names}.cbor.hex", cbor_hex, update_golden)


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.name)
def test_golden_json_is_valid(path: Path) -> None:
    result = validate_payload(path.read_bytes(), PayloadFormat.JSON)
    assert result.problems == ()
    assert result.name_style is not None and path.name.split(".")[1] == result.name_style.value


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.cbor.hex")), ids=lambda p: p.name)
def test_golden_cbor_is_valid_and_matches_json(path: Path) -> None:
    data = bytes.fromhex(path.read_text())
    result = validate_payload(data, PayloadFormat.CBOR)
    assert result.problems == ()
    twin = json.loads(path.with_name(path.name.replace(".cbor.hex", ".json")).read_text())
    assert result.document == twin


def test_golden_files_cover_every_field_in_both_styles() -> None:
    """Two-way coverage: every name in the table appears in some golden file of each style."""
    from defender_agent.report.names import LONG_TO_SHORT

    long_keys: set[str] = set()
    short_keys: set[str] = set()
    for path in GOLDEN.glob("*.long.json"):
        long_keys |= all_keys(json.loads(path.read_text()))
    for path in GOLDEN.glob("*.short.json"):
        short_keys |= all_keys(json.loads(path.read_text()))
    assert set(LONG_TO_SHORT) <= long_keys
    assert set(LONG_TO_SHORT.values()) <= short_keys
    assert "cpu_usage" in long_keys and "cpu_usage" in short_keys
