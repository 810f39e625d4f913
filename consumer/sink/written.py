"""What the database holds for some heights: the reads behind every comparison.

The ledger rows at a range of heights and, by hash, elsewhere; the set-aside
transactions among them; and the `plays` rows put for each height, by this
service or by another writer: at `slot = height` (this service's place, and the
Go ETL plays hook's), and at the `plays_slot` that the legacy Python indexer
recorded for the height in its progress table (`core_indexed_blocks` unless
`--handover-from` names another). Every statement on those tables that a
comparison needs is here; consumer.trust.reconcile calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from consumer.model import PlayRow, QuarantineKind

__all__ = [
    "DEFAULT_OTHER_WRITER",
    "HandoverRecord",
    "LedgerRow",
    "OtherWriter",
    "RowAt",
    "handovers",
    "ledger_at",
    "ledger_by_hash",
    "plays_at_slots",
    "read_handover",
    "record_resumed",
    "record_takeover",
    "set_aside_among",
]

# The legacy indexers' progress table (DESIGN §4b): (chain_id, height, ..., plays_slot).
DEFAULT_OTHER_WRITER = "core_indexed_blocks"

# play_ids: the rows an adopted transaction claimed (NULL for this service's own).
_LEDGER_AT = """
SELECT block_height, tx_index, tx_hash, play_count, block_hash, rpc, coalesce(play_ids, '{}')
FROM core_plays.tx_ledger WHERE chain_id = %s AND block_height BETWEEN %s AND %s
"""
_LEDGER_BY_HASH = """
SELECT block_height, tx_index, tx_hash, play_count, block_hash, rpc, coalesce(play_ids, '{}')
FROM core_plays.tx_ledger WHERE chain_id = %s AND tx_hash = ANY(%s)
"""
_SET_ASIDE = """
SELECT tx_hash FROM core_plays.quarantine
WHERE chain_id = %s AND kind = %s AND tx_hash = ANY(%s)
"""
# Rows at the heights themselves, and at the other slots the legacy indexer used for
# them: one statement, so one round trip whatever the shape of the other writer.
_PLAYS_AT = """
SELECT id, slot, user_id, play_item_id, created_at, coalesce(signature, ''),
       coalesce(city, ''), coalesce(region, ''), coalesce(country, '')
FROM plays WHERE slot BETWEEN %s AND %s OR slot = ANY(%s) OR id = ANY(%s)
"""

_READ_HANDOVER = """
SELECT adopted_through, other_height, taken_over_height, resumed_height
FROM core_plays.handover WHERE chain_id = %s AND source = %s
"""
_HANDOVERS = """
SELECT source, adopted_through, other_height, taken_over_height, resumed_height
FROM core_plays.handover WHERE chain_id = %s ORDER BY source
"""
_TAKE_OVER = """
INSERT INTO core_plays.handover (chain_id, source, other_height, taken_over_height, taken_over_at)
VALUES (%(chain)s, %(source)s, %(height)s, %(height)s, now())
ON CONFLICT (chain_id, source) DO UPDATE
SET taken_over_height = EXCLUDED.taken_over_height, taken_over_at = now(),
    other_height = EXCLUDED.other_height, updated_at = now()
"""
_RESUMED = """
UPDATE core_plays.handover SET resumed_height = greatest(coalesce(resumed_height, 0), %s),
    other_height = %s, updated_at = now()
WHERE chain_id = %s AND source = %s
"""

# (height, tx_index, tx_hash, play_count, block_hash, rpc, play_ids)
LedgerRow = tuple[int, int, str, int, str | None, str | None, list[int]]


@dataclass(frozen=True, slots=True)
class RowAt:
    """One plays row and the height it was put for."""

    height: int
    row_id: int
    row: PlayRow


async def ledger_at(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, low: int, high: int
) -> list[LedgerRow]:
    cur = await conn.execute(_LEDGER_AT, (chain_id, low, high))
    return await cur.fetchall()


async def ledger_by_hash(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, hashes: Sequence[str]
) -> list[LedgerRow]:
    cur = await conn.execute(_LEDGER_BY_HASH, (chain_id, list(hashes)))
    return await cur.fetchall()


async def set_aside_among(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, hashes: Sequence[str]
) -> frozenset[str]:
    """Which of these transactions PostgreSQL refused and are set aside."""
    cur = await conn.execute(_SET_ASIDE, (chain_id, QuarantineKind.REFUSED.value, list(hashes)))
    return frozenset(row[0] for row in await cur.fetchall())


async def plays_at_slots(
    conn: psycopg.AsyncConnection[TupleRow],
    low: int,
    high: int,
    other_slots: dict[int, int],
    adopted: dict[int, int],
) -> list[RowAt]:
    """The plays rows for heights low..high: at slot = height, at each height's other
    slot (`other_slots`: slot -> height) where the legacy indexer put them, and the
    rows the handover adopted (`adopted`: row id -> the height of the transaction
    that claimed it), which belong to that height wherever they lie: a transaction
    the chain carries twice can claim the rows the other writer put at its repeat.
    A row adopted for a height outside low..high is not this window's."""
    params = (low, high, list(other_slots), list(adopted))
    cur = await conn.execute(_PLAYS_AT, params, prepare=False)
    found = []
    for row_id, slot, *values in await cur.fetchall():
        height = adopted.get(row_id) or other_slots.get(slot) or int(slot)  # slot: never NULL
        if low <= height <= high:
            found.append(RowAt(height, row_id, PlayRow(*values)))
    return found


class OtherWriter:
    """The progress table of a writer this service replaces (`core_indexed_blocks`).

    Both legacy writers record each height they indexed there, the Python indexer
    with the slot it put the height's plays at. The table may not exist (a database
    no other writer ever touched): then there is no other writer to recognise.
    """

    def __init__(self, table: str = DEFAULT_OTHER_WRITER) -> None:
        self.table = table
        self._name = sql.Identifier(*table.split(".", 1))
        self._exists: bool | None = None

    async def exists(self, conn: psycopg.AsyncConnection[TupleRow]) -> bool:
        if self._exists is None:
            cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,))
            row = await cur.fetchone()
            self._exists = bool(row and row[0])
        return self._exists

    async def slots(
        self, conn: psycopg.AsyncConnection[TupleRow], chain_id: str, low: int, high: int
    ) -> dict[int, int]:
        """slot -> height for the heights low..high whose plays the legacy indexer put at a
        slot of its own (`plays_slot`; the Go ETL leaves it at its default).

        The indexer's counter steps once per block with plays, so a block without
        plays records the slot of the block before it: a slot belongs to the first
        height that recorded it, which may lie before `low` (then its rows are that
        height's, not this window's)."""
        if not await self.exists(conn):
            return {}
        query = sql.SQL(
            "(SELECT height, plays_slot FROM {t} WHERE chain_id = %s AND height < %s"
            " ORDER BY height DESC LIMIT 1) UNION ALL"
            " (SELECT height, plays_slot FROM {t} WHERE chain_id = %s"
            " AND height BETWEEN %s AND %s ORDER BY height)"
        ).format(t=self._name)
        cur = await conn.execute(query, (chain_id, low, chain_id, low, high))
        owners: dict[int, int] = {}
        for height, slot in sorted(await cur.fetchall()):
            if slot is not None and slot > 0 and slot not in owners:
                owners[int(slot)] = int(height)
        return {
            slot: height
            for slot, height in owners.items()
            if low <= height <= high and slot != height
        }

    async def height(self, conn: psycopg.AsyncConnection[TupleRow], chain_id: str) -> int | None:
        """The other writer's committed height W for the chain; None if it wrote none."""
        if not await self.exists(conn):
            return None
        query = sql.SQL("SELECT max(height) FROM {} WHERE chain_id = %s").format(self._name)
        cur = await conn.execute(query, (chain_id,))
        row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])


@dataclass(frozen=True, slots=True)
class HandoverRecord:
    """core_plays.handover for one (chain, other writer)."""

    adopted_through: int
    other_height: int | None
    taken_over_height: int | None
    resumed_height: int | None


async def read_handover(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, source: str
) -> HandoverRecord | None:
    cur = await conn.execute(_READ_HANDOVER, (chain_id, source))
    row = await cur.fetchone()
    return None if row is None else HandoverRecord(*row)


async def handovers(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str
) -> dict[str, HandoverRecord]:
    """Every handover of the chain, by the other writer's table (for `status`)."""
    cur = await conn.execute(_HANDOVERS, (chain_id,))
    return {source: HandoverRecord(*rest) for source, *rest in await cur.fetchall()}


async def record_takeover(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, source: str, height: int
) -> None:
    """The other writer stopped at `height`: this service writes alone from here on."""
    await conn.execute(_TAKE_OVER, {"chain": chain_id, "source": source, "height": height})


async def record_resumed(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, source: str, height: int
) -> None:
    """The other writer wrote again after the takeover, up to `height`."""
    await conn.execute(_RESUMED, (height, height, chain_id, source))
