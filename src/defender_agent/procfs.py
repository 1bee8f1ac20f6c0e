"""Access to the proc filesystem under a configurable root: the only place that opens /proc.

The root defaults to ``/proc``. It can be set explicitly (``--proc-root``) or
through the ``PROCFS_PATH`` environment variable, the convention of the
Greengrass Device Defender connector, where the host's proc is mounted at
``/host-proc``.

Files in /proc report a size of 0, so they are read to EOF; a cap guards
against files that are unexpectedly huge (a routing table on a router).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["DEFAULT_MAX_BYTES", "ProcFS", "default_proc_root"]

#: Read at most this much of one /proc file (64 MiB: about 400 000 socket lines).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def default_proc_root(environ: Optional[dict[str, str]] = None) -> Path:
    """Return the proc root: ``$PROCFS_PATH`` when set and non-empty, else ``/proc``.

    >>> default_proc_root({"PROCFS_PATH": "/host-proc"})
    PosixPath('/host-proc')
    >>> default_proc_root({})
    PosixPath('/proc')
    """
    env = os.environ if environ is None else environ
    value = env.get("PROCFS_PATH", "").strip()
    return Path(value) if value else Path("/proc")


class ProcFS:
    """A proc filesystem rooted at ``root``.

    Args:
        root: the directory that plays the role of ``/proc``.
        max_bytes: the largest amount read from one file; a longer file is
            cut at the last complete line before the cap.
    """

    def __init__(self, root: Path | str = "/proc", max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"ProcFS({str(self.root)!r})"

    def path(self, *parts: str) -> Path:
        """Return the path of ``parts`` under the root, e.g. ``path("net", "tcp")``."""
        return self.root.joinpath(*parts)

    def read_bytes(self, *parts: str) -> bytes:
        """Read a file under the root to EOF (up to the cap).

        Raises:
            OSError: the file is missing or unreadable (the caller decides
                whether that is an error; a missing ``net/tcp6`` on a host
                without IPv6 is not).
        """
        with self.path(*parts).open("rb", buffering=0) as handle:
            chunks: list[bytes] = []
            remaining = self.max_bytes
            while remaining > 0:
                chunk = handle.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
        data = b"".join(chunks)
        if remaining <= 0:
            cut = data.rfind(b"\n")
            data = data[: cut + 1] if cut >= 0 else b""
        return data

    def read_text(self, *parts: str) -> str:
        """Read a file under the root as text (ASCII/UTF-8, undecodable bytes replaced)."""
        return self.read_bytes(*parts).decode("utf-8", "replace")
