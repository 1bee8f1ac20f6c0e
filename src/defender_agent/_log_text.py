"""Log text from the network made safe: escaped, cut, quoted (re-exported by :mod:`.logs`).

Pure string functions with no import of :mod:`logging`, shared by :mod:`defender_agent.logs`
and its formatters (:mod:`defender_agent._log_formats`).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_MESSAGE", "MAX_SHOWN", "cut", "escape", "one_line", "shown"]

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
