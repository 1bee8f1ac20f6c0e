r"""Log lines that nothing from the network can forge: escaped, one line each, bounded.

Two levels:

* the formatters (:class:`TextFormatter`, :class:`JsonFormatter`) escape every control
  character of the final message (``\n``, ``\x1b``, ``\x00``; also U+2028/U+2029, the
  other line separators and the bidirectional overrides) and cut it at :data:`MAX_MESSAGE`
  characters with a visible ``…(+N chars)``, so no call site can write a second line;
* values that came from the network (reply fields, topics, thing names, client ids) are
  shown at their call site with :func:`shown`: quoted, escaped, cut at :data:`MAX_SHOWN`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Final

__all__ = [
    "MAX_MESSAGE",
    "MAX_SHOWN",
    "JsonFormatter",
    "TextFormatter",
    "cut",
    "escape",
    "one_line",
    "setup_logging",
    "shown",
]

#: Characters of a log message (after escaping) before it is cut.
MAX_MESSAGE: Final = 2000
#: Characters of one network value shown in a log line (before quoting and escaping).
MAX_SHOWN: Final = 160
#: Characters of a traceback written at debug level.
_MAX_TRACEBACK: Final = 20_000

#: C0, DEL and C1 controls (NEL among them), U+2028/U+2029, the bidirectional marks and
#: overrides, BOM, lone surrogates (unwritable as UTF-8).
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)
_ESCAPE: Final = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt])")
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
    return _UNSAFE.sub(_escaped, text)


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
    if slash >= 0 and (match := _ESCAPE.match(text, slash)) and match.end() > limit:
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


class TextFormatter(logging.Formatter):
    """``defender-agent: warning: message`` — one line per record, as the errors are.

    At debug level an exception's traceback follows on lines indented by ``  | ``, so that
    they cannot pass for records either.
    """

    def __init__(self, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (and, at debug level, its indented traceback)."""
        stamp = ""
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z "
        message = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and record.levelno > logging.DEBUG:
            message += f" ({type(error).__name__}: {error})"
        line = f"{stamp}defender-agent: {record.levelname.lower()}: {one_line(message)}"
        if record.exc_info and record.levelno <= logging.DEBUG:
            trace = cut(self.formatException(record.exc_info), _MAX_TRACEBACK)
            line += "".join(f"\n  | {escape(part)}" for part in trace.split("\n"))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (for log shippers).

    The message is escaped and cut as in the text format, then JSON-encoded.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON object."""
        doc = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": one_line(record.name, MAX_SHOWN),
            "message": one_line(record.getMessage()),
        }
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            doc["error"] = one_line(f"{type(error).__name__}: {error}")
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text", *, timestamps: bool = False) -> None:
    """Send log records to stderr, one line each, replacing earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(timestamps))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # awscrt's own logging is off unless asked for; keep third-party chatter at warning
    logging.getLogger("awscrt").setLevel(logging.WARNING)
