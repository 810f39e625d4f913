"""Writes decoded blocks and the checkpoint in one PostgreSQL transaction.

Exactly-once is the ledger's job: a batch inserts one ledger row per play
transaction, keyed by the transaction's hash, with ON CONFLICT DO NOTHING
RETURNING, and plays go in only for the transactions that came back. A replay,
an overlapping backfill, a restart mid-batch or the same block in another
transaction order therefore never reaches plays (and its on_play trigger)
twice, and a transaction an earlier delivery lacked is written whenever it
arrives. Where two deliveries disagree about positions, the disagreement is
stored in core_plays.conflicts and returned, so it is never silent.

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

import functools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import TupleRow

from consumer.errors import SinkRefused, SinkUnavailable
from consumer.metrics import Metrics
from consumer.model import (
    WHOLE_BLOCK,
    BatchResult,
    Checkpoint,
    Conflict,
    ConflictKind,
    DecodedBlock,
    DecodedTx,
    LedgerOrigin,
    PlayRow,
    QuarantineKind,
    RepairReason,
    Rpc,
    SkipReason,
    Undecodable,
)
from consumer.sink.database import Fault, classify, describe

__all__ = [
    "Adopted",
    "Adoption",
    "PlaysSink",
    "Prepare",
    "Reapplied",
    "count_set_aside",
    "other_chains",
    "read_checkpoint",
    "record_findings",
    "report_set_aside",
]

log = logging.getLogger(__name__)

# Created once per session (the lease's connection), always named with pg_temp
# so that no table of the same name elsewhere on the search path can stand in.
# `batch_tx` numbers the batch's transactions, `play_no` its plays in chain order.
_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS pg_temp.core_plays_staged_txs (
    batch_tx int NOT NULL, height bigint NOT NULL, tx_index int NOT NULL,
    tx_hash text NOT NULL, play_count int NOT NULL, skipped_count int NOT NULL,
    skip_reasons text, rpc text NOT NULL, block_hash text NOT NULL, repair_reasons text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS pg_temp.core_plays_staged_plays (
    play_no int NOT NULL, batch_tx int NOT NULL, user_id int, play_item_id int NOT NULL,
    created_at timestamp NOT NULL, signature text NOT NULL, city text NOT NULL,
    region text NOT NULL, country text NOT NULL
) ON COMMIT DELETE ROWS
"""
# Between the parts of one large block, inside its transaction.
_CLEAR_STAGING = "TRUNCATE pg_temp.core_plays_staged_txs, pg_temp.core_plays_staged_plays"
_COPY_TXS = """COPY pg_temp.core_plays_staged_txs (batch_tx, height, tx_index, tx_hash,
    play_count, skipped_count, skip_reasons, rpc, block_hash, repair_reasons)
    FROM STDIN (FORMAT BINARY)"""
_TX_TYPES = ("int4", "int8", "int4", "text", "int4", "int4", "text", "text", "text", "text")
# The column order after (play_no, batch_tx) is PlayRow's, so a staged row is
# (play_no, batch_tx) + play.
_COPY_PLAYS = """COPY pg_temp.core_plays_staged_plays (play_no, batch_tx, user_id, play_item_id,
    created_at, signature, city, region, country) FROM STDIN (FORMAT BINARY)"""
_PLAY_TYPES = ("int4", "int4", "int4", "int4", "timestamp", "text", "text", "text", "text")

# The ledger is keyed by the transaction's hash: whatever position a delivery
# puts it at, a transaction is written once, and a transaction never seen before
# is written wherever it arrives. Plays are joined on the full staged identity
# (height, position, hash) of exactly the ledger rows that came back, so the same
# transaction staged twice in a batch brings its plays once.
_INSERT_LEDGER_AND_PLAYS = """
WITH new AS (
    INSERT INTO core_plays.tx_ledger
        (chain_id, block_height, tx_index, tx_hash, play_count, skipped_count, skip_reasons,
         rpc, block_hash, repair_reasons)
    SELECT %(chain)s, height, tx_index, tx_hash, play_count, skipped_count, skip_reasons::jsonb,
           rpc, block_hash, repair_reasons::jsonb
    FROM pg_temp.core_plays_staged_txs ORDER BY batch_tx
    ON CONFLICT (chain_id, tx_hash) DO NOTHING
    RETURNING block_height, tx_index, tx_hash
), written AS (
    INSERT INTO plays (user_id, source, play_item_id, created_at, updated_at, slot,
                       signature, city, region, country)
    SELECT p.user_id, 'relay', p.play_item_id, p.created_at, now(), t.height, p.signature,
           p.city, p.region, p.country
    FROM pg_temp.core_plays_staged_plays p
    JOIN pg_temp.core_plays_staged_txs t ON t.batch_tx = p.batch_tx
    JOIN new ON new.block_height = t.height AND new.tx_index = t.tx_index
            AND new.tx_hash = t.tx_hash
    ORDER BY p.play_no
    RETURNING 1
)
SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM written)
"""

# Run after the ledger insert, in the same transaction: every staged transaction
# that disagrees with the ledger about where it (or its position) belongs. Both
# probes are index lookups (the hash key, the position index), and a staged
# transaction that was just written finds only itself. A disagreement seen before
# adds nothing (ON CONFLICT), so each one is counted and logged once.
_RECORD_CONFLICTS = """
INSERT INTO core_plays.conflicts
    (chain_id, kind, block_height, tx_index, tx_hash, rpc,
     other_height, other_index, other_hash, other_rpc)
SELECT %(chain)s,
       CASE WHEN l.block_height = t.height THEN %(moved)s ELSE %(other_height)s END,
       t.height, t.tx_index, t.tx_hash, t.rpc, l.block_height, l.tx_index, l.tx_hash,
       coalesce(l.rpc, '')
FROM pg_temp.core_plays_staged_txs t
JOIN core_plays.tx_ledger l ON l.chain_id = %(chain)s AND l.tx_hash = t.tx_hash
WHERE (l.block_height, l.tx_index) <> (t.height, t.tx_index)
UNION ALL
SELECT %(chain)s, %(position_taken)s, t.height, t.tx_index, t.tx_hash, t.rpc,
       l.block_height, l.tx_index, l.tx_hash, coalesce(l.rpc, '')
FROM pg_temp.core_plays_staged_txs t
JOIN core_plays.tx_ledger l ON l.chain_id = %(chain)s AND l.block_height = t.height
                           AND l.tx_index = t.tx_index AND l.tx_hash <> t.tx_hash
ON CONFLICT DO NOTHING
RETURNING kind, block_height, tx_index, tx_hash, rpc, other_height, other_index, other_hash,
          other_rpc
"""

# Findings of the audit, verify and the handover (a DifferenceKind in `kind`), kept beside
# the deliveries' own conflicts: (kind, height, tx hash), positions unknown (-1).
_RECORD_FINDINGS = """
INSERT INTO core_plays.conflicts
    (chain_id, kind, block_height, tx_index, tx_hash, rpc,
     other_height, other_index, other_hash, other_rpc)
SELECT %(chain)s, k, h, -1, x, %(rpc)s, h, -1, '', NULL
FROM unnest(%(kinds)s::text[], %(heights)s::bigint[], %(hashes)s::text[]) AS d(k, h, x)
ON CONFLICT DO NOTHING
"""

# Another writer's transactions, adopted by the handover: ledger rows of their own origin
# with the plays rows each claimed, and how far the handover has come, in the batch's
# transaction (so a SIGKILL loses or doubles nothing).
_ADOPT = """
INSERT INTO core_plays.tx_ledger
    (chain_id, block_height, tx_index, tx_hash, play_count, skipped_count, rpc, block_hash,
     origin, play_ids)
SELECT %(chain)s, h, i, x, n, s, r, b, %(origin)s, string_to_array(ids, ',')::bigint[]
FROM unnest(%(heights)s::bigint[], %(indexes)s::int[], %(hashes)s::text[], %(counts)s::int[],
            %(skipped)s::int[], %(rpcs)s::text[], %(blocks)s::text[], %(ids)s::text[])
     AS a(h, i, x, n, s, r, b, ids)
ON CONFLICT (chain_id, tx_hash) DO NOTHING
RETURNING play_count
"""
_SAVE_HANDOVER = """
INSERT INTO core_plays.handover (chain_id, source, adopted_through, other_height)
VALUES (%(chain)s, %(source)s, %(through)s, %(other)s)
ON CONFLICT (chain_id, source) DO UPDATE
SET adopted_through = greatest(core_plays.handover.adopted_through, EXCLUDED.adopted_through),
    other_height = EXCLUDED.other_height, updated_at = now()
"""

_INSERT_QUARANTINE = """
INSERT INTO core_plays.quarantine
    (chain_id, block_height, tx_index, tx_hash, data, error, kind, retry_rows)
SELECT %(chain)s, h, i, x, d, e, k, r::jsonb
FROM unnest(%(heights)b::bigint[], %(indexes)b::int[], %(hashes)b::text[],
            %(data)b::bytea[], %(errors)b::text[], %(kinds)b::text[], %(rows)b::text[])
     AS q(h, i, x, d, e, k, r)
ON CONFLICT DO NOTHING
RETURNING tx_index, kind
"""

# Set-aside transactions still waiting for `quarantine retry`.
_SELECT_PENDING = """
SELECT block_height, tx_index, tx_hash, data, retry_rows FROM core_plays.quarantine
WHERE chain_id = %s AND kind = 'refused' AND written_at IS NULL
ORDER BY block_height, tx_index
"""
_COUNT_PENDING = """
SELECT count(*) FROM core_plays.quarantine
WHERE chain_id = %s AND kind = 'refused' AND written_at IS NULL
"""
_MARK_WRITTEN = """
UPDATE core_plays.quarantine SET written_at = now()
WHERE chain_id = %s AND block_height = %s AND tx_index = %s
"""
_SET_ERROR = """
UPDATE core_plays.quarantine SET error = %s
WHERE chain_id = %s AND block_height = %s AND tx_index = %s
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
_OTHER_CHAINS = "SELECT DISTINCT chain_id FROM core_plays.checkpoint WHERE stream = %s"


class Adopted(NamedTuple):
    """A transaction another writer wrote whole, to be recorded in the ledger as adopted."""

    height: int
    tx_index: int
    tx_hash: str
    play_count: int
    skipped_count: int
    block_hash: str
    rpc: str
    play_ids: tuple[int, ...]


@dataclass(slots=True)
class Adoption:
    """What the handover decided for a batch, inside the batch's own transaction: the
    blocks without what another writer wrote (whole or in part), and what it adopts."""

    blocks: list[DecodedBlock]
    adopted: list[Adopted] = field(default_factory=list)
    ambiguous: int = 0  # transactions partly written by the other writer: not written
    source: str = ""  # the other writer's progress table
    through: int = 0  # adopted through this height (0: none)
    other_height: int | None = None  # the other writer's committed height, as read


# Called with the writer's connection inside the batch's transaction (consumer.trust.handover).
Prepare = Callable[[psycopg.AsyncConnection[TupleRow], list[DecodedBlock]], Awaitable[Adoption]]


@dataclass(slots=True)
class Reapplied:
    """What `quarantine retry` did: transactions and plays written, and what still fails."""

    transactions: int = 0
    plays_written: int = 0
    failed: dict[tuple[int, int], str] = field(default_factory=dict)  # (height, tx_index)


async def _fetch(
    conn: psycopg.AsyncConnection[TupleRow], what: str, sql: str, params: tuple[object, ...]
) -> list[tuple[Any, ...]]:
    """Run a read on the writer's session; a lost session is SinkUnavailable."""
    try:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()
    except psycopg.Error as exc:
        if classify(exc) is Fault.BUG:
            raise
        raise SinkUnavailable(f"{what}: {describe(exc)}") from exc


async def read_checkpoint(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, stream: str
) -> Checkpoint | None:
    rows = await _fetch(conn, "reading the checkpoint", _SELECT_CHECKPOINT, (chain_id, stream))
    return Checkpoint(*rows[0]) if rows else None


async def other_chains(conn: psycopg.AsyncConnection[TupleRow], stream: str) -> list[str]:
    """Chain ids with a checkpoint for `stream` (to tell a new chain from a first run)."""
    rows = await _fetch(conn, "reading checkpoints", _OTHER_CHAINS, (stream,))
    return sorted(row[0] for row in rows)


async def count_set_aside(conn: psycopg.AsyncConnection[TupleRow], chain_id: str) -> int:
    """Transactions set aside because PostgreSQL refused them, not written yet."""
    rows = await _fetch(conn, "counting set-aside transactions", _COUNT_PENDING, (chain_id,))
    return int(rows[0][0])


async def report_set_aside(
    conn: psycopg.AsyncConnection[TupleRow],
    chain_id: str,
    metrics: Metrics,
    count: int,
    where: str,
) -> None:
    """Count and log transactions a write set aside (the writer's, or the audit's
    repair): `set_aside_pending` is what pages, and their plays are not in plays."""
    metrics.set_aside_total.inc(count)
    metrics.set_aside_pending.set(await count_set_aside(conn, chain_id))
    log.error(
        "set aside %d transaction(s) PostgreSQL still refuses in %s: their plays are NOT "
        "in plays yet; fix the cause, then run `plays-consumer quarantine retry`",
        count,
        where,
    )


async def record_findings(
    conn: psycopg.AsyncConnection[TupleRow],
    chain_id: str,
    findings: Sequence[tuple[str, int, str]],
    rpc: Rpc = Rpc.GET_BLOCKS,
) -> None:
    """Keep transaction-level findings, (kind, height, tx hash), in core_plays.conflicts:
    the audit trail of what the audit, verify and the handover found."""
    if findings:
        kinds, heights, hashes = zip(*findings, strict=True)
        await conn.execute(
            _RECORD_FINDINGS,
            {
                "chain": chain_id,
                "rpc": str(rpc),
                "kinds": list(kinds),
                "heights": list(heights),
                "hashes": list(hashes),
            },
        )


def _tx_to_json(tx: DecodedTx, block: DecodedBlock) -> str:
    """Enough to write a set-aside transaction later without the node: its ledger row
    and its decoded plays (PlayRow order, timestamps as ISO text)."""
    return json.dumps(
        {
            "tx_hash": tx.tx_hash,
            "block_hash": block.hash,
            "rpc": str(block.via),
            "skipped": tx.skipped,
            "skip_reasons": {str(k): v for k, v in tx.skip_reasons.items()},
            "repair_reasons": {str(k): v for k, v in tx.repair_reasons.items()},
            "plays": [[*p[:2], p.created_at.isoformat(), *p[3:]] for p in tx.plays],
        }
    )


def _tx_from_json(tx_index: int, data: bytes, stored: dict[str, Any]) -> DecodedTx:
    plays = tuple(
        PlayRow(u, t, datetime.fromisoformat(c), g, ci, r, co)
        for u, t, c, g, ci, r, co in stored["plays"]
    )
    reasons = {SkipReason(k): int(v) for k, v in stored["skip_reasons"].items()}
    repairs = {RepairReason(k): int(v) for k, v in stored.get("repair_reasons", {}).items()}
    return DecodedTx(tx_index, stored["tx_hash"], plays, stored["skipped"], reasons, data, repairs)


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
        checkpoint: bool = True,
        prepare: Prepare | None = None,
    ) -> None:
        """`checkpoint=False` makes a repair writer (verify --repair, the audit):
        it writes missing transactions through the same exactly-once path, ledger
        first, and leaves the stream's progress alone."""
        self.conn = conn
        self.chain_id = chain_id
        self.stream = stream
        self.start_height = start_height
        self.rewind = rewind
        self.checkpoint = checkpoint
        # The handover: decides, inside each batch's transaction, what another writer
        # already wrote (adopted, not written again).
        self.prepare = prepare
        self._conflict_params = {
            "chain": chain_id,
            **{k.name.lower(): k.value for k in ConflictKind},
        }
        self._staging_ready = False

    @classmethod
    def repairer(cls, conn: psycopg.AsyncConnection[TupleRow], chain_id: str) -> PlaysSink:
        """The one repair writer (verify --repair, the audit): the same exactly-once path,
        ledger first, and no checkpoint, so every stream's progress is left alone."""
        return cls(conn, chain_id, "", 0, checkpoint=False)

    async def write(self, batch: list[DecodedBlock], set_aside: bool = False) -> BatchResult:
        """Write the batch and move the checkpoint to its last block, atomically.

        If PostgreSQL refuses the rows (class 22/23/54, a trigger raising), this
        raises SinkRefused: the refusal may be someone's trigger failing for a
        while, so the runner retries the batch before giving up on any play.
        With `set_aside` (the writer's last resort) the batch is written block
        by block instead, and each transaction PostgreSQL still refuses is set
        aside in the quarantine with its bytes and decoded rows, to be written
        later by `plays-consumer quarantine retry`.
        """
        return await self._attempt(
            f"blocks {batch[0].height}..{batch[-1].height}",
            functools.partial(self._write, batch),
            functools.partial(self._write_isolating, batch),
            set_aside,
        )

    async def write_parts(
        self, parts: Callable[[], AsyncIterator[DecodedBlock]], set_aside: bool = False
    ) -> BatchResult:
        """Write ONE block, decoded a part at a time, and move the checkpoint to it.

        For a block too big to hold decoded (see consumer.decode.blocks.block_parts):
        every part is staged and inserted in turn inside one transaction, so the
        block is still all or nothing, and only one part's rows exist at a time.
        A refusal is handled as `write` handles it; `parts` makes the parts
        afresh, so with `set_aside` the block is decoded again and each part's
        refused transactions are set aside.
        """
        if self.prepare is not None:
            # The handover claims rows across a whole height, so it sees the block whole.
            return await self.write([await _joined(parts)], set_aside)
        return await self._attempt(
            "a large block",
            functools.partial(self._write_parts, parts, isolate=False),
            functools.partial(self._write_parts, parts, isolate=True),
            set_aside,
        )

    async def _attempt(
        self,
        what: str,
        write: Callable[[], Awaitable[BatchResult]],
        isolating: Callable[[], Awaitable[BatchResult]],
        set_aside: bool,
    ) -> BatchResult:
        """`write`; on a refusal, SinkRefused, or with `set_aside` `isolating` instead.
        Every other database error is SinkUnavailable unless it is a bug."""
        started = time.perf_counter()
        try:
            await self._ensure_staging()
            try:
                result = await write()
            except psycopg.Error as exc:
                if classify(exc) is not Fault.REFUSED:
                    raise
                if not set_aside:
                    raise SinkRefused(f"PostgreSQL refuses {what}: {describe(exc)}") from exc
                result = await isolating()
        except psycopg.Error as exc:
            if classify(exc) is Fault.BUG:
                raise
            raise SinkUnavailable(f"writing {what}: {describe(exc)}") from exc
        result.seconds = time.perf_counter() - started
        return result

    async def _write_parts(
        self, parts: Callable[[], AsyncIterator[DecodedBlock]], isolate: bool
    ) -> BatchResult:
        total: BatchResult | None = None
        last: DecodedBlock | None = None
        async with self.conn.transaction():
            async for decoded in parts():
                refused: list[_QuarantineRow] = []
                part = decoded
                if isolate:
                    part, refused = await self._without_refused(decoded)
                staged = _stage([part])
                staged.quarantined.extend(refused)
                await self._insert(staged)
                await self.conn.execute(_CLEAR_STAGING)
                if total is None:
                    total = staged.result
                else:
                    total.merge(staged.result)
                last = part
            assert total is not None and last is not None
            total.blocks = 1
            await self._move_checkpoint(last)
        return total

    async def _ensure_staging(self) -> None:
        if not self._staging_ready:
            # In a transaction of its own: a rolled-back batch must not take the tables.
            await self.conn.execute(_CREATE_STAGING)
            self._staging_ready = True

    async def _write_isolating(self, batch: list[DecodedBlock]) -> BatchResult:
        total = BatchResult()
        for block in batch:
            try:
                result = await self._write([block])
            except psycopg.Error as exc:
                if classify(exc) is not Fault.REFUSED:
                    raise
                candidate = block
                if self.prepare is not None:  # only what the handover would write is tried
                    async with self.conn.transaction(force_rollback=True):
                        candidate = (await self.prepare(self.conn, [block])).blocks[0]
                _kept, refused = await self._without_refused(candidate)
                result = await self._write([block], refused)
            total.merge(result)
        return total

    async def _without_refused(
        self, block: DecodedBlock
    ) -> tuple[DecodedBlock, list[_QuarantineRow]]:
        """The block without the transactions PostgreSQL refuses, and those as set-aside rows.

        Each plays transaction is tried alone in a transaction that is always
        rolled back; a refused one keeps its raw bytes and its decoded rows.
        """
        kept: list[DecodedTx] = []
        refused: list[_QuarantineRow] = []
        for tx in block.txs:
            try:
                async with self.conn.transaction(force_rollback=True):
                    await self._insert(_stage([replace(block, txs=(tx,), quarantined=())]))
                kept.append(tx)
            except psycopg.Error as exc:
                if classify(exc) is not Fault.REFUSED:
                    raise
                error = f"refused by PostgreSQL: {describe(exc)}"
                refused.append(
                    (
                        block.height,
                        tx.tx_index,
                        tx.tx_hash,
                        tx.data,
                        error,
                        QuarantineKind.REFUSED,
                        _tx_to_json(tx, block),
                    )
                )
        return replace(block, txs=tuple(kept)), refused

    async def _write(
        self, batch: list[DecodedBlock], set_aside: Sequence[_QuarantineRow] = ()
    ) -> BatchResult:
        """The batch less the transactions in `set_aside` (which are set aside instead),
        with the handover's adoption when there is one, and the checkpoint: one transaction."""
        refused = {row[2] for row in set_aside}
        if self.prepare is None:
            staged = _stage([_without(block, refused) for block in batch])
            staged.quarantined.extend(set_aside)
            async with self.conn.transaction():
                await self._insert(staged)
                await self._move_checkpoint(batch[-1])
            return staged.result
        async with self.conn.transaction():
            adoption = await self.prepare(self.conn, batch)
            blocks = [_without(block, refused) for block in adoption.blocks]
            staged = _stage(blocks)
            staged.quarantined.extend(set_aside)
            await self._insert(staged)
            await self._adopt(adoption, staged.result)
            await self._move_checkpoint(batch[-1])
        return staged.result

    async def _adopt(self, adoption: Adoption, result: BatchResult) -> None:
        """Record another writer's transactions as adopted, and the handover's progress."""
        result.ambiguous += adoption.ambiguous
        if adoption.adopted:
            rows = adoption.adopted
            cur = await self.conn.execute(
                _ADOPT,
                {
                    "chain": self.chain_id,
                    "origin": LedgerOrigin.ADOPTED.value,
                    "heights": [a.height for a in rows],
                    "indexes": [a.tx_index for a in rows],
                    "hashes": [a.tx_hash for a in rows],
                    "counts": [a.play_count for a in rows],
                    "skipped": [a.skipped_count for a in rows],
                    "rpcs": [a.rpc for a in rows],
                    "blocks": [a.block_hash for a in rows],
                    "ids": [",".join(map(str, a.play_ids)) for a in rows],
                },
            )
            counts = [row[0] for row in await cur.fetchall()]
            result.adopted += len(counts)
            result.adopted_plays += sum(counts)
        if adoption.source:
            await self.conn.execute(
                _SAVE_HANDOVER,
                {
                    "chain": self.chain_id,
                    "source": adoption.source,
                    "through": adoption.through,
                    "other": adoption.other_height,
                },
            )

    async def _move_checkpoint(self, last: DecodedBlock) -> None:
        """Inside the batch's transaction; a repair writer leaves progress alone."""
        if not self.checkpoint:
            return
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
                await cur.execute(_RECORD_CONFLICTS, self._conflict_params, prepare=False)
                result.conflicts = [
                    Conflict(ConflictKind(kind), *rest) for kind, *rest in await cur.fetchall()
                ]
        if staged.quarantined:
            heights, indexes, hashes, data, errors, kinds, retry = zip(
                *staged.quarantined, strict=True
            )
            cur = await conn.execute(
                _INSERT_QUARANTINE,
                {
                    "chain": self.chain_id,
                    "heights": list(heights),
                    "indexes": list(indexes),
                    "hashes": list(hashes),
                    "data": list(data),
                    "errors": list(errors),
                    "kinds": list(kinds),
                    "rows": list(retry),
                },
            )
            for index, kind in await cur.fetchall():
                if kind == QuarantineKind.REFUSED:
                    result.set_aside += 1
                else:
                    what = Undecodable.BLOCK if index == WHOLE_BLOCK else Undecodable.TRANSACTION
                    result.quarantined[what] += 1

    async def reapply_set_aside(self) -> Reapplied:
        """Write the set-aside transactions through the ledger, each in its own
        transaction (the checkpoint does not move); what is still refused stays."""
        done = Reapplied()
        await self._ensure_staging()
        pending = await _fetch(self.conn, "reading set-aside", _SELECT_PENDING, (self.chain_id,))
        for height, index, _tx_hash, data, stored in pending:
            tx = _tx_from_json(index, bytes(data), stored)
            block_hash, via = stored.get("block_hash", ""), Rpc(stored.get("rpc", ""))
            block = DecodedBlock(height, block_hash, self.chain_id, None, (tx,), via=via)
            staged = _stage([block])
            try:
                async with self.conn.transaction():
                    await self._insert(staged)
                    await self.conn.execute(_MARK_WRITTEN, (self.chain_id, height, index))
            except psycopg.Error as exc:
                if classify(exc) is not Fault.REFUSED:
                    raise
                error = f"refused by PostgreSQL: {describe(exc)}"
                await self.conn.execute(_SET_ERROR, (error, self.chain_id, height, index))
                done.failed[(height, index)] = error
                continue
            done.transactions += 1
            done.plays_written += staged.result.plays_written
        return done


async def _joined(parts: Callable[[], AsyncIterator[DecodedBlock]]) -> DecodedBlock:
    """A large block's parts as one decoded block, with every part's counts."""
    whole = [part async for part in parts()]
    tx_types: Counter[str] = Counter()
    skipped: Counter[SkipReason] = Counter()
    repaired: Counter[RepairReason] = Counter()
    for part in whole:
        tx_types.update(part.tx_types)
        skipped.update(part.skipped)
        repaired.update(part.repaired)
    return replace(
        whole[0],
        txs=tuple(tx for part in whole for tx in part.txs),
        quarantined=tuple(q for part in whole for q in part.quarantined),
        tx_types=tx_types,
        skipped=skipped,
        repaired=repaired,
    )


def _without(block: DecodedBlock, hashes: set[str]) -> DecodedBlock:
    if not hashes:
        return block
    return replace(block, txs=tuple(tx for tx in block.txs if tx.tx_hash not in hashes))


# batch_tx, height, tx_index, hash, play_count, skipped_count, skip_reasons, rpc,
# block_hash, repair_reasons
_TxRow = tuple[int, int, int, str, int, int, str | None, str, str, str | None]
# height, tx_index, hash, data, error, kind, retry_rows (JSON, set-aside only)
_QuarantineRow = tuple[int, int, str, bytes, str, str, str | None]


@dataclass(slots=True)
class _Staged:
    """A batch as the rows its statements send, with the counts that need no database."""

    result: BatchResult
    txs: list[_TxRow] = field(default_factory=list)
    plays: list[tuple[object, ...]] = field(default_factory=list)  # (play_no, batch_tx) + PlayRow
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
        rpc, block_hash = str(block.via), block.hash
        for tx in block.txs:
            staged.occurrences += 1
            key = (height, tx.tx_index, tx.tx_hash)
            if key in seen:
                continue  # the same block twice in one batch: its plays once
            seen.add(key)
            k = len(txs)
            reasons = json.dumps(tx.skip_reasons) if tx.skip_reasons else None
            txs.append(
                (
                    k,
                    height,
                    tx.tx_index,
                    tx.tx_hash,
                    len(tx.plays),
                    tx.skipped,
                    reasons,
                    rpc,
                    block_hash,
                    json.dumps(tx.repair_reasons) if tx.repair_reasons else None,
                )
            )
            n = len(plays)
            plays.extend([(n + j, k, *play) for j, play in enumerate(tx.plays)])
        for q in block.quarantined:
            staged.quarantined.append(
                (height, q.tx_index, q.tx_hash, q.data, q.error, QuarantineKind.UNDECODABLE, None)
            )
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
