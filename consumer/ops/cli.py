"""`plays-consumer`: argparse -> Settings -> asyncio.run -> exit code.

Errors the operator must act on print one line and exit 2 (a traceback only
with --debug); a clean stop (SIGTERM, SIGINT, --to-height reached) exits 0. A
reader that leaves early (`status | head`) changes neither the exit code nor stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO, cast

from consumer.config import LogFormat, Settings, parse_bool, port_notes
from consumer.errors import ConsumerError
from consumer.logs import fatal_line, interrupted_line, setup_logging
from consumer.ops.commands import build_parser
from consumer.ops.handlers import Handler

# Nothing that imports grpc may be imported at module level: main() must set
# GRPC_VERBOSITY first, or grpc's C core prints a line per failed TLS handshake.

__all__ = ["build_parser", "main"]

log = logging.getLogger("consumer")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    log_format, debug = _early_logging(argv, os.environ)
    # Before anything imports grpc (see the imports above): its C core writes its own
    # lines to stderr (one per failed TLS handshake). Errors reach us as exceptions, so
    # none in JSON (every line must be JSON), errors only in text, all with --debug.
    if not debug:
        quiet = "NONE" if log_format is LogFormat.JSON else "ERROR"
        os.environ.setdefault("GRPC_VERBOSITY", quiet)  # an operator's own value wins
    args = build_parser(log_format).parse_args(argv)
    try:
        with _reader_may_leave():
            return _dispatch(args)
    except ConsumerError as exc:
        _fatal(str(exc), log_format, debug)
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(interrupted_line(log_format) + "\n")
        return 130
    except Exception as exc:  # a bug: still one line; --debug shows where
        hint = "" if debug else " (--debug shows where)"
        _fatal(f"internal error: {type(exc).__name__}: {exc}{hint}", log_format, debug)
        return 1


def _early_logging(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[LogFormat, bool]:
    """The log format and --debug before parsing, so even a parse error is reported in them."""
    text = environ.get("CORE_PLAYS_LOG_FORMAT", "")
    for i, word in enumerate(argv):
        if word == "--log-format" and i + 1 < len(argv):
            text = argv[i + 1]
        elif word.startswith("--log-format="):
            text = word.split("=", 1)[1]
    try:
        debug = "--debug" in argv or parse_bool(environ.get("CORE_PLAYS_DEBUG", "false"))
    except ValueError:
        debug = False  # reported when the settings are read
    fmt = LogFormat.JSON if text.strip().lower() == "json" else LogFormat.TEXT
    return fmt, debug


def _fatal(message: str, log_format: LogFormat, debug: bool) -> None:
    trace = traceback.format_exc() if debug else None
    if trace is not None and log_format is LogFormat.TEXT:
        sys.stderr.write(trace)
        trace = None
    sys.stderr.write(fatal_line(message, log_format, trace) + "\n")


def _dispatch(args: argparse.Namespace) -> int:
    """Settings as the command reads them, logging, then the command's handler."""
    settings: Settings = args.read_settings(args, os.environ)
    setup_logging(settings.log_format, settings.log_level)
    for note in port_notes(settings, os.environ, core=hasattr(args, "core_url")):
        log.info("%s", note)
    handler: Handler = args.handler
    return handler(args, settings)


@contextmanager
def _reader_may_leave() -> Iterator[None]:
    """stdout for the command; the output still buffered is flushed before the exit code."""
    stream = sys.stdout
    sys.stdout = cast(TextIO, _Stdout(stream))
    try:
        yield
        sys.stdout.flush()
    finally:
        sys.stdout = stream


class _Stdout:
    """stdout whose reader may close the pipe: the rest of the output goes to devnull.

    As Python's docs advise (signal module, "Note on SIGPIPE"): point the descriptor
    at devnull, so no later write or the flush at exit breaks the pipe again, and let
    the command finish, so that it exits with its own status and no error line.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
