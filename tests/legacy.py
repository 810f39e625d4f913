"""The writers this service replaces, written from DESIGN §4b, for the handover tests.

Two shapes, both recording progress in `core_indexed_blocks(chain_id, height,
blockhash, parenthash, plays_slot, em_block)`, primary key (chain_id, height):

- **Python** (the legacy `index_core_plays`): takes `max(height) + 1` next, never
  goes back, and commits a block's plays and its row together; the plays go at
  `slot = plays_slot`, a counter continuing the old Solana slots (from
  300,000,000), one step per block with plays. A block without plays records
  the counter as it stands, so several heights can share one plays_slot.
- **Go** (the ETL's plays hook): upserts the row (`ON CONFLICT DO UPDATE`),
  leaves `plays_slot` at its default, and puts the plays at `slot = height` with
  a bare INSERT.

Neither deduplicates anything: a transaction the chain carries twice is
written twice. A writer "loses" the transactions `loses` picks (what a crash
between a hook's statements, a skipped exception or an operator's delete
leaves), and can stop at any height. The rows come from tests/reference.py, an
independent reading of the mapping, never from consumer.decode.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from consumer.devnet import DevChain
from tests.reference import tx_rows

__all__ = ["CREATE_PROGRESS", "FIRST_PLAYS_SLOT", "LegacyWriter", "Shape"]

FIRST_PLAYS_SLOT = 300_000_000

CREATE_PROGRESS = """
CREATE TABLE IF NOT EXISTS core_indexed_blocks (
    chain_id character varying NOT NULL,
    height integer NOT NULL,
    blockhash character varying NOT NULL,
    parenthash character varying,
    plays_slot integer DEFAULT 0,
    em_block integer,
    PRIMARY KEY (chain_id, height)
)
"""

_PLAY = """
INSERT INTO plays (user_id, source, play_item_id, created_at, updated_at, slot,
                   signature, city, region, country)
VALUES (%s, 'relay', %s, %s, now(), %s, %s, %s, %s, %s)
"""
_PYTHON_ROW = """
INSERT INTO core_indexed_blocks (chain_id, height, blockhash, parenthash, plays_slot)
VALUES (%s, %s, %s, %s, %s)
"""
_GO_ROW = """
INSERT INTO core_indexed_blocks (chain_id, height, blockhash, parenthash)
VALUES (%s, %s, %s, %s)
ON CONFLICT (chain_id, height) DO UPDATE
SET blockhash = EXCLUDED.blockhash, parenthash = EXCLUDED.parenthash
"""


class Shape(enum.Enum):
    PYTHON = "python"
    GO = "go"


Loses = Callable[[int, int, str], bool]  # (height, position among plays txs, hash)


def _keeps_all(height: int, position: int, tx_hash: str) -> bool:
    return False


@dataclass
class LegacyWriter:
    """One legacy writer on one database, writing the devnet chain's blocks."""

    chain: DevChain
    database: str
    shape: Shape
    loses: Loses = _keeps_all
    chain_id: str = "devnet-1"
    lost: dict[str, int] = field(default_factory=dict)  # hash -> height of what it lost
    plays_written: int = 0

    async def create(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.database, autocommit=True) as conn:
            await conn.execute(CREATE_PROGRESS)

    async def height(self) -> int:
        async with await psycopg.AsyncConnection.connect(self.database, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT coalesce(max(height), 0) FROM core_indexed_blocks WHERE chain_id = %s",
                (self.chain_id,),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def write_through(self, last: int) -> None:
        """Index from its next height through `last`, one transaction a block."""
        await self.create()
        async with await psycopg.AsyncConnection.connect(self.database) as conn:
            while (height := await self._next(conn)) <= last:
                await self._index(conn, height)

    async def follow(
        self, head: Callable[[], int], stop_at: int, stop: asyncio.Event, pace_s: float = 0.01
    ) -> None:
        """Index block by block as the chain grows, until `stop_at` or `stop`."""
        await self.create()
        async with await psycopg.AsyncConnection.connect(self.database) as conn:
            while not stop.is_set():
                height = await self._next(conn)
                if height > stop_at:
                    return
                if height > head():
                    await asyncio.sleep(pace_s)
                    continue
                await self._index(conn, height)
                await asyncio.sleep(pace_s)

    async def _next(self, conn: psycopg.AsyncConnection[tuple[int]]) -> int:
        cur = await conn.execute(
            "SELECT coalesce(max(height), 0) + 1 FROM core_indexed_blocks WHERE chain_id = %s",
            (self.chain_id,),
        )
        row = await cur.fetchone()
        await conn.commit()
        assert row is not None
        return int(row[0])

    async def _plays_slot(self, conn: psycopg.AsyncConnection[tuple[int]]) -> int:
        cur = await conn.execute(
            "SELECT coalesce(max(plays_slot), %s) FROM core_indexed_blocks WHERE chain_id = %s",
            (FIRST_PLAYS_SLOT, self.chain_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def _index(self, conn: psycopg.AsyncConnection[tuple[int]], height: int) -> None:
        txs = tx_rows(self.chain, height)
        blockhash = self.chain.block_hash(height)
        parent = self.chain.block_hash(height - 1) if height > 1 else ""
        async with conn.transaction():
            if self.shape is Shape.PYTHON:
                slot = await self._plays_slot(conn)
                slot += 1 if txs else 0
                await conn.execute(_PYTHON_ROW, (self.chain_id, height, blockhash, parent, slot))
            else:
                slot = height
                await conn.execute(_GO_ROW, (self.chain_id, height, blockhash, parent))
            for position, (tx_hash, rows) in enumerate(txs):
                if self.loses(height, position, tx_hash):
                    self.lost.setdefault(tx_hash, height)
                    continue
                for user, track, created, signature, city, region, country in rows:
                    await conn.execute(
                        _PLAY, (user, track, created, slot, signature, city, region, country)
                    )
                self.plays_written += len(rows)
