r"""Log lines that nothing from the network can forge: escaped, one line each, bounded.

Two levels:

* the formatters (:class:`TextFormatter`, :class:`JsonFormatter`) escape every control
  character of the final message (``\n``, ``\x1b``, ``\x00``; also U+2028/U+2029, the
  other line separators and the bidirectional overrides) and cut it at :data:`MAX_MESSAGE`
  characters with a visible ``…(+N chars)``, so no call site can write a second line;
* values that came from the network (reply fields, topics, thing names, client ids) are
  shown at their call site with :func:`shown`: quoted, escaped, cut at :data:`MAX_SHOWN`.

Importing :mod:`logging` costs ~10 ms on a small device, a third of what ``collect``
spends on its own imports, and a collect that logs nothing need not pay it: the modules on
its path take their loggers from :func:`get_logger` (the :mod:`logging` logger, looked
up at the first record), and ``setup_logging(..., defer=True)`` waits for that first
record when :mod:`logging` is not imported yet. The formatters are in
:mod:`defender_agent._log_formats`, the escaping and cutting in :mod:`defender_agent._log_text`;
both are re-exported here.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional

from defender_agent._lazy import lazy_getattr
from defender_agent._log_text import MAX_MESSAGE, MAX_SHOWN, cut, escape, one_line, shown

if TYPE_CHECKING:
    import logging
    from types import ModuleType

    from defender_agent._log_formats import JsonFormatter, TextFormatter

__all__ = [
    "MAX_MESSAGE",
    "MAX_SHOWN",
    "JsonFormatter",
    "TextFormatter",
    "cut",
    "escape",
    "get_logger",
    "one_line",
    "setup_logging",
    "shown",
]


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, but :mod:`logging` is imported at the first record.

    >>> get_logger("defender_agent.example").name
    'defender_agent.example'
    """
    return _LazyLogger(name)  # type: ignore[return-value]  # a Logger in all it is asked


class _LazyLogger:
    """Stands for the :mod:`logging` logger of its name; imports logging when first used."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attribute: str) -> Any:  # noqa: ANN401 - the Logger's attribute
        return getattr(_logging().getLogger(self.name), attribute)

    def __repr__(self) -> str:
        return f"<lazy logger {self.name}>"


#: ``setup_logging``'s arguments while it waits for the first record.
_pending: Optional[tuple[str, str, bool]] = None


def _logging() -> ModuleType:
    """The :mod:`logging` module, with a deferred :func:`setup_logging` applied."""
    global _pending  # noqa: PLW0603 - the one deferred setup of the process
    import logging  # noqa: PLC0415 - imported at the first record (see the module docstring)

    if _pending is not None:
        level, fmt, timestamps = _pending
        _pending = None
        _configure(logging, level, fmt, timestamps)
    return logging


def setup_logging(
    level: str, fmt: str = "text", *, timestamps: bool = False, defer: bool = False
) -> None:
    """Send log records to stderr, one line each, replacing earlier handlers.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        fmt: ``text`` or ``json``.
        timestamps: start text lines with the UTC time.
        defer: when :mod:`logging` is not imported yet, wait for the first record of a
            :func:`get_logger` logger (for code whose every logger comes from there).
    """
    global _pending  # noqa: PLW0603 - the one deferred setup of the process
    if defer and "logging" not in sys.modules:
        _pending = (level, fmt, timestamps)
        return
    _pending = None
    import logging  # noqa: PLC0415 - see the module docstring

    _configure(logging, level, fmt, timestamps)


def _configure(logging: ModuleType, level: str, fmt: str, timestamps: bool) -> None:
    from defender_agent._log_formats import JsonFormatter, TextFormatter  # noqa: PLC0415

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(timestamps))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # awscrt's own logging is off unless asked for; keep third-party chatter at warning
    logging.getLogger("awscrt").setLevel(logging.WARNING)


if not TYPE_CHECKING:  # the formatters load on first use (they need logging)
    __getattr__ = lazy_getattr(
        globals(), {"defender_agent._log_formats": ("JsonFormatter", "TextFormatter")}
    )
