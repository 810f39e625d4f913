"""scripts/migration_bench.py keeps working: a small ledger runs end to end and prints every figure.

No figure is compared with a target here (timings on a shared test machine say
nothing); the README quotes the full-size run.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import psycopg
import pytest

from tests.conftest import ADMIN_URL, SCRIPTS, eventually, run_script

SCRIPT = SCRIPTS / "migration_bench.py"
NUMBER = r"[\d,]+(\.\d+)?"
LINES = ["ledger rows", "migration wall time s", "index build time s", "transactional part retried"]
TABLE = [
    "writer commits",
    "commits/s",
    "p99 commit ms",
    "longest writer stall ms",
    "longest stall began at s",
    "failed commits",
]


def bench_databases() -> set[str]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'cpc_migration_bench_%'"
        ).fetchall()
    return {name for (name,) in rows}


@pytest.fixture(scope="module")
def report() -> str:
    return run_script(SCRIPT.name, "--rows", "20000", timeout_s=120)


@pytest.mark.parametrize("name", LINES)
def test_the_report_gives_each_figure_of_the_run(report: str, name: str) -> None:
    assert re.search(rf"^{re.escape(name)}: {NUMBER}", report, re.MULTILINE), report


@pytest.mark.parametrize("name", TABLE)
def test_the_report_gives_each_writer_figure_during_the_migration_and_without_it(
    report: str, name: str
) -> None:
    row = rf"^\| {re.escape(name)} \| {NUMBER}.* \| {NUMBER}.* \|$"
    assert re.search(row, report, re.MULTILINE), report


def test_writers_committed_during_the_migration(report: str) -> None:
    match = re.search(r"^\| writer commits \| ([\d,]+) \|", report, re.MULTILINE)
    assert match is not None and int(match[1].replace(",", "")) > 0, report


def test_the_benchmark_drops_its_database(report: str) -> None:
    assert database_name(report) not in bench_databases()


async def test_an_interrupted_benchmark_drops_its_database() -> None:
    """Ctrl-C while the ledger is being generated still leaves nothing behind."""
    bench = await asyncio.create_subprocess_exec(
        *(sys.executable, str(SCRIPT), "--rows", "50000000", "--database-url", ADMIN_URL),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert bench.stdout is not None
        name = database_name((await bench.stdout.readline()).decode())
        await eventually(lambda: generating(name), interval_s=0.2)
        bench.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(bench.wait(), timeout=60) != 0  # interrupted
    finally:
        if bench.returncode is None:
            bench.kill()
            await bench.wait()
    assert name not in bench_databases()


def database_name(report: str) -> str:
    match = re.search(r"^database: (cpc_migration_bench_\w+)", report, re.MULTILINE)
    assert match is not None, report
    return match[1]


async def generating(name: str) -> bool:
    async with await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
            (name, "%INSERT INTO core_plays.tx_ledger%"),
        )
        row = await cur.fetchone()
    return row is not None and row[0] > 0
