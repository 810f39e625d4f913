"""scripts/bench keeps working: its quick mode runs end to end and prints every figure.

No figure is compared with a target here (the machine running the tests is not
the one the targets are for); the benchmark itself is where speed is judged.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys

import psycopg
import pytest

from tests.conftest import ADMIN_URL, SCRIPTS, eventually, run_script

sys.path.insert(0, str(SCRIPTS))  # the benchmark is a package of scripts/, not of the project

from bench.databases import fresh_database
from bench.listener import CommitListener
from bench.records import ConsumerRun

# A whole quick run, three profiles each with two consumer processes, takes a minute
# and more on a machine shared with other test runs.
pytestmark = pytest.mark.timeout(240)
NUMBER = re.compile(r"-?[\d,]+(\.\d+)?")
# Figures that have no meaning for a profile: an empty chain has no plays to
# count, cost or compare. The memory slope needs a few samples past warm-up,
# which a quick run of empty blocks may finish before.
NOT_APPLICABLE = {
    "empty": {
        "CPU s / 1k plays",
        "ceiling plays/s",
        "consumer / ceiling",
        "PostgreSQL alone, tip p99 ms",
    },
}
MAY_BE_TOO_SHORT = {"RSS slope MB / 10k blocks"}


@pytest.fixture(scope="module")
def quick_report() -> str:
    return run_script("bench", "--quick", timeout_s=200)


def table_rows(report: str) -> dict[str, dict[str, str]]:
    lines = [line for line in report.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_quick_mode_reports_every_profile(quick_report: str) -> None:
    assert set(table_rows(quick_report)) == {"empty", "typical", "busy"}


def test_quick_mode_prints_every_figure(quick_report: str) -> None:
    for profile, row in table_rows(quick_report).items():
        for column, value in row.items():
            if column == "profile":
                continue
            if column in NOT_APPLICABLE.get(profile, set()) | MAY_BE_TOO_SHORT and value == "n/a":
                continue
            assert NUMBER.fullmatch(value), f"{profile}: {column} is {value!r}"


def test_quick_mode_names_the_machine_and_the_command(quick_report: str) -> None:
    assert re.search(r"^machine: \d+ CPUs", quick_report, re.MULTILINE)
    assert re.search(r"^command: scripts/bench --quick", quick_report, re.MULTILINE)


def test_quick_mode_backfills_plays_for_the_profiles_that_carry_them(quick_report: str) -> None:
    rows = table_rows(quick_report)
    assert rows["empty"]["plays"] == "0"
    assert int(rows["typical"]["plays"].replace(",", "")) > 0
    assert int(rows["busy"]["plays"].replace(",", "")) == 300 * 2 * 50


async def test_the_commit_listener_survives_a_lost_connection() -> None:
    """An hour-long memory run must not be lost to one dropped connection: the
    listener reconnects and goes on recording commits."""
    move = "UPDATE core_plays.checkpoint SET height = %s"
    async with fresh_database(ADMIN_URL, f"bench_listener_{os.getpid()}", notify=True) as url:
        run = ConsumerRun()
        listener = CommitListener(url, run)
        await listener.connect()
        task = asyncio.ensure_future(listener.listen())
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO core_plays.checkpoint (chain_id, stream, start_height, height, "
                "block_hash, block_time, updated_at) VALUES ('c', 'live', 1, 5, 'h', now(), now())"
            )
            await eventually(lambda: listener.height == 5)
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await eventually(lambda: run.listener_reconnects == 1)
            # Before the new LISTEN (read back) or after it (notified): seen either way.
            await conn.execute(move, (9,))
            await eventually(lambda: listener.height == 9)
            await conn.execute(move, (12,))
            await eventually(lambda: listener.height == 12)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await listener.close()
    assert [height for _, height in run.commits] == [5, 9, 12]


async def test_the_last_drain_reconnects_when_a_reconnect_was_cut_short() -> None:
    """The run's listener task is cancelled when the consumer exits, possibly in the
    middle of a reconnect; the drain after it must reconnect, not fail the run."""
    async with fresh_database(ADMIN_URL, f"bench_drain_{os.getpid()}", notify=True) as url:
        run = ConsumerRun()
        listener = CommitListener(url, run)
        await listener.connect()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO core_plays.checkpoint (chain_id, stream, start_height, height, "
                "block_hash, block_time, updated_at) VALUES ('c', 'live', 1, 7, 'h', now(), now())"
            )
        await listener.close()  # where a cancelled reconnect leaves it: no connection
        await listener.listen(quiet_s=0.2)
        await listener.close()
    assert listener.height == 7  # read back on the reconnect
