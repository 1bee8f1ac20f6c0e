"""Alerts' delivery to webhooks (retries, a bounded queue) and the sandbox's starter profile."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from defender_agent.detect.alerts import Alerts, AlertSettings
from defender_agent.detect.registry import open_registry
from defender_agent.detect.starter import STARTER_PROFILE, ensure_starter_profile
from defender_agent.detect.store import EventRow
from tests.integration.test_detect_e2e import Hooks, hooks  # noqa: F401 - the fixture

EVENT = EventRow("v-1", "gw-1", "p", {"name": "ports"}, "STATIC", False, "in-alarm", 1.5, None)


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_mqtt_and_webhook_get_the_sns_fields(hooks: Hooks) -> None:  # noqa: F811
    published: list[tuple[str, bytes]] = []
    alerts = Alerts(
        AlertSettings(topic="t/alerts", webhooks=(f"http://127.0.0.1:{hooks.port}/hook",)),
        lambda topic, payload: published.append((topic, payload)),
    )
    alerts.start()
    try:
        alerts.submit(EVENT)
        alerts.submit(EVENT)
        alerts.submit(
            EventRow("v-2", "gw-1", "p", {"name": "x"}, "STATIC", True, "in-alarm", 2.0)
        )  # suppressed: nothing
        wait_for(lambda: alerts.counters()["delivered"] == 4)
        got = hooks.received.get(timeout=5)
        assert got == {
            "violationEventTime": 1500,
            "thingName": "gw-1",
            "behavior": {"name": "ports"},
            "violationEventType": "in-alarm",
            "violationId": "v-1",
            "securityProfileName": "p",
        }
        assert [t for t, _ in published] == ["t/alerts", "t/alerts"]
        assert alerts.counters()["submitted"] == 2
    finally:
        alerts.stop()


def test_a_dead_webhook_fills_a_bounded_queue_and_never_blocks(hooks: Hooks) -> None:  # noqa: F811
    alerts = Alerts(
        AlertSettings(
            topic="",
            webhooks=(f"http://127.0.0.1:{hooks.port}/dead",),
            timeout_s=30,
            retries=0,
            queue_max=3,
        )
    )
    alerts.start()
    try:
        began = time.monotonic()
        for _ in range(10):
            alerts.submit(EVENT)
        assert time.monotonic() - began < 0.5  # handing over never waits
        counters = alerts.counters()
        assert (counters["submitted"], counters["dropped"]) == (10, 7)
        wait_for(lambda: hooks.dead_calls == 3)
    finally:
        alerts.stop(timeout=0.5)


def test_failed_posts_are_retried_with_backoff_then_given_up(
    hooks: Hooks,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = f"http://127.0.0.1:{hooks.port}/missing"  # 404/405 from the receiver
    alerts = Alerts(AlertSettings(topic="", webhooks=(refused,), timeout_s=2, retries=1))
    alerts.start()
    try:
        began = time.monotonic()
        alerts.submit(EVENT)
        wait_for(lambda: alerts.counters()["failed"] == 1)
        assert time.monotonic() - began >= 1.0  # one retry, after 1 s
        assert any("failed after 2 attempt(s): 'HTTP 4" in r.getMessage() for r in caplog.records)
        # the URL's path may hold a token: logs name the scheme, host and port only
        assert not any("/missing" in r.getMessage() for r in caplog.records)
    finally:
        alerts.stop()


def test_the_starter_profile_is_made_once_and_follows_the_ports(tmp_path: Path) -> None:
    registry = open_registry(str(tmp_path / "s.sqlite3"), region="us-east-1", account="1" * 12)
    try:
        assert ensure_starter_profile(registry, [22, 443], [68])
        generation = registry.generation()
        assert not ensure_starter_profile(registry, [443, 22], [68])  # the same: untouched
        assert registry.generation() == generation
        assert ensure_starter_profile(registry, [22], [])
        (profile,) = registry.profiles()
        assert profile.name == STARTER_PROFILE and profile.version == 2
        assert profile.targets == (registry.arn("all/things"),)
        assert profile.behaviors[0]["criteria"]["value"] == {"ports": [22]}
    finally:
        registry.close()
