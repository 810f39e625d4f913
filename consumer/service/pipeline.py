"""One writing session's data flow: source -> decode -> queue -> writer, until done or stop.

A producer task reads blocks from the source and decodes them into a queue
bounded in blocks and in plays (the bound is the back-pressure, and it bounds
memory whatever the block size); the write loop takes whatever the queue holds,
up to the batch limits, and commits it with its checkpoint. While the node is
ahead the queue fills during each commit, so batches grow by themselves; at the
tip the queue holds one block at a time, so each block commits on its own as
soon as it arrives (consumer.service.batching). Decode runs on the loop: scripts/bench
shows the database, not the loop, is what a catch-up waits for.

The source and the writer are seams: anything with `blocks(start, end)` and
`head()` can feed the pipeline, so its edge cases (stop during a batch, the
lease lost mid-commit) are tested with blocks from memory and a real
PostgreSQL (tests/integration/test_pipeline.py), no node needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from typing import Any, Protocol

from consumer.config import Settings
from consumer.decode.blocks import (
    LARGE_BLOCK_BYTES,
    LARGE_BLOCK_PART_BYTES,
    block_parts,
    decode_steps,
    wire_bytes,
)
from consumer.errors import SourceUnavailable
from consumer.metrics import Metrics
from consumer.model import BatchResult, Block, DecodedBlock
from consumer.service.batching import BlockQueue
from consumer.service.writer import Writer
from consumer.trust.audit import Auditor

__all__ = ["BlockSource", "Pipeline", "first_error"]

log = logging.getLogger(__name__)

_STOP = object()
_IDLE = object()
# Plays decoded between two turns of the loop: ~0.25 ms of decode (see decode_steps).
_DECODE_SLICE_PLAYS = 64


class BlockSource(Protocol):
    """Where blocks come from, in height order (consumer.source.core.CoreSource for a node)."""

    def blocks(self, start: int, end: int | None = None) -> AsyncGenerator[Block, None]: ...

    async def head(self) -> int: ...


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a TaskGroup's group (cancellations are consequences)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


class Pipeline:
    """One session's tasks: the producer, the head watcher, the audit and the write loop.

    The write loop is the only task that uses the writer's connection (see
    consumer.service.writer); the audit and the head watcher have their own.
    """

    def __init__(
        self,
        source: BlockSource,
        writer: Writer,
        settings: Settings,
        metrics: Metrics,
        stop: asyncio.Event,
        *,
        auditor: Auditor | None = None,
        on_commit: Callable[[BatchResult], None] = lambda result: None,
    ) -> None:
        self.source = source
        self.writer = writer
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.auditor = auditor
        self.on_commit = on_commit

    async def run(self, start: int, end: int | None) -> bool:
        """Write from `start` to `end` (None: forever); True when done or stopped."""
        batch = self.settings.batch
        # Plays bound: one full batch ready behind the one being written, so the
        # database never waits for decode, and no more (see consumer.service.batching).
        queue = BlockQueue(batch.queue_blocks, 2 * batch.max_plays)
        await self.writer.count_set_aside()
        auditor = self.auditor
        try:
            async with asyncio.TaskGroup() as tg:
                producer = tg.create_task(self._produce(queue, start, end))
                watcher = tg.create_task(self._watch())
                audit = tg.create_task(auditor.run()) if auditor else None
                try:
                    done = await self._write_batches(queue)
                    if done and end is not None and auditor is not None:
                        await self._until_audited(auditor, end)
                    return done
                finally:
                    producer.cancel()
                    watcher.cancel()
                    if audit is not None:
                        audit.cancel()
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _produce(self, queue: BlockQueue, start: int, end: int | None) -> None:
        async with contextlib.aclosing(self.source.blocks(start, end)) as blocks:
            async for block in blocks:
                if wire_bytes(block) > LARGE_BLOCK_BYTES:
                    await queue.put(block)  # decoded by the writer, a part at a time
                else:
                    await queue.put(await _decode_cooperatively(decode_steps(block)))
                del block  # not held while waiting for the next one
        await queue.put(None)

    async def _watch(self) -> None:
        """Keep the head fresh for lag (the writer's connection is not this task's)."""
        while True:
            await asyncio.sleep(self.settings.source.head_refresh_s)
            try:
                await self.source.head()
            except SourceUnavailable as exc:
                self.metrics.source_errors_total.labels(exc.code).inc()

    async def _until_audited(self, auditor: Auditor, end: int) -> None:
        """A bounded run ends verified: every height of it audited (or stopped)."""
        if auditor.audited_height >= end or self.stop.is_set():
            return
        log.info("--to-height %d written; waiting for the audit to re-read it", end)
        waiter = asyncio.ensure_future(auditor.until_audited(end))
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        if auditor.audited_height >= end:
            log.info("audited up to height %d", end)

    async def _write_batches(self, queue: BlockQueue) -> bool:
        """Write batches until the source ends or stop is set (see consumer.service.batching)."""
        limits = self.settings.batch
        stopper: asyncio.Future[Any] = asyncio.ensure_future(self.stop.wait())
        try:
            while True:
                first = await self._next_or_stop(queue, stopper)
                while first is _IDLE:
                    await self.writer.idle()
                    first = await self._next_or_stop(queue, stopper)
                if first is _STOP or first is None:
                    return True
                if isinstance(first, Block):
                    batch, finished = [_header(first)], False
                    parts = functools.partial(_decoded_parts, first)
                    result = await self.writer.write_parts(batch, parts)
                else:
                    assert isinstance(first, DecodedBlock)
                    batch, finished = queue.take_batch(first, limits.max_blocks, limits.max_plays)
                    result = await self.writer.write(batch)
                self.on_commit(result)
                if self.auditor is not None:
                    self.auditor.written(batch)
                if finished or self.stop.is_set():
                    return True
        finally:
            stopper.cancel()

    async def _next_or_stop(self, queue: BlockQueue, stopper: asyncio.Future[Any]) -> object:
        """The next queued block, or _STOP, or _IDLE after head_refresh_s without one."""
        if not queue.empty():
            return await queue.get()
        getter: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
        await asyncio.wait(
            {getter, stopper},
            timeout=self.settings.source.head_refresh_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if getter.done():
            return getter.result()
        getter.cancel()
        return _STOP if stopper.done() else _IDLE


async def _decoded_parts(block: Block) -> AsyncIterator[DecodedBlock]:
    for part, first_index in block_parts(block, LARGE_BLOCK_PART_BYTES):
        yield await _decode_cooperatively(decode_steps(part, first_index))


def _header(block: Block) -> DecodedBlock:
    """What the audit needs of a block written in parts: its height and its call."""
    return DecodedBlock(block.height, block.hash, block.chain_id, None, (), via=block.via)


async def _decode_cooperatively(steps: Generator[int, None, DecodedBlock]) -> DecodedBlock:
    """Drive a block's decode, letting the loop run every `_DECODE_SLICE_PLAYS` plays.

    Decode shares the loop with the writer. Decoded whole, a busy block holds the
    loop ~8 ms, and the producer decodes right after the writer takes a batch,
    just when the writer has its short statements (BEGIN, the COPYs) to send.
    Measured on busy blocks (sampling pg_stat_activity every 3 ms): PostgreSQL
    waited for the client ~10% of the catch-up with whole-block decode, ~7% with
    a turn of the loop after every transaction, ~6% every 64 plays; what is
    left is COPY formatting and psycopg between statements.
    """
    since_yield = 0
    while True:
        try:
            plays = next(steps)
        except StopIteration as done:
            decoded: DecodedBlock = done.value
            return decoded
        if plays - since_yield >= _DECODE_SLICE_PLAYS:
            since_yield = plays
            await asyncio.sleep(0)
