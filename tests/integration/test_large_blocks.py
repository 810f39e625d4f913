"""Blocks too big to hold decoded are written a part at a time, and exactly once."""

from __future__ import annotations

import asyncio

import psycopg
from prometheus_client import CollectorRegistry

from consumer.decode.blocks import LARGE_BLOCK_BYTES
from consumer.devnet import ChainSpec, Faults, Profile
from consumer.metrics import Metrics
from consumer.model import Block, DecodedBlock
from consumer.service.batching import BlockQueue
from tests.conftest import DevnetFactory, run_consumer
from tests.reference import assert_aggregates_exact, expected_rows, plays_rows

# Twelve transactions of 5,000 plays: a little over LARGE_BLOCK_BYTES of transactions.
LARGE = ChainSpec(profile=Profile.BUSY, busy_txs_per_block=12, busy_plays_per_tx=5000)


def raw_block(height: int) -> Block:
    return Block(height, f"B{height}", "chain", 0, 0, ())


def decoded(height: int) -> DecodedBlock:
    return DecodedBlock(height, f"B{height}", "chain", None, ())


async def test_the_chosen_chain_has_blocks_over_the_large_block_threshold(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(spec=LARGE, height=1)
    assert sum(len(tx.data) for tx in devnet.chain.txs(1)) > LARGE_BLOCK_BYTES


async def test_large_blocks_end_with_exactly_the_reference_rows(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(spec=LARGE, height=3)
    metrics = Metrics(CollectorRegistry())
    await run_consumer(devnet.url, database, metrics, from_height=1, to_height=3)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, 3)
    assert metrics.registry.get_sample_value("core_plays_blocks_total") == 3


async def test_a_large_block_replayed_writes_nothing_and_fires_on_play_once(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(spec=LARGE, height=2)
    await run_consumer(devnet.url, discovery, from_height=1, to_height=2)
    replay = Metrics(CollectorRegistry())
    await run_consumer(devnet.url, discovery, replay, from_height=1, to_height=2)
    assert replay.registry.get_sample_value("core_plays_plays_written_total") == 0
    await assert_aggregates_exact(discovery)


async def test_an_undecoded_large_block_waits_for_an_empty_queue() -> None:
    queue = BlockQueue(max_blocks=10, max_plays=100)
    await queue.put(decoded(1))
    put = asyncio.create_task(queue.put(raw_block(2)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not put.done()
    await queue.get()
    await asyncio.wait_for(put, timeout=5)


async def test_an_undecoded_large_block_is_never_part_of_a_batch() -> None:
    queue = BlockQueue(max_blocks=10, max_plays=100)
    await queue.put(decoded(1))
    first = await queue.get()
    assert isinstance(first, DecodedBlock)
    await queue.put(raw_block(2))
    batch, finished = queue.take_batch(first, max_blocks=10, max_plays=100)
    assert [b.height for b in batch] == [1]
    assert not finished
    assert len(queue) == 1


async def test_the_audit_repairs_a_large_block_the_stream_delivered_short(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(spec=LARGE, height=2, faults=Faults(stream_omits_first_tx=True))
    metrics = Metrics(CollectorRegistry())
    await run_consumer(
        devnet.url, database, metrics, from_height=1, to_height=2, source_mode="stream"
    )
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, 2)
    assert (
        metrics.registry.get_sample_value("core_plays_audit_mismatches_total", {"kind": "missing"})
        == 2
    )
