"""Writes decoded blocks and the checkpoint in one PostgreSQL transaction.

Exactly-once is the ledger's job: a batch first inserts one ledger row per
play transaction with ON CONFLICT DO NOTHING RETURNING, then inserts plays
only for the transactions that came back. A replay, an overlapping backfill,
a restart mid-batch or the same block in another transaction order therefore
never reaches plays (and its on_play trigger) twice. Every statement is
set-based over arrays sent in binary (`%b`), one round trip per table.
"""

from __future__ import annotations

import json
import time
from collections import Counter
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

_INSERT_LEDGER = """
INSERT INTO core_plays.tx_ledger
    (chain_id, block_height, tx_index, tx_hash, play_count, skipped_count, skip_reasons)
SELECT %(chain)s, h, i, x, p, s, r::jsonb
FROM unnest(%(heights)b::bigint[], %(indexes)b::int[], %(hashes)b::text[],
            %(plays)b::int[], %(skipped)b::int[], %(reasons)b::text[]) AS t(h, i, x, p, s, r)
ON CONFLICT DO NOTHING
RETURNING block_height, tx_index
"""

_INSERT_PLAYS = """
INSERT INTO plays (user_id, source, play_item_id, created_at, updated_at, slot,
                   signature, city, region, country)
SELECT u, 'relay', t, c, now(), h, g, ci, r, co
FROM unnest(%(users)b::int[], %(tracks)b::int[], %(created)b::timestamp[],
            %(heights)b::int[], %(signatures)b::text[], %(cities)b::text[],
            %(regions)b::text[], %(countries)b::text[])
     AS p(u, t, c, h, g, ci, r, co)
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

    async def write(self, batch: list[DecodedBlock]) -> BatchResult:
        """Write the batch and move the checkpoint to its last block, atomically.

        If PostgreSQL refuses a value (a string too long for an index on plays,
        say), the batch is written again block by block, and the refused
        transactions are quarantined instead of wedging the chain.
        """
        started = time.perf_counter()
        try:
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
                    await self._insert_plays(
                        [replace(block, txs=(tx,))], {(block.height, tx.tx_index)}
                    )
                kept.append(tx)
            except _REFUSED as exc:
                message = (exc.diag.message_primary or str(exc)).strip()
                refused.append(
                    Quarantined(tx.tx_index, tx.tx_hash, b"", f"refused by PostgreSQL: {message}")
                )
        return replace(block, txs=tuple(kept), quarantined=(*block.quarantined, *refused))

    async def _write(self, batch: list[DecodedBlock]) -> BatchResult:
        chain = self.chain_id
        result = BatchResult(blocks=len(batch), height=batch[-1].height, block_time=batch[-1].time)
        heights, indexes, hashes, play_counts, skipped = [], [], [], [], []
        reasons: list[str | None] = []
        q_heights, q_indexes, q_hashes, q_data, q_errors = [], [], [], [], []
        for block in batch:
            result.tx_types.update(block.tx_types)
            result.skipped.update(block.skipped)
            result.repaired.update(block.repaired)
            for tx in block.txs:
                heights.append(block.height)
                indexes.append(tx.tx_index)
                hashes.append(tx.tx_hash)
                play_counts.append(len(tx.plays))
                skipped.append(tx.skipped)
                reasons.append(json.dumps(tx.skip_reasons) if tx.skip_reasons else None)
            for q in block.quarantined:
                q_heights.append(block.height)
                q_indexes.append(q.tx_index)
                q_hashes.append(q.tx_hash)
                q_data.append(q.data)
                q_errors.append(q.error)

        conn = self.conn
        async with conn.transaction():
            new_txs: set[tuple[int, int]] = set()
            if hashes:
                cur = await conn.execute(
                    _INSERT_LEDGER,
                    {
                        "chain": chain,
                        "heights": heights,
                        "indexes": indexes,
                        "hashes": hashes,
                        "plays": play_counts,
                        "skipped": skipped,
                        "reasons": reasons,
                    },
                )
                # Keyed by position, not hash: the same transaction twice in one
                # batch comes back once, so its plays are written once.
                new_txs = {(h, i) for h, i in await cur.fetchall()}
                result.duplicates = len(hashes) - len(new_txs)
            if new_txs:
                result.plays_written = await self._insert_plays(batch, new_txs)
            if q_hashes:
                cur = await conn.execute(
                    _INSERT_QUARANTINE,
                    {
                        "chain": chain,
                        "heights": q_heights,
                        "indexes": q_indexes,
                        "hashes": q_hashes,
                        "data": q_data,
                        "errors": q_errors,
                    },
                )
                for (index,) in await cur.fetchall():
                    result.quarantined["block" if index == -1 else "transaction"] += 1
            last = batch[-1]
            await conn.execute(
                _UPSERT_CHECKPOINT,
                {
                    "chain": chain,
                    "stream": self.stream,
                    "start": self.start_height,
                    "height": last.height,
                    "hash": last.hash,
                    "time": last.time,
                    "rewind": self.rewind,
                },
            )
        return result

    async def _insert_plays(self, batch: list[DecodedBlock], new_txs: set[tuple[int, int]]) -> int:
        users, tracks, created, heights = [], [], [], []
        signatures, cities, regions, countries = [], [], [], []
        for block in batch:
            height = block.height
            for tx in block.txs:
                key = (height, tx.tx_index)
                if key not in new_txs:
                    continue
                new_txs.discard(key)  # a block repeated inside one batch writes once
                for play in tx.plays:
                    users.append(play.user_id)
                    tracks.append(play.play_item_id)
                    created.append(play.created_at)
                    heights.append(height)
                    signatures.append(play.signature)
                    cities.append(play.city)
                    regions.append(play.region)
                    countries.append(play.country)
        if not tracks:
            return 0
        await self.conn.execute(
            _INSERT_PLAYS,
            {
                "users": users,
                "tracks": tracks,
                "created": created,
                "heights": heights,
                "signatures": signatures,
                "cities": cities,
                "regions": regions,
                "countries": countries,
            },
        )
        return len(tracks)
