"""A test plugin for defender-agent: one metric object per shape a plugin may take."""

from __future__ import annotations

__version__ = "1.0.0"


class _Battery:
    """A plain object with name, type and collect()."""

    name = "battery_level"
    type = "number"

    def collect(self) -> float:
        return 82.5


battery = _Battery()


def wifi_networks() -> list[str]:
    """A function with attributes: callable itself, named after its entry point."""
    return ["home-5G", "office_net", "home-5G"]


wifi_networks.type = "string-list"  # type: ignore[attr-defined]


class PeerAddresses:
    """A class, instantiated once without arguments."""

    name = "peer_addresses"
    type = "ip-address-list"

    def __init__(self) -> None:
        self.calls = 0

    def collect(self) -> list[str]:
        self.calls += 1
        return ["192.0.2.1", "2001:db8::1"]


class _Broken:
    name = "broken_metric"
    type = "number"

    def collect(self) -> float:
        raise RuntimeError("sensor offline")


broken = _Broken()


class _BadValue:
    name = "bad_value"
    type = "string-list"

    def collect(self) -> list[str]:
        return ["has space"]


bad_value = _BadValue()

__all__: list[str] = ["PeerAddresses", "bad_value", "battery", "broken", "wifi_networks"]
