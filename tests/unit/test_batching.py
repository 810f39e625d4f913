"""BlockQueue: bounded in blocks and in plays, drained into batches that fit the limits."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from consumer.model import DecodedBlock, DecodedTx, PlayRow
from consumer.service.batching import BlockQueue

T0 = datetime(2026, 1, 1)
PLAY = PlayRow(1, 2, T0, "sig", "Lisbon", "Lisboa", "PT")


def block(height: int, plays: int = 0) -> DecodedBlock:
    txs = (DecodedTx(0, f"H{height}", (PLAY,) * plays, 0),) if plays else ()
    return DecodedBlock(height, f"B{height}", "chain", T0, txs)


async def blocked(put: asyncio.Task[None]) -> bool:
    """Whether `put` is still waiting after the loop has had every chance to run it."""
    for _ in range(5):
        await asyncio.sleep(0)
    return not put.done()


async def test_put_waits_while_the_queue_holds_max_blocks() -> None:
    queue = BlockQueue(max_blocks=2, max_plays=100)
    await queue.put(block(1))
    await queue.put(block(2))
    third = asyncio.create_task(queue.put(block(3)))
    assert await blocked(third)
    assert (await queue.get()) == block(1)
    await third
    assert len(queue) == 2


async def test_put_waits_while_the_plays_would_pass_max_plays() -> None:
    queue = BlockQueue(max_blocks=100, max_plays=10)
    await queue.put(block(1, plays=6))
    second = asyncio.create_task(queue.put(block(2, plays=6)))
    assert await blocked(second)
    await queue.get()
    await second
    assert queue.plays == 6


async def test_a_block_bigger_than_max_plays_still_enters_an_empty_queue() -> None:
    queue = BlockQueue(max_blocks=100, max_plays=10)
    async with asyncio.timeout(5):
        await queue.put(block(1, plays=50))
    assert queue.plays == 50


async def test_get_waits_for_a_block() -> None:
    queue = BlockQueue(max_blocks=10, max_plays=10)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.put(block(7))
    assert (await getter) == block(7)


async def test_a_batch_takes_everything_queued_up_to_max_blocks() -> None:
    queue = BlockQueue(max_blocks=100, max_plays=100)
    for height in range(2, 10):
        await queue.put(block(height))
    batch, finished = queue.take_batch(block(1), max_blocks=5, max_plays=100)
    assert ([b.height for b in batch], finished) == ([1, 2, 3, 4, 5], False)
    assert len(queue) == 4


async def test_a_batch_stops_before_the_block_that_would_pass_max_plays() -> None:
    queue = BlockQueue(max_blocks=100, max_plays=10_000)
    for height in (2, 3, 4):
        await queue.put(block(height, plays=2000))
    batch, _ = queue.take_batch(block(1, plays=2000), max_blocks=100, max_plays=5000)
    assert [b.height for b in batch] == [1, 2]
    assert [await queue.get(), await queue.get()] == [block(3, plays=2000), block(4, plays=2000)]


async def test_a_block_alone_over_max_plays_is_a_batch_of_one() -> None:
    queue = BlockQueue(max_blocks=100, max_plays=100)
    await queue.put(block(2, plays=1))
    batch, _ = queue.take_batch(block(1, plays=9000), max_blocks=100, max_plays=5000)
    assert [b.height for b in batch] == [1]


async def test_at_the_tip_a_lone_block_is_a_batch_of_one() -> None:
    queue = BlockQueue(max_blocks=100, max_plays=100)
    await queue.put(block(1, plays=3))
    first = await queue.get()
    assert isinstance(first, DecodedBlock)
    assert queue.take_batch(first, max_blocks=1000, max_plays=5000) == ([first], False)


@pytest.mark.parametrize("queued", [[], [2, 3]], ids=["alone", "after-blocks"])
async def test_the_end_marker_finishes_the_batch(queued: list[int]) -> None:
    queue = BlockQueue(max_blocks=100, max_plays=100)
    for height in queued:
        await queue.put(block(height))
    await queue.put(None)
    batch, finished = queue.take_batch(block(1), max_blocks=100, max_plays=100)
    assert ([b.height for b in batch], finished) == ([1, *queued], True)
    assert queue.empty()
