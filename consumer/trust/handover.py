"""The handover: run beside the writer this service replaces, then take over from it.

`run --handover-from core_indexed_blocks` trails that writer's committed height W
(the max height of its progress table for the chain): the gate lets a block h
through to the writer only once W >= h + REPEAT_REACH while the other writer is
alive, so it can be switched off at any moment without a gap, and each batch is
compared with the REPEAT_REACH heights after it (read by the gate, outside any
database transaction): a transaction the chain carries twice whose first copy
the other writer lost and whose repeat it wrote is then recognised, not written
a second time. Each batch, inside its own
transaction (consumer.sink.plays calls `prepare`), is reconciled by the one rule
of consumer.trust.compare: what the other writer wrote whole is recorded in the
ledger as adopted, with the rows it claimed, and not written again; what it lost
is written; what it wrote only in part is ambiguous (counted, logged, recorded,
never written). A SIGKILL therefore loses or doubles nothing: adoption, writes
and the checkpoint commit together.

With `--handover-quiet-s S`, a W that has not moved for S seconds while the
node's head is ahead means the other writer stopped: the service takes over
(one log line, `handover_state` 2, recorded in core_plays.handover so a restart
does not wait again) and writes alone. If the other writer writes again after
that (W past the takeover height), it is counted, logged at ERROR and
`handover_other_writer_active` pages until it stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import Protocol

import psycopg
from psycopg.rows import TupleRow

from consumer.backoff import stopped_within
from consumer.decode.blocks import decode_block
from consumer.errors import ConfigError, SinkUnavailable
from consumer.metrics import Metrics
from consumer.model import REPEAT_REACH, Block, DecodedBlock, DifferenceKind
from consumer.sink.database import describe, open_session
from consumer.sink.plays import Adopted, Adoption, record_findings
from consumer.sink.written import OtherWriter, read_handover, record_resumed, record_takeover
from consumer.trust.reconcile import Reconciler

__all__ = ["Handover", "HandoverState", "refuse_another_writers_heights"]

log = logging.getLogger(__name__)

_POLL_S = 1.0  # how often a waiting gate reads the other writer's height
_ACTIVE_FOR_S = 300.0  # after a resumption, the page holds until W is still this long
_AHEAD_BYTES = 64 * 1024 * 1024  # the read-ahead's memory bound (genesis blocks are 15 MB)


async def refuse_another_writers_heights(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, start: int
) -> None:
    """A run without --handover-from must not write heights another writer already wrote:
    it would double their plays (the very accident this service exists to prevent).
    Heights the handover already adopted through, or took over from, are this service's."""
    other = OtherWriter()
    height = await other.height(conn, chain_id)
    if height is None or height < start:
        return
    record = await read_handover(conn, chain_id, other.table)
    covered = 0 if record is None else max(record.adopted_through, record.taken_over_height or 0)
    if height <= covered:
        return
    raise ConfigError(
        f"{other.table} says another writer wrote chain {chain_id} up to height {height}, "
        f"and this run would write from height {start}: that would double its plays. Run "
        f"with --handover-from {other.table} to adopt what it wrote and write only what it "
        "lost (README: Cutover from another indexer)"
    )


class HandoverState:
    """The values of `handover_state`."""

    OFF = 0
    TRAILING = 1
    ALONE = 2


class _Source(Protocol):
    def blocks(self, start: int, end: int | None = None) -> AsyncGenerator[Block, None]: ...

    async def head(self) -> int: ...


class Handover:
    """The gate in front of the writer, and the adoption inside each batch."""

    def __init__(
        self,
        table: str,
        chain_id: str,
        conninfo: str,
        quiet_s: float | None,
        metrics: Metrics,
        stop: asyncio.Event,
        head: Callable[[], float],
        reread: Callable[[int, int], AsyncGenerator[Block, None]],
    ) -> None:
        self.other = OtherWriter(table)
        self._reread = reread  # GetBlocks windows for the read-ahead
        self.chain_id = chain_id
        self.quiet_s = quiet_s
        self.metrics = metrics
        self.stop = stop
        self._head = head
        self._conninfo = conninfo
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self.other_height: int | None = None
        self.taken_over_at: int | None = None  # the other writer's height at the takeover
        self._moved_at = time.monotonic()
        self._resumed_seen: int | None = None
        self._resumed_at = -_ACTIVE_FOR_S
        # The heights after the batches to come, as read (not decoded: only a block that
        # carries one of a batch's transactions again is ever decoded, and that is rare).
        self._ahead: dict[int, Block] = {}
        self._ahead_bytes = 0
        metrics.handover_state.set(HandoverState.TRAILING)

    @property
    def alone(self) -> bool:
        return self.taken_over_at is not None

    # --- the gate ----------------------------------------------------------------

    def gated(self, source: _Source) -> _Gated:
        return _Gated(source, self)

    async def allow(self, height: int) -> bool:
        """Wait until `height` may be written: the other writer has committed it and the
        REPEAT_REACH heights after it, or the service took over. False when stopped
        first. The heights after it are read ahead here, before any transaction."""
        while not self.alone:
            if self._committed_past(height):
                break
            await self._refresh()
            if self._committed_past(height):
                break
            if self._quiet():
                await self._take_over()
                break
            if await stopped_within(self.stop, _POLL_S):
                return False
        await self._read_ahead(height)
        return True

    def _committed_past(self, height: int) -> bool:
        return self.other_height is not None and height + REPEAT_REACH <= self.other_height

    async def _read_ahead(self, height: int) -> None:
        """Read the heights after `height` that the other writer wrote, once each."""
        last = min(height + REPEAT_REACH, self.other_height or 0)
        first = max(height + 1, max(self._ahead, default=0) + 1)
        if first > last or self._ahead_bytes >= _AHEAD_BYTES:
            return
        async for block in self._reread(first, last):
            self._ahead[block.height] = block
            self._ahead_bytes += _size(block)
            if self._ahead_bytes >= _AHEAD_BYTES:
                break

    def _context(self, batch: list[DecodedBlock]) -> list[DecodedBlock]:
        """The read-ahead heights just after the batch that carry one of its transactions
        again, decoded; the heights up to the batch's end are done with."""
        end = batch[-1].height
        for height in [h for h in self._ahead if h <= end]:
            self._ahead_bytes -= _size(self._ahead.pop(height))
        hashes = {tx.tx_hash for block in batch for tx in block.txs}
        context = []
        for height in range(end + 1, end + REPEAT_REACH + 1):
            block = self._ahead.get(height)
            if block is None:
                break
            if any(raw.hash in hashes for raw in block.txs):
                context.append(decode_block(block))
        return context

    def _quiet(self) -> bool:
        if self.quiet_s is None:
            return False
        still = time.monotonic() - self._moved_at >= self.quiet_s
        return still and self._head() > (self.other_height or 0)

    async def _connection(self) -> psycopg.AsyncConnection[TupleRow]:
        if self._conn is None or self._conn.closed:
            self._conn = await open_session(self._conninfo, "core-plays-consumer-handover")
            record = await read_handover(self._conn, self.chain_id, self.other.table)
            if record is not None and record.taken_over_height is not None:
                self.taken_over_at = record.taken_over_height
                self.metrics.handover_state.set(HandoverState.ALONE)
        return self._conn

    async def _refresh(self) -> None:
        """Read W on the gate's own connection; a lost one ends the session as the
        writer's would (SinkUnavailable: waited out, then reconnected)."""
        conn = await self._connection()
        try:
            height = await self.other.height(conn, self.chain_id)
        except psycopg.OperationalError as exc:
            await self.close()
            raise SinkUnavailable(f"reading {self.other.table}: {describe(exc)}") from exc
        self._saw(height)

    def _saw(self, height: int | None) -> None:
        if height != self.other_height:
            self._moved_at = time.monotonic()
            self.other_height = height
        if height is not None:
            self.metrics.handover_other_height.set(height)

    async def _take_over(self) -> None:
        height = self.other_height or 0
        conn = await self._connection()
        await record_takeover(conn, self.chain_id, self.other.table, height)
        self.taken_over_at = height
        self.metrics.handover_state.set(HandoverState.ALONE)
        log.warning(
            "handover: %s has not moved past height %d for %g s while the node is at %d: "
            "taking over, writing alone from height %d",
            self.other.table,
            height,
            self.quiet_s or 0,
            int(self._head()),
            height + 1,
        )

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # --- inside each batch's transaction ---------------------------------------

    async def prepare(
        self, conn: psycopg.AsyncConnection[TupleRow], batch: list[DecodedBlock]
    ) -> Adoption:
        """What the other writer wrote of this batch (adopted), what it wrote in part
        (ambiguous, not written), and the rest, to write."""
        height = await self.other.height(conn, self.chain_id)
        self._saw(height)
        if self.alone:
            await self._check_resumed(conn, height)
        context = self._context(batch)
        found = await Reconciler(conn, self.chain_id, self.other).compare(batch, context)
        ambiguous = [d for d in found.differences if d.kind is DifferenceKind.AMBIGUOUS]
        skip = {a.tx.tx_hash for a in found.adoptable} | {d.tx_hash for d in ambiguous}
        blocks = [
            replace(block, txs=tuple(tx for tx in block.txs if tx.tx_hash not in skip))
            for block in batch
        ]
        for difference in ambiguous:
            log.error("handover: %s", difference.describe())
        await record_findings(
            conn, self.chain_id, [(str(d.kind), d.height, d.tx_hash) for d in ambiguous]
        )
        lost = sum(len(block.txs) for block in found.missing)
        if lost and not self.alone:
            log.info(
                "handover: %s lacks %d transaction(s) of heights %d..%d: writing them",
                self.other.table,
                lost,
                batch[0].height,
                batch[-1].height,
            )
        adopted = [
            Adopted(
                a.block.height,
                a.tx.tx_index,
                a.tx.tx_hash,
                len(a.tx.plays),
                a.tx.skipped,
                a.block.hash,
                str(a.block.via),
                a.play_ids,
            )
            for a in found.adoptable
        ]
        through = batch[-1].height if height is not None else 0
        return Adoption(blocks, adopted, len(ambiguous), self.other.table, through, height)

    async def _check_resumed(
        self, conn: psycopg.AsyncConnection[TupleRow], height: int | None
    ) -> None:
        """After the takeover the other writer's height must stay put."""
        now = time.monotonic()
        assert self.taken_over_at is not None
        if height is not None and height > self.taken_over_at and height != self._resumed_seen:
            self._resumed_seen = height
            self._resumed_at = now
            # The page and its count move together, before anything that can wait.
            self.metrics.handover_other_writer_active.set(1)
            self.metrics.handover_other_writer_resumed_total.inc()
            await record_resumed(conn, self.chain_id, self.other.table, height)
            log.error(
                "handover: %s is writing again after the takeover at height %d (now at %d): "
                "two writers on plays; stop it (see the runbook, CorePlaysOtherWriterActive)",
                self.other.table,
                self.taken_over_at,
                height,
            )
        active = now - self._resumed_at < _ACTIVE_FOR_S
        self.metrics.handover_other_writer_active.set(1 if active else 0)


def _size(block: Block) -> int:
    return sum(len(raw.data) for raw in block.txs)


class _Gated:
    """A block source whose blocks reach the writer only once the handover allows them."""

    def __init__(self, source: _Source, handover: Handover) -> None:
        self._source = source
        self._handover = handover

    async def blocks(self, start: int, end: int | None = None) -> AsyncGenerator[Block, None]:
        async for block in self._source.blocks(start, end):
            if not await self._handover.allow(block.height):
                return
            yield block

    async def head(self) -> int:
        return await self._source.head()
