"""The sandbox's starter security profile: what this machine listens on now, and a traffic cap.

``defender-agent sandbox`` attaches it to ``all/things`` at every start, so that a new user
sees Detect work on their own machine: open a port (``python3 -m http.server 8123``) and the
next report raises ``in-alarm``; close it and the next one clears it. Its behaviors:

* ``listening-tcp-ports`` / ``listening-udp-ports``: ``in-port-set`` of the ports listening
  when the sandbox starts (an allow-list: any other port violates);
* ``bytes-out``: at most :data:`BYTES_OUT_MAX` bytes sent over 300 s.

>>> [b["name"] for b in starter_behaviors([22, 443], [68])]
['listening-tcp-ports', 'listening-udp-ports', 'bytes-out']
>>> starter_behaviors([22], [])[0]["criteria"]
{'comparisonOperator': 'in-port-set', 'value': {'ports': [22]}}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Final

from defender_agent.detect.registry import SqlRegistry

__all__ = ["BYTES_OUT_MAX", "STARTER_PROFILE", "ensure_starter_profile", "starter_behaviors"]

log = logging.getLogger(__name__)

STARTER_PROFILE: Final = "sandbox-starter"
#: The bytes-out ceiling over 300 s (100 MiB: a busy desktop stays under it).
BYTES_OUT_MAX: Final = 100 * 1024 * 1024


def _ports(name: str, metric: str, ports: Iterable[int]) -> dict[str, Any]:
    return {
        "name": name,
        "metric": metric,
        "criteria": {
            "comparisonOperator": "in-port-set",
            "value": {"ports": sorted(set(ports))},
        },
    }


def starter_behaviors(tcp_ports: Iterable[int], udp_ports: Iterable[int]) -> list[dict[str, Any]]:
    """The starter profile's behaviors for the ports listening now."""
    return [
        _ports("listening-tcp-ports", "aws:listening-tcp-ports", tcp_ports),
        _ports("listening-udp-ports", "aws:listening-udp-ports", udp_ports),
        {
            "name": "bytes-out",
            "metric": "aws:all-bytes-out",
            "criteria": {
                "comparisonOperator": "less-than-equals",
                "value": {"count": BYTES_OUT_MAX},
                "durationSeconds": 300,
            },
        },
    ]


def ensure_starter_profile(
    registry: SqlRegistry, tcp_ports: Iterable[int], udp_ports: Iterable[int]
) -> bool:
    """Create or update the starter profile and attach it to ``all/things``.

    An unchanged profile is left as it is (its violations stay); changed allow-lists make
    a new version (its earlier violations are invalidated).

    Returns:
        Whether the profile was created or changed.
    """
    from defender_agent.detect.registry import RegistryError  # noqa: PLC0415

    behaviors = starter_behaviors(tcp_ports, udp_ports)
    now = time.time()
    changed = True
    try:
        current = registry.describe_profile(STARTER_PROFILE)
    except RegistryError:
        registry.create_profile(
            STARTER_PROFILE,
            {
                "securityProfileDescription": "defender-agent sandbox: this machine's ports at "
                "start, and a bytes-out ceiling",
                "behaviors": behaviors,
            },
            now=now,
        )
    else:
        changed = current.get("behaviors") != behaviors
        if changed:
            registry.update_profile(
                STARTER_PROFILE, {"behaviors": behaviors}, expected_version=None, now=now
            )
    target = registry.arn("all/things")
    if not any(p.name == STARTER_PROFILE and target in p.targets for p in registry.profiles()):
        registry.attach(STARTER_PROFILE, target)
    return changed
