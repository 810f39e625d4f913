"""How a settings field becomes an option: its flag, its variable, its parsing.

`option(default, help)` marks a dataclass field; everything else is read off the
field: the flag (`--core-url`) and variable (`CORE_PLAYS_CORE_URL`) from its name,
the parsing from its annotation (int, float, str, bool, an enum, or one of those
or None). consumer/config.py declares the settings with it; nothing here knows
which settings exist.
"""

from __future__ import annotations

import argparse
import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from types import UnionType
from typing import Any, TypeVar

from consumer.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "Option",
    "add_option",
    "build_section",
    "coerce_enums",
    "env_name",
    "option",
    "options_of",
    "parse_bool",
]

ENV_PREFIX = "CORE_PLAYS_"
_OPTION = "consumer.option"  # the dataclass field metadata key that marks an option

T = TypeVar("T")
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class _Meta:
    help: str
    metavar: str | None = None


def option(default: T, help: str, *, metavar: str | None = None) -> T:
    """A settings field that is also a flag and a CORE_PLAYS_* variable."""
    meta = {_OPTION: _Meta(help, metavar)}
    return field(default=default, metadata=meta)


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.replace("-", "_").upper()


def parse_bool(text: str) -> bool:
    """Environment booleans: true/false, 1/0, yes/no, in any case."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValueError("expected true/false, 1/0 or yes/no")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce_enums(obj: object) -> None:
    """Accept an enum field given as its string value (tests, the demo), naming the flag."""
    kind_of: type = type(obj)
    hints = _hints(kind_of)
    for f in fields(obj):  # type: ignore[arg-type]
        kind = hints[f.name]
        value = getattr(obj, f.name)
        if isinstance(kind, type) and issubclass(kind, Enum) and not isinstance(value, kind):
            try:
                object.__setattr__(obj, f.name, kind(value))
            except ValueError:
                allowed = ", ".join(m.value for m in kind)
                flag = f.name.replace("_", "-")
                raise ConfigError(f"--{flag} must be one of {allowed}, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class Option:
    """One setting as the command line and the environment know it, read off its field."""

    owner: type
    name: str  # the field name, also the argparse dest
    kind: type  # int, float, str, bool or an Enum
    default: object
    help: str
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return env_name(self.flag)

    @property
    def is_switch(self) -> bool:
        return self.kind is bool

    @property
    def choices(self) -> tuple[str, ...] | None:
        if issubclass(self.kind, Enum):
            return tuple(str(m.value) for m in self.kind)
        return None

    def parse(self, text: str) -> object:
        """One value from its text (the environment's, or a flag's); ValueError if invalid."""
        if self.kind is bool:
            return parse_bool(text)
        if self.choices is not None:
            lowered = text.strip().lower()
            if lowered not in self.choices:
                raise ValueError(f"expected {', '.join(self.choices)}")
            return self.kind(lowered)
        try:
            if self.kind is int:
                return int(text)
            if self.kind is float:
                return float(text)
        except ValueError:
            expected = "a whole number" if self.kind is int else "a number"
            raise ValueError(f"expected {expected}") from None
        return text

    def value(self, args: argparse.Namespace, environ: Mapping[str, str]) -> object:
        """The flag's value, else the variable's, else None (the field's default applies)."""
        raw = getattr(args, self.name, None)
        if raw is not None:
            return raw
        text = environ.get(self.env)
        if text is None:
            return None
        try:
            return self.parse(text)
        except ValueError as exc:
            raise ConfigError(
                f"{self.env}: not a valid value for --{self.flag} ({exc}; the value was "
                f"{_shown(text)})"
            ) from None


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _kind(annotation: Any) -> type:
    """int | None -> int; the type an option's text parses to."""
    if isinstance(annotation, UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        [annotation] = members
    assert isinstance(annotation, type), annotation
    return annotation


def options_of(cls: Callable[..., object]) -> tuple[Option, ...]:
    assert isinstance(cls, type)
    hints = _hints(cls)
    out: list[Option] = []
    for f in fields(cls):
        meta = f.metadata.get(_OPTION)
        if isinstance(meta, _Meta):
            assert f.default is not MISSING
            out.append(
                Option(cls, f.name, _kind(hints[f.name]), f.default, meta.help, meta.metavar)
            )
    return tuple(out)


def build_section(cls: Callable[..., S], args: argparse.Namespace, environ: Mapping[str, str]) -> S:
    """Build one settings object from its own fields' options: nothing can land elsewhere."""
    values: dict[str, Any] = {}
    for opt in options_of(cls):
        value = opt.value(args, environ)
        if value is not None:
            values[opt.name] = value
    return cls(**values)


def add_option(parser: argparse.ArgumentParser, opt: Option) -> None:
    """The option as a flag whose default stays None, so that the environment can fill in
    what the command line left out; its help shows the real default and the variable."""
    shown = "off" if opt.default is False else opt.default
    default = "" if opt.default is None else f"; default {shown}"
    text = f"{opt.help} [env {opt.env}{default}]"
    if opt.is_switch:
        parser.add_argument(
            f"--{opt.flag}", action="store_const", const=True, default=None, help=text
        )
    else:
        typed: dict[str, Any] = {"type": opt.kind} if opt.kind in (int, float) else {}
        if opt.choices is not None:
            typed = {"type": str.lower}  # --log-level INFO is info
        parser.add_argument(
            f"--{opt.flag}",
            choices=opt.choices,
            default=None,
            metavar=opt.metavar or _metavar(opt),
            help=text,
            **typed,
        )


def _metavar(opt: Option) -> str | None:
    if opt.name.endswith("_s"):
        return "SECONDS"
    return "N" if opt.kind is int else None
