"""The argparse machinery every command shares: strict flags, suggestions, defaults in help.

Kept apart from the commands themselves so that adding one never touches how a
typo is reported, and a parse error in JSON logs is still one JSON line.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from consumer.config import LogFormat
from consumer.logs import fatal_line

__all__ = ["Parser"]


class _HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default (or says it is required)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is None or action.default is False:
            return f"{text} (default: off)" if action.nargs == 0 else text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """No abbreviations (`--from` is not `--from-height`), and "did you mean" for typos."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.log_format = LogFormat.TEXT

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is None or value in action.choices:
            return
        choices = [str(c) for c in action.choices]
        raise argparse.ArgumentError(
            action,
            f"invalid choice {value!r}{_suggest(str(value), choices)}; "
            f"choose from {', '.join(choices)}",
        )

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            owner = self._subparser(parsed) or self
            known = list(owner._option_string_actions)
            words = [
                f"{word}{_suggest(word.split('=', 1)[0], known)}" if word.startswith("-") else word
                for word in extras
            ]
            owner.error(f"unrecognized arguments: {' '.join(words)}")
        return parsed

    def _subparser(self, parsed: argparse.Namespace) -> Parser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                found = action.choices.get(getattr(parsed, action.dest, None) or "")
                return found if isinstance(found, Parser) else None
        return None

    def error(self, message: str) -> NoReturn:
        if self.log_format is LogFormat.JSON:
            sys.stderr.write(fatal_line(f"{self.prog}: {message}", self.log_format) + "\n")
            sys.exit(2)
        super().error(message)


def _suggest(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
