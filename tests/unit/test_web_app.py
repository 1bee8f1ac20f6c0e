"""The dashboard's routes over a real server and store: data, headers, auth, CSRF, /metrics."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

from defender_agent.errors import ConfigError
from defender_agent.service.metrics_map import MetricValue
from defender_agent.service.responder import ThingCounts
from defender_agent.web.app import CSP
from defender_agent.web.metrics import METRIC_NAMES
from tests.web_infra import XSS_NAME, XSS_STRING, dashboard, profile, report, store_report

NOW = time.time()


def call(
    url: str,
    *,
    method: str = "GET",
    body: Optional[object] = None,
    headers: Optional[dict[str, str]] = None,
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str, **kw: Any) -> Any:
    status, _headers, body = call(url, **kw)
    assert status == 200, body
    return json.loads(body)


def test_fleet_lists_things_with_states_counts_and_ports(tmp_path: Path) -> None:
    now = time.time()  # states are judged against the server's clock, now
    with dashboard(tmp_path) as d:
        for i in range(5):  # every 60 s, the last one now: reporting
            store_report(d.store, "gw-1", report(i + 1, [22, 443], 100 * i), now - 240 + 60 * i)
        for i in range(3):  # every 60 s, the last 10 minutes ago: silent
            store_report(d.store, XSS_NAME, report(i + 1, [8080], 5), now - 720 + 60 * i)
        d.counters.things = {"gw-1": ThingCounts(5, {"Throttled": 2})}
        d.open_violation("gw-1")
        doc = get_json(f"{d.url}/dashboard/api/fleet")
    rows = {row["name"]: row for row in doc["things"]}
    assert doc["counts"] == {"things": 2, "reporting": 1, "late": 0, "silent": 1, "in_alarm": 1}
    assert rows["gw-1"]["state"] == "reporting"
    assert rows["gw-1"]["tcp_ports"] == [22, 443]
    assert rows["gw-1"]["rejected"] == {"Throttled": 2}
    assert rows["gw-1"]["accepted"] == 5
    assert rows["gw-1"]["violations"] == 1
    assert rows[XSS_NAME]["state"] == "silent"
    assert rows[XSS_NAME]["interval"] == pytest.approx(60.0)


def test_thing_detail_series_sets_and_last_report(tmp_path: Path) -> None:
    strings = MetricValue("tags", strings=(XSS_STRING,))
    with dashboard(tmp_path) as d:
        store_report(d.store, "gw", report(1, [22], 100), NOW - 600, "cbor")
        store_report(d.store, "gw", report(2, [22, 8080], 300), NOW - 300, "cbor", [strings])
        doc = get_json(f"{d.url}/dashboard/api/thing?name=gw&since={NOW - 3600}&until={NOW}")
        missing, _h, _b = call(f"{d.url}/dashboard/api/thing?name=nobody")
        bad, _h, _b = call(f"{d.url}/dashboard/api/thing?name=gw&since=nan")
    series = {s["metric"]: s["points"] for s in doc["series"]}
    assert [p[1] for p in series["aws:all-bytes-out"]] == [100, 300]
    sets = {s["metric"]: s["items"] for s in doc["sets"]}
    ports = {i["value"]: i for i in sets["aws:listening-tcp-ports"]}
    assert ports["8080"]["first"] == pytest.approx(NOW - 300)
    assert not ports["8080"]["at_start"]
    assert ports["22"]["at_start"] and ports["22"]["present"]
    assert sets["tags"][0]["value"] == XSS_STRING
    assert doc["last_report"]["format"] == "cbor"
    assert doc["last_report"]["document"]["header"]["report_id"] == 2
    assert (missing, bad) == (404, 400)


def test_pages_and_assets_carry_a_strict_csp_and_no_inline_script(tmp_path: Path) -> None:
    with dashboard(tmp_path) as d:
        for path in (
            "/dashboard/",
            "/dashboard/thing",
            "/dashboard/violations",
            "/dashboard/profiles",
        ):
            status, headers, body = call(d.url + path)
            assert status == 200
            assert headers["Content-Security-Policy"] == CSP
            assert "unsafe-inline" not in CSP
            assert headers["X-Content-Type-Options"] == "nosniff"
            text = body.decode()
            assert "{{csrf}}" not in text
            assert "<script>" not in text and " on" not in text.split("<body>")[1].split(">")[0]
        status, headers, _ = call(d.url + "/dashboard/static/vendor/uPlot.iife.min.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert call(d.url + "/dashboard/static/../app.py")[0] == 404
        assert call(d.url + "/dashboard/static/fleet.html")[0] == 404
        status, headers, _ = call(d.url + "/")
        assert status == 200  # redirected to the fleet page


def test_verification_state_needs_the_csrf_token(tmp_path: Path) -> None:
    with dashboard(tmp_path) as d:
        vid = d.open_violation("gw")
        page = call(d.url + "/dashboard/violations")[2].decode()
        token = page.split('name="csrf-token" content="')[1].split('"')[0]
        body = {"violationId": vid, "verificationState": "BENIGN_POSITIVE", "description": "lab"}
        url = d.url + "/dashboard/api/verification"
        assert call(url, method="POST", body=body)[0] == 403
        assert call(url, method="POST", body=body, headers={"X-CSRF-Token": "x" * 64})[0] == 403
        evil = {"X-CSRF-Token": token, "Origin": "http://evil.example"}
        assert call(url, method="POST", body=body, headers=evil)[0] == 403
        ok = call(url, method="POST", body=body, headers={"X-CSRF-Token": token})
        assert ok[0] == 200, ok[2]
        bad = {**body, "verificationState": "MAYBE"}
        assert call(url, method="POST", body=bad, headers={"X-CSRF-Token": token})[0] == 400
        active = get_json(d.url + "/dashboard/api/violations?state=BENIGN_POSITIVE")
    assert [v["violationId"] for v in active["items"]] == [vid]
    assert active["items"][0]["verificationStateDescription"] == "lab"


def test_violations_filters_and_profiles_in_words(tmp_path: Path) -> None:
    with dashboard(tmp_path) as d:
        d.registry.views.append(profile())
        d.open_violation("gw-1")
        d.open_violation("gw-2")
        one = get_json(d.url + "/dashboard/api/violations?thing=gw-2")
        none = get_json(d.url + "/dashboard/api/violations?behavior=other")
        history = get_json(d.url + "/dashboard/api/violations?view=history&days=1")
        profiles = get_json(d.url + "/dashboard/api/profiles")
    assert [v["thingName"] for v in one["items"]] == ["gw-2"]
    assert none["items"] == []
    assert {e["violationEventType"] for e in history["items"]} == {"in-alarm"}
    (p,) = profiles["profiles"]
    assert p["behaviors"][0]["words"] == "listening TCP ports must be in {22, 443}"
    assert p["in_alarm"] == ["gw-1", "gw-2"]


def test_refuses_a_public_address_without_credentials(tmp_path: Path) -> None:
    with (
        pytest.raises(ConfigError, match=r"dashboard on 0\.0\.0\.0"),
        dashboard(tmp_path, {"http_credentials_file": str(tmp_path / "keys")}, host="0.0.0.0"),
    ):
        pass


def test_token_basic_cookie_and_rate_limit(tmp_path: Path) -> None:
    token = "a-long-dashboard-token"
    settings = {
        "http_dashboard_token": token,
        "http_dashboard_user": "fleet",
        "http_dashboard_password": "pass-word-123",
    }
    with dashboard(tmp_path, settings) as d:
        fleet = d.url + "/dashboard/api/fleet"
        assert call(fleet)[0] == 401
        assert call(fleet, headers={"Authorization": f"Bearer {token}"})[0] == 200
        basic = base64.b64encode(b"fleet:pass-word-123").decode()
        assert call(fleet, headers={"Authorization": f"Basic {basic}"})[0] == 200
        status, headers, _ = call(d.url + "/metrics", headers={"Authorization": "Bearer no"})
        assert status == 401 and "Basic" in headers["WWW-Authenticate"]
        # ?token= once: a session cookie and a redirect without the token
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(f"{d.url}/dashboard/?token={token}", timeout=10) as resp:
            assert resp.status == 200 and "token=" not in resp.url
        with opener.open(fleet, timeout=10) as resp:
            assert resp.status == 200
        for _ in range(10):
            call(fleet, headers={"Authorization": "Bearer wrong"})
        # blocked now, even with the right token
        assert call(fleet, headers={"Authorization": f"Bearer {token}"})[0] == 429


def test_metrics_parse_and_move(tmp_path: Path) -> None:
    with dashboard(tmp_path) as d:
        d.registry.views.append(profile())
        store_report(d.store, "gw", report(1, [22], 1), NOW)
        d.open_violation("gw")

        def scrape() -> dict[str, float]:
            text = call(d.url + "/metrics")[2].decode()
            out = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    key = sample.name + json.dumps(sample.labels, sort_keys=True)
                    out[key] = sample.value
            return out

        before = scrape()
        d.counters.messages, d.counters.accepted, d.counters.stored = 3, 2, 2
        d.counters.rejected = {"InvalidPayload": 1}
        d.counters.detect_errors = 2
        after = scrape()
    assert before["defender_agent_reports_received_total{}"] == 0
    assert after["defender_agent_reports_received_total{}"] == 3
    assert after["defender_agent_reports_accepted_total{}"] == 2
    assert after['defender_agent_reports_rejected_total{"code": "InvalidPayload"}'] == 1
    assert before["defender_agent_detect_errors_total{}"] == 0
    assert after["defender_agent_detect_errors_total{}"] == 2
    assert after['defender_agent_things{"state": "reporting"}'] == 1
    key = 'defender_agent_violations_active{"behavior": "tcp-ports", "profile": "ports"}'
    assert after[key] == 1
    assert not any("thing=" in k or '"thing"' in k for k in after)  # no per-thing labels
    names = {k.split("{")[0] for k in after}
    for name in METRIC_NAMES:
        if "thing_" not in name:
            assert any(n.startswith(name) for n in names), name


def test_fleet_filters_sorts_and_pages_on_the_server(tmp_path: Path) -> None:
    now = time.time()  # states are judged against the server's clock, now
    with dashboard(tmp_path) as d:
        for i in range(12):
            for k in range(i + 1):  # thing i has i + 1 reports
                store_report(d.store, f"gw-{i:02d}", report(k + 1, [22], 1), now - 60 * (i - k))
        url = f"{d.url}/dashboard/api/fleet"
        page = get_json(f"{url}?sort=reports&desc=1&limit=5&offset=5")
        found = get_json(f"{url}?q=GW-1")
        silent = get_json(f"{url}?state=silent")
        bad = call(f"{url}?sort=password")[0], call(f"{url}?limit=x")[0]
        # beyond SQLite's integers: a 400 naming the range, not a 500 from the database
        huge = call(f"{url}?offset={'9' * 30}"), call(f"{url}?offset=-1")[0]
    assert page["counts"]["things"] == 12 and page["matched"] == 12
    assert huge[0][0] == 400 and b"offset: an integer 0..1000000000" in huge[0][2], huge
    assert huge[1] == 400
    assert [t["name"] for t in page["things"]] == [f"gw-{i:02d}" for i in (6, 5, 4, 3, 2)]
    assert [t["name"] for t in found["things"]] == ["gw-10", "gw-11"]
    assert silent["matched"] == 0 and silent["counts"]["things"] == 12
    assert bad == (400, 400)


def test_the_sandbox_prints_a_working_dashboard_url(tmp_path: Path) -> None:
    from defender_agent.sandbox.api import SandboxApi
    from tests.api_infra import zero_stats

    api = SandboxApi(tmp_path, str(tmp_path / "service.sqlite3"))
    api.start(zero_stats)
    try:
        text = "\n".join(api.lines())
        found = re.search(r"Dashboard (http://127\.0\.0\.1:\d+/dashboard/)", text)
        assert found, text
        status, _headers, body = call(found[1])
        assert status == 200 and b"<title>Fleet" in body
        assert get_json(found[1] + "api/fleet")["counts"]["things"] == 0
    finally:
        api.stop()
