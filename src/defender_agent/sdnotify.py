"""systemd's readiness and watchdog notifications (``sd_notify``), without a C library.

The protocol is one datagram per notification, ``KEY=value`` lines, sent to the
``AF_UNIX`` datagram socket named in ``$NOTIFY_SOCKET`` (a path, or an abstract
socket when it starts with ``@``). With ``Type=notify`` systemd waits for
``READY=1`` before the unit counts as started; ``STATUS=`` is the one-line text
``systemctl status`` shows; with ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC``
(and ``$WATCHDOG_PID``, the process it is meant for) and restarts the service when
no ``WATCHDOG=1`` arrives within that time. Pings go out at half of it, as
systemd's documentation advises.

:class:`Notifier` is inert (every call does nothing) outside systemd, so callers
never check. The watchdog pings must come from the loop that does the work, not
from a timer thread of their own: then a hung loop (not only a dead process)
stops them and systemd restarts the service.

Example:
    >>> n = Notifier.from_environment({})
    >>> n.enabled, n.watchdog_interval, n.notify("READY=1")
    (False, None, False)
    >>> watchdog_interval({"WATCHDOG_USEC": "20000000"}, pid=7)
    10.0
    >>> watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "8"}, pid=7) is None
    True
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Callable, Optional

__all__ = ["Notifier", "socket_address", "watchdog_interval"]

log = logging.getLogger(__name__)

#: ``STATUS=`` text is cut to this many characters (systemctl shows one line).
MAX_STATUS = 200


def socket_address(value: Optional[str]) -> Optional[str]:
    r"""The socket address ``$NOTIFY_SOCKET`` names: a path, or ``\0name`` for ``@name``.

    >>> socket_address("/run/systemd/notify"), socket_address("@abc"), socket_address("x")
    ('/run/systemd/notify', '\x00abc', None)
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # systemd also knows vsock:...; not for a Python agent on a device


def watchdog_interval(env: Mapping[str, str], pid: Optional[int] = None) -> Optional[float]:
    """Seconds between ``WATCHDOG=1`` pings: half ``$WATCHDOG_USEC``; ``None`` when off.

    ``$WATCHDOG_PID``, when set, must be this process (``pid``, default ``os.getpid()``):
    a child started by the service does not take over its watchdog.

    >>> watchdog_interval({"WATCHDOG_USEC": "3000000"}, pid=1)
    1.5
    >>> watchdog_interval({"WATCHDOG_USEC": "0"}), watchdog_interval({"WATCHDOG_USEC": "x"})
    (None, None)
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1_000_000 / 2


def _one_line(text: str) -> str:
    r"""Status text as one printable line, cut to :data:`MAX_STATUS` characters.

    >>> _one_line("a\nb\x00c")
    'a b c'
    """
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(cleaned.split())[:MAX_STATUS]


class Notifier:
    """Sends notifications to systemd; does nothing when not started by it.

    Thread-safe. A send that fails (systemd gone, a full socket buffer) is logged
    once at DEBUG and never raises: notifications are advice to the supervisor,
    never a reason for the agent to stop.

    Args:
        address: the socket address (see :func:`socket_address`), ``None``: inert.
        watchdog: seconds between watchdog pings, ``None``: no watchdog.
        clock: monotonic seconds, for :meth:`watchdog_due`.
    """

    def __init__(
        self,
        address: Optional[str],
        watchdog: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.watchdog_interval = watchdog if address is not None else None
        self._clock = clock
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._last_ping: Optional[float] = None
        self._last_status: Optional[str] = None
        self._ready = False
        self._failed = False

    @classmethod
    def from_environment(cls, env: Optional[Mapping[str, str]] = None) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``/``$WATCHDOG_PID`` describe."""
        env = os.environ if env is None else env
        address = socket_address(env.get("NOTIFY_SOCKET"))
        return cls(address, watchdog_interval(env) if address else None)

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere."""
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one datagram (``KEY=value`` lines); whether it was sent."""
        if self.address is None:
            return False
        data = message.encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.setblocking(False)
                self._sock.sendto(data, self.address)
            except OSError as exc:
                if not self._failed:
                    log.debug("cannot notify systemd at %r: %s", self.address, exc)
                self._failed = True
                return False
        return True

    def ready(self, status: Optional[str] = None) -> None:
        """``READY=1`` (once), with a status line."""
        with self._lock:
            if self._ready:
                first = False
            else:
                self._ready = first = True
        if first:
            text = "READY=1" + (f"\nSTATUS={_one_line(status)}" if status else "")
            if status:
                self._last_status = _one_line(status)
            self.notify(text)
        elif status:
            self.status(status)

    def status(self, text: str) -> None:
        """``STATUS=text`` when the text changed since the last one sent."""
        line = _one_line(text)
        if line == self._last_status:
            return
        self._last_status = line
        self.notify(f"STATUS={line}")

    def watchdog_due(self) -> Optional[float]:
        """Seconds until the next ping is due (0 when overdue); ``None`` without a watchdog."""
        if self.watchdog_interval is None:
            return None
        if self._last_ping is None:
            return 0.0
        return max(0.0, self._last_ping + self.watchdog_interval - self._clock())

    def ping(self) -> None:
        """``WATCHDOG=1`` when a ping is due (at most one per half ``WatchdogSec``)."""
        due = self.watchdog_due()
        if due is None or due > 0:
            return
        self._last_ping = self._clock()
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """``STOPPING=1``: the service is shutting down on purpose."""
        self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the socket (a later notification opens it again)."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
