"""A check's result, and the ways of showing a list of them (pure).

Example:
    >>> results = [Result("configuration", "ok", "valid"),
    ...            Result("TCP connect", "fail", "refused", fix="open the port")]
    >>> print(render(results, ascii_only=True))
    [ok]   configuration: valid
    [FAIL] TCP connect: refused
           fix: open the port
    >>> exit_code(results), as_json(results)["ok"]
    (1, False)
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


def render(results: Sequence[Result], *, ascii_only: bool = False) -> str:
    """One line per check (✓ ✗ ! -), and an indented ``fix:`` line under each that has one."""
    lines = []
    for result in results:
        mark = MARKS[result.status][1 if ascii_only else 0]
        lines.append(f"{mark} {result.name}: {result.detail}")
        if result.fix and result.status in ("fail", "warn"):
            lines.append(" " * (len(mark) + 1) + f"fix: {result.fix}")
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
