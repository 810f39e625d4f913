"""What a run tells the operator: catch-up progress, reaching the tip, one summary line."""

from __future__ import annotations

from collections import Counter

import psycopg

from consumer.devnet import DevnetServer
from consumer.model import BatchResult, Undecodable
from consumer.service.progress import RunProgress, format_duration
from tests.conftest import run_consumer


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _batch(height: int, blocks: int, plays: int = 0) -> BatchResult:
    return BatchResult(blocks=blocks, height=height, plays_written=plays)


async def test_a_bounded_run_sums_every_committed_block_and_play(
    devnet: DevnetServer, database: str
) -> None:
    runner = await run_consumer(devnet.url, database, from_height=1, to_height=40)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT count(*) FROM plays")
        (rows,) = await cur.fetchone() or (0,)
    summary = runner.progress.summary
    assert (summary.first_height, summary.last_height, summary.blocks) == (1, 40, 40)
    assert summary.plays_written == rows > 0
    assert summary.transactions >= summary.duplicates == 0


async def test_a_replay_that_wrote_nothing_says_so(devnet: DevnetServer, database: str) -> None:
    await run_consumer(devnet.url, database, from_height=1, to_height=40)
    replay = await run_consumer(devnet.url, database, from_height=1, to_height=40)
    summary = replay.progress.summary
    assert summary.plays_written == 0 and summary.duplicates > 0
    assert "nothing new was written" in summary.line()


def test_a_catch_up_reports_height_head_rate_and_eta_once_per_interval() -> None:
    clock = _Clock()
    progress = RunProgress(lambda: 10_000.0, interval_s=5.0, clock=clock)
    clock.now = 1.0
    assert progress.observe(_batch(1000, 1000)) is None
    clock.now = 5.0
    line = progress.observe(_batch(2000, 1000))
    assert line == (
        "catching up: height 2000, head 10000 (8000 blocks behind), 400 blocks/s, ETA 20.0 s"
    )
    clock.now = 6.0
    assert progress.observe(_batch(2400, 400)) is None


def test_reaching_the_tip_is_said_once() -> None:
    clock = _Clock()
    progress = RunProgress(lambda: 3000.0, interval_s=5.0, clock=clock)
    progress.observe(_batch(1000, 1000))
    clock.now = 2.0
    line = progress.observe(_batch(3000, 2000))
    assert line is not None and line.startswith("reached the tip at height 3000")
    clock.now = 9.0
    assert progress.observe(_batch(3000, 0)) is None


def test_the_summary_line_names_skips_repairs_and_quarantine_by_reason() -> None:
    clock = _Clock()
    progress = RunProgress(lambda: 10.0, end_height=10, clock=clock)
    result = _batch(10, 10, plays=7)
    result.skipped = Counter({"track_id_not_integer": 2})
    result.repaired = Counter({"timestamp_missing": 1})
    result.quarantined = Counter({Undecodable.TRANSACTION: 1})
    progress.observe(result)
    clock.now = 2.0
    line = progress.finish().line()
    assert "heights 1..10 (10 blocks)" in line and "7 plays written" in line
    assert "skipped (track_id_not_integer 2)" in line
    assert "repaired (timestamp_missing 1)" in line and "quarantined (transaction 1)" in line
    assert "5 blocks/s" in line


def test_durations_read_as_seconds_minutes_or_hours() -> None:
    assert [format_duration(s) for s in (3.25, 245, 7380)] == ["3.2 s", "4m05s", "2h03m"]
