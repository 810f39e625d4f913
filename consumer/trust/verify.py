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

import dataclasses
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
from consumer.logs import counted
from consumer.model import MAX_GETBLOCKS_HEIGHTS, REPEAT_REACH, DecodedBlock
from consumer.sink.written import DEFAULT_OTHER_WRITER, OtherWriter
from consumer.source.core import CoreClient, CoreSource
from consumer.trust.compare import Difference, DifferenceKind, Findings
from consumer.trust.reconcile import Reconciler

__all__ = ["Progress", "VerifyReport", "verify_range"]

# Heights compared per round trip to the database, and plays at most: one
# GetBlocks window's worth, so memory stays that of a window.
_CHUNK_HEIGHTS = MAX_GETBLOCKS_HEIGHTS
_CHUNK_PLAYS = 20_000

Progress = Callable[[int, int, float], None]  # heights done, heights in all, seconds


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
    repaired: bool = False  # the run was --repair: the differences listed say what became of each
    set_aside: set[str] = field(default_factory=set)  # missing ones PostgreSQL refused
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

    def _verdict(self) -> str:
        """The first line's verdict. After a repair it says what was found and written, so
        that the counts of what was found below never read as what is still wrong."""
        found = self.remaining + self.repaired_transactions
        if self.ok and not self.repaired_transactions:
            return "OK, the table matches the chain"
        mended = (
            f"repaired {counted(self.repaired_transactions, 'missing transaction')} "
            f"({counted(self.repaired_plays, 'play')} written)"
        )
        if self.ok:
            return f"OK after repair: found {counted(found, 'difference')}, {mended}"
        if self.repaired_transactions:
            remain = "remains" if self.remaining == 1 else "remain"
            return f"{counted(self.remaining, 'difference')} {remain}; {mended}"
        return counted(self.remaining, "difference")

    def _describe(self, difference: Difference) -> str:
        """One listed difference; after --repair, a missing one says what became of it."""
        if not self.repaired or difference.kind is not DifferenceKind.MISSING:
            return difference.describe()
        if difference.tx_hash in self.set_aside:
            outcome = "not repaired: PostgreSQL refused it, set aside (see quarantine retry)"
        else:
            outcome = f"repaired, {counted(difference.plays, 'play')} written"
        return dataclasses.replace(difference, detail=outcome).describe()

    def format_text(self) -> str:
        def line(label: str, kinds: Sequence[DifferenceKind]) -> str:
            return f"{label} " + ", ".join(f"{k.value} {self.counts.get(k, 0)}" for k in kinds)

        rate = self.heights / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"verify chain {self.chain_id} heights {self.from_height}..{self.to_height}: "
            + self._verdict(),
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
                    DifferenceKind.AMBIGUOUS,
                ),
            ),
            line(
                "rows:",
                (
                    DifferenceKind.MISSING_ROWS,
                    DifferenceKind.EXTRA_ROWS,
                    DifferenceKind.PRUNED_OR_MISSING,
                    DifferenceKind.REPEATED_ROWS,
                ),
            ),
            f"not differences: moved {self.moved}, repeated {self.repeated}, "
            f"written by another writer {self.foreign}",
        ]
        if self.repaired or self.counts.get(DifferenceKind.MISSING):
            lines.append(
                f"repaired: {counted(self.repaired_transactions, 'transaction')}, "
                f"{counted(self.repaired_plays, 'play')}"
                + ("" if self.repaired else " (run with --repair to write the missing ones)")
            )
        if self.first:
            lines.append(f"first differences (up to {self.max_differences}):")
            lines.extend(f"  {self._describe(d)}" for d in self.first)
        return "\n".join(lines)


class _Window:
    """The blocks read and not yet compared, and where the first full chunk of them ends
    (by heights or plays), kept as blocks arrive so that it costs nothing per block."""

    def __init__(self, to_height: int) -> None:
        self.to_height = to_height
        self.blocks: list[DecodedBlock] = []
        self._cut: int | None = None
        self._plays = 0

    def add(self, block: DecodedBlock) -> None:
        self.blocks.append(block)
        if self._cut is None and block.height <= self.to_height:
            self._plays += block.play_count
            if len(self.blocks) >= _CHUNK_HEIGHTS or self._plays >= _CHUNK_PLAYS:
                self._cut = len(self.blocks)

    def ready(self) -> bool:
        """A full chunk, and the REPEAT_REACH heights after it."""
        return self._cut is not None and len(self.blocks) >= self._cut + REPEAT_REACH

    def pending(self) -> bool:
        return bool(self.blocks) and self.blocks[0].height <= self.to_height

    def take(self) -> tuple[list[DecodedBlock], list[DecodedBlock]]:
        """The first chunk (full, or what is left up to --to-height) and its context."""
        cut = self._cut or sum(1 for block in self.blocks if block.height <= self.to_height)
        chunk, rest = self.blocks[:cut], self.blocks[cut:]
        self.blocks, self._cut, self._plays = [], None, 0
        for block in rest:  # at most REPEAT_REACH of them, or the range's tail
            self.add(block)
        return chunk, rest[:REPEAT_REACH]


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
    other_writer: str = DEFAULT_OTHER_WRITER,
) -> VerifyReport:
    """Compare (and with `repair`, mend) heights from_height..to_height; `other_writer`
    is the progress table of the writer this service replaces (consumer.sink.written)."""
    head = await client.head()
    if to_height > head:
        raise ConfigError(f"--to-height {to_height} is above the node's head ({head})")
    report = VerifyReport(chain_id, from_height, to_height, max_differences, repaired=repair)
    pruned_before = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=pruned_before_days)
    source = CoreSource.rereader(client, settings, chain_id)
    reconciler = Reconciler(conn, chain_id, OtherWriter(other_writer), pruned_before)
    started = time.monotonic()
    total = to_height - from_height + 1

    async def check(chunk: list[DecodedBlock], context: list[DecodedBlock]) -> None:
        found = await reconciler.compare(chunk, context)
        report.add(found)
        if repair:
            done = await reconciler.repair(found)
            report.repaired_transactions += done.repaired_transactions
            report.repaired_plays += done.repaired_plays
            if done.set_aside:
                report.set_aside |= await _set_aside(conn, chain_id, found)
        if progress is not None:
            progress(chunk[-1].height - from_height + 1, total, time.monotonic() - started)

    # Each chunk is compared with the REPEAT_REACH heights after it as context (read
    # past --to-height too, up to the head), so a transaction whose first copy the
    # other writer lost and whose repeat it wrote is found at a chunk's edge too.
    window = _Window(to_height)
    async for block in source.blocks(from_height, min(to_height + REPEAT_REACH, head)):
        window.add(decode_block(block))
        if window.ready():
            await check(*window.take())
    while window.pending():
        await check(*window.take())
    report.seconds = time.monotonic() - started
    return report


_PENDING = """
SELECT tx_hash FROM core_plays.quarantine
WHERE chain_id = %s AND kind = 'refused' AND written_at IS NULL AND tx_hash = ANY(%s)
"""


async def _set_aside(
    conn: psycopg.AsyncConnection[TupleRow], chain_id: str, found: Findings
) -> set[str]:
    """Which missing transactions a repair set aside: the repair's result counts them,
    the quarantine table names them, so the report never calls one repaired."""
    hashes = [d.tx_hash for d in found.differences if d.kind is DifferenceKind.MISSING]
    cur = await conn.execute(_PENDING, (chain_id, hashes))
    return {row[0] for row in await cur.fetchall()}
