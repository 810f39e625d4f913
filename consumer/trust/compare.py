"""What the chain says against what was written: one rule for verify, the audit, the handover.

Pure: it is handed the blocks as re-read from the node (decoded), what the
database holds for the same heights (`Written`: ledger rows, and the `plays`
rows another writer or this service put for each height), and returns the
differences. No I/O, so every rule has a unit test that needs neither a node
nor a database; consumer.trust.reconcile does the reading and the writing.

**Whose is a transaction.** A transaction's identity is its hash.
- In the ledger at this height: this service wrote it (or adopted it).
- Carried again, at another height or a second time in this block (the chain
  does carry relay resubmissions twice, byte for byte): **repeated**, written
  once, never missing.
- Set aside after PostgreSQL refused it: **quarantined**.
- Otherwise it is not in the ledger, and the rows decide. Another writer's
  transaction is recognised by content *and* place: every one of its rows (the
  field mapping's columns but `id`, `updated_at` and `slot`), with multiplicity,
  among the rows put for that height (at `slot = height`, the Go ETL's and this
  service's place, or at the `plays_slot` the legacy indexer recorded for the
  height in `core_indexed_blocks`), each row claimed by one transaction only.
  Such a transaction is **foreign** (adoptable by the handover; counted, never
  written). One with only some of its rows there is **ambiguous**: reported,
  never written (writing it would double the rows that are there, skipping it
  would lose the rest: a person decides). One whose plays are all older than
  the pruning horizon is **pruned_or_missing** (never written: the api deletes
  old plays, and writing one again counts it twice). The rest is **missing**:
  its plays were never written, and a repair writes it.

Claims are made in an order that cannot steal: this service's own transactions
take their rows first; then transactions not in the ledger, most plays first,
claim whole matches only (one transaction's plays can be a subset of
another's, so a smaller one must not take rows a larger one needs); only then
is partial presence judged. Rows a repeated transaction finds are another
writer writing the chain's repeat again: **repeated_rows**.

Also: a ledger row at a height whose re-read block lacks it is **extra**
(reported, never deleted); a ledger play count that differs from the block's is
**play_count**; a recorded block hash that differs is **block_hash**; rows the
written transactions map to that are absent are **missing_rows**; rows no
transaction accounts for are **extra_rows**. A position that differs between
deliveries is **moved**: counted, not a difference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from consumer.model import DecodedBlock, DecodedTx, DifferenceKind, PlayRow

__all__ = [
    "Adoptable",
    "Difference",
    "DifferenceKind",
    "Findings",
    "LedgerEntry",
    "SlotRows",
    "Written",
    "compare_blocks",
]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One core_plays.tx_ledger row, as the comparison needs it."""

    height: int
    tx_index: int
    tx_hash: str
    play_count: int
    block_hash: str | None
    rpc: str | None
    play_ids: Sequence[int] = ()  # the rows an adopted transaction claimed


class SlotRows:
    """The `plays` rows put for one height, by content, with their ids.

    A row is claimed once: `take_all` removes a transaction's rows only when
    every one is there (with multiplicity), so a failed claim changes nothing.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[PlayRow, list[int]] = {}

    def add(self, row: PlayRow, row_id: int) -> None:
        self._ids.setdefault(row, []).append(row_id)

    def take_all(self, plays: Sequence[PlayRow]) -> list[int] | None:
        """The ids of rows for every play, removed; None (and nothing removed) if any lacks one."""
        wanted = Counter(plays)
        if any(len(self._ids.get(row, ())) < n for row, n in wanted.items()):
            return None
        return [self._ids[row].pop() for row in plays]

    def take_some(self, plays: Sequence[PlayRow]) -> int:
        """Remove the rows there are for these plays; how many."""
        taken = 0
        for row in plays:
            ids = self._ids.get(row)
            if ids:
                ids.pop()
                taken += 1
        return taken

    def has_any(self, plays: Iterable[PlayRow]) -> bool:
        return any(self._ids.get(row) for row in plays)

    def rows(self) -> Iterator[PlayRow]:
        for row, ids in self._ids.items():
            for _ in ids:
                yield row

    def total(self) -> int:
        return sum(len(ids) for ids in self._ids.values())


@dataclass(slots=True)
class Written:
    """What the database holds for some heights (read by consumer.trust.reconcile)."""

    ledger: list[LedgerEntry] = field(default_factory=list)  # the ledger rows at these heights
    elsewhere: dict[str, LedgerEntry] = field(default_factory=dict)  # their txs at other heights
    quarantined: frozenset[str] = frozenset()  # their txs set aside (refused by PostgreSQL)
    rows: dict[int, SlotRows] | None = None  # rows by height; None: compare by hashes only
    earlier: frozenset[str] = frozenset()  # txs met in the windows just before this one


@dataclass(frozen=True, slots=True)
class Difference:
    kind: DifferenceKind
    height: int
    tx_hash: str = ""
    count: int = 1  # transactions, or rows for the row kinds
    detail: str = ""
    plays: int = 0  # the plays of a transaction-level difference, where known

    def describe(self) -> str:
        what = f"height {self.height}: {self.kind}"
        if self.tx_hash:
            what += f" tx {self.tx_hash}"
        if self.count != 1 or self.kind in ROW_KINDS:
            what += f" ({self.count} {'rows' if self.kind in ROW_KINDS else 'txs'})"
        return f"{what}{': ' + self.detail if self.detail else ''}"


ROW_KINDS = frozenset(
    {
        DifferenceKind.MISSING_ROWS,
        DifferenceKind.EXTRA_ROWS,
        DifferenceKind.PRUNED_OR_MISSING,
        DifferenceKind.REPEATED_ROWS,
    }
)


@dataclass(frozen=True, slots=True)
class Adoptable:
    """A transaction another writer wrote whole: the rows it claimed, by id."""

    block: DecodedBlock  # the block, with this transaction only
    tx: DecodedTx
    play_ids: tuple[int, ...]


@dataclass(slots=True)
class Findings:
    """The comparison of some heights; `missing` is what a repair would write."""

    heights: int = 0
    transactions: int = 0
    plays: int = 0
    differences: list[Difference] = field(default_factory=list)
    missing: list[DecodedBlock] = field(default_factory=list)  # blocks of missing txs only
    adoptable: list[Adoptable] = field(default_factory=list)  # another writer's, whole
    moved: int = 0  # written at another position than this delivery's
    repeated: int = 0  # carried again by the chain, written once

    @property
    def foreign(self) -> int:
        """Transactions not in the ledger whose rows are all there: another writer's."""
        return len(self.adoptable)

    def counts(self) -> Counter[DifferenceKind]:
        """How many of each kind: transactions, or rows for the row kinds."""
        totals: Counter[DifferenceKind] = Counter()
        for difference in self.differences:
            totals[difference.kind] += difference.count
        return totals

    def merge(self, other: Findings) -> None:
        self.heights += other.heights
        self.transactions += other.transactions
        self.plays += other.plays
        self.differences.extend(other.differences)
        self.missing.extend(other.missing)
        self.adoptable.extend(other.adoptable)
        self.moved += other.moved
        self.repeated += other.repeated


def compare_blocks(
    blocks: Iterable[DecodedBlock],
    written: Written,
    pruned_before: datetime | None = None,
    play_counts: bool = True,
    context: Sequence[DecodedBlock] = (),
) -> Findings:
    """Compare re-read blocks with what was written for the same heights.

    With `written.rows` None only hashes are compared (the audit's first look:
    every transaction not in the ledger is then a candidate for `missing`, to
    be looked at again with its rows). `play_counts=False` for blocks whose
    transactions were not decoded (see consumer.decode.blocks.plays_positions).
    The blocks are one window: a hash met again in it, in the same block or a
    later one, is a repeat, and claims are made window-wide in the module's order.
    `context` is the heights just after the window (`written` covers them too):
    nothing in them is counted or reported, but a window's transaction that the
    other writer lost may find its rows at its repeat there. Without it, the first
    copy would be written again at the window's edge, doubling the second.
    """
    found = Findings()
    ignored = Findings()  # what the context heights would say: not this window's
    at_height: dict[int, dict[str, LedgerEntry]] = {}
    for entry in written.ledger:
        at_height.setdefault(entry.height, {})[entry.tx_hash] = entry
    rows = written.rows
    seen: set[str] = set()
    heights: list[_Height] = []
    after: list[_Height] = []
    for block in blocks:
        found.heights += 1
        here = at_height.pop(block.height, None)
        if not block.txs and here is None and (rows is None or block.height not in rows):
            continue  # an empty height with nothing written there: most of the chain
        slot_rows = SlotRows() if rows is None else rows.get(block.height, SlotRows())
        heights.append(_classify(block, here or {}, written, slot_rows, seen, found, play_counts))
    for block in context:
        here = at_height.pop(block.height, None)
        slot_rows = SlotRows() if rows is None else rows.get(block.height, SlotRows())
        after.append(_classify(block, here or {}, written, slot_rows, seen, ignored, play_counts))
    for height, entries in sorted(at_height.items()):  # heights the re-read did not cover
        for entry in entries.values():
            found.differences.append(
                Difference(DifferenceKind.EXTRA, height, entry.tx_hash, detail="no such block")
            )
    if rows is None:
        for h in heights:
            _judge(h, None, pruned_before, found, by_rows=False)
        return found
    _claim(heights, after, pruned_before, found, ignored)
    return found


def _claim(
    heights: Sequence[_Height],
    after: Sequence[_Height],
    pruned_before: datetime | None,
    found: Findings,
    ignored: Findings,
) -> None:
    """The claims, in the order that cannot steal (see the module's docstring); what the
    context heights would say goes to `ignored`."""
    for h in after:
        _claim_ours(h, pruned_before, ignored)
    for h in heights:
        _claim_ours(h, pruned_before, found)
    for h in heights:
        _claim_whole(h, found)
    for h in after:
        _claim_whole(h, ignored)
    _claim_at_repeats(heights, after, found)
    for h in heights:
        _judge(h, h.rows, pruned_before, found, by_rows=True)
        _claim_repeats(h, found)
        extra = h.rows.total()
        if extra:
            found.differences.append(Difference(DifferenceKind.EXTRA_ROWS, h.height, count=extra))


@dataclass(slots=True)
class _Height:
    """One height of a window, as the claims go through it."""

    block: DecodedBlock
    rows: SlotRows
    ours: list[DecodedTx] = field(default_factory=list)
    unknown: list[DecodedTx] = field(default_factory=list)
    repeats: list[DecodedTx] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.block.height


def _classify(
    block: DecodedBlock,
    here: dict[str, LedgerEntry],
    written: Written,
    rows: SlotRows,
    seen: set[str],
    found: Findings,
    play_counts: bool,
) -> _Height:
    """Sort one height's transactions: this service's, repeats, set aside, unknown."""
    h = _Height(block, rows)
    for tx in block.txs:
        found.transactions += 1
        found.plays += len(tx.plays)
        entry = here.pop(tx.tx_hash, None)
        if entry is not None and tx.tx_hash not in seen:
            h.ours.append(tx)
            _compare_entry(block, tx, entry, found, play_counts)
        elif _repeat(tx.tx_hash, seen, written):
            found.repeated += 1  # carried again, in this block or this window or before
            h.repeats.append(tx)
        elif tx.tx_hash in written.quarantined:
            found.differences.append(
                Difference(
                    DifferenceKind.QUARANTINED, block.height, tx.tx_hash, plays=len(tx.plays)
                )
            )
        else:
            h.unknown.append(tx)
        seen.add(tx.tx_hash)
    for entry in here.values():  # what the block does not carry
        found.differences.append(
            Difference(
                DifferenceKind.EXTRA,
                block.height,
                entry.tx_hash,
                detail=f"written from {entry.rpc or 'a delivery'}, not in the block",
            )
        )
    return h


def _repeat(tx_hash: str, seen: set[str], written: Written) -> bool:
    """Met before: earlier in this window, in the ledger at another height, or in the
    windows just before this one."""
    return tx_hash in seen or tx_hash in written.elsewhere or tx_hash in written.earlier


def _only(block: DecodedBlock, txs: Sequence[DecodedTx]) -> DecodedBlock:
    return DecodedBlock(
        height=block.height,
        hash=block.hash,
        chain_id=block.chain_id,
        time=block.time,
        txs=tuple(txs),
        via=block.via,
    )


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


def _missing(height: int, tx: DecodedTx, found: Findings) -> DecodedTx:
    found.differences.append(
        Difference(
            DifferenceKind.MISSING,
            height,
            tx.tx_hash,
            detail=f"{len(tx.plays)} plays never written",
            plays=len(tx.plays),
        )
    )
    return tx


def _claim_ours(h: _Height, pruned_before: datetime | None, found: Findings) -> None:
    """The ledger's transactions take their rows first; what is not there is missing_rows
    (or pruned_or_missing, past the pruning horizon)."""
    absent = [play for tx in h.ours for play in tx.plays if not h.rows.take_some((play,))]
    old = pruned_before
    pruned = sum(1 for row in absent if old is not None and row.created_at < old)
    if pruned:
        found.differences.append(
            Difference(DifferenceKind.PRUNED_OR_MISSING, h.height, count=pruned)
        )
    if len(absent) > pruned:
        found.differences.append(
            Difference(DifferenceKind.MISSING_ROWS, h.height, count=len(absent) - pruned)
        )


def _claim_whole(h: _Height, found: Findings) -> None:
    """Transactions not in the ledger claim whole matches at their height, most plays
    first (a smaller transaction must not take rows a larger one needs)."""
    for tx in sorted(h.unknown, key=lambda tx: -len(tx.plays)):  # stable within a size
        ids = h.rows.take_all(tx.plays)
        if ids is not None:
            _adopt(h, tx, ids, found)


def _adopt(h: _Height, tx: DecodedTx, ids: list[int], found: Findings) -> None:
    h.unknown.remove(tx)
    found.adoptable.append(Adoptable(_only(h.block, (tx,)), tx, tuple(ids)))


def _claim_at_repeats(
    heights: Sequence[_Height], after: Sequence[_Height], found: Findings
) -> None:
    """A transaction the chain carries again later in the window (or its context), not
    found at its first height: another writer that lost the first copy may have written
    the second."""
    later: dict[str, list[_Height]] = {}
    for h in [*heights, *after]:
        for tx in h.repeats:
            later.setdefault(tx.tx_hash, []).append(h)
    for h in heights:
        for tx in list(h.unknown):
            for other in later.get(tx.tx_hash, ()):
                ids = other.rows.take_all(tx.plays)
                if ids is not None:
                    _adopt(h, tx, ids, found)
                    break


def _judge(
    h: _Height,
    rows: SlotRows | None,
    pruned_before: datetime | None,
    found: Findings,
    by_rows: bool,
) -> None:
    """What is left unknown: ambiguous (partly there), pruned, or missing."""
    missing: list[DecodedTx] = []
    for tx in h.unknown:
        if by_rows and rows is not None and rows.has_any(tx.plays):
            present = rows.take_some(tx.plays)
            found.differences.append(
                Difference(
                    DifferenceKind.AMBIGUOUS,
                    h.height,
                    tx.tx_hash,
                    detail=f"{present} of its {len(tx.plays)} plays are in plays: "
                    "partly written by another writer; not written (see the runbook)",
                    plays=len(tx.plays),
                )
            )
        elif (
            by_rows
            and pruned_before is not None
            and all(p.created_at < pruned_before for p in tx.plays)
        ):
            found.differences.append(
                Difference(
                    DifferenceKind.PRUNED_OR_MISSING,
                    h.height,
                    tx.tx_hash,
                    count=len(tx.plays),
                    detail="not in the ledger; its plays are older than the pruning horizon",
                    plays=len(tx.plays),
                )
            )
        else:
            missing.append(_missing(h.height, tx, found))
    if missing:
        found.missing.append(_only(h.block, missing))


def _claim_repeats(h: _Height, found: Findings) -> None:
    """A repeated transaction's rows here: another writer wrote the chain's repeat again."""
    again = sum(h.rows.take_some(tx.plays) for tx in h.repeats)
    if again:
        found.differences.append(
            Difference(
                DifferenceKind.REPEATED_ROWS,
                h.height,
                count=again,
                detail="another writer wrote a transaction the chain carries twice, again",
            )
        )


def rows_by_height(rows: Mapping[int, Iterable[tuple[int, PlayRow]]]) -> dict[int, SlotRows]:
    """SlotRows from (id, row) pairs by height (for tests and for readers)."""
    made: dict[int, SlotRows] = {}
    for height, pairs in rows.items():
        slot = made.setdefault(height, SlotRows())
        for row_id, row in pairs:
            slot.add(row, row_id)
    return made
