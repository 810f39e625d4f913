"""End to end in one process: a real devnet over gRPC, real PostgreSQL, the real runner."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from consumer.devnet import ChainSpec, DevChain, Faults
from consumer.metrics import Metrics
from tests.conftest import DevnetFactory, eventually, run_consumer
from tests.consumers import Consumer
from tests.reference import expected_rows, malformed_tx_hashes, play_tx_hashes, plays_rows

COUNT_TRIGGER = """
CREATE TABLE play_counts (play_item_id int PRIMARY KEY, n int NOT NULL);
CREATE FUNCTION count_play() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO play_counts VALUES (NEW.play_item_id, 1)
  ON CONFLICT (play_item_id) DO UPDATE SET n = play_counts.n + 1;
  RETURN NEW;
END $$;
CREATE TRIGGER on_play AFTER INSERT ON plays FOR EACH ROW EXECUTE FUNCTION count_play();
"""


async def query(database: str, sql: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute(sql)
        return await cur.fetchall()


async def test_run_from_height_one_writes_exactly_the_chains_plays(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=300)
    await run_consumer(devnet.url, database, from_height=1, to_height=300)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, 300)
    [(height, block_hash)] = await query(
        database, "SELECT height, block_hash FROM core_plays.checkpoint WHERE stream = 'live'"
    )
    assert (height, block_hash) == (300, devnet.chain.block_hash(300))


async def test_every_play_transaction_is_in_the_ledger_once(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=300)
    await run_consumer(devnet.url, database, from_height=1, to_height=300)
    rows = await query(database, "SELECT tx_hash FROM core_plays.tx_ledger")
    assert sorted(r[0] for r in rows) == sorted(play_tx_hashes(devnet.chain, 1, 300))


async def test_replaying_the_same_range_writes_nothing_new_and_triggers_once(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=250)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(COUNT_TRIGGER)
    await run_consumer(devnet.url, database, from_height=1, to_height=250)
    await run_consumer(devnet.url, database, from_height=1, to_height=250)
    await run_consumer(devnet.url, database, from_height=100, to_height=250, source_mode="poll")
    expected = expected_rows(devnet.chain, 1, 250)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected
    per_track: dict[int, int] = {}
    for row, n in expected.items():
        per_track[row[1]] = per_track.get(row[1], 0) + n
    counted = dict(await query(database, "SELECT play_item_id, n FROM play_counts"))
    assert counted == per_track


async def test_a_replay_counts_its_transactions_as_duplicates(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=120)
    await run_consumer(devnet.url, database, from_height=1, to_height=120)
    await run_consumer(devnet.url, database, metrics, from_height=1, to_height=120)
    duplicates = metrics.registry.get_sample_value("core_plays_duplicate_transactions_total")
    assert duplicates == len(play_tx_hashes(devnet.chain, 1, 120))
    assert metrics.registry.get_sample_value("core_plays_plays_written_total") == 0


async def test_restart_without_flags_resumes_from_the_checkpoint(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=400)
    stop = asyncio.Event()
    first = asyncio.create_task(
        run_consumer(
            devnet.url,
            database,
            metrics,
            stop,
            from_height=1,
            to_height=400,
            source_mode="stream",
            max_blocks=5,
        )
    )
    await eventually(
        lambda: (metrics.registry.get_sample_value("core_plays_processed_height") or 0) >= 100
    )
    stop.set()
    await first
    [(stopped_at,)] = await query(database, "SELECT height FROM core_plays.checkpoint")
    assert 100 <= stopped_at < 400
    await run_consumer(devnet.url, database, to_height=400)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, 400)


async def test_polling_fallback_writes_the_same_rows_as_the_stream(
    devnet_factory: DevnetFactory, database: str, template_db: str
) -> None:
    streaming = await devnet_factory(height=300)
    old_node = await devnet_factory(
        height=300, faults=Faults(stream_unimplemented=True, get_blocks_resorts_txs=True)
    )
    await run_consumer(streaming.url, database, from_height=1, to_height=300, source_mode="stream")
    async with await psycopg.AsyncConnection.connect(database) as conn:
        streamed = await plays_rows(conn)
        await conn.execute(
            "TRUNCATE plays, core_plays.tx_ledger, core_plays.checkpoint, core_plays.quarantine"
        )
        await conn.commit()
    runner = await run_consumer(old_node.url, database, from_height=1, to_height=300)
    assert runner.metrics.registry.get_sample_value("core_plays_source_mode", {"mode": "poll"}) == 1
    async with await psycopg.AsyncConnection.connect(database) as conn:
        polled = await plays_rows(conn)
    assert polled == streamed
    assert streamed == expected_rows(streaming.chain, 1, 300)


async def test_get_blocks_returns_transactions_in_another_order_than_the_stream(
    devnet_factory: DevnetFactory,
) -> None:
    """The premise of the test above: the two paths really do differ in order."""
    devnet = await devnet_factory(height=300)
    chain = devnet.chain
    differs = [
        h
        for h in range(1, 301)
        if chain.block_bytes(h, canon=True) != chain.block_bytes(h, canon=False)
    ]
    assert differs


async def test_malformed_transaction_is_quarantined_and_its_block_still_written(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    chain = DevChain(ChainSpec())
    height = next(
        h for h in range(1, 2000) if {t.kind.value for t in chain.txs(h)} >= {"malformed", "plays"}
    )
    devnet = await devnet_factory(height=height + 5)
    await run_consumer(devnet.url, database, metrics, from_height=height, to_height=height + 5)
    bad = [t for t in chain.txs(height) if t.kind.value == "malformed"]
    quarantined = await query(
        database, f"SELECT tx_hash, data FROM core_plays.quarantine WHERE block_height = {height}"
    )
    assert sorted(quarantined) == sorted((t.hash, t.data) for t in bad)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        rows = await plays_rows(conn)
    assert +Counter({r: n for r, n in rows.items() if r[3] == height}) == +Counter(
        {r: n for r, n in expected_rows(chain, height, height).items()}
    )
    assert metrics.registry.get_sample_value(
        "core_plays_quarantined_total", {"kind": "transaction"}
    ) == len(malformed_tx_hashes(chain, height, height + 5))
    [(checkpoint,)] = await query(database, "SELECT height FROM core_plays.checkpoint")
    assert checkpoint == height + 5


@pytest.mark.parametrize("mode", ["stream", "poll", "auto"])
async def test_every_source_mode_reaches_the_same_rows(
    devnet_factory: DevnetFactory, database: str, mode: str
) -> None:
    devnet = await devnet_factory(height=600)
    await run_consumer(
        devnet.url,
        database,
        from_height=1,
        to_height=600,
        source_mode=mode,
        catchup_threshold_blocks=100,
        poll_window=50,
    )
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, 600)


# --- adaptive batching, end to end ---------------------------------------------------


def batches(metrics: Metrics, le: str = "+Inf") -> float:
    value = metrics.registry.get_sample_value("core_plays_batch_blocks_bucket", {"le": le})
    return 0.0 if value is None else value


async def test_catching_up_commits_many_blocks_per_transaction(
    devnet_factory: DevnetFactory, database: str
) -> None:
    """Blocks pile up behind each commit, so the next one takes them all."""
    devnet = await devnet_factory(height=300)
    metrics = Metrics(CollectorRegistry())
    await run_consumer(devnet.url, database, metrics, from_height=1, to_height=300)
    assert batches(metrics) <= 100  # 300 blocks, at least 3 a commit on average


async def test_at_the_tip_every_block_commits_on_its_own(
    devnet_factory: DevnetFactory, database: str
) -> None:
    """Each block is produced once the one before is written: batches of one."""
    devnet = await devnet_factory(height=5)
    consumer = Consumer(devnet.url, database, from_height=1, to_height=25)
    await consumer.reach(5)
    for height in range(6, 26):
        await devnet.advance()
        await consumer.reach(height)
    await consumer.task
    assert batches(consumer.metrics, le="1.0") >= 20  # blocks 6..25, one commit each
    assert batches(consumer.metrics) - batches(consumer.metrics, le="1.0") <= 2  # 1..5
