"""The Device Defender rules for names and values, in one place.

Every module that checks a thing name, a metric name or a metric value takes the rule
from here: the agent's configuration, the custom metrics' checks before sending, the
report validator and the service's responder and storage. The rules and their sources
are described in ``docs/protocol.md``.
"""

from __future__ import annotations

__all__ = ["validate_thing_name"]


def validate_thing_name(name: str) -> str:
    """Check a thing name as Device Defender does (docs/protocol.md §1.2); return it.

    1 to 128 bytes of UTF-8, no control characters, and none of ``+ # /``,
    which would change the meaning of the MQTT topic.

    >>> validate_thing_name("gateway-01")
    'gateway-01'
    >>> validate_thing_name("a/b")
    Traceback (most recent call last):
    ...
    ValueError: must not contain '/', '+' or '#'
    """
    size = len(name.encode("utf-8"))
    if not 1 <= size <= 128:
        raise ValueError(f"must be 1 to 128 bytes of UTF-8, got {size}")
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in name):
        raise ValueError("must not contain control characters")
    if any(ch in name for ch in "/+#"):
        raise ValueError("must not contain '/', '+' or '#'")
    return name
