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
:mod:`defender_agent._log_formats`, re-exported here.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any, Final, Optional

from defender_agent._lazy import lazy_getattr

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

#: Characters of a log message (after escaping) before it is cut.
MAX_MESSAGE: Final = 2000
#: Characters of one network value shown in a log line (before quoting and escaping).
MAX_SHOWN: Final = 160

#: C0, DEL and C1 controls (NEL among them), U+2028/U+2029, the bidirectional marks and
#: overrides, BOM, lone surrogates (unwritable as UTF-8).
#: (A pattern, compiled by :mod:`re` at the first use: compiling it costs ~1 ms at start-up.)
_UNSAFE: Final = (
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)
_ESCAPE: Final = r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt])"
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    r"""``text`` with its control characters and line separators written as escapes.

    >>> escape("Throttled\n2026-01-01T00:00:00Z defender-agent: info: forged\x1b[2J\x00")
    'Throttled\\n2026-01-01T00:00:00Z defender-agent: info: forged\\x1b[2J\\x00'
    >>> escape("a\u2028b\u202ec\x85d é ü 中")
    'a\\u2028b\\u202ec\\x85d é ü 中'
    """
    return re.sub(_UNSAFE, _escaped, text)


def cut(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut at ``limit`` characters, saying how many were left out.

    >>> cut("x" * 10, 4)
    'xxxx…(+6 chars)'
    >>> cut("short", 10)
    'short'
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"


def _cut_escaped(text: str, limit: int) -> str:
    r""":func:`cut` that does not split an escape such as ``\x1b``."""
    if len(text) <= limit:
        return text
    end = limit
    slash = text.rfind("\\", max(0, limit - 5), limit)
    if slash >= 0 and (match := re.compile(_ESCAPE).match(text, slash)) and match.end() > limit:
        end = slash
    return f"{text[:end]}…(+{len(text) - end} chars)"


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    r"""``text`` escaped and cut: what a formatter writes.

    >>> one_line("a\nb" * 3, 6), one_line("a\x1bb", 3)
    ('a\\nba…(+7 chars)', 'a…(+5 chars)')
    """
    return _cut_escaped(escape(text), limit)


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    r"""A value from the network, for a log line: quoted, escaped, cut at ``limit`` characters.

    >>> shown("gw-1"), shown("a\nforged line"), shown(None)
    ("'gw-1'", "'a\\nforged line'", 'None')
    >>> shown("t" * 200, 8)
    "'tttttttt'…(+192 chars)"
    """
    if not isinstance(value, str):
        return escape(cut(repr(value), limit))
    more = len(value) - limit
    text = escape(repr(value[:limit]))
    return f"{text}…(+{more} chars)" if more > 0 else text


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
