"""Counter deltas: never negative, exact when counters rise, resets and 32-bit wraps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from defender_agent.delta import WRAP_WINDOW, counter_delta, network_delta
from defender_agent.model import NetworkStats
from defender_agent.readers.network_stats import InterfaceCounters

U64 = st.integers(min_value=0, max_value=2**64 - 1)
WRAP = 2**32


@given(U64, U64)
def test_never_negative(previous: int, current: int) -> None:
    assert counter_delta(previous, current) >= 0


@given(U64, st.integers(min_value=0, max_value=2**40))
def test_exact_when_rising(previous: int, step: int) -> None:
    assert counter_delta(previous, previous + step) == step


@given(
    st.integers(min_value=WRAP - WRAP_WINDOW, max_value=WRAP - 1),
    st.integers(min_value=0, max_value=WRAP_WINDOW - 1),
)
def test_32_bit_wrap_counts_across_the_top(previous: int, current: int) -> None:
    assert counter_delta(previous, current) == WRAP - previous + current


@given(st.integers(min_value=1, max_value=WRAP - WRAP_WINDOW - 1), st.integers(min_value=0))
def test_reset_counts_from_zero(previous: int, current: int) -> None:
    current = current % previous  # a decrease that is not a wrap
    assert counter_delta(previous, current) == current


@given(st.integers(min_value=WRAP, max_value=2**64 - 1), st.integers(min_value=0))
def test_64_bit_counter_decrease_is_a_reset(previous: int, current: int) -> None:
    current = current % previous
    assert counter_delta(previous, current) == current


def test_examples() -> None:
    assert counter_delta(0, 0) == 0
    assert counter_delta(WRAP - 1, 0) == 1
    assert counter_delta(WRAP - 1, WRAP_WINDOW) == WRAP_WINDOW  # too far past zero: a reset
    assert counter_delta(12345, 0) == 0


counters = st.builds(InterfaceCounters, U64, U64, U64, U64)
names = st.sampled_from(["eth0", "wlan0", "ppp0", "docker0", "veth1"])


@given(st.dictionaries(names, counters), st.dictionaries(names, counters))
def test_network_delta_properties(
    previous: dict[str, InterfaceCounters], current: dict[str, InterfaceCounters]
) -> None:
    stats = network_delta(previous, current)
    counts = (stats.bytes_in, stats.bytes_out, stats.packets_in, stats.packets_out)
    assert all(count is not None and count >= 0 for count in counts)
    # interfaces that appeared contribute nothing; vanished ones are ignored
    shared = {n: current[n] for n in current if n in previous}
    assert network_delta(previous, shared) == stats
    assert network_delta({}, current) == NetworkStats(0, 0, 0, 0)


def test_network_delta_per_interface_reset_does_not_cancel_others() -> None:
    previous = {
        "eth0": InterfaceCounters(1000, 10, 2000, 20),
        "wlan0": InterfaceCounters(5_000_000, 5000, 6_000_000, 6000),
    }
    current = {
        "eth0": InterfaceCounters(1500, 15, 2600, 26),
        "wlan0": InterfaceCounters(100, 1, 200, 2),
    }  # wlan0 driver reloaded
    assert network_delta(previous, current) == NetworkStats(
        bytes_in=600, bytes_out=800, packets_in=6, packets_out=8
    )


def test_network_delta_wrap_on_one_interface() -> None:
    previous = {"eth0": InterfaceCounters(WRAP - 100, 5, 10, 1)}
    current = {"eth0": InterfaceCounters(50, 6, 20, 2)}
    assert network_delta(previous, current) == NetworkStats(
        bytes_in=150, bytes_out=10, packets_in=1, packets_out=1
    )
