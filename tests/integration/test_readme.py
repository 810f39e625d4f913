"""The README stays true: its flag table is the code's, and its shell blocks run as written."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from consumer.config import OPTIONS, Option
from consumer.devnet import DevnetServer
from consumer.metrics import PREFIX, Metrics
from consumer.ops.cli import build_parser
from tests.conftest import DevnetFactory
from tests.procs import clean_env

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SHELL_BLOCKS = re.findall(r"^```sh\n(.*?)^```", README, re.MULTILINE | re.DOTALL)
# Blocks made only of plays-consumer commands run against a devnet and a throw-away
# database; the others (installing, the test suite, the exports) are checked by `bash -n`.
BLOCK_IDS = [f"block{i}" for i in range(len(SHELL_BLOCKS))]
RUNNABLE = [b for b in SHELL_BLOCKS if all(_.startswith("plays-consumer ") for _ in b.splitlines())]


def _default(opt: Option) -> str:
    if opt.default is None:
        return ""
    if opt.default is False:
        return "`off`"
    return f"`{opt.default}`"


def flag_table() -> str:
    """The README's flag table as the code declares it (paste this when the test fails)."""
    rows = [
        "| flag | environment | default | what it does |",
        "|---|---|---|---|",
        *(f"| `--{o.flag}` | `{o.env}` | {_default(o)} | {o.help} |" for o in OPTIONS),
    ]
    return "\n".join(rows) + "\n"


def test_the_flag_table_is_the_code_s_options() -> None:
    expected = flag_table()
    assert expected in README, f"README flag table should read:\n{expected}"


def _command_flags() -> list[tuple[str, str]]:
    """(command, flag) for every flag a command adds of its own: not --help or --version, nor
    a settings option (the flag table has those)."""
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    common = {"--help", "--version", *(f"--{o.flag}" for o in OPTIONS)}
    return [
        (name, flag)
        for name, parser in commands.choices.items()
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag not in common
    ]


COMMAND_FLAGS = _command_flags()


@pytest.mark.parametrize(
    ("command", "flag"), COMMAND_FLAGS, ids=[" ".join(c) for c in COMMAND_FLAGS]
)
def test_every_command_and_its_flags_are_named_in_the_readme(command: str, flag: str) -> None:
    assert f"`{command}" in README
    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", README), f"{flag} is not named"


def test_every_exported_metric_is_in_the_readme() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    names = {m.name.removeprefix(PREFIX) for m in registry.collect()}
    documented = set(re.findall(r"^\| `([a-z_]+)(?:\{[^}]*\})?` \|", README, re.MULTILINE))
    counters = {m.name.removeprefix(PREFIX) for m in registry.collect() if m.type == "counter"}
    expected = {n + "_total" if n in counters else n for n in names}
    assert expected - documented == set()


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=BLOCK_IDS)
def test_every_shell_block_parses(block: str) -> None:
    result = subprocess.run(
        ["bash", "-n"], input=block, text=True, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=BLOCK_IDS)
def test_no_line_continuation_is_broken_by_a_comment_or_a_trailing_space(block: str) -> None:
    """`\\ # comment` parses, but ends the command there: the next line runs on its own."""
    assert not re.search(r"\\[ \t]+(#.*)?$", block, re.MULTILINE)


def test_some_shell_block_runs_plays_consumer_as_an_operator_would() -> None:
    assert RUNNABLE


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"runnable{i}" for i in range(len(RUNNABLE))])
async def test_the_plays_consumer_blocks_run_against_a_devnet(
    block: str, devnet: DevnetServer, empty_database: str
) -> None:
    """The operator's exported variables point it at a devnet and a fresh database."""
    env = clean_env()
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "CORE_PLAYS_CORE_URL": devnet.url,
        "CORE_PLAYS_DATABASE_URL": empty_database,
        "CORE_PLAYS_METRICS_ADDR": "127.0.0.1:0",
        "CORE_PLAYS_TO_HEIGHT": "30",  # `run` follows the chain forever otherwise
    }
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-e",
        "-c",
        block,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    if "plays-consumer run" in block:
        async with await psycopg.AsyncConnection.connect(empty_database) as conn:
            cur = await conn.execute("SELECT height FROM core_plays.checkpoint")
            assert await cur.fetchone() == (30,)


# The worked example of `verify`: a devnet whose stream sent every block without its first
# transaction, written as the service wrote it, then verify, verify --repair, verify.
_EXAMPLE = re.search(r"^```text\n(\$ plays-consumer verify .*?)^```", README, re.M | re.S)
_TIMING = re.compile(r"in \d+\.\d s \([\d,]+ heights/s\)")


def _untimed(text: str) -> str:
    return _TIMING.sub("in 0.0 s (N heights/s)", text)


async def _verify_example(devnet: DevnetServer, database: str) -> str:
    """The example's commands run as written; the transcript as the README prints it."""
    from tests.integration.test_verify import write_delivered

    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await write_delivered(conn, devnet.chain, drop_first=True)
    assert _EXAMPLE is not None
    commands = [line[2:] for line in _EXAMPLE.group(1).splitlines() if line.startswith("$ ")]
    env = clean_env()
    env |= {"CORE_PLAYS_CORE_URL": devnet.url, "CORE_PLAYS_DATABASE_URL": database}
    transcript = []
    for command in commands:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "consumer",
            *command.split()[1:],
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
        transcript += [f"$ {command}", out.decode().rstrip("\n"), f"(exit {proc.returncode})"]
    return "\n".join(transcript) + "\n"


async def test_the_worked_example_of_verify_is_the_command_s_real_output(
    devnet_factory: DevnetFactory, database: str
) -> None:
    from tests.integration.test_verify import LAST

    devnet = await devnet_factory(height=LAST)
    real = await _verify_example(devnet, database)
    assert _EXAMPLE is not None
    assert _untimed(_EXAMPLE.group(1)) == _untimed(real), f"README should read:\n{real}"
