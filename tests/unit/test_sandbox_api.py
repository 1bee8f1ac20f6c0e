"""The sandbox's Detect API: a key pair kept in the state directory, and the printed lines
work as printed (boto3 with those keys, against that URL)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import boto3  # type: ignore[import-untyped]

from defender_agent.sandbox.api import PROFILE, REGION, SandboxApi, ensure_key_pair
from tests.api_infra import zero_stats


def test_the_key_pair_is_made_once_and_private(tmp_path: Path) -> None:
    first = ensure_key_pair(tmp_path)
    assert stat.S_IMODE(first[2].stat().st_mode) == 0o600
    assert ensure_key_pair(tmp_path) == first


def test_the_printed_lines_work(tmp_path: Path) -> None:
    api = SandboxApi(tmp_path, str(tmp_path / "service.sqlite3"))
    api.start(zero_stats)
    try:
        lines = api.lines()
        text = "\n".join(lines)
        key_id = re.search(r"aws_access_key_id = (\S+)", text)
        secret = re.search(r"aws_secret_access_key = (\S+)", text)
        url = re.search(r"--endpoint-url (\S+)", text)
        assert key_id and secret and url
        assert f"[{PROFILE}]" in text and f"--region {REGION}" in text
        client = boto3.client(
            "iot",
            endpoint_url=url[1],
            region_name=REGION,
            aws_access_key_id=key_id[1],
            aws_secret_access_key=secret[1],
        )
        assert client.list_security_profiles()["securityProfileIdentifiers"] == []
        assert client.list_active_violations()["activeViolations"] == []
    finally:
        api.stop()
    api.stop()  # idempotent
