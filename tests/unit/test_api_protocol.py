"""The API's protocol table: generated from botocore's model, and current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import botocore.session
import pytest

from defender_agent.service.api.errors import ApiError
from defender_agent.service.api.protocol import ROUTES, parse_input

ROOT = Path(__file__).resolve().parents[2]


def test_the_checked_in_model_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_iot_api_model.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_routes_are_botocores() -> None:
    model = botocore.session.get_session().get_service_model("iot")
    for name, route in ROUTES.items():
        http = model.operation_model(name).http
        assert route.method == http["method"]
        assert route.path == http["requestUri"].split("?")[0]


@pytest.mark.parametrize(
    ("operation", "query", "body", "message"),
    [
        ("CreateSecurityProfile", [], b"{not json", "not valid JSON"),
        ("CreateSecurityProfile", [], b"[1]", "must be a JSON object"),
        ("CreateSecurityProfile", [], b'{"alertTargets": {"EMAIL": {}}}', "alertTargets.EMAIL"),
        ("UpdateSecurityProfile", [("expectedVersion", "x")], b"", "expectedVersion: 'x'"),
        ("ListSecurityProfiles", [("maxResults", "0")], b"", "maxResults: 0 is below"),
        ("ListActiveViolations", [("behaviorCriteriaType", "FUZZY")], b"", "behaviorCriteriaType"),
        ("ListViolationEvents", [("startTime", "yesterday")], b"", "startTime: 'yesterday'"),
        ("ListViolationEvents", [], b"", "startTime: is required"),
        ("CreateCustomMetric", [], b'{"metricType": "colour"}', "metricType: 'colour'"),
    ],
)
def test_bad_input_names_the_member(
    operation: str, query: list[tuple[str, str]], body: bytes, message: str
) -> None:
    params = {"securityProfileName": "p", "metricName": "m"}
    with pytest.raises(ApiError) as exc:
        parse_input(operation, params, query, {}, body)
    assert exc.value.code == "InvalidRequestException"
    assert message in exc.value.message


def test_query_values_are_typed() -> None:
    got = parse_input(
        "ListViolationEvents",
        {},
        [
            ("startTime", "2026-12-07T00:00:00Z"),
            ("endTime", "1796601600.5"),
            ("listSuppressedAlerts", "true"),
        ],
        {},
        b"",
    )
    assert got == {"startTime": 1796601600.0, "endTime": 1796601600.5, "listSuppressedAlerts": True}
