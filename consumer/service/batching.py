"""The queue between decode and the writer, and the batch policy that drains it.

Adaptive batching needs no timer and no setting: the writer takes whatever is
queued when it becomes free. While the node is ahead, blocks pile up during
each commit, so the next batch is as large as the limits allow; at the tip the
queue holds one block at a time, so each block commits alone the moment it
arrives. A block therefore waits at most for the commit in progress, and the
limits on blocks and plays bound how long any commit (hence that wait) can be.

The queue is bounded twice, because a count of blocks alone does not bound
memory: a thousand empty blocks are 100 KB, a thousand busy ones a gigabyte of
decoded rows. `put` waits while the queue holds `max_blocks` blocks or its
plays would pass `max_plays`; a block is always admitted into an empty queue,
however big, or a block larger than the bound could never move.

A block too big to hold decoded travels undecoded (a `Block`): it takes the
whole plays bound, so it waits for an empty queue and nothing queues behind it
until the writer has taken it, and it is always a batch of its own (the writer
decodes and writes it a part at a time, see PlaysSink.write_parts).
"""

from __future__ import annotations

import asyncio
from collections import deque

from consumer.model import Block, DecodedBlock

__all__ = ["BlockQueue", "QueueItem"]

QueueItem = DecodedBlock | Block | None  # None: the source is done


class BlockQueue:
    """Decoded blocks in height order, then None once the source is done.

    One producer and one consumer (the pipeline's two stages), so two events
    are all the signalling needed.
    """

    def __init__(self, max_blocks: int, max_plays: int) -> None:
        self.max_blocks = max_blocks
        self.max_plays = max_plays
        self._items: deque[tuple[QueueItem, int]] = deque()
        self._plays = 0
        self._ready = asyncio.Event()  # something to take
        self._space = asyncio.Event()  # something was taken

    def __len__(self) -> int:
        return len(self._items)

    @property
    def plays(self) -> int:
        return self._plays

    def empty(self) -> bool:
        return not self._items

    async def put(self, block: QueueItem) -> None:
        """Queue a block (None: the end), waiting while the queue is full."""
        if block is None:
            size = 0
        elif isinstance(block, Block):
            size = self.max_plays + 1  # a large block, undecoded: alone in the queue
        else:
            size = block.play_count
        while self._items and (
            len(self._items) >= self.max_blocks or self._plays + size > self.max_plays
        ):
            self._space.clear()
            await self._space.wait()
        self._items.append((block, size))
        self._plays += size
        self._ready.set()

    async def get(self) -> QueueItem:
        """The next block, waiting for one if the queue is empty."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._pop()

    def take_batch(
        self, first: DecodedBlock, max_blocks: int, max_plays: int
    ) -> tuple[list[DecodedBlock], bool]:
        """`first` and the queued blocks that fit after it, without waiting.

        A batch stops before the block that would take it past `max_plays`
        (so a transaction stays within a few thousand plays, where the plays
        trigger is cheapest) or at `max_blocks`. Returns the batch and whether
        the end of the source was reached.
        """
        batch = [first]
        plays = first.play_count
        items = self._items
        while items and len(batch) < max_blocks:
            block, size = items[0]
            if block is None:
                self._pop()
                return batch, True
            if isinstance(block, Block) or plays + size > max_plays:
                break
            self._pop()
            batch.append(block)
            plays += size
        return batch, False

    def _pop(self) -> QueueItem:
        block, size = self._items.popleft()
        self._plays -= size
        self._space.set()
        return block
