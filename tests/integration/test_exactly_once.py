"""In a live discovery database: every play once, every aggregate exact, whatever happens."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from consumer.devnet import DevChain, Faults
from consumer.errors import ChainMismatch, CheckpointMissing
from consumer.metrics import Metrics
from consumer.sink.lease import lock_key
from tests.conftest import DevnetFactory, eventually, run_consumer
from tests.consumers import Consumer
from tests.reference import assert_aggregates_exact, expected_rows, new_plays


async def test_replays_restarts_and_overlaps_keep_every_aggregate_exact(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    # GetBlocks re-sorts (a node before v1.9.0), so the polled replay sees another order.
    devnet = await devnet_factory(height=500, faults=Faults(get_blocks_resorts_txs=True))
    url = devnet.url
    await run_consumer(url, discovery, from_height=1, to_height=200)
    await run_consumer(url, discovery, to_height=300)  # restart from the checkpoint
    await run_consumer(url, discovery, from_height=150, to_height=400)  # overlapping replay
    await run_consumer(
        url, discovery, from_height=1, to_height=500, source_mode="poll"
    )  # re-sorted
    await run_consumer(url, discovery, from_height=250, to_height=350, stream="backfill-x")
    assert await new_plays(discovery) == expected_rows(devnet.chain, 1, 500)
    await assert_aggregates_exact(discovery)


async def test_two_runners_started_at_once_write_each_play_once(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(height=400)
    await asyncio.gather(
        run_consumer(devnet.url, discovery, from_height=1, to_height=400),
        run_consumer(devnet.url, discovery, from_height=1, to_height=400, source_mode="poll"),
    )
    assert await new_plays(discovery) == expected_rows(devnet.chain, 1, 400)
    await assert_aggregates_exact(discovery)


async def test_a_second_runner_stands_by_while_the_first_holds_the_lock(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(height=50)
    leader = Consumer(devnet.url, discovery, from_height=1)
    await leader.reach(50)
    standby = Consumer(devnet.url, discovery, from_height=1)

    def standing_by() -> bool:
        """Ready (its database reachable, nothing to fix) yet not the writer: a standby."""
        ready, _ = standby.runner.readiness()
        return ready and standby.value("is_leader") == 0 and not standby.task.done()

    await eventually(standing_by)
    await devnet.advance(10)
    await leader.reach(60)
    assert standing_by()
    assert standby.value("blocks_total") == 0
    await leader.finish()
    await eventually(lambda: standby.value("is_leader") == 1)
    await devnet.advance(10)
    await standby.reach(70)
    await standby.finish()
    assert await new_plays(discovery) == expected_rows(devnet.chain, 1, 70)
    await assert_aggregates_exact(discovery)


async def test_another_writer_in_plays_does_not_disturb_the_consumer(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(height=300)

    async def legacy_writer() -> None:
        async with await psycopg.AsyncConnection.connect(discovery, autocommit=True) as conn:
            for i in range(100):
                await conn.execute(
                    "INSERT INTO plays (user_id, source, play_item_id, created_at, updated_at, "
                    "slot, signature) VALUES (1, 'relay', 5, now(), now(), %s, %s)",
                    (i, f"legacy-cutover-{i}"),
                )
                await asyncio.sleep(0)

    await asyncio.gather(
        legacy_writer(),
        run_consumer(devnet.url, discovery, from_height=1, to_height=300, max_blocks=10),
    )
    assert await new_plays(discovery) == expected_rows(devnet.chain, 1, 300)
    await assert_aggregates_exact(discovery)


async def test_a_node_on_another_chain_is_refused_naming_both_chains(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    from consumer.devnet import ChainSpec

    first = await devnet_factory(height=50)
    await run_consumer(first.url, discovery, from_height=1, to_height=50)
    before = await new_plays(discovery)
    other = await devnet_factory(ChainSpec(chain_id="devnet-2", seed=2), height=80)
    with pytest.raises(ChainMismatch, match=r"devnet-2.*devnet-1"):
        await run_consumer(other.url, discovery, to_height=80)
    assert await new_plays(discovery) == before


async def test_a_new_chain_without_a_checkpoint_needs_from_height(
    devnet: Any, discovery: str
) -> None:
    with pytest.raises(CheckpointMissing, match="--from-height"):
        await run_consumer(devnet.url, discovery, to_height=10)
    assert await new_plays(discovery) == Counter()


async def test_a_node_with_another_block_at_the_checkpoint_is_refused(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    from consumer.devnet import ChainSpec

    first = await devnet_factory(height=50)
    await run_consumer(first.url, discovery, from_height=1, to_height=50)
    before = await new_plays(discovery)
    restored = await devnet_factory(ChainSpec(hash_salt="restored"), height=90)
    expected_hash = DevChain(ChainSpec()).block_hash(50)
    with pytest.raises(ChainMismatch, match=f"height 50 with block hash {expected_hash}"):
        await run_consumer(restored.url, discovery, to_height=90)
    assert await new_plays(discovery) == before


async def test_a_replay_below_the_checkpoint_leaves_the_live_checkpoint_in_place(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(height=200)
    await run_consumer(devnet.url, discovery, from_height=1, to_height=200)
    await run_consumer(devnet.url, discovery, from_height=20, to_height=60)
    async with await psycopg.AsyncConnection.connect(discovery) as conn:
        cur = await conn.execute("SELECT height FROM core_plays.checkpoint WHERE stream='live'")
        assert await cur.fetchone() == (200,)
    assert await new_plays(discovery) == expected_rows(devnet.chain, 1, 200)


async def test_a_leader_whose_session_is_killed_stops_writing_and_one_writer_remains(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(height=30)
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_consumer(devnet.url, discovery, m, stop, from_height=1))
        for m in (first, second)
    ]

    def leaders() -> float:
        return sum(
            m.registry.get_sample_value("core_plays_is_leader") or 0 for m in (first, second)
        )

    await eventually(lambda: leaders() == 1)
    leader = first if first.registry.get_sample_value("core_plays_is_leader") else second
    async with await psycopg.AsyncConnection.connect(discovery, autocommit=True) as conn:
        # The writer lock's session only (not a migrator's lock, which a standby
        # may hold for a moment at start).
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0) "
            "AND database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())",
            (lock_key(devnet.chain.spec.chain_id, "live"),),
        )
    await eventually(
        lambda: (leader.registry.get_sample_value("core_plays_db_errors_total") or 0) >= 1
    )
    await eventually(lambda: leaders() == 1)
    await devnet.advance(30)
    await eventually(
        lambda: any(
            m.registry.get_sample_value("core_plays_processed_height") == 60
            for m in (first, second)
        )
    )
    assert leaders() == 1
    stop.set()
    await asyncio.gather(*tasks)
    assert await new_plays(discovery) == expected_rows(devnet.chain, 1, 60)
    await assert_aggregates_exact(discovery)


async def test_a_from_height_above_the_checkpoint_is_refused_rather_than_leaving_a_gap(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    from consumer.errors import ConfigError

    devnet = await devnet_factory(height=120)
    await run_consumer(devnet.url, discovery, from_height=1, to_height=50)
    before = await new_plays(discovery)
    with pytest.raises(ConfigError, match=r"heights 51\.\.79 would never be written"):
        await run_consumer(devnet.url, discovery, from_height=80, to_height=120)
    assert await new_plays(discovery) == before


async def test_a_stop_while_waiting_for_the_node_to_reach_the_checkpoint_ends_the_run(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(height=50)
    await run_consumer(devnet.url, discovery, from_height=1, to_height=50)
    devnet.faults.head_behind = 100  # a node restored from an older snapshot
    stop, metrics = asyncio.Event(), Metrics(CollectorRegistry())
    task = asyncio.create_task(run_consumer(devnet.url, discovery, metrics, stop))
    await eventually(lambda: metrics.registry.get_sample_value("core_plays_is_leader") == 1)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, timeout=10)
