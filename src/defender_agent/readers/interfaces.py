"""Which interface a local address belongs to, read from /proc.

IPv6 addresses come with their interface in ``net/if_inet6``::

    fd000000000000000000000000000002 04 40 00 82     eth0

IPv4 has no such file. The local addresses are the ``/32 host LOCAL`` leaves
of ``net/fib_trie``, and each is given the interface of the most specific
non-default route in ``net/route`` that contains it (the route the kernel
adds for the address's own subnet). Addresses in 127.0.0.0/8 and ``::1`` are
always ``lo``.

Binds to the wildcard address (``0.0.0.0`` or ``::``) belong to every
interface; they get the configured wildcard label, which by default is
``None``: the report then leaves ``interface`` out rather than inventing a
name or writing ``null`` or ``"0.0.0.0"``.
"""

from __future__ import annotations

import socket
import struct
from typing import Optional

from defender_agent.logs import get_logger
from defender_agent.procfs import ProcFS
from defender_agent.readers._inet import is_loopback

__all__ = [
    "InterfaceMap",
    "parse_fib_trie_local",
    "parse_if_inet6",
    "parse_route",
    "read_interface_map",
]

log = get_logger(__name__)

_V4_ANY = bytes(4)
_V6_ANY = bytes(16)


def parse_if_inet6(text: str) -> dict[bytes, str]:
    r"""Map packed IPv6 addresses to interface names from ``net/if_inet6``.

    >>> parse_if_inet6("fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n")
    {b'\xfe\x80\x00\x00\x00\x00\x00\x00\x00\xfc\x00\xff\xfe\x00\x00\x01': 'eth0'}
    """
    result: dict[bytes, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 6 or len(parts[0]) != 32:
            continue
        try:
            result[bytes.fromhex(parts[0])] = parts[5]
        except ValueError:
            continue
    return result


def parse_fib_trie_local(text: str) -> set[bytes]:
    r"""Return the packed IPv4 addresses marked ``/32 host LOCAL`` in ``net/fib_trie``.

    >>> sorted(socket.inet_ntoa(a) for a in parse_fib_trie_local(
    ...     "  |-- 192.0.2.2\n     /32 host LOCAL\n  |-- 192.0.2.255\n     /32 link BROADCAST\n"))
    ['192.0.2.2']
    """
    result: set[bytes] = set()
    leaf: Optional[str] = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            leaf = stripped[4:]
        elif stripped.startswith("/32 host LOCAL") and leaf is not None:
            try:
                result.add(socket.inet_aton(leaf))
            except OSError:
                continue
    return result


def parse_route(text: str) -> list[tuple[int, int, str]]:
    r"""Return ``(network, mask, interface)`` of the non-default routes in ``net/route``.

    Network and mask are integers in network order (``192.0.2.0/24`` is
    ``(0xC0000200, 0xFFFFFF00)``); the file prints them as host-order hex words.

    >>> parse_route("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
    ...             "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")
    [(3221225984, 4294967040, 'eth0')]
    """
    routes: list[tuple[int, int, str]] = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 8:
            continue
        try:
            network = struct.unpack("=I", bytes.fromhex(parts[1]))[0]
            mask = struct.unpack("=I", bytes.fromhex(parts[7]))[0]
        except (ValueError, struct.error):
            continue
        if mask == 0:
            continue
        routes.append((network, mask, parts[0]))
    return routes


class InterfaceMap:
    """Local address → interface name, for both families.

    Attributes:
        v4: packed IPv4 address → interface.
        v6: packed IPv6 address → interface.
        wildcard: the label for ``0.0.0.0``/``::`` binds (``None``: leave it out).
        local_v4: every local IPv4 address (``v4`` names those within a route).
        missing: file name → why it could not be read (for the collector's health).
    """

    __slots__ = ("local_v4", "missing", "v4", "v6", "wildcard")

    def __init__(
        self,
        v4: Optional[dict[bytes, str]] = None,
        v6: Optional[dict[bytes, str]] = None,
        wildcard: Optional[str] = None,
    ) -> None:
        # a plain class, not a dataclass: creating one costs a command's start-up ~1 ms
        self.v4: dict[bytes, str] = {} if v4 is None else v4
        self.v6: dict[bytes, str] = {} if v6 is None else v6
        self.wildcard = wildcard
        self.local_v4: set[bytes] = set(self.v4)
        self.missing: dict[str, str] = {}

    def __repr__(self) -> str:
        return (
            f"InterfaceMap({len(self.v4)} IPv4, {len(self.v6)} IPv6 addresses, "
            f"wildcard={self.wildcard!r})"
        )

    def lookup(self, family: int, packed: bytes) -> Optional[str]:
        """Return the interface of a local address (IPv4-mapped already unmapped).

        >>> m = InterfaceMap(v4={socket.inet_aton("192.0.2.2"): "eth0"})
        >>> m.lookup(socket.AF_INET, socket.inet_aton("192.0.2.2")), m.lookup(
        ...     socket.AF_INET, socket.inet_aton("127.0.0.53")), m.lookup(socket.AF_INET, bytes(4))
        ('eth0', 'lo', None)
        """
        if family == socket.AF_INET:
            if packed == _V4_ANY:
                return self.wildcard
            name = self.v4.get(packed)
        else:
            if packed == _V6_ANY:
                return self.wildcard
            name = self.v6.get(packed)
        if name is None and is_loopback(family, packed):
            return "lo"
        return name


def build_v4_map(local: set[bytes], routes: list[tuple[int, int, str]]) -> dict[bytes, str]:
    """Give each local IPv4 address the interface of its most specific containing route."""
    ordered = sorted(routes, key=lambda r: r[1], reverse=True)  # longest mask first
    result: dict[bytes, str] = {}
    for packed in local:
        value = struct.unpack("!I", packed)[0]
        for network, mask, name in ordered:
            if value & mask == network & mask:
                result[packed] = name
                break
    return result


def read_interface_map(procfs: ProcFS, wildcard: Optional[str] = None) -> InterfaceMap:
    """Read the address → interface map from ``procfs``; missing files give empty parts.

    A missing or unreadable file is not an error (a host without IPv6 has no
    ``if_inet6``): the addresses it would have named simply map to no
    interface, and the report leaves the interface out.
    """
    result = InterfaceMap(wildcard=wildcard)
    texts: dict[str, str] = {}
    for name in ("if_inet6", "fib_trie", "route"):
        try:
            texts[name] = procfs.read_text("net", name)
        except OSError as exc:
            result.missing[f"net/{name}"] = exc.strerror or str(exc)
            log.debug("cannot read net/%s: %s", name, exc)
    if "if_inet6" in texts:
        result.v6 = parse_if_inet6(texts["if_inet6"])
    if "fib_trie" in texts:
        result.local_v4 = parse_fib_trie_local(texts["fib_trie"])
        if "route" in texts:
            result.v4 = build_v4_map(result.local_v4, parse_route(texts["route"]))
    return result
