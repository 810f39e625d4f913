"""What the chain says against what was written: the rules of `verify` and the audit.

Pure: it is handed the blocks as re-read from the node (decoded), the ledger
rows and the `plays` rows for the same heights, and returns the differences.
No I/O, so every rule has a unit test that needs neither a node nor a database
(consumer.trust.verify does the reading, consumer.trust.audit the following).

What counts as a difference, and what does not:
- A transaction's identity is its hash. A plays transaction of the block that
  the ledger does not know is **missing** (its plays were never written), unless
  its rows are all at its slot (**foreign**: the indexer this service took over
  from wrote it; counted, not a difference, never repaired) or all its plays
  are older than the pruning horizon (**pruned_or_missing**, never repaired:
  writing a pruned play again would count it twice in the aggregates). One the
  ledger holds at another height is **repeated** (the chain carries it twice,
  and it was written once, as it must be): counted, not a difference. A position
  that differs between deliveries is **moved**: counted, not a difference (nodes
  before v1.9.0 re-sort GetBlocks, so a position is only as good as its call).
- A ledger row at a height whose block, re-read, does not carry that transaction
  is **extra**: reported, never deleted.
- A ledger row whose play count differs from the block's is **play_count**.
- The block hash recorded with the ledger rows differing from the block's is
  **block_hash** (another chain, or a restored node).
- Rows: at each height, the `plays` rows at that slot against the rows the
  block's written transactions map to, whole rows by the field mapping. A row
  the block maps to that is not there is **missing_rows**, or **pruned_or_missing**
  when it is older than the pruning horizon (the api deletes plays after about
  400 days); a row at that slot that the block does not map to is **extra_rows**
  (another writer's, or the old chain's: the old chain's heights reuse the same
  slot numbers).
- A transaction set aside after PostgreSQL refused it (core_plays.quarantine) is
  **quarantined**: its plays are not in `plays` until `quarantine retry`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from consumer.model import DecodedBlock, DecodedTx, DifferenceKind, PlayRow

__all__ = [
    "Difference",
    "DifferenceKind",
    "Findings",
    "LedgerEntry",
    "compare_blocks",
]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One core_plays.tx_ledger row, as verify reads it."""

    height: int
    tx_index: int
    tx_hash: str
    play_count: int
    block_hash: str | None
    rpc: str | None


@dataclass(frozen=True, slots=True)
class Difference:
    kind: DifferenceKind
    height: int
    tx_hash: str = ""
    count: int = 1  # transactions, or rows for the row kinds
    detail: str = ""

    def describe(self) -> str:
        what = f"height {self.height}: {self.kind}"
        if self.tx_hash:
            what += f" tx {self.tx_hash}"
        if self.count != 1 or self.kind in _ROW_KINDS:
            what += f" ({self.count} {'rows' if self.kind in _ROW_KINDS else 'txs'})"
        return f"{what}{': ' + self.detail if self.detail else ''}"


_ROW_KINDS = frozenset(
    {DifferenceKind.MISSING_ROWS, DifferenceKind.EXTRA_ROWS, DifferenceKind.PRUNED_OR_MISSING}
)


@dataclass(slots=True)
class Findings:
    """The comparison of some heights; `missing` is what a repair would write."""

    heights: int = 0
    transactions: int = 0
    plays: int = 0
    differences: list[Difference] = field(default_factory=list)
    missing: list[DecodedBlock] = field(default_factory=list)  # blocks of missing txs only
    moved: int = 0  # written at another position than this delivery's
    repeated: int = 0  # carried again at another height, written once
    foreign: int = 0  # not in the ledger, but its rows are there: another writer's

    def counts(self) -> Counter[DifferenceKind]:
        """How many of each kind: transactions, or rows for the row kinds."""
        totals: Counter[DifferenceKind] = Counter()
        for difference in self.differences:
            totals[difference.kind] += difference.count
        return totals


def compare_blocks(
    blocks: Iterable[DecodedBlock],
    ledger: Iterable[LedgerEntry],
    elsewhere: Mapping[str, LedgerEntry],
    quarantined: frozenset[str] = frozenset(),
    plays: Mapping[int, Counter[PlayRow]] | None = None,
    pruned_before: datetime | None = None,
    play_counts: bool = True,
) -> Findings:
    """Compare re-read blocks with what was written for the same heights.

    `ledger` holds the ledger rows at these heights; `elsewhere` the ledger rows,
    by hash, of the blocks' transactions written at some other height; `plays`
    the rows at each slot (None: transactions only, as the audit compares).
    `play_counts=False` for blocks whose transactions were not decoded (the
    audit's: it compares hashes, see consumer.decode.blocks.plays_positions).
    """
    found = Findings()
    at_height: dict[int, dict[str, LedgerEntry]] = {}
    for entry in ledger:
        at_height.setdefault(entry.height, {})[entry.tx_hash] = entry
    for block in blocks:
        found.heights += 1
        written = at_height.pop(block.height, None)
        if not block.txs and written is None and (plays is None or block.height not in plays):
            continue  # an empty height with nothing written there: most of the chain
        rows = None if plays is None else plays.get(block.height, Counter())
        _compare_block(
            block,
            written or {},
            elsewhere,
            quarantined,
            rows,
            pruned_before,
            found,
            play_counts,
        )
    for height, entries in sorted(at_height.items()):  # heights the re-read did not cover
        for entry in entries.values():
            found.differences.append(
                Difference(DifferenceKind.EXTRA, height, entry.tx_hash, detail="no such block")
            )
    return found


def _compare_block(
    block: DecodedBlock,
    written: dict[str, LedgerEntry],
    elsewhere: Mapping[str, LedgerEntry],
    quarantined: frozenset[str],
    rows: Counter[PlayRow] | None,
    pruned_before: datetime | None,
    found: Findings,
    play_counts: bool = True,
) -> None:
    """One height: its transactions against the ledger rows `written` there,
    then (when `rows` is given) its plays against the rows at its slot."""
    height = block.height
    expected: Counter[PlayRow] = Counter()
    unknown: list[DecodedTx] = []
    for tx in block.txs:
        found.transactions += 1
        found.plays += len(tx.plays)
        entry = written.pop(tx.tx_hash, None)
        if entry is not None:
            expected.update(tx.plays)
            _compare_entry(block, tx, entry, found, play_counts)
        elif tx.tx_hash in elsewhere:
            found.repeated += 1
        elif tx.tx_hash in quarantined:
            found.differences.append(Difference(DifferenceKind.QUARANTINED, height, tx.tx_hash))
        else:
            unknown.append(tx)
    for entry in written.values():  # what the block does not carry
        found.differences.append(
            Difference(
                DifferenceKind.EXTRA,
                height,
                entry.tx_hash,
                detail=f"written from {entry.rpc or 'a delivery'}, not in the block",
            )
        )
    leftover: Counter[PlayRow] = Counter() if rows is None else rows - expected
    missing = [
        tx for tx in unknown if _is_missing(height, tx, rows, leftover, pruned_before, found)
    ]
    if missing:
        found.missing.append(
            DecodedBlock(
                height=height,
                hash=block.hash,
                chain_id=block.chain_id,
                time=block.time,
                txs=tuple(missing),
                via=block.via,
            )
        )
    if rows is not None:
        _compare_rows(height, expected, rows, leftover, pruned_before, found)


def _compare_entry(
    block: DecodedBlock, tx: DecodedTx, entry: LedgerEntry, found: Findings, play_counts: bool
) -> None:
    if entry.tx_index != tx.tx_index:
        found.moved += 1
    if play_counts and entry.play_count != len(tx.plays):
        found.differences.append(
            Difference(
                DifferenceKind.PLAY_COUNT,
                block.height,
                tx.tx_hash,
                detail=f"ledger {entry.play_count}, block {len(tx.plays)}",
            )
        )
    if entry.block_hash and block.hash and entry.block_hash != block.hash:
        found.differences.append(
            Difference(
                DifferenceKind.BLOCK_HASH,
                block.height,
                tx.tx_hash,
                detail=f"written from block {entry.block_hash}, node has {block.hash}",
            )
        )


def _is_missing(
    height: int,
    tx: DecodedTx,
    rows: Counter[PlayRow] | None,
    leftover: Counter[PlayRow],
    pruned_before: datetime | None,
    found: Findings,
) -> bool:
    """A transaction the ledger does not know: never written, or written by another?

    Its rows all at the slot, unclaimed by the ledger: another writer (the
    indexer this service took over from) wrote it, so repairing it would double
    every play. All its plays older than the pruning horizon and absent: it may
    have been written and pruned, and writing it again would count it twice in
    the aggregates. Only what is neither is missing, and repairable.
    """
    if rows is not None:
        mine = Counter(tx.plays)
        if mine <= leftover:
            leftover.subtract(mine)
            found.foreign += 1
            return False
        if (
            pruned_before is not None
            and tx.plays
            and all(play.created_at < pruned_before for play in tx.plays)
        ):
            found.differences.append(
                Difference(
                    DifferenceKind.PRUNED_OR_MISSING,
                    height,
                    tx.tx_hash,
                    count=len(tx.plays),
                    detail="not in the ledger; its plays are older than the pruning horizon",
                )
            )
            return False
    found.differences.append(
        Difference(
            DifferenceKind.MISSING,
            height,
            tx.tx_hash,
            detail=f"{len(tx.plays)} plays never written",
        )
    )
    return True


def _compare_rows(
    height: int,
    expected: Counter[PlayRow],
    rows: Counter[PlayRow],
    leftover: Counter[PlayRow],
    pruned_before: datetime | None,
    found: Findings,
) -> None:
    """The rows the written transactions map to against the rows at the slot;
    `leftover` is what is at the slot that nothing here accounts for."""
    absent = expected - rows
    pruned = sum(
        n
        for row, n in absent.items()
        if pruned_before is not None and row.created_at < pruned_before
    )
    if pruned:
        found.differences.append(Difference(DifferenceKind.PRUNED_OR_MISSING, height, count=pruned))
    if absent.total() > pruned:
        found.differences.append(
            Difference(DifferenceKind.MISSING_ROWS, height, count=absent.total() - pruned)
        )
    extra = +leftover
    if extra:
        found.differences.append(Difference(DifferenceKind.EXTRA_ROWS, height, count=extra.total()))
