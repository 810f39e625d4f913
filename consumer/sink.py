"""Writes decoded blocks and the checkpoint in one PostgreSQL transaction.

Exactly-once is the ledger's job: a batch inserts one ledger row per play
transaction with ON CONFLICT DO NOTHING RETURNING, and plays go in only for the
transactions that came back. A replay, an overlapping backfill, a restart
mid-batch or the same block in another transaction order therefore never
reaches plays (and its on_play trigger) twice.

The write path is the fastest set-based one measured on these machines: the
batch's transactions and plays go by binary COPY into two temporary staging
tables (ON COMMIT DELETE ROWS, so they are empty again after every commit and
after every rollback), then ONE statement inserts the ledger rows and, joined on
exactly the ledger rows that came back, the plays, in chain order so that `id`
follows the chain. The client never waits for the ledger's answer before
sending the plays, and COPY costs a third of the client CPU of `unnest` over
arrays (whose list dumper is pure Python).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import psycopg
from psycopg.rows import TupleRow

from consumer.errors import SinkUnavailable
from consumer.model import Checkpoint, DecodedBlock, Quarantined

__all__ = ["BatchResult", "PlaysSink", "read_checkpoint"]

# PostgreSQL refusing a value rather than failing: retrying the same rows can
# never succeed, so these isolate the transaction instead of retrying.
_REFUSED = (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded)

# Created once per session (the lease's connection), always named with pg_temp
# so that no table of the same name elsewhere on the search path can stand in.
# `k` numbers the batch's transactions, `n` its plays in chain order.
_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS pg_temp.core_plays_batch_txs (
    k int NOT NULL, h bigint NOT NULL, i int NOT NULL, x text NOT NULL,
    p int NOT NULL, s int NOT NULL, r text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS pg_temp.core_plays_batch_plays (
    n int NOT NULL, k int NOT NULL, u int, t int NOT NULL, c timestamp NOT NULL,
    g text NOT NULL, ci text NOT NULL, r text NOT NULL, co text NOT NULL
) ON COMMIT DELETE ROWS
"""
_COPY_TXS = "COPY pg_temp.core_plays_batch_txs (k, h, i, x, p, s, r) FROM STDIN (FORMAT BINARY)"
_TX_TYPES = ("int4", "int8", "int4", "text", "int4", "int4", "text")
# The column order after (n, k) is PlayRow's, so a staged row is (n, k) + play.
_COPY_PLAYS = (
    "COPY pg_temp.core_plays_batch_plays (n, k, u, t, c, g, ci, r, co) FROM STDIN (FORMAT BINARY)"
)
_PLAY_TYPES = ("int4", "int4", "int4", "int4", "timestamp", "text", "text", "text", "text")

# The ledger rows go in first, in batch order (so the first of two transactions
# claiming one position wins, as it would in two batches); plays are joined on
# the full ledger key including the hash, so only the transaction whose ledger
# row was written brings its plays.
_INSERT_LEDGER_AND_PLAYS = """
WITH new AS (
    INSERT INTO core_plays.tx_ledger
        (chain_id, block_height, tx_index, tx_hash, play_count, skipped_count, skip_reasons)
    SELECT %(chain)s, h, i, x, p, s, r::jsonb FROM pg_temp.core_plays_batch_txs ORDER BY k
    ON CONFLICT DO NOTHING
    RETURNING block_height, tx_index, tx_hash
), written AS (
    INSERT INTO plays (user_id, source, play_item_id, created_at, updated_at, slot,
                       signature, city, region, country)
    SELECT p.u, 'relay', p.t, p.c, now(), t.h, p.g, p.ci, p.r, p.co
    FROM pg_temp.core_plays_batch_plays p
    JOIN pg_temp.core_plays_batch_txs t ON t.k = p.k
    JOIN new ON new.block_height = t.h AND new.tx_index = t.i AND new.tx_hash = t.x
    ORDER BY p.n
    RETURNING 1
)
SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM written)
"""

_INSERT_QUARANTINE = """
INSERT INTO core_plays.quarantine (chain_id, block_height, tx_index, tx_hash, data, error)
SELECT %(chain)s, h, i, x, d, e
FROM unnest(%(heights)b::bigint[], %(indexes)b::int[], %(hashes)b::text[],
            %(data)b::bytea[], %(errors)b::text[]) AS q(h, i, x, d, e)
ON CONFLICT DO NOTHING
RETURNING tx_index
"""

# The live checkpoint never moves backwards (a replay below it must not
# rewind it) unless the operator asked for that with --rewind-checkpoint.
_UPSERT_CHECKPOINT = """
INSERT INTO core_plays.checkpoint
    (chain_id, stream, start_height, height, block_hash, block_time, updated_at)
VALUES (%(chain)s, %(stream)s, %(start)s, %(height)s, %(hash)s, %(time)s, now())
ON CONFLICT (chain_id, stream) DO UPDATE
SET height = EXCLUDED.height, block_hash = EXCLUDED.block_hash,
    block_time = EXCLUDED.block_time, updated_at = now()
WHERE core_plays.checkpoint.height < EXCLUDED.height OR %(rewind)s
"""

_SELECT_CHECKPOINT = """
SELECT chain_id, stream, start_height, height, block_hash, block_time, updated_at
FROM core_plays.checkpoint WHERE chain_id = %s AND stream = %s
"""


@dataclass(slots=True)
class BatchResult:
    """What one committed batch did, for metrics and logs."""

    blocks: int = 0
    height: int = 0
    block_time: datetime | None = None
    plays_written: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    tx_types: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)

    def merge(self, other: BatchResult) -> None:
        """Fold a later batch's result into this one (used when a batch is split)."""
        self.blocks += other.blocks
        self.height = other.height
        self.block_time = other.block_time
        self.plays_written += other.plays_written
        self.duplicates += other.duplicates
        for mine, theirs in (
            (self.tx_types, other.tx_types),
            (self.skipped, other.skipped),
            (self.repaired, other.repaired),
            (self.quarantined, other.quarantined),
        ):
            mine.update(theirs)


async def read_checkpoint(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, stream: str
) -> Checkpoint | None:
    try:
        cur = await conn.execute(_SELECT_CHECKPOINT, (chain_id, stream))
        row = await cur.fetchone()
    except psycopg.OperationalError as exc:
        raise SinkUnavailable(f"reading the checkpoint: {exc}") from exc
    return None if row is None else Checkpoint(*row)


class PlaysSink:
    """Writes batches through one connection: the one holding the writer lock.

    Writing on the lock's own session fences a writer that lost its lock: once
    that session is gone, so is every write it could make.
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection[TupleRow],
        chain_id: str,
        stream: str,
        start_height: int,
        rewind: bool = False,
    ) -> None:
        self.conn = conn
        self.chain_id = chain_id
        self.stream = stream
        self.start_height = start_height
        self.rewind = rewind
        self._staging_ready = False

    async def write(self, batch: list[DecodedBlock]) -> BatchResult:
        """Write the batch and move the checkpoint to its last block, atomically.

        If PostgreSQL refuses a value (a string too long for an index on plays,
        say), the batch is written again block by block, and the refused
        transactions are quarantined instead of wedging the chain.
        """
        started = time.perf_counter()
        try:
            if not self._staging_ready:
                # In a transaction of its own: a rolled-back batch must not take the tables.
                await self.conn.execute(_CREATE_STAGING)
                self._staging_ready = True
            try:
                result = await self._write(batch)
            except _REFUSED:
                result = await self._write_isolating(batch)
        except psycopg.OperationalError as exc:
            raise SinkUnavailable(
                f"writing blocks {batch[0].height}..{batch[-1].height}: {exc}"
            ) from exc
        result.seconds = time.perf_counter() - started
        return result

    async def _write_isolating(self, batch: list[DecodedBlock]) -> BatchResult:
        total = BatchResult()
        for block in batch:
            try:
                result = await self._write([block])
            except _REFUSED:
                result = await self._write([await self._without_refused(block)])
            total.merge(result)
        return total

    async def _without_refused(self, block: DecodedBlock) -> DecodedBlock:
        """The block with each transaction PostgreSQL refuses moved to quarantine.

        Each plays transaction is tried alone in a transaction that is always
        rolled back; the raw bytes are not at hand here, so the quarantine row
        keeps the hash (the node still has the transaction) and the error.
        """
        kept, refused = [], []
        for tx in block.txs:
            try:
                async with self.conn.transaction(force_rollback=True):
                    await self._insert(_stage([replace(block, txs=(tx,))]))
                kept.append(tx)
            except _REFUSED as exc:
                message = (exc.diag.message_primary or str(exc)).strip()
                refused.append(
                    Quarantined(tx.tx_index, tx.tx_hash, b"", f"refused by PostgreSQL: {message}")
                )
        return replace(block, txs=tuple(kept), quarantined=(*block.quarantined, *refused))

    async def _write(self, batch: list[DecodedBlock]) -> BatchResult:
        staged = _stage(batch)
        async with self.conn.transaction():
            await self._insert(staged)
            last = batch[-1]
            await self.conn.execute(
                _UPSERT_CHECKPOINT,
                {
                    "chain": self.chain_id,
                    "stream": self.stream,
                    "start": self.start_height,
                    "height": last.height,
                    "hash": last.hash,
                    "time": last.time,
                    "rewind": self.rewind,
                },
            )
        return staged.result

    async def _insert(self, staged: _Staged) -> None:
        """Ledger, plays and quarantine rows of a staged batch, inside the caller's transaction."""
        conn = self.conn
        result = staged.result
        if staged.txs:
            async with conn.cursor() as cur:
                await _copy(cur, _COPY_TXS, _TX_TYPES, staged.txs)
                if staged.plays:
                    await _copy(cur, _COPY_PLAYS, _PLAY_TYPES, staged.plays)
                # Planned every time (prepare=False): a plan cached while following
                # the tip, for staging tables of one block, would be reused for
                # batches of thousands of rows after a later catch-up.
                await cur.execute(_INSERT_LEDGER_AND_PLAYS, {"chain": self.chain_id}, prepare=False)
                row = await cur.fetchone()
            assert row is not None
            new_txs, result.plays_written = row
            result.duplicates = staged.occurrences - new_txs
        if staged.quarantined:
            heights, indexes, hashes, data, errors = zip(*staged.quarantined, strict=True)
            cur = await conn.execute(
                _INSERT_QUARANTINE,
                {
                    "chain": self.chain_id,
                    "heights": list(heights),
                    "indexes": list(indexes),
                    "hashes": list(hashes),
                    "data": list(data),
                    "errors": list(errors),
                },
            )
            for (index,) in await cur.fetchall():
                result.quarantined["block" if index == -1 else "transaction"] += 1


_TxRow = tuple[int, int, int, str, int, int, str | None]  # k, height, tx_index, hash, ...
_QuarantineRow = tuple[int, int, str, bytes, str]  # height, tx_index, hash, data, error


@dataclass(slots=True)
class _Staged:
    """A batch as the rows its statements send, with the counts that need no database."""

    result: BatchResult
    txs: list[_TxRow] = field(default_factory=list)
    plays: list[tuple[object, ...]] = field(default_factory=list)  # (n, k) + PlayRow
    quarantined: list[_QuarantineRow] = field(default_factory=list)
    occurrences: int = 0  # play transactions in the batch, repeats included


def _stage(batch: list[DecodedBlock]) -> _Staged:
    """Flatten a batch into staging rows: pure CPU, done before any round trip."""
    staged = _Staged(BatchResult(len(batch), batch[-1].height, batch[-1].time))
    result = staged.result
    txs, plays = staged.txs, staged.plays
    seen: set[tuple[int, int, str]] = set()
    for block in batch:
        # Most blocks have nothing to count: skipping the empty updates is
        # measurable when catching up through empty blocks.
        if block.tx_types:
            result.tx_types.update(block.tx_types)
        if block.skipped:
            result.skipped.update(block.skipped)
        if block.repaired:
            result.repaired.update(block.repaired)
        height = block.height
        for tx in block.txs:
            staged.occurrences += 1
            key = (height, tx.tx_index, tx.tx_hash)
            if key in seen:
                continue  # the same block twice in one batch: its plays once
            seen.add(key)
            k = len(txs)
            reasons = json.dumps(tx.skip_reasons) if tx.skip_reasons else None
            txs.append((k, height, tx.tx_index, tx.tx_hash, len(tx.plays), tx.skipped, reasons))
            n = len(plays)
            plays.extend([(n + j, k, *play) for j, play in enumerate(tx.plays)])
        for q in block.quarantined:
            staged.quarantined.append((height, q.tx_index, q.tx_hash, q.data, q.error))
    return staged


async def _copy(
    cur: psycopg.AsyncCursor[TupleRow],
    statement: str,
    types: Sequence[str],
    rows: Sequence[Sequence[object]],
) -> None:
    """COPY `rows` in binary; psycopg formats each row in C, a third of the CPU of
    dumping the same values as arrays for `unnest`."""
    async with cur.copy(statement) as copy:
        copy.set_types(list(types))
        write_row = copy.write_row
        for row in rows:
            await write_row(row)
