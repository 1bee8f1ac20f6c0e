"""`defender-agent run` over a poisoned state directory: one warning, then fresh and valid."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from defender_agent.report.validate import validate_document
from tests.conftest import proc_fixture
from tests.integration.test_cli_run import run, spawn


def dry_run_until_built(state: Path, thing: str, built: int) -> tuple[int, bytes, str]:
    """A dry ``run`` over ``state`` until it has built ``built`` reports, then SIGTERM.

    Returns the exit status, stdout and stderr.
    """
    proc = spawn(
        "run", "-d", "-i", "1", "--allow-short-interval", "--splay", "0",
        "--state-dir", str(state), "--proc-root", str(proc_fixture("gateway_dualstack")),
        "-id", thing,
    )  # fmt: skip
    try:
        end = time.monotonic() + 20
        status = state / "status.json"
        while time.monotonic() < end:
            if status.exists() and json.loads(status.read_text())["counters"]["built"] >= built:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    return proc.returncode, out, err.decode()


def test_a_poisoned_report_id_does_not_make_every_report_invalid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    ids = state / "report-id.json"
    ids.write_text(json.dumps({"version": 1, "last_report_id": 2**63}))
    code, out, err = dry_run_until_built(state, "poisoned", 2)
    assert code == 0, err
    decoder = json.JSONDecoder()
    text, docs = out.decode(), []
    while text.strip():
        doc, end_at = decoder.raw_decode(text.lstrip())
        docs.append(doc)
        text = text.lstrip()[end_at:]
    assert len(docs) >= 2, out
    for doc in docs:
        assert validate_document(doc) == [], doc["header"]
    assert 1_700_000_000_000 < docs[0]["header"]["report_id"] < 2**63 - 1
    warnings = [line for line in err.splitlines() if "warning: ignoring state file" in line]
    assert len(warnings) == 1, err  # once: the file is overwritten with a valid id
    assert f"{ids}: last_report_id 9223372036854775808 is out of range" in warnings[0], err
    assert json.loads(ids.read_text())["last_report_id"] == docs[-1]["header"]["report_id"]


def test_a_failed_state_write_is_said_in_the_log_and_by_status(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "baseline.json").mkdir(parents=True)  # the baseline cannot be written over it
    code, _out, err = dry_run_until_built(state, "unsaved", 1)
    assert code == 0, err
    reason = f"cannot write state file {state / 'baseline'}.json"
    failed = [line for line in err.splitlines() if "warning: state not saved: " in line]
    assert len(failed) == 1 and reason in failed[0], err  # once, not at every cycle
    assert err.splitlines()[-1].endswith(f"stopped; state NOT saved: {failed[0].split(': ', 3)[3]}")
    shown = run("status", "--state-dir", str(state))
    assert f"state NOT saved: {reason}" in shown.stdout.decode()
