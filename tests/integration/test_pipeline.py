"""A writing session's edge cases through the pipeline's seams: blocks from memory, no node.

The source here is a DevChain read from memory (what the devnet would serve,
parsed as the source parses it); the writer, the lease and PostgreSQL are the
real ones. A commit is held in flight by a test session that locks `plays`, so
"during a commit" is a state the test waits for, not a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from consumer.backoff import Waiting
from consumer.config import Settings
from consumer.devnet import ChainSpec, DevChain
from consumer.errors import SinkUnavailable, SourceFailed
from consumer.metrics import Metrics
from consumer.model import BatchResult, Block, Rpc
from consumer.service.pipeline import Pipeline
from consumer.service.writer import Writer
from consumer.sink.lease import Lease
from consumer.sink.plays import PlaysSink, read_checkpoint
from consumer.source.core import parse_block
from tests.conftest import eventually, make_settings
from tests.reference import expected_rows, play_tx_hashes, plays_rows

CHAIN = DevChain(ChainSpec(seed=7, chain_id="memory-1"))
STREAM = "live"


class MemorySource:
    """The chain's blocks from memory, in order, as GetBlocks would deliver them.

    Past `head` it waits for `more` to be set, as a source at the tip waits for
    the next block; `fail_at` raises the fatal error a node's refusal would.
    """

    def __init__(self, head: int, fail_at: int | None = None) -> None:
        self.head_height = head
        self.fail_at = fail_at
        self.more = asyncio.Event()

    async def blocks(self, start: int, end: int | None = None) -> AsyncGenerator[Block, None]:
        height = start
        while end is None or height <= end:
            if height == self.fail_at:
                raise SourceFailed("the node refused the call", "GetBlocks")
            if height > self.head_height:
                await self.more.wait()
                return
            yield parse_block(CHAIN.block_bytes(height, canon=True), height, Rpc.GET_BLOCKS)
            height += 1

    async def head(self) -> int:
        return self.head_height


@dataclass
class Session:
    """One writing session as the runner builds it: lease, sink, writer, pipeline."""

    lease: Lease
    pipeline: Pipeline
    start: int
    stop: asyncio.Event
    commits: list[BatchResult] = field(default_factory=list)


@contextlib.asynccontextmanager
async def writing_session(
    database: str, source: MemorySource, settings: Settings | None = None
) -> AsyncIterator[Session]:
    """One writing session, its lease released at the end whatever happened."""
    settings = settings or small_batches(database)
    stop = asyncio.Event()
    lease = Lease(settings.sink.conninfo, CHAIN.spec.chain_id, STREAM, 0.1)
    conn = await lease.acquire(stop)
    assert conn is not None
    try:
        checkpoint = await read_checkpoint(conn, CHAIN.spec.chain_id, STREAM)
        start = 1 if checkpoint is None else checkpoint.height + 1
        sink = PlaysSink(conn, CHAIN.spec.chain_id, STREAM, start)
        metrics = Metrics(CollectorRegistry())
        writer = Writer(sink, lease, settings, metrics, stop, Waiting())
        commits: list[BatchResult] = []
        pipeline = Pipeline(source, writer, settings, metrics, stop, on_commit=commits.append)
        yield Session(lease, pipeline, start, stop, commits)
    finally:
        await lease.release()


def small_batches(database: str) -> Settings:
    # No node: the core URL is never dialled. Small batches, so a range is many commits.
    return make_settings("http://127.0.0.1:9", database, max_blocks=5, no_audit=True)


async def checkpoint_height(database: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        checkpoint = await read_checkpoint(conn, CHAIN.spec.chain_id, STREAM)
        return None if checkpoint is None else checkpoint.height


async def ledger_hashes(database: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT tx_hash FROM core_plays.tx_ledger")
        return sorted(row[0] for row in await cur.fetchall())


async def assert_exactly(database: str, last: int) -> None:
    """plays and the ledger hold heights 1..last of the chain, each play once."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected_rows(CHAIN, 1, last)
    assert await ledger_hashes(database) == sorted(play_tx_hashes(CHAIN, 1, last))


class PlaysLocked:
    """A test session holding `plays` locked, so the writer's INSERT waits in flight."""

    def __init__(self, database: str) -> None:
        self.database = database

    async def __aenter__(self) -> PlaysLocked:
        self.conn = await psycopg.AsyncConnection.connect(self.database)
        await self.conn.execute("LOCK TABLE plays IN EXCLUSIVE MODE")
        return self

    async def writer_waits(self) -> int:
        """The backend pid of the writer once it waits on the lock (a commit in flight)."""
        async with await psycopg.AsyncConnection.connect(self.database, autocommit=True) as c:

            async def pid_waiting_on_a_lock() -> int | None:
                cur = await c.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
                row = await cur.fetchone()
                return None if row is None else int(row[0])

            pid: int = await eventually(pid_waiting_on_a_lock)
            return pid

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.rollback()
        await self.conn.close()


async def run_until(session: Session, end: int | None) -> asyncio.Task[bool]:
    return asyncio.create_task(session.pipeline.run(session.start, end))


async def next_session_completes(database: str, source: MemorySource, end: int) -> None:
    """A later session writes the rest of the range, as the runner's next session would,
    and the table ends with every play of 1..end once."""
    async with writing_session(database, source) as session:
        assert await session.pipeline.run(session.start, end)
    await assert_exactly(database, end)


async def test_any_block_source_is_written_exactly_once_with_its_checkpoint(
    database: str,
) -> None:
    source = MemorySource(head=120)
    async with writing_session(database, source) as session:
        assert await session.pipeline.run(1, 120)
    await assert_exactly(database, 120)
    assert await checkpoint_height(database) == 120
    assert sum(result.blocks for result in session.commits) == 120


async def test_a_stop_during_a_commit_ends_the_session_after_that_commit_and_its_checkpoint(
    database: str,
) -> None:
    source = MemorySource(head=120)
    async with writing_session(database, source) as session:
        async with PlaysLocked(database) as locked:
            task = await run_until(session, 120)
            await locked.writer_waits()
            session.stop.set()
        assert await asyncio.wait_for(task, 30)
    # The batch in flight committed whole, with its checkpoint, and nothing after it.
    [last] = session.commits
    assert await checkpoint_height(database) == last.height < 120
    await assert_exactly(database, last.height)
    await next_session_completes(database, source, 120)


async def test_a_lease_lost_mid_commit_writes_nothing_of_that_batch_and_the_next_session_resumes(
    database: str,
) -> None:
    source = MemorySource(head=120)
    async with writing_session(database, source) as session:
        async with PlaysLocked(database) as locked:
            task = await run_until(session, 120)
            pid = await locked.writer_waits()
            async with await psycopg.AsyncConnection.connect(database, autocommit=True) as c:
                await c.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(SinkUnavailable):
            await asyncio.wait_for(task, 30)
    assert session.commits == []  # the first batch was in flight: none of it is there
    assert await checkpoint_height(database) is None
    await assert_exactly(database, 0)
    await next_session_completes(database, source, 120)


async def test_a_lease_lost_between_commits_at_the_tip_is_noticed_while_idle(
    database: str,
) -> None:
    source = MemorySource(head=30)
    async with writing_session(database, source) as session:
        task = await run_until(session, None)
        await eventually(lambda: sum(r.blocks for r in session.commits) == 30)
        assert session.lease.conn is not None
        pid = session.lease.conn.info.backend_pid
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as c:
            await c.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # Nothing to write, yet the idle writer proves its session is alive and fails.
        with pytest.raises(SinkUnavailable):
            await asyncio.wait_for(task, 30)
    await assert_exactly(database, 30)


async def test_a_stop_while_idle_at_the_tip_returns_without_writing(database: str) -> None:
    source = MemorySource(head=30)
    async with writing_session(database, source) as session:
        task = await run_until(session, None)
        await eventually(lambda: sum(r.blocks for r in session.commits) == 30)
        session.stop.set()
        assert await asyncio.wait_for(task, 30)
    assert await checkpoint_height(database) == 30


async def test_a_fatal_source_error_ends_the_session_with_that_error_not_a_group(
    database: str,
) -> None:
    source = MemorySource(head=120, fail_at=61)
    async with writing_session(database, source) as session:
        with pytest.raises(SourceFailed, match="refused"):
            await asyncio.wait_for(session.pipeline.run(1, 120), 30)
    # What was decoded before the failure may or may not be written; never past it.
    height = await checkpoint_height(database)
    assert height is None or height <= 60
    await assert_exactly(database, height or 0)
