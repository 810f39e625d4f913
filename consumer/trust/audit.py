"""The continuous audit: no block delivered by the stream is trusted on its own.

Every block the writer commits from a delivery other than GetBlocks (the stream
at the tip) is read again through GetBlocks a little later, in windows, and
compared by transaction hashes with the ledger (consumer.trust.compare). A plays
transaction the first delivery lacked (a node that sends stream blocks without
their first transaction does exist) is written through the sink's exactly-once
path, ledger first; every difference is counted, logged at ERROR and stored in
core_plays.conflicts. Blocks that came through GetBlocks are the audit's own
reference path, so catching up through GetBlocks costs the audit nothing.

The auditor owns one connection of its own (never the writer's), and keeps
`core_plays.checkpoint.audited_height` so that a restart re-reads whatever was
written but not yet audited. Pending heights are kept as ranges, so a long
catch-up through the stream costs a few integers, not one per block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence

import psycopg
from psycopg.rows import TupleRow

from consumer.config import SourceSettings
from consumer.decode.blocks import LARGE_BLOCK_BYTES, wire_bytes
from consumer.errors import SinkUnavailable, SourceUnavailable
from consumer.metrics import Metrics
from consumer.model import (
    MAX_GETBLOCKS_HEIGHTS,
    Block,
    DecodedBlock,
    DifferenceKind,
    Rpc,
)
from consumer.sink.database import open_session
from consumer.sink.plays import report_set_aside
from consumer.sink.written import DEFAULT_OTHER_WRITER, OtherWriter
from consumer.source.core import CoreClient, CoreSource
from consumer.trust.reconcile import Reconciled, Reconciler

__all__ = ["Auditor"]

log = logging.getLogger(__name__)

_WINDOW = MAX_GETBLOCKS_HEIGHTS  # heights compared per round trip, as verify does
_SAVE_EVERY_S = 60.0
_LOGGED_PER_ROUND = 10  # ERROR lines per round before a summary line

_READ_AUDITED = """
SELECT height, audited_height FROM core_plays.checkpoint WHERE chain_id = %s AND stream = %s
"""
_SAVE_AUDITED = """
UPDATE core_plays.checkpoint SET audited_height = greatest(coalesce(audited_height, 0), %s)
WHERE chain_id = %s AND stream = %s
"""


class Auditor:
    """Follows the writer's commits and re-reads what the stream delivered."""

    def __init__(
        self,
        client: CoreClient,
        source_settings: SourceSettings,
        conninfo: str,
        chain_id: str,
        stream: str,
        interval_s: float,
        metrics: Metrics,
        other_writer: str = DEFAULT_OTHER_WRITER,
    ) -> None:
        self.client = client
        self.chain_id = chain_id
        self.stream = stream
        self.interval_s = interval_s
        self.metrics = metrics
        self._conninfo = conninfo
        self._other = OtherWriter(other_writer)  # whose rows are recognised, not written again
        # A re-read of another chain is refused, as the stream's is.
        self._source = CoreSource.rereader(client, source_settings, chain_id, quiet=True)
        self._pending: list[list[int]] = []  # [low, high] ranges, ascending, disjoint
        self._committed = 0
        self._saved = 0
        self._saved_at = -math.inf
        self._hurry_seen = False
        self._hurry = asyncio.Event()  # someone waits for the audit: do not sleep
        self._saved_moved = asyncio.Event()
        self.audited_height = 0
        self._shown = math.nan  # what the gauge shows: NaN until known

    # --- what the writer tells it --------------------------------------------

    def resume(self, checkpoint_height: int, audited_height: int | None) -> None:
        """After a restart: what was written but not yet audited is audited first.
        No audited height at all (a ledger from before the audit) audits nothing
        old: `verify` is the tool for history."""
        self._committed = max(self._committed, checkpoint_height)
        if audited_height is not None and audited_height < checkpoint_height:
            self._add(audited_height + 1, checkpoint_height)
        self._advance()

    def written(self, blocks: Sequence[DecodedBlock]) -> None:
        """Called after each commit with the batch just written."""
        for block in blocks:
            if block.via is not Rpc.GET_BLOCKS:
                self._add(block.height, block.height)
        self._committed = max(self._committed, blocks[-1].height)
        self._advance()

    async def until_audited(self, height: int) -> None:
        """Return once every height up to `height` is audited and that is saved in
        the checkpoint row (a bounded run's end: a restart must not audit it again)."""
        while self.audited_height < height or self._saved < height:
            self._saved_moved.clear()
            self._hurry.set()
            await self._saved_moved.wait()

    # --- the audit -----------------------------------------------------------

    async def run(self) -> None:
        """Audit pending heights every `interval_s`, until cancelled with the session."""
        conn: psycopg.AsyncConnection[TupleRow] | None = None
        try:
            while True:
                # A little later: what the stream delivered in the last interval is
                # read again in one call (one small call every few seconds at the tip).
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
                # session's cancellation when the event fires at the same moment.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval_s):
                        await self._hurry.wait()
                self._hurry_seen = self._hurry.is_set()
                self._hurry.clear()
                try:
                    if conn is None or conn.closed:
                        conn = await self._connect()
                    await self._audit_pending(conn)
                    await self._save(conn)
                except (psycopg.OperationalError, SinkUnavailable, SourceUnavailable) as exc:
                    log.warning("audit paused (%s); trying again in %.0f s", exc, self.interval_s)
                    if conn is not None:
                        await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection[TupleRow]:
        # The writer's session options: a DBA's statement timeouts are not the audit's.
        conn = await open_session(self._conninfo, "core-plays-consumer-audit")
        try:
            if not self._saved:  # first connection of this session: where the last one stopped
                cur = await conn.execute(_READ_AUDITED, (self.chain_id, self.stream))
                row = await cur.fetchone()
                if row is not None:
                    self._saved = row[1] or 0
                    self.resume(row[0], row[1])
        except BaseException:  # cancelled with the session, or the read failed: not leaked
            await conn.close()
            raise
        return conn

    async def _audit_pending(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        while self._pending:
            low, high = self._pending[0]
            high = min(high, low + _WINDOW - 1)
            self._source.assume_head(self._committed)  # written, so the node has it
            chunk: list[Block] = []
            size = 0
            async for block in self._source.blocks(low, high):  # waits, never skips
                chunk.append(block)
                size += wire_bytes(block)
                if size >= LARGE_BLOCK_BYTES:  # held raw: a few MB, or one big block
                    await self._compare(conn, chunk)
                    chunk, size = [], 0
            if chunk:
                await self._compare(conn, chunk)
            self._remove(low, high)
            self._advance()

    async def _compare(self, conn: psycopg.AsyncConnection[TupleRow], blocks: list[Block]) -> None:
        """The re-read blocks against what was written, by the one reconcile: hashes
        first, and only a height with a transaction the ledger lacks is decoded and
        compared with its rows (another writer's transaction is never written again)."""
        reconciler = Reconciler(conn, self.chain_id, self._other)
        found = await reconciler.compare_delivered(blocks)
        if not found.differences:
            return
        done = await reconciler.repair(found)
        await self._count(conn, done, blocks[0].height, blocks[-1].height)

    async def _count(
        self, conn: psycopg.AsyncConnection[TupleRow], done: Reconciled, low: int, high: int
    ) -> None:
        """Count and log what one reconcile found and repaired."""
        found = done.findings
        for kind, n in found.counts().items():
            self.metrics.audit_mismatches_total.labels(kind.value).inc(n)
        if done.ambiguous:
            self.metrics.ambiguous_transactions_total.inc(done.ambiguous)
        self.metrics.audit_repaired_plays_total.inc(done.repaired_plays)
        if done.set_aside:
            where = f"missing transactions at heights {low}..{high} (audit)"
            await report_set_aside(conn, self.chain_id, self.metrics, done.set_aside, where)
        for conflict in done.conflicts:
            self.metrics.source_conflicts_total.labels(conflict.kind).inc()
        # Which missing transaction was set aside the result does not say: claim
        # "repaired" only when none was.
        mended = not done.set_aside
        for difference in found.differences[:_LOGGED_PER_ROUND]:
            what = difference.describe()
            if difference.kind is DifferenceKind.MISSING and mended:
                what = (
                    f"height {difference.height}: missing tx {difference.tx_hash}: "
                    f"repaired, {difference.plays} plays written"
                )
            log.error(
                "audit: a delivered block differs from the same block re-read through "
                "GetBlocks: %s",
                what,
            )
        if len(found.differences) > _LOGGED_PER_ROUND:
            log.error(
                "audit: %d more differences in heights %d..%d (see core_plays.conflicts)",
                len(found.differences) - _LOGGED_PER_ROUND,
                low,
                high,
            )
        if done.repaired_plays:
            log.error("audit: wrote %d plays that the first delivery lacked", done.repaired_plays)

    async def _save(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """Keep the audited height, at most once a minute unless someone waits for it
        (a restart re-reads at most a minute of blocks; an UPDATE a round would be
        most of what the audit costs at the tip)."""
        now = time.monotonic()
        due = self._hurry_seen or now - self._saved_at >= _SAVE_EVERY_S
        if self.audited_height > self._saved and due:
            await conn.execute(_SAVE_AUDITED, (self.audited_height, self.chain_id, self.stream))
            self._saved = self.audited_height
            self._saved_at = now
        self._saved_moved.set()  # every round: a waiter checks again

    # --- pending ranges ------------------------------------------------------

    def _add(self, low: int, high: int) -> None:
        """Insert [low, high], merging with any range it touches."""
        kept: list[list[int]] = []
        for existing in self._pending:
            if existing[1] < low - 1 or existing[0] > high + 1:
                kept.append(existing)
            else:
                low, high = min(low, existing[0]), max(high, existing[1])
        kept.append([low, high])
        kept.sort()
        self._pending = kept

    def _remove(self, low: int, high: int) -> None:
        """Drop [low, high] from the front range (the audit works front to back)."""
        first = self._pending[0]
        if high >= first[1]:
            self._pending.pop(0)
        else:
            first[0] = high + 1

    def _advance(self) -> None:
        frontier = self._pending[0][0] - 1 if self._pending else self._committed
        if frontier > self.audited_height or math.isnan(self._shown):
            self.audited_height = max(self.audited_height, frontier)
            self._shown = float(self.audited_height)
            self.metrics.audited_height.set(self.audited_height)
