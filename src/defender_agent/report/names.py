"""The single table of Device Defender report field names, long and short.

Every standard key of the metrics report has a long and a short spelling
(protocol.md §2.2-§2.4). The domain model only knows the long names; the
short ones exist here and are applied when a report is turned into a document.
Custom metric names and the custom value keys (``number``, ``number_list``,
``string_list``, ``ip_list``) have no short forms and are never renamed.

Each long name has exactly one short name and vice versa, so one flat table
serves both directions:

>>> LONG_TO_SHORT["listening_udp_ports"]
'up'
>>> SHORT_TO_LONG["rad"]
'remote_addr'
"""

from __future__ import annotations

from enum import Enum
from typing import Final

__all__ = ["CUSTOM_VALUE_KEYS", "LONG_TO_SHORT", "SHORT_TO_LONG", "NameStyle"]


class NameStyle(str, Enum):
    """Which spelling of the standard keys a document uses."""

    LONG = "long"
    SHORT = "short"


LONG_TO_SHORT: Final[dict[str, str]] = {
    # top level
    "header": "hed",
    "metrics": "met",
    "custom_metrics": "cmet",
    # header
    "report_id": "rid",
    "version": "v",
    # metrics groups
    "listening_tcp_ports": "tp",
    "listening_udp_ports": "up",
    "network_stats": "ns",
    "tcp_connections": "tc",
    # ports lists
    "ports": "pts",
    "port": "pt",
    "interface": "if",
    "total": "t",
    # connections
    "established_connections": "ec",
    "connections": "cs",
    "remote_addr": "rad",
    "local_port": "lp",
    "local_interface": "li",
    # network stats
    "bytes_in": "bi",
    "bytes_out": "bo",
    "packets_in": "pi",
    "packets_out": "po",
}

SHORT_TO_LONG: Final[dict[str, str]] = {short: long for long, short in LONG_TO_SHORT.items()}

CUSTOM_VALUE_KEYS: Final[frozenset[str]] = frozenset(
    {"number", "number_list", "string_list", "ip_list"}
)

assert len(SHORT_TO_LONG) == len(LONG_TO_SHORT), "short names must be unique"
