"""Saved state is checked, not trusted: out-of-range values are discarded with one warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from defender_agent.report.validate import validate_document
from defender_agent.state import MAX_SAVED_REPORT_ID, ReportIdSequence, StateDir


def _ids_file(tmp_path: Path, value: object) -> Path:
    path = tmp_path / "report-id.json"
    path.write_text(json.dumps({"version": 1, "last_report_id": value}))
    return path


@pytest.mark.parametrize("value", [2**63, 2**63 - 1, MAX_SAVED_REPORT_ID + 1, 0, -5, "17", 1.5])
def test_a_poisoned_last_report_id_starts_a_new_sequence_from_the_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, value: object
) -> None:
    path = _ids_file(tmp_path, value)
    caplog.set_level(logging.WARNING, "defender_agent.state")
    seq = ReportIdSequence(StateDir(tmp_path), lambda: 1_700_000_000.0)
    ids = [seq.next(), seq.next(), ReportIdSequence(StateDir(tmp_path), lambda: 1.0).next()]
    assert ids == [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # the file is overwritten: one warning, not one per id
    assert warnings[0].startswith(f"ignoring state file {path}: last_report_id {value!r} ")
    assert json.loads(path.read_text())["last_report_id"] == ids[-1]
    # the id the validator sees is valid again (2**63 made every later report invalid)
    doc = {"header": {"report_id": ids[-1], "version": "1.0"}, "metrics": {}}
    assert validate_document(doc) == []


def test_the_largest_trusted_id_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _ids_file(tmp_path, MAX_SAVED_REPORT_ID - 1)
    seq = ReportIdSequence(StateDir(tmp_path), lambda: 1_700_000_000.0)
    assert seq.next() == MAX_SAVED_REPORT_ID
    assert "ignoring" not in caplog.text
