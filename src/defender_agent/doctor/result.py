r"""A check's result, and the ways of showing a list of them (pure).

Example:
    >>> results = [Result("configuration", "ok", "valid"),
    ...            Result("TCP connect", "fail", "refused", fix="open the port")]
    >>> print(render(results, ascii_only=True))
    [ok]   configuration: valid
    [FAIL] TCP connect: refused
           fix: open the port
    >>> exit_code(results), as_json(results)["ok"]
    (1, False)

Text from the network (a server certificate's names, a broker's reason) is shown with
its control characters escaped, so each check stays one line and a hostile server
cannot send escape sequences to the terminal:

    >>> print(render([Result("TLS handshake", "fail", "for evil\x1b[2J\nok")], ascii_only=True))
    [FAIL] TLS handshake: for evil\x1b[2J\nok
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

__all__ = ["MARKS", "Result", "as_json", "exit_code", "render"]

#: status -> (mark, ASCII mark)
MARKS = {
    "ok": ("✓", "[ok]  "),
    "warn": ("!", "[warn]"),
    "fail": ("✗", "[FAIL]"),
    "skip": ("-", "[skip]"),
}


@dataclass(frozen=True)
class Result:
    """One check's outcome.

    Attributes:
        name: what was checked (``TLS handshake``).
        status: ``ok``, ``warn`` (works, but look at it), ``fail`` or ``skip`` (not
            checked: an earlier check failed, or it does not apply).
        detail: what was found, one line.
        fix: for a failure or a warning, what to do, in words.
        seconds: how long the check took.
    """

    name: str
    status: str
    detail: str
    fix: Optional[str] = None
    seconds: float = 0.0


def _printable(text: str) -> str:
    r"""``text`` with each non-printable character as its escape (``\n``, ``\x1b``).

    >>> _printable("a\tb ✓")
    'a\\tb ✓'
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def render(results: Sequence[Result], *, ascii_only: bool = False) -> str:
    """One line per check (✓ ✗ ! -), and an indented ``fix:`` line under each that has one."""
    lines = []
    for result in results:
        mark = MARKS[result.status][1 if ascii_only else 0]
        lines.append(f"{mark} {_printable(result.name)}: {_printable(result.detail)}")
        if result.fix and result.status in ("fail", "warn"):
            lines.append(" " * (len(mark) + 1) + f"fix: {_printable(result.fix)}")
    return "\n".join(lines)


def as_json(results: Sequence[Result]) -> dict[str, object]:
    """The results as a JSON-able document: ``ok`` and one object per check."""
    return {
        "ok": exit_code(results) == 0,
        "checks": [
            {
                "name": r.name,
                "status": r.status,
                "detail": r.detail,
                "fix": r.fix,
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
    }


def exit_code(results: Sequence[Result]) -> int:
    """0 when no check failed (warnings and skips included), else 1."""
    return 1 if any(r.status == "fail" for r in results) else 0
