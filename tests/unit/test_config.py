"""Settings and the command line: each option declared once, and nothing an operator can trip on.

These run in-process and need neither a database nor a node (the TLS tests, which serve
the devnet over TLS, are tests/integration/test_tls.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import fields

import pytest

from consumer import __version__
from consumer.config import (
    OPTIONS,
    BatchSettings,
    HttpSettings,
    LogFormat,
    Settings,
    SinkSettings,
    SourceMode,
    SourceSettings,
    port_notes,
)
from consumer.errors import ConfigError
from consumer.ops.cli import build_parser


def settings(*argv: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings as `plays-consumer run ARGV` with this environment would make them."""
    return Settings.from_args(build_parser().parse_args(["run", *argv]), environ or {})


def refusal(*argv: str, environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        settings(*argv, environ=environ)
    return str(caught.value)


def parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **sub.choices}


# --- one declaration per option ----------------------------------------------


def test_the_connect_timeout_flag_reaches_the_node_and_the_database() -> None:
    made = settings("--connect-timeout-s", "1.5")
    assert (made.source.connect_timeout_s, made.sink.connect_timeout_s) == (1.5, 1.5)


def test_the_connect_timeout_variable_reaches_the_node_and_the_database() -> None:
    made = settings(environ={"CORE_PLAYS_CONNECT_TIMEOUT_S": "2"})
    assert (made.source.connect_timeout_s, made.sink.connect_timeout_s) == (2.0, 2.0)


def test_every_settings_field_is_an_option_unless_it_is_set_from_one() -> None:
    """A field added without option() would be unreachable from flags and variables."""
    derived = {(SinkSettings, "password"), (SinkSettings, "connect_timeout_s")}
    sections = {"source", "sink", "batch", "http"}
    declared = {(o.owner, o.name) for o in OPTIONS}
    classes = (SourceSettings, SinkSettings, BatchSettings, HttpSettings, Settings)
    every = {(cls, f.name) for cls in classes for f in fields(cls)}
    unreachable = every - declared - derived - {(Settings, s) for s in sections}
    assert unreachable == set()


def test_run_takes_every_option() -> None:
    run = subcommands()["run"]
    assert {f"--{o.flag}" for o in OPTIONS} <= set(run._option_string_actions)


def test_a_flag_wins_over_its_variable_which_wins_over_the_default() -> None:
    env = {"CORE_PLAYS_MAX_BLOCKS": "7", "CORE_PLAYS_MAX_PLAYS": "8"}
    made = settings("--max-blocks", "3", environ=env)
    assert (made.batch.max_blocks, made.batch.max_plays, made.batch.queue_blocks) == (3, 8, 1000)


def test_choices_become_enums_from_flags_and_variables() -> None:
    made = settings("--source-mode", "poll", environ={"CORE_PLAYS_LOG_FORMAT": "JSON"})
    assert made.source.source_mode is SourceMode.POLL and made.log_format is LogFormat.JSON


@pytest.mark.parametrize(
    "text,expected",
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("no", False),
    ],
)
def test_environment_booleans_accept_true_false_1_0_yes_no(text: str, expected: bool) -> None:
    made = settings(environ={"CORE_PLAYS_REWIND_CHECKPOINT": text})
    assert made.sink.rewind_checkpoint is expected


def test_an_environment_boolean_that_is_none_of_those_says_what_is_accepted() -> None:
    message = refusal(environ={"CORE_PLAYS_DEBUG": "maybe"})
    assert "CORE_PLAYS_DEBUG" in message and "true/false, 1/0 or yes/no" in message


# --- the command line ---------------------------------------------------------


def test_a_flag_is_never_abbreviated_and_the_full_name_is_suggested(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = parse_error(["run", "--from", "5"], capsys)
    assert "unrecognized arguments: --from" in err and "did you mean --from-height?" in err


def test_a_mistyped_flag_suggests_the_right_one(capsys: pytest.CaptureFixture[str]) -> None:
    err = parse_error(["migrate", "--databse-url", "x"], capsys)
    assert "did you mean --database-url?" in err


def test_a_mistyped_command_suggests_the_right_one(capsys: pytest.CaptureFixture[str]) -> None:
    err = parse_error(["stauts"], capsys)
    assert "did you mean status?" in err


@pytest.mark.parametrize("argv", [["--version"], ["run", "--version"]], ids=["top", "run"])
def test_version_is_printed_at_top_level_and_on_run(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", list(subcommands()), ids=lambda c: c or "top")
def test_every_flag_has_help_that_shows_its_default(command: str) -> None:
    parser = subcommands()[command]
    formatter = parser._get_formatter()
    silent = []
    for action in parser._actions:
        if not action.option_strings or isinstance(
            action, argparse._HelpAction | argparse._VersionAction
        ):
            continue
        text = formatter._get_help_string(action) or ""
        if not action.help or ("default" not in text and "required" not in text):
            silent.append(action.option_strings[0])
    assert silent == []


# --- URLs ---------------------------------------------------------------------


def test_a_database_url_of_another_scheme_is_refused_naming_the_flag() -> None:
    message = refusal("--database-url", "mysql://app@db:3306/plays")
    assert "--database-url" in message and "'mysql'" in message


def test_a_database_url_without_a_port_is_told_the_default_port() -> None:
    made = settings("--database-url", "postgresql://app@db/plays")
    [note] = port_notes(made, {}, core=False)
    assert "5432" in note


def test_a_core_url_without_a_port_is_told_the_default_port() -> None:
    made = settings("--core-url", "https://core.example.org")
    assert "core.example.org:443" in port_notes(made, {})[0]


@pytest.mark.parametrize(
    "argv,environ,name",
    [
        (["--database-url", "postgresql://u:hunter2%zz@db/x"], {}, "--database-url"),
        ([], {"CORE_PLAYS_DATABASE_URL": "host=db password=hunter2 stray"}, "DATABASE_URL"),
    ],
    ids=["flag", "environment"],
)
def test_an_unparseable_database_url_is_never_quoted_back(
    argv: list[str], environ: dict[str, str], name: str
) -> None:
    message = refusal(*argv, environ=environ)
    assert name in message and "hunter2" not in message


@pytest.mark.parametrize(
    "argv,environ",
    [
        (["--database-url", "postgresql://u:hunter2@db/x"], {}),
        ([], {"CORE_PLAYS_DATABASE_URL": "postgresql://u:hunter2@db/x"}),
        ([], {"CORE_PLAYS_DATABASE_URL": "host=db user=u password=hunter2"}),
    ],
    ids=["flag", "environment", "environment-dsn"],
)
def test_a_password_inside_the_database_url_is_refused_from_flag_and_environment(
    argv: list[str], environ: dict[str, str]
) -> None:
    message = refusal(*argv, environ=environ)
    assert "CORE_PLAYS_DATABASE_PASSWORD" in message and "hunter2" not in message


def test_a_ca_file_for_a_plaintext_node_is_refused() -> None:
    message = refusal("--core-url", "http://core:50051", "--core-ca-file", "/dev/null")
    assert "--core-ca-file" in message and "https://" in message
