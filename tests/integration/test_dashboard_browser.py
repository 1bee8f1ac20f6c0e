"""The dashboard in a real browser: Playwright driving Debian's chromium (headless).

The service side is real (the HTTP server with the dashboard installed, a SQLite store fed
with reports the way the service's writer stores them, Detect's store with violations).
Screenshots of every page go to ``test-output/screenshots/`` for a reviewer.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from defender_agent.service.metrics_map import MetricValue
from defender_agent.service.responder import ThingCounts
from tests.integration.test_detect_e2e import (  # noqa: F401 - hooks, service: fixtures
    PORTS,
    hooks,
    ports_report,
    service,
)
from tests.mqtt_infra.broker import connect_device
from tests.web_infra import (
    XSS_NAME,
    XSS_STRING,
    Dashboard,
    dashboard,
    profile,
    report,
    store_report,
)

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


class Watched:
    """A page that records console errors, page errors and dialogs (an XSS would open one)."""

    def __init__(self, browser: Any, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[Dashboard]:
    now = time.time()
    with dashboard(tmp_path) as d:
        d.registry.views.append(profile())
        for i in range(30):  # every 60 s up to now
            at = now - 1800 + 60 * i
            ports = [22, 443] if i < 20 else [22, 443, 8080]
            store_report(d.store, "gw-1", report(i + 1, ports, 1000 + 500 * (i % 7)), at)
            store_report(d.store, "gw-2", report(i + 1, [22], 200 + 10 * i), at, "cbor")
        tags = [MetricValue("tags", strings=(XSS_STRING, "ok"))]
        for i in range(3):  # stopped reporting 20 minutes ago: silent
            store_report(d.store, XSS_NAME, report(i + 1, [22], 5), now - 1320 + 60 * i, extra=tags)
        d.counters.things = {
            "gw-1": ThingCounts(30, {}),
            "gw-2": ThingCounts(30, {"Throttled": 3, "InvalidPayload": 1}),
        }
        yield d


def test_fleet_page_counts_live_update_and_phone_width(browser: Any, seeded: Dashboard) -> None:
    w = Watched(browser)
    try:
        w.page.goto(seeded.url + "/dashboard/")
        w.page.wait_for_selector("#fleet-table tbody tr")
        assert w.page.inner_text("#count-things .n") == "3"
        assert w.page.inner_text("#count-reporting .n") == "2"
        assert w.page.inner_text("#count-silent .n") == "1"
        row = w.page.locator('tr[data-thing="gw-2"]')
        assert "InvalidPayload 1, Throttled 3" in row.inner_text()
        assert "TCP 22, 443, 8080" in w.page.locator('tr[data-thing="gw-1"]').inner_text()
        w.shot("fleet")
        # a new thing reports: it appears without a reload (the page polls)
        w.page.evaluate("window.__sameDocument = true")
        store_report(seeded.store, "gw-new", report(1, [22], 1), time.time())
        w.page.wait_for_selector('tr[data-thing="gw-new"]', timeout=15_000)
        assert w.page.evaluate("window.__sameDocument") is True
        assert w.page.inner_text("#count-things .n") == "4"
        # an alarm shows in the counts, filter and sort work
        seeded.open_violation("gw-1")
        w.page.wait_for_selector("#count-in_alarm .n:text-is('1')", timeout=15_000)
        rows = "#fleet-table tbody tr"
        w.page.select_option("#state-filter", "alarm")
        w.page.wait_for_function(
            "() => document.querySelectorAll('#fleet-table tbody tr').length === 1"
        )
        assert w.page.locator(rows).first.get_attribute("data-thing") == "gw-1"
        w.page.select_option("#state-filter", "")
        w.page.fill("#filter", "GW-2")  # case-insensitive, on the server
        w.page.wait_for_function(
            "() => document.querySelectorAll('#fleet-table tbody tr').length === 1"
        )
        assert w.page.locator(rows).first.get_attribute("data-thing") == "gw-2"
        w.page.fill("#filter", "")
        w.page.wait_for_function(
            "() => document.querySelectorAll('#fleet-table tbody tr').length === 4"
        )
        w.page.click('th[data-key="reports"]')
        w.page.wait_for_selector('th[data-key="reports"].sorted-asc')
        assert w.page.locator(rows).first.get_attribute("data-thing") == "gw-new"  # 1 report
        w.page.click('th[data-key="reports"]')  # descending: the most reports first
        w.page.wait_for_selector('th[data-key="reports"].sorted-desc')
        assert w.page.locator(rows).first.get_attribute("data-thing") in ("gw-1", "gw-2")
        w.page.set_viewport_size({"width": 390, "height": 844})
        w.shot("fleet-phone")
        width = w.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"the page scrolls sideways on a phone: {width}px"
        assert w.problems == []
    finally:
        w.close()


def test_thing_page_charts_sets_and_last_report(browser: Any, seeded: Dashboard) -> None:
    w = Watched(browser)
    try:
        w.page.goto(seeded.url + "/dashboard/thing?name=gw-1")
        w.page.wait_for_selector('.chart[data-metric="aws:all-bytes-out"] canvas')
        drawn = w.page.evaluate(
            """() => {
              const c = document.querySelector('.chart[data-metric="aws:all-bytes-out"] canvas');
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let blue = 0;
              for (let i = 0; i < d.length; i += 4)
                if (d[i] < 60 && d[i + 1] > 80 && d[i + 1] < 130 && d[i + 2] > 190 && d[i + 3] > 200)
                  blue++;
              return blue;
            }"""
        )
        assert drawn > 100, f"the bytes-out chart has {drawn} line pixels"
        ports = w.page.locator('.chart[data-metric="aws:listening-tcp-ports"]')
        text = ports.inner_text()
        assert "8080" in text and "22" in text
        new = ports.locator("td.new")  # 8080 appeared inside the range, 22 was there at its start
        assert new.count() == 1
        raw = w.page.inner_text("#raw")
        assert '"report_id": 30' in raw
        w.shot("thing")
        w.page.set_viewport_size({"width": 390, "height": 844})
        w.page.reload()
        w.page.wait_for_selector('.chart[data-metric="aws:all-bytes-out"] canvas')
        w.shot("thing-phone")
        width = w.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"the thing page scrolls sideways on a phone: {width}px"
        w.page.set_viewport_size({"width": 1280, "height": 900})
        # a past range with no data: clear empty states
        w.page.select_option("#range", "custom")
        w.page.fill("#from", "2001-01-01T00:00")  # (older Playwright: no seconds)
        w.page.fill("#to", "2001-01-02T00:00")
        w.page.click("#apply")
        w.page.wait_for_selector("#charts .empty")
        w.shot("thing-empty-range")
        w.page.goto(seeded.url + "/dashboard/thing?name=gw-2")  # a CBOR reporter
        w.page.wait_for_selector("#raw-meta:has-text('CBOR (decoded)')")
        assert w.problems == []
    finally:
        w.close()


def test_violations_page_shows_a_new_violation_and_sets_its_state(
    browser: Any, seeded: Dashboard
) -> None:
    w = Watched(browser)
    try:
        w.page.goto(seeded.url + "/dashboard/violations")
        w.page.wait_for_selector("#empty")
        w.shot("violations-empty")
        vid = seeded.open_violation("gw-1")  # port 8080 opened on gw-1: Detect's violation
        w.page.click("button[type=submit]")
        row = w.page.wait_for_selector(f'tr[data-violation="{vid}"]')
        assert "gw-1" in row.inner_text() and "tcp-ports" in row.inner_text()
        w.page.select_option(f'tr[data-violation="{vid}"] select', "TRUE_POSITIVE")
        w.page.fill(f'tr[data-violation="{vid}"] input', "port 8080 is not ours")
        w.page.click(f'tr[data-violation="{vid}"] button')
        w.page.wait_for_selector(f'tr[data-violation="{vid}"] .status:has-text("saved")')
        w.page.select_option("#state", "TRUE_POSITIVE")
        w.page.click("button[type=submit]")
        w.page.wait_for_selector(f'tr[data-violation="{vid}"]')
        w.shot("violations")
        w.page.set_viewport_size({"width": 390, "height": 844})
        w.shot("violations-phone")
        assert w.page.evaluate("document.documentElement.scrollWidth") <= 391
        w.page.set_viewport_size({"width": 1280, "height": 900})
        w.page.select_option("#view", "history")
        w.page.click("button[type=submit]")
        w.page.wait_for_selector("#violations-table td:has-text('in-alarm')")
        w.shot("violations-history")
        w.page.goto(seeded.url + "/dashboard/profiles")
        w.page.wait_for_selector('[data-profile="ports"]')
        card = w.page.inner_text('[data-profile="ports"]')
        assert "listening TCP ports must be in {22, 443}" in card
        assert "In alarm: gw-1" in card and "all things" in card
        w.shot("profiles")
        assert w.problems == []
    finally:
        w.close()


def test_hostile_names_and_strings_render_as_text(browser: Any, seeded: Dashboard) -> None:
    w = Watched(browser)
    try:
        seeded.open_violation(XSS_NAME, profile=XSS_STRING)
        w.page.goto(seeded.url + "/dashboard/")
        w.page.wait_for_selector("#fleet-table tbody tr")
        assert XSS_NAME in w.page.inner_text("#fleet-table")
        assert w.page.locator("#fleet img").count() == 0
        w.page.click(f'tr[data-thing="{XSS_NAME}"] a')
        w.page.wait_for_selector('.chart[data-metric="tags"]')
        assert w.page.inner_text("#title") == XSS_NAME
        assert XSS_STRING in w.page.inner_text('.chart[data-metric="tags"]')
        w.shot("thing-hostile")
        w.page.goto(seeded.url + "/dashboard/violations")
        w.page.wait_for_selector("#violations-table")
        assert XSS_STRING in w.page.inner_text("#violations-table")
        assert w.page.locator("main script, main img").count() == 0
        assert w.page.evaluate("window.__pwned") is None
        assert w.problems == []
    finally:
        w.close()


def test_empty_service_pages_say_so(browser: Any, tmp_path: Path) -> None:
    with dashboard(tmp_path) as d:
        w = Watched(browser)
        try:
            w.page.goto(d.url + "/dashboard/")
            w.page.wait_for_selector("#empty")
            assert "No thing has reported yet" in w.page.inner_text("#empty")
            w.shot("fleet-empty")
            w.page.goto(d.url + "/dashboard/profiles")
            w.page.wait_for_selector("#empty")
            w.shot("profiles-empty")
            assert w.problems == []
        finally:
            w.close()


def _scrape(url: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_service_process_fed_through_mosquitto(
    browser: Any, request: pytest.FixtureRequest, mosquitto: Any
) -> None:
    """``defender-agent service --http`` with Detect, reports from a device on mosquitto: the
    pages and /metrics follow what arrives, and Detect's violation shows on the page."""
    client, _proc = request.getfixturevalue("service")  # test_detect_e2e's: Detect on
    url = client.meta.endpoint_url
    client.create_security_profile(securityProfileName="e2e", behaviors=[PORTS])
    client.attach_security_profile(
        securityProfileName="e2e",
        securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things",
    )
    replies: queue.Queue[str] = queue.Queue()
    device = connect_device(mosquitto, "gw-1", lambda t, _p: replies.put(t))
    topic = "$aws/things/gw-1/defender/metrics/json"

    def send(payload: bytes, outcome: str = "/accepted") -> None:
        device.publish(topic, payload).result(10)
        assert replies.get(timeout=15).endswith(outcome)

    w = Watched(browser)
    try:
        before = _scrape(url)
        w.page.goto(url + "/dashboard/")
        w.page.wait_for_selector("#empty")
        send(ports_report(1, 22, 443))
        row = w.page.wait_for_selector('tr[data-thing="gw-1"]', timeout=15_000)  # no reload
        assert "TCP 22, 443" in row.inner_text()
        send(b"{not json", "/rejected")
        w.page.wait_for_selector('tr[data-thing="gw-1"] td:has-text("InvalidPayload 1")')
        w.shot("e2e-fleet")
        after = _scrape(url)
        assert (
            after["defender_agent_reports_accepted_total"]
            == before["defender_agent_reports_accepted_total"] + 1
        )
        assert after["defender_agent_reports_rejected_total,code=InvalidPayload"] == 1
        assert after["defender_agent_reports_received_total"] >= 2
        assert after["defender_agent_reports_stored_total"] >= 1

        w.page.goto(url + "/dashboard/violations")
        w.page.wait_for_selector("#empty")
        send(ports_report(2, 22, 8123))  # a port outside the profile's set opens
        deadline = time.monotonic() + 15
        while w.page.locator('#violations-table tr:has-text("gw-1")').count() == 0:
            assert time.monotonic() < deadline, "no violation on the page"
            w.page.click("button[type=submit]")
            time.sleep(0.5)
        assert "8123" in w.page.inner_text("#violations-table")
        w.shot("e2e-violations")
        final = _scrape(url)
        assert final["defender_agent_violations_active,behavior=ports,profile=e2e"] == 1
        w.page.goto(url + "/dashboard/thing?name=gw-1")
        w.page.wait_for_selector('.chart[data-metric="aws:listening-tcp-ports"] td.new')
        assert "8123" in w.page.inner_text('.chart[data-metric="aws:listening-tcp-ports"]')
        w.shot("e2e-thing")
        assert w.problems == []
    finally:
        w.close()
        device.disconnect()
