"""The ceiling: the same rows inserted by PostgreSQL's best plain idempotent path,
without the consumer; and the tip's floor, one block per transaction that way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from consumer.decode.blocks import decode_block
from consumer.devnet import DevChain
from consumer.model import DecodedBlock
from consumer.source.core import parse_block

__all__ = ["measure_ceiling", "measure_tip_floor"]

_CEILING_STAGING = """
CREATE TEMP TABLE ceiling_staging (
    ord int, h int, i int, u int, t int, c timestamp, g text, ci text, r text, co text
) ON COMMIT DELETE ROWS
"""
_CEILING_COPY = "COPY ceiling_staging FROM STDIN (FORMAT BINARY)"
_CEILING_TYPES = ["int4"] * 5 + ["timestamp"] + ["text"] * 4
# Rows decoded ahead of the ceiling's clock (~50 MB of tuples at most).
CEILING_CHUNK_ROWS = 100_000
_CEILING_INSERT = """
WITH new AS (
    INSERT INTO core_plays.tx_ledger
        (chain_id, block_height, tx_index, tx_hash, play_count, skipped_count)
    SELECT %(chain)s, h, i, x, p, 0
    FROM unnest(%(heights)b::bigint[], %(indexes)b::int[], %(hashes)b::text[],
                %(plays)b::int[]) AS l(h, i, x, p)
    ON CONFLICT DO NOTHING
    RETURNING block_height, tx_index
)
INSERT INTO plays (user_id, source, play_item_id, created_at, updated_at, slot,
                   signature, city, region, country)
SELECT s.u, 'relay', s.t, s.c, now(), s.h, s.g, s.ci, s.r, s.co
FROM ceiling_staging s JOIN new n ON n.block_height = s.h AND n.tx_index = s.i
ORDER BY s.ord
"""


def _decoded_batches(
    chain: DevChain, first: int, last: int, batch_plays: int
) -> Iterator[list[DecodedBlock]]:
    """Whole blocks, as many as fit in `batch_plays` plays (one at least).

    Measured on busy blocks: 2,000-4,000 plays per transaction is fastest with
    the aggregate trigger, 6,000 is 10-20% slower and 10,000 a third slower.
    """
    batch: list[DecodedBlock] = []
    plays = 0
    for height in range(first, last + 1):
        block = decode_block(parse_block(chain.block_bytes(height, canon=True), height))
        if batch and plays + block.play_count > batch_plays:
            yield batch
            batch, plays = [], 0
        batch.append(block)
        plays += block.play_count
    if batch:
        yield batch


@dataclass(slots=True)
class _CeilingBatch:
    """One ceiling transaction, ready to send: the ledger arrays and the plays rows."""

    params: dict[str, object]
    rows: list[tuple[object, ...]]


def _ceiling_batch(chain_id: str, batch: list[DecodedBlock]) -> _CeilingBatch:
    heights, indexes, hashes, counts = [], [], [], []
    rows: list[tuple[object, ...]] = []
    for block in batch:
        for tx in block.txs:
            heights.append(block.height)
            indexes.append(tx.tx_index)
            hashes.append(tx.tx_hash)
            counts.append(len(tx.plays))
            for p in tx.plays:
                rows.append(
                    (len(rows), block.height, tx.tx_index, p.user_id, p.play_item_id,
                     p.created_at, p.signature, p.city, p.region, p.country)
                )  # fmt: skip
    params: dict[str, object] = {
        "chain": chain_id,
        "heights": heights,
        "indexes": indexes,
        "hashes": hashes,
        "plays": counts,
    }
    return _CeilingBatch(params, rows)


def _ceiling_chunks(
    chain: DevChain, first: int, last: int, batch_plays: int
) -> Iterator[list[_CeilingBatch]]:
    """Ready batches, CEILING_CHUNK_ROWS rows at a time: decoded up front, in
    chunks so that memory stays bounded whatever the number of blocks."""
    chunk: list[_CeilingBatch] = []
    rows = 0
    for batch in _decoded_batches(chain, first, last, batch_plays):
        ready = _ceiling_batch(chain.spec.chain_id, batch)
        if not ready.rows:
            continue
        chunk.append(ready)
        rows += len(ready.rows)
        if rows >= CEILING_CHUNK_ROWS:
            yield chunk
            chunk, rows = [], 0
    if chunk:
        yield chunk


async def measure_ceiling(
    url: str, chain: DevChain, first: int, last: int, batch_plays: int
) -> tuple[int, float]:
    """(rows, seconds) for the best plain idempotent insert of blocks first..last.

    The batches of a chunk are sent back to back and timed together: PostgreSQL
    stays as busy as it is under the consumer, with no idle pause after each
    transaction in which its background writers could catch up for free.
    """
    rows_total = 0
    seconds = 0.0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(_CEILING_STAGING)
        for chunk in _ceiling_chunks(chain, first, last, batch_plays):
            started = time.perf_counter()
            for ready in chunk:
                rows_total += await _insert_batch(conn, ready)
            seconds += time.perf_counter() - started
    return rows_total, seconds


async def _insert_batch(
    conn: psycopg.AsyncConnection[tuple[object, ...]], ready: _CeilingBatch
) -> int:
    """One ceiling transaction, committed; the plays rows it inserted."""
    async with conn.transaction():
        cur = conn.cursor()
        async with cur.copy(_CEILING_COPY) as copy:
            copy.set_types(_CEILING_TYPES)
            for row in ready.rows:
                await copy.write_row(row)
        await cur.execute(_CEILING_INSERT, ready.params)
        return cur.rowcount


async def measure_tip_floor(
    url: str, chain: DevChain, first: int, last: int, interval_s: float
) -> list[float]:
    """Milliseconds PostgreSQL alone takes to commit each block first..last.

    The tip's floor: the rows of one block, ready before the clock starts, sent
    in one transaction by the ceiling's path, one block per interval as at the
    tip. No client can commit a block faster than its rows can be inserted, so
    this is the part of the tip latency that is PostgreSQL's, measured on the
    same machine in the same run.
    """
    times: list[float] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(_CEILING_STAGING)
        for height in range(first, last + 1):
            block = decode_block(parse_block(chain.block_bytes(height, canon=True), height))
            ready = _ceiling_batch(chain.spec.chain_id, [block])
            started = time.perf_counter()
            await _insert_batch(conn, ready)
            times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(max(0.0, interval_s - times[-1] / 1000))
    return times
