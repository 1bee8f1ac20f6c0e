"""The log formatters of :mod:`defender_agent.logs` (they need :mod:`logging`, imported here).

Every line is escaped and cut (:func:`~defender_agent.logs.one_line`), so a value from the
network cannot write a second record.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Final

from defender_agent._log_text import MAX_SHOWN, cut, escape, one_line

__all__ = ["JsonFormatter", "TextFormatter"]

#: Characters of a traceback written at debug level.
_MAX_TRACEBACK: Final = 20_000


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
