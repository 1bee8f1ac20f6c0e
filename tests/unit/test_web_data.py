"""The dashboard's pure shaping: states, set appearances, ports, buckets; hostile input."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from defender_agent.errors import ConfigError
from defender_agent.service.storage import open_store
from defender_agent.web.auth import Authenticator, AuthSettings, FailureLimiter
from defender_agent.web.data import (
    DEFAULT_INTERVAL_S,
    appearances,
    bucket_width,
    ports_of,
    state_counts,
    thing_state,
)


@pytest.mark.parametrize(
    ("age_intervals", "state"),
    [(0.0, "reporting"), (2.0, "reporting"), (2.01, "late"), (5.0, "late"), (5.01, "silent")],
)
def test_state_is_relative_to_the_things_own_interval(age_intervals: float, state: str) -> None:
    for interval in (10.0, 300.0, 3600.0):
        last = 100 * interval
        got, mean = thing_state(last + age_intervals * interval, 0.0, last, 101)
        assert got == state
        assert mean == pytest.approx(interval)


def test_state_of_odd_rows() -> None:
    assert thing_state(0.0, 5.0, 5.0, 3) == ("reporting", DEFAULT_INTERVAL_S)  # same time
    assert thing_state(10_000.0, 5.0, 1.0, 3)[0] == "silent"  # last before first: default


def test_appearances_from_distinct_values() -> None:
    got = appearances(
        [
            (["10.0.0.1/32"], 0.0, 50.0),
            (["10.0.0.1/32", "203.0.113.9/32"], 20.0, 30.0),
            ([], 60.0, 60.0),  # an empty set now
        ]
    )
    by_value = {a.value: a for a in got}
    assert [a.value for a in got] == ["203.0.113.9/32", "10.0.0.1/32"]
    assert by_value["203.0.113.9/32"].first == 20.0
    assert not by_value["203.0.113.9/32"].at_start
    assert by_value["10.0.0.1/32"].at_start
    assert not any(a.present for a in got)  # the newest value is the empty set


@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 70000), max_size=5), st.floats(0, 1e6), st.floats(0, 1e6)
        ),
        max_size=8,
    )
)
def test_appearances_never_fail_and_keep_first_before_last(
    groups: list[tuple[list[int], float, float]],
) -> None:
    ordered = [(m, min(a, b), max(a, b)) for m, a, b in groups]
    for a in appearances(ordered):
        assert a.first <= a.last


@pytest.mark.parametrize(
    "text",
    ["", "[", "{}", '"x"', "[1, 2]", '[{"port": true}]', '[{"port": 1.5}]', '[{"no": 1}]', "null"],
)
def test_ports_of_hostile_documents_is_empty(text: str) -> None:
    assert ports_of(text) == []


def test_bucket_width_caps_points() -> None:
    for seconds in (1, 59, 3600, 86_400, 30 * 86_400, 366 * 86_400):
        width = bucket_width(0, seconds)
        assert width >= 1 and seconds / width <= 600


def test_auth_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="go together"):
        AuthSettings(user="fleet")
    with pytest.raises(ConfigError, match="too short"):
        AuthSettings(token="short")
    assert not AuthSettings().configured


def test_basic_credentials_edge_cases() -> None:
    auth = Authenticator(AuthSettings(user="fleet", password="pass-word-1"))

    def basic(text: bytes) -> str:
        return base64.b64encode(text).decode()

    assert auth.basic_ok(basic(b"fleet:pass-word-1"))
    assert not auth.basic_ok(basic(b"fleet:pass-word-2"))
    assert not auth.basic_ok(basic(b"other:pass-word-1"))
    assert not auth.basic_ok(basic(b"fleetpass-word-1"))
    assert not auth.basic_ok("!!not base64!!")
    assert not auth.basic_ok(basic(b"\xff\xfe:x"))
    assert not auth.token_ok("anything")  # no token configured


def test_failure_limiter_is_per_client_and_bounded() -> None:
    now = [0.0]
    limiter = FailureLimiter(max_failures=3, window=10.0, clock=lambda: now[0])
    for _ in range(3):
        limiter.fail("a")
    assert limiter.blocked("a") and not limiter.blocked("b")
    now[0] = 10.5
    assert not limiter.blocked("a")
    for i in range(20_000):
        limiter.fail(f"c{i}")
    assert len(limiter._clients) <= 10_000


@given(
    st.lists(
        st.tuples(st.floats(0, 1e6), st.floats(0, 1e6), st.integers(1, 10_000)),
        min_size=1,
        max_size=30,
    ),
    st.floats(0, 2e6),
)
def test_the_database_judges_states_as_thing_state_does(
    rows: list[tuple[float, float, int]], now: float
) -> None:
    store = open_store(":memory:")
    try:
        for i, (first, last, reports) in enumerate(rows):
            store.query(
                "INSERT INTO things (name, first_seen, last_seen, reports) VALUES (?, ?, ?, ?)",
                (f"t{i}", first, last, reports),
            )
        expected = {"silent": 0, "late": 0, "reporting": 0}
        for first, last, reports in rows:
            expected[thing_state(now, first, last, reports)[0]] += 1
        assert state_counts(store, now) == expected
    finally:
        store.close()
