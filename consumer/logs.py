"""One log line per event, as text for people or JSON for log pipelines.

In JSON every line on stderr is one object, the fatal one too (`fatal_line`),
so a log pipeline never has to guess at a line's shape.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum

__all__ = ["LogFormat", "LogLevel", "counted", "fatal_line", "interrupted_line", "setup_logging"]


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def _json_line(created: float, level: str, logger: str, message: str, trace: str | None) -> str:
    line = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
    }
    if trace:
        line["exception"] = trace
    return json.dumps(line, ensure_ascii=False)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        trace = self.formatException(record.exc_info) if record.exc_info else None
        return _json_line(
            record.created, record.levelname.lower(), record.name, record.getMessage(), trace
        )


def fatal_line(message: str, fmt: LogFormat, trace: str | None = None) -> str:
    """The last line of a failed command: `plays-consumer: error: ...`, or one JSON object."""
    if fmt is LogFormat.JSON:
        now = datetime.now(UTC).timestamp()
        return _json_line(now, "error", "consumer", message, trace)
    return f"plays-consumer: error: {message}"


def interrupted_line(fmt: LogFormat) -> str:
    """The one line of a command that Ctrl-C ended before it could stop by itself:
    what happened, in the log format, instead of a KeyboardInterrupt traceback."""
    message = "interrupted (Ctrl-C)"
    if fmt is LogFormat.JSON:
        return _json_line(datetime.now(UTC).timestamp(), "info", "consumer", message, None)
    return f"plays-consumer: {message}"


def setup_logging(fmt: LogFormat = LogFormat.TEXT, level: LogLevel = LogLevel.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt is LogFormat.JSON:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc and psycopg are chatty at debug; their errors reach us as exceptions.
    for name in ("grpc", "psycopg", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 play`, `2 plays`: a count as an operator reads it, never `1 plays`.

    Lines and command output are read by people first; the plural is the noun
    with an `s` unless given (`counted(n, "entry", "entries")`)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
