"""No log line can be forged, be raw control bytes or run on (issue 9, item 5)."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from defender_agent.logs import (
    MAX_MESSAGE,
    JsonFormatter,
    TextFormatter,
    escape,
    one_line,
    shown,
)

FORGED = "Throttled\n2026-12-07T00:00:00Z defender-agent: info: report 7 accepted"
HOSTILE = FORGED + "\x1b[2J\x00\r\x85\u2028\u2029\u202e\x0b\x0c\x1c\ud800"
RAW = ("\n", "\r", "\x1b", "\x00", "\x85", "\u2028", "\u2029", "\u202e", "\x0b", "\x0c", "\ud800")


def record(message: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("defender_agent.replies", level, __file__, 1, message, args, None)


def fail(text: str) -> None:
    raise ValueError(text)


def raised(text: str) -> logging.LogRecord:
    try:
        fail(text)
    except ValueError:
        rec = record("it failed: %s", text)
        rec.exc_info = sys.exc_info()
        return rec
    raise AssertionError("unreachable")


@pytest.mark.parametrize("formatter", [TextFormatter(True), JsonFormatter()], ids=["text", "json"])
def test_a_forged_line_and_control_bytes_stay_on_one_escaped_line(
    formatter: logging.Formatter,
) -> None:
    line = formatter.format(record("report %s rejected: %s", 7, HOSTILE))
    assert len(line.splitlines()) == 1 and "\n" not in line
    for raw in RAW:
        assert raw not in line, repr(raw)
    message = json.loads(line)["message"] if isinstance(formatter, JsonFormatter) else line
    assert "Throttled\\n2026-12-07T00:00:00Z" in message
    assert "\\x1b[2J\\x00\\r\\x85\\u2028\\u2029\\u202e" in message


@pytest.mark.parametrize("formatter", [TextFormatter(False), JsonFormatter()], ids=["text", "json"])
def test_a_long_message_is_cut_visibly(formatter: logging.Formatter) -> None:
    line = formatter.format(record("reply: %s", "x" * 6081))
    message = json.loads(line)["message"] if isinstance(formatter, JsonFormatter) else line
    assert "…(+" in message and message.endswith(" chars)")
    assert len(message) <= MAX_MESSAGE + 60


@pytest.mark.parametrize("formatter", [TextFormatter(False), JsonFormatter()], ids=["text", "json"])
def test_an_exception_text_is_escaped_too(formatter: logging.Formatter) -> None:
    line = formatter.format(raised(FORGED))
    assert "\n" not in line
    if isinstance(formatter, JsonFormatter):
        doc = json.loads(line)
        line = doc["message"] + doc["error"]
    assert "Throttled\\n2026" in line


def test_a_debug_traceback_is_indented_so_no_line_passes_for_a_record() -> None:
    rec = raised(FORGED)
    rec.levelno, rec.levelname = logging.DEBUG, "DEBUG"
    lines = TextFormatter(False).format(rec).splitlines()
    assert lines[0].startswith("defender-agent: debug: it failed: Throttled\\n2026")
    assert all(ln.startswith("  | ") for ln in lines[1:]), lines
    assert any("Traceback" in ln for ln in lines[1:])


def test_ordinary_text_is_untouched() -> None:
    text = "connected to a.iot.eu-west-1.amazonaws.com:8883 — thïng ✓ 中 \\ 'q' \"d\""
    assert escape(text) == text == one_line(text)


def test_shown_quotes_escapes_and_cuts_network_values() -> None:
    assert shown("gw-1") == "'gw-1'"
    assert shown("a\nb\x1b\u2028") == "'a\\nb\\x1b\\u2028'"
    long = shown("é" * 6000)
    assert long.startswith("'éé") and long.endswith("'…(+5840 chars)")
    assert len(long) < 200
    assert shown(b"\x00\xff") == "b'\\x00\\xff'"
    assert "\n" not in shown(["x\ny"] * 100) and len(shown(["x"] * 1000)) < 200
