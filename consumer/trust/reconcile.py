"""Read what was written, compare it by the one rule, repair what is missing, record.

`verify`, the continuous audit and the handover's adoption all go through here:
the reads are the sink's (consumer.sink.written), the rule is
consumer.trust.compare, the repair is the sink's one repair writer (the
exactly-once path, ledger first, no checkpoint), and every caller gets the same
typed `Reconciled` and counts it the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.rows import TupleRow

from consumer.decode.blocks import decode_block, plays_positions
from consumer.model import REPEAT_REACH, Block, Conflict, DecodedBlock, DecodedTx, DifferenceKind
from consumer.sink.plays import PlaysSink, record_findings
from consumer.sink.written import (
    OtherWriter,
    ledger_at,
    ledger_by_hash,
    plays_at_slots,
    set_aside_among,
)
from consumer.trust.compare import (
    Findings,
    LedgerEntry,
    SlotRows,
    Written,
    compare_blocks,
)

__all__ = ["RECORDED", "Reconciled", "Reconciler"]

# The transaction-level findings kept in core_plays.conflicts.
RECORDED = frozenset(
    {
        DifferenceKind.MISSING,
        DifferenceKind.EXTRA,
        DifferenceKind.BLOCK_HASH,
        DifferenceKind.AMBIGUOUS,
    }
)


@dataclass(slots=True)
class Reconciled:
    """One reconcile: what was found, and what the repair did about it."""

    findings: Findings
    repaired_transactions: int = 0
    repaired_plays: int = 0
    set_aside: int = 0  # missing ones PostgreSQL refused: set aside, not written
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def ambiguous(self) -> int:
        return self.findings.counts().get(DifferenceKind.AMBIGUOUS, 0)


class Reconciler:
    """The reads, the rule and the repair over one connection.

    `other` is the progress table of the writer this service replaces, whose
    rows are recognised wherever it put them; `pruned_before` the pruning horizon
    (None: nothing is old enough to have been pruned, as at the tip).
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection[TupleRow],
        chain_id: str,
        other: OtherWriter | None = None,
        pruned_before: datetime | None = None,
    ) -> None:
        self.conn = conn
        self.chain_id = chain_id
        self.other = other or OtherWriter()
        self.pruned_before = pruned_before
        self._repairer = PlaysSink.repairer(conn, chain_id)
        # What earlier windows met, for the next ones (REPEAT_REACH heights back): the
        # hashes, by height, so that a repeat there is one; and the rows another
        # writer's transactions claimed past their window, so that no repeat takes them.
        self._met: dict[str, int] = {}
        self._claimed: dict[int, int] = {}

    async def read(
        self, blocks: Sequence[DecodedBlock], rows: bool, repeated: frozenset[str] = frozenset()
    ) -> Written:
        """What the database holds for these blocks' heights (with `rows`, the plays rows
        put for each height by anyone). `repeated`: the transactions these blocks (and
        their context) carry more than once, the only ones whose adopted rows can lie
        at another height than their own."""
        conn, chain = self.conn, self.chain_id
        low, high = blocks[0].height, blocks[-1].height
        ledger = [LedgerEntry(*row) for row in await ledger_at(conn, chain, low, high)]
        here = {(entry.height, entry.tx_hash) for entry in ledger}
        others = [tx.tx_hash for b in blocks for tx in b.txs if (b.height, tx.tx_hash) not in here]
        # Only what lies before this window: a window compared again (the audit's
        # re-reads) must not take its own transactions for repeats.
        earlier = frozenset(h for h, at in self._met.items() if at < low)
        written = Written(ledger=ledger, earlier=earlier)
        if others:
            written.elsewhere = {
                row[2]: LedgerEntry(*row) for row in await ledger_by_hash(conn, chain, others)
            }
            written.quarantined = await set_aside_among(conn, chain, others)
        if rows:
            slots = await self.other.slots(conn, chain, low, high)
            # Rows an adopted transaction claimed at its repeat's height belong to it:
            # such a transaction is met again (elsewhere, or twice in these blocks), so
            # only those ids are looked up, not every adopted row of the window.
            adopted = {i: at for i, at in self._claimed.items() if at < low}
            moved = [e for e in ledger if e.tx_hash in repeated]
            adopted.update(
                (row_id, entry.height)
                for entry in [*moved, *written.elsewhere.values()]
                for row_id in entry.play_ids
            )
            by_height: dict[int, SlotRows] = {}
            for found in await plays_at_slots(conn, low, high, slots, adopted):
                by_height.setdefault(found.height, SlotRows()).add(found.row, found.row_id)
            written.rows = by_height
        return written

    async def compare(
        self, blocks: Sequence[DecodedBlock], context: Sequence[DecodedBlock] = ()
    ) -> Findings:
        """Decoded blocks against everything written for them, rows included; `context`,
        the heights just after them, is read too and only looked at (see
        consumer.trust.compare: a transaction's repeat there may hold its rows)."""
        # Only the context heights that repeat one of these transactions matter, and
        # repeats are rare: most windows read no context at all.
        hashes = {tx.tx_hash for block in blocks for tx in block.txs}
        context = [b for b in context if any(tx.tx_hash in hashes for tx in b.txs)]
        met = Counter(tx.tx_hash for block in [*blocks, *context] for tx in block.txs)
        repeated = frozenset(tx_hash for tx_hash, n in met.items() if n > 1)
        written = await self.read(blocks, rows=True, repeated=repeated)
        for block in context:  # each alone: the heights between are none of its business
            _merge(written, await self.read([block], rows=True, repeated=repeated))
        found = compare_blocks(blocks, written, self.pruned_before, context=context)
        self._remember(blocks, found)
        return found

    def _remember(self, blocks: Sequence[DecodedBlock], found: Findings) -> None:
        if not blocks:
            return
        horizon = blocks[-1].height - REPEAT_REACH
        self._met = {h: at for h, at in self._met.items() if at > horizon}
        self._claimed = {i: at for i, at in self._claimed.items() if at > horizon}
        for block in blocks:
            for tx in block.txs:
                self._met.setdefault(tx.tx_hash, block.height)
        for adoptable in found.adoptable:
            for row_id in adoptable.play_ids:
                self._claimed[row_id] = adoptable.block.height

    async def compare_delivered(self, blocks: Sequence[Block]) -> Findings:
        """Raw blocks, as the audit re-reads them: by hashes first (no play decoded);
        only a height with a transaction the ledger lacks is decoded and compared again
        with its rows, so another writer's transaction is never taken for missing."""
        thin = [_thin(block) for block in blocks]
        hashes = await self.read(thin, rows=False)
        first = compare_blocks(thin, hashes, play_counts=False)
        suspect = {block.height for block in first.missing}
        if not suspect:
            return first
        rest = Written(
            [entry for entry in hashes.ledger if entry.height not in suspect],
            hashes.elsewhere,
            hashes.quarantined,
        )
        found = compare_blocks(
            [b for b in thin if b.height not in suspect], rest, play_counts=False
        )
        whole = [decode_block(block) for block in blocks if block.height in suspect]
        found.merge(await self.compare(whole))
        return found

    async def repair(self, findings: Findings) -> Reconciled:
        """Write what is missing through the repair writer, and record the findings."""
        done = Reconciled(findings)
        if findings.missing:
            # What PostgreSQL refuses is set aside for `quarantine retry`, never dropped.
            result = await self._repairer.write(findings.missing, set_aside=True)
            offered = sum(len(block.txs) for block in findings.missing)
            # Less any another process wrote meanwhile (the ledger let those through once).
            done.repaired_transactions = offered - result.duplicates - result.set_aside
            done.repaired_plays = result.plays_written
            done.set_aside = result.set_aside
            done.conflicts = result.conflicts
        await self.record(findings)
        return done

    async def record(self, findings: Findings) -> None:
        kept = [
            (str(d.kind), d.height, d.tx_hash) for d in findings.differences if d.kind in RECORDED
        ]
        await record_findings(self.conn, self.chain_id, kept)


def _merge(into: Written, more: Written) -> None:
    """What was read for a context height, added to what was read for the window."""
    into.ledger.extend(more.ledger)
    into.elsewhere.update(more.elsewhere)
    into.quarantined |= more.quarantined
    if into.rows is not None and more.rows is not None:
        into.rows.update(more.rows)


def _thin(block: Block) -> DecodedBlock:
    """The block's plays transactions by position and hash, without their plays."""
    txs = tuple(DecodedTx(index, tx_hash, (), 0) for index, tx_hash in plays_positions(block))
    return DecodedBlock(block.height, block.hash, block.chain_id, None, txs, via=block.via)
