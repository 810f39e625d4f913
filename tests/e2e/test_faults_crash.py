"""Processes killed at random moments, mid-commit included: nothing lost, nothing doubled.

The number of SIGKILLs is CORE_PLAYS_TEST_KILLS (a quick setting by default);
the long run reported in the notes used CORE_PLAYS_TEST_KILLS=60.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from functools import partial

import psycopg

from consumer.devnet import ChainSpec
from tests.conftest import DevnetFactory, eventually
from tests.procs import ConsumerProcess, run_once, start_consumer
from tests.reference import assert_aggregates_exact, expected_rows, new_plays

KILLS = int(os.environ.get("CORE_PLAYS_TEST_KILLS", "6"))


async def checkpoint_height(database: str) -> int:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute(
            "SELECT coalesce(max(height), 0) FROM core_plays.checkpoint WHERE stream = 'live'"
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _started(consumer: ConsumerProcess) -> bool:
    return await consumer.sample("core_plays_is_leader") == 1


async def test_repeated_sigkills_at_random_moments_leave_exactly_the_chains_plays(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    spec = ChainSpec(genesis_time_s=int(time.time()) - 4000)
    devnet = await devnet_factory(spec, height=4000, block_interval_s=0.01)
    rng = random.Random(KILLS)
    args = (
        "--core-url",
        devnet.url,
        "--database-url",
        discovery,
        "--max-blocks",
        "50",
        "--lease-retry-s",
        "0.2",
        "--catchup-threshold-blocks",
        "500",
    )
    code, _, err = await run_once(
        "run", *args, "--from-height", "1", "--to-height", "5", "--metrics-addr", "127.0.0.1:0"
    )
    assert code == 0, err
    heights = []
    for _ in range(KILLS):
        consumer = await start_consumer(*args)  # resumes from the checkpoint alone
        await eventually(partial(_started, consumer), timeout_s=30)
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        consumer.signal(signal.SIGKILL)
        assert await consumer.wait() == -signal.SIGKILL
        heights.append(await checkpoint_height(discovery))
    await devnet.stop_growing()  # freeze the chain for the final comparison
    last = devnet.head
    code, _, err = await run_once(
        "run", *args, "--to-height", str(last), "--metrics-addr", "127.0.0.1:0", timeout_s=120
    )
    assert code == 0, err
    assert heights == sorted(heights)  # progress is kept across every kill
    assert await new_plays(discovery) == expected_rows(devnet.chain, 1, last)
    await assert_aggregates_exact(discovery)


async def test_sigterm_during_catch_up_exits_zero_quickly_with_rows_matching_the_checkpoint(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(height=20000)
    consumer = await start_consumer(
        "--core-url", devnet.url, "--database-url", discovery, "--from-height", "1"
    )
    await eventually(lambda: _processed_at_least(consumer, 2000), timeout_s=60)
    consumer.signal(signal.SIGTERM)
    # The pod's grace period is 30 s; a clean stop must fit well inside it.
    assert await consumer.wait(timeout_s=10) == 0, consumer.text()
    height = await checkpoint_height(discovery)
    assert 2000 <= height < 20000
    assert await new_plays(discovery) == expected_rows(devnet.chain, 1, height)
    await assert_aggregates_exact(discovery)


async def _processed_at_least(consumer: ConsumerProcess, height: int) -> bool:
    value = await consumer.sample("core_plays_processed_height")
    return value is not None and value >= height
