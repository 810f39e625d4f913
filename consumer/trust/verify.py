"""`plays-consumer verify`: prove that `plays` matches the chain over a height range.

The range is read again through GetBlocks windows (another path than the stream
the service follows at the tip), decoded as `run` decodes it, and compared
height by height with the ledger and with the `plays` rows at each slot
(consumer.trust.compare holds the rules). `--repair` writes what is missing through
the sink's exactly-once path, ledger first, so `on_play` fires once per play
even with the live service writing beside it; it never deletes: what is extra
is reported for a person to judge.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from consumer.config import SourceSettings
from consumer.decode.blocks import decode_block
from consumer.errors import ConfigError
from consumer.model import MAX_GETBLOCKS_HEIGHTS, Block, DecodedBlock, PlayRow, Rpc
from consumer.sink.plays import PlaysSink
from consumer.source.core import CoreClient, CoreSource
from consumer.trust.compare import Difference, DifferenceKind, Findings, LedgerEntry, compare_blocks

__all__ = [
    "Progress",
    "VerifyReport",
    "read_written",
    "record_differences",
    "verify_range",
]

# Heights compared per round trip to the database, and plays at most: one
# GetBlocks window's worth, so memory stays that of a window.
_CHUNK_HEIGHTS = MAX_GETBLOCKS_HEIGHTS
_CHUNK_PLAYS = 20_000

Progress = Callable[[int, int, float], None]  # heights done, heights in all, seconds

_LEDGER_AT = """
SELECT block_height, tx_index, tx_hash, play_count, block_hash, rpc FROM core_plays.tx_ledger
WHERE chain_id = %s AND block_height BETWEEN %s AND %s
"""
_LEDGER_BY_HASH = """
SELECT block_height, tx_index, tx_hash, play_count, block_hash, rpc FROM core_plays.tx_ledger
WHERE chain_id = %s AND tx_hash = ANY(%s)
"""
_QUARANTINED = """
SELECT tx_hash FROM core_plays.quarantine WHERE chain_id = %s AND tx_hash = ANY(%s)
"""
_PLAYS_AT = """
SELECT slot, user_id, play_item_id, created_at, signature, city, region, country FROM plays
WHERE slot BETWEEN %s AND %s
"""
# Findings of the audit and of a repair, kept beside the sink's own conflicts.
_RECORD = """
INSERT INTO core_plays.conflicts
    (chain_id, kind, block_height, tx_index, tx_hash, rpc,
     other_height, other_index, other_hash, other_rpc)
SELECT %(chain)s, k, h, -1, x, %(rpc)s, h, -1, '', NULL
FROM unnest(%(kinds)s::text[], %(heights)s::bigint[], %(hashes)s::text[]) AS d(k, h, x)
ON CONFLICT DO NOTHING
"""


@dataclass(slots=True)
class VerifyReport:
    """The whole range's comparison: what a person and a script read."""

    chain_id: str
    from_height: int
    to_height: int
    max_differences: int = 20
    heights: int = 0
    transactions: int = 0
    plays: int = 0
    counts: Counter[DifferenceKind] = field(default_factory=Counter)
    first: list[Difference] = field(default_factory=list)
    moved: int = 0
    repeated: int = 0
    foreign: int = 0
    repaired_transactions: int = 0
    repaired_plays: int = 0
    seconds: float = 0.0

    def add(self, found: Findings) -> None:
        self.heights += found.heights
        self.transactions += found.transactions
        self.plays += found.plays
        self.counts.update(found.counts())
        self.moved += found.moved
        self.repeated += found.repeated
        self.foreign += found.foreign
        room = self.max_differences - len(self.first)
        self.first.extend(found.differences[: max(0, room)])

    @property
    def remaining(self) -> int:
        """Differences still there: those a repair wrote no longer count, and
        pruning is the api's job, not a difference."""
        left = sum(n for kind, n in self.counts.items() if kind != DifferenceKind.PRUNED_OR_MISSING)
        return left - self.repaired_transactions

    @property
    def ok(self) -> bool:
        return self.remaining == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "from_height": self.from_height,
            "to_height": self.to_height,
            "ok": self.ok,
            "checked": {
                "heights": self.heights,
                "transactions": self.transactions,
                "plays": self.plays,
            },
            "differences": {kind.value: self.counts.get(kind, 0) for kind in DifferenceKind},
            "not_differences": {
                "moved": self.moved,
                "repeated": self.repeated,
                "written_by_another_writer": self.foreign,
            },
            "repaired": {
                "transactions": self.repaired_transactions,
                "plays": self.repaired_plays,
            },
            "first_differences": [
                {
                    "height": d.height,
                    "kind": d.kind.value,
                    "tx_hash": d.tx_hash,
                    "count": d.count,
                    "detail": d.detail,
                }
                for d in self.first
            ],
            "seconds": round(self.seconds, 3),
        }

    def format_text(self) -> str:
        def line(label: str, kinds: Sequence[DifferenceKind]) -> str:
            return f"{label} " + ", ".join(f"{k.value} {self.counts.get(k, 0)}" for k in kinds)

        rate = self.heights / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"verify chain {self.chain_id} heights {self.from_height}..{self.to_height}: "
            + ("OK, the table matches the chain" if self.ok else f"{self.remaining} differences"),
            f"checked {self.heights} heights, {self.transactions} plays transactions, "
            f"{self.plays} plays in {self.seconds:.1f} s ({rate:,.0f} heights/s)",
            line(
                "transactions:",
                (
                    DifferenceKind.MISSING,
                    DifferenceKind.EXTRA,
                    DifferenceKind.PLAY_COUNT,
                    DifferenceKind.BLOCK_HASH,
                    DifferenceKind.QUARANTINED,
                ),
            ),
            line(
                "rows:",
                (
                    DifferenceKind.MISSING_ROWS,
                    DifferenceKind.EXTRA_ROWS,
                    DifferenceKind.PRUNED_OR_MISSING,
                ),
            ),
            f"not differences: moved {self.moved}, repeated {self.repeated}, "
            f"written by another writer {self.foreign}",
        ]
        if self.repaired_transactions or self.counts.get(DifferenceKind.MISSING):
            lines.append(
                f"repaired: {self.repaired_transactions} transactions, {self.repaired_plays} plays"
            )
        if self.first:
            lines.append(f"first differences (up to {self.max_differences}):")
            lines.extend(f"  {d.describe()}" for d in self.first)
        return "\n".join(lines)


async def read_written(
    conn: psycopg.AsyncConnection[TupleRow],
    chain_id: str,
    blocks: Sequence[DecodedBlock | Block],
    rows: bool,
) -> tuple[list[LedgerEntry], dict[str, LedgerEntry], frozenset[str], dict[int, Counter[PlayRow]]]:
    """What the database holds for these blocks' heights: the ledger rows there,
    the ledger rows elsewhere of their transactions, the quarantined ones among
    them, and (with `rows`) the plays rows at each slot. A large block may come
    undecoded (a `Block`): its transactions' hashes are all this needs."""
    low, high = blocks[0].height, blocks[-1].height
    cur = await conn.execute(_LEDGER_AT, (chain_id, low, high))
    ledger = [LedgerEntry(*row) for row in await cur.fetchall()]
    here = {(entry.height, entry.tx_hash) for entry in ledger}
    others = [h for b in blocks for h in _tx_hashes(b) if (b.height, h) not in here]
    elsewhere: dict[str, LedgerEntry] = {}
    quarantined: frozenset[str] = frozenset()
    if others:
        cur = await conn.execute(_LEDGER_BY_HASH, (chain_id, others))
        elsewhere = {row[2]: LedgerEntry(*row) for row in await cur.fetchall()}
        cur = await conn.execute(_QUARANTINED, (chain_id, others))
        quarantined = frozenset(row[0] for row in await cur.fetchall())
    plays: dict[int, Counter[PlayRow]] = {}
    if rows:
        cur = await conn.execute(_PLAYS_AT, (low, high))
        for slot, *values in await cur.fetchall():
            plays.setdefault(slot, Counter())[PlayRow(*values)] += 1
    return ledger, elsewhere, quarantined, plays


def _tx_hashes(block: DecodedBlock | Block) -> list[str]:
    if isinstance(block, DecodedBlock):
        return [tx.tx_hash for tx in block.txs]
    return [tx.hash for tx in block.txs]  # a plays transaction's hash, or another's: harmless


async def record_differences(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, differences: Sequence[Difference]
) -> None:
    """Keep transaction-level findings in core_plays.conflicts for the audit trail."""
    kept = [
        d
        for d in differences
        if d.kind in (DifferenceKind.MISSING, DifferenceKind.EXTRA, DifferenceKind.BLOCK_HASH)
    ]
    if kept:
        await conn.execute(
            _RECORD,
            {
                "chain": chain_id,
                "rpc": str(Rpc.GET_BLOCKS),
                "kinds": [str(d.kind) for d in kept],
                "heights": [d.height for d in kept],
                "hashes": [d.tx_hash for d in kept],
            },
        )


async def verify_range(
    client: CoreClient,
    conn: psycopg.AsyncConnection[TupleRow],
    settings: SourceSettings,
    chain_id: str,
    from_height: int,
    to_height: int,
    *,
    repair: bool = False,
    pruned_before_days: float = 400.0,
    max_differences: int = 20,
    progress: Progress | None = None,
) -> VerifyReport:
    """Compare (and with `repair`, mend) heights from_height..to_height."""
    head = await client.head()
    if to_height > head:
        raise ConfigError(f"--to-height {to_height} is above the node's head ({head})")
    report = VerifyReport(chain_id, from_height, to_height, max_differences)
    pruned_before = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=pruned_before_days)
    source = CoreSource.rereader(client, settings, chain_id)
    repairer = PlaysSink(conn, chain_id, "verify", from_height, checkpoint=False)
    started = time.monotonic()
    chunk: list[DecodedBlock] = []
    chunk_plays = 0
    total = to_height - from_height + 1

    async def check() -> None:
        ledger, elsewhere, quarantined, plays = await read_written(conn, chain_id, chunk, rows=True)
        found = compare_blocks(chunk, ledger, elsewhere, quarantined, plays, pruned_before)
        report.add(found)
        if repair and found.missing:
            result = await repairer.write(found.missing, set_aside=True)
            # Less any the live service wrote meanwhile (the ledger let those through
            # once), and any PostgreSQL refused: set aside, their plays are not written.
            offered = sum(len(b.txs) for b in found.missing)
            report.repaired_transactions += offered - result.duplicates - result.set_aside
            report.repaired_plays += result.plays_written
        if repair:
            await record_differences(conn, chain_id, found.differences)
        if progress is not None:
            progress(chunk[-1].height - from_height + 1, total, time.monotonic() - started)

    async for block in source.blocks(from_height, to_height):
        decoded = decode_block(block)
        chunk.append(decoded)
        chunk_plays += decoded.play_count
        if len(chunk) >= _CHUNK_HEIGHTS or chunk_plays >= _CHUNK_PLAYS:
            await check()
            chunk, chunk_plays = [], 0
    if chunk:
        await check()
    report.seconds = time.monotonic() - started
    return report
