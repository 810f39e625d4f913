"""The rules verify and the audit compare by: pure, one behaviour each."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from consumer.model import DecodedBlock, DecodedTx, PlayRow, Rpc
from consumer.trust.compare import Findings, LedgerEntry, compare_blocks

T0 = datetime(2026, 1, 1, 12, 0, 0)
OLD = datetime(2020, 1, 1)
HORIZON = datetime(2025, 1, 1)


def play(track: int, when: datetime = T0) -> PlayRow:
    return PlayRow(7, track, when, "sig", "Lisbon", "Lisboa", "PT")


def tx(index: int, tx_hash: str, *plays: PlayRow) -> DecodedTx:
    return DecodedTx(index, tx_hash, plays, 0)


def block(height: int, *txs: DecodedTx, block_hash: str = "") -> DecodedBlock:
    return DecodedBlock(height, block_hash or f"H{height}", "c", T0, txs, via=Rpc.GET_BLOCKS)


def entry(
    height: int, index: int, tx_hash: str, plays: int = 1, block_hash: str = ""
) -> LedgerEntry:
    return LedgerEntry(height, index, tx_hash, plays, block_hash or f"H{height}", "StreamBlocks")


def at(height: int, *plays: PlayRow) -> dict[int, Counter[PlayRow]]:
    return {height: Counter(plays)}


def kinds(found: Findings) -> dict[str, int]:
    return {k.value: n for k, n in found.counts().items()}


def test_a_block_written_whole_has_no_difference() -> None:
    found = compare_blocks(
        [block(5, tx(0, "A", play(1)))], [entry(5, 0, "A")], {}, plays=at(5, play(1))
    )
    assert found.differences == []
    assert (found.heights, found.transactions, found.plays) == (1, 1, 1)


def test_a_transaction_the_ledger_lacks_is_missing_and_offered_for_repair() -> None:
    found = compare_blocks(
        [block(5, tx(0, "X", play(9)), tx(1, "A", play(1)))], [entry(5, 0, "A")], {}
    )
    assert kinds(found) == {"missing": 1}
    assert [[t.tx_hash for t in b.txs] for b in found.missing] == [["X"]]


def test_a_ledger_transaction_the_block_lacks_is_extra_and_never_offered_for_repair() -> None:
    found = compare_blocks(
        [block(5, tx(0, "A", play(1)))], [entry(5, 0, "A"), entry(5, 1, "Z")], {}
    )
    assert kinds(found) == {"extra": 1}
    assert found.missing == []


def test_ledger_rows_at_a_height_outside_the_blocks_read_are_extra() -> None:
    found = compare_blocks([block(5)], [entry(6, 0, "Z")], {})
    assert kinds(found) == {"extra": 1}


def test_another_position_is_counted_as_moved_not_as_a_difference() -> None:
    found = compare_blocks([block(5, tx(1, "A", play(1)))], [entry(5, 0, "A")], {})
    assert (found.differences, found.moved) == ([], 1)


def test_a_transaction_written_at_another_height_is_repeated_not_missing() -> None:
    found = compare_blocks([block(9, tx(0, "A", play(1)))], [], {"A": entry(5, 0, "A")})
    assert (found.differences, found.repeated, found.missing) == ([], 1, [])


def test_a_play_count_that_differs_from_the_ledger_is_a_difference() -> None:
    found = compare_blocks(
        [block(5, tx(0, "A", play(1), play(2)))], [entry(5, 0, "A", plays=1)], {}
    )
    assert kinds(found) == {"play_count": 1}


def test_a_block_hash_other_than_the_one_written_from_is_a_difference() -> None:
    found = compare_blocks(
        [block(5, tx(0, "A", play(1)), block_hash="NEW")], [entry(5, 0, "A", block_hash="OLD")], {}
    )
    assert kinds(found) == {"block_hash": 1}


def test_a_quarantined_transaction_is_reported_and_not_offered_for_repair() -> None:
    found = compare_blocks([block(5, tx(0, "Q", play(1)))], [], {}, quarantined=frozenset({"Q"}))
    assert kinds(found) == {"quarantined": 1}
    assert found.missing == []


def test_rows_the_block_maps_to_that_are_not_in_plays_are_missing_rows() -> None:
    found = compare_blocks(
        [block(5, tx(0, "A", play(1), play(2)))],
        [entry(5, 0, "A", plays=2)],
        {},
        plays=at(5, play(1)),
    )
    assert kinds(found) == {"missing_rows": 1}


def test_missing_rows_older_than_the_pruning_horizon_are_pruned_or_missing() -> None:
    found = compare_blocks(
        [block(5, tx(0, "A", play(1, OLD)))],
        [entry(5, 0, "A")],
        {},
        plays=at(5),
        pruned_before=HORIZON,
    )
    assert kinds(found) == {"pruned_or_missing": 1}


def test_a_row_that_differs_in_any_field_is_missing_and_extra() -> None:
    written = PlayRow(7, 1, T0, "sig", "Porto", "Lisboa", "PT")
    found = compare_blocks(
        [block(5, tx(0, "A", play(1)))], [entry(5, 0, "A")], {}, plays=at(5, written)
    )
    assert kinds(found) == {"missing_rows": 1, "extra_rows": 1}


def test_rows_at_the_slot_that_no_transaction_maps_to_are_extra_rows() -> None:
    found = compare_blocks(
        [block(5, tx(0, "A", play(1)))], [entry(5, 0, "A")], {}, plays=at(5, play(1), play(77))
    )
    assert kinds(found) == {"extra_rows": 1}


def test_a_transaction_whose_rows_another_writer_wrote_is_not_missing() -> None:
    found = compare_blocks(
        [block(5, tx(0, "OLD", play(3), play(4)))], [], {}, plays=at(5, play(3), play(4))
    )
    assert (found.differences, found.foreign, found.missing) == ([], 1, [])


def test_a_transaction_absent_with_all_its_plays_past_the_horizon_is_never_repaired() -> None:
    found = compare_blocks(
        [block(5, tx(0, "A", play(1, OLD)))], [], {}, plays=at(5), pruned_before=HORIZON
    )
    assert kinds(found) == {"pruned_or_missing": 1}
    assert found.missing == []


def test_without_rows_only_transactions_are_compared() -> None:
    found = compare_blocks([block(5, tx(0, "A", play(1)))], [entry(5, 0, "A")], {}, plays=None)
    assert found.differences == []


def test_without_play_counts_a_block_of_hashes_only_matches_its_ledger_rows() -> None:
    # The audit's blocks carry hashes, not plays (consumer.trust.audit._thin).
    thin = block(5, tx(0, "A"))
    found = compare_blocks([thin], [entry(5, 0, "A", plays=3)], {}, play_counts=False)
    assert found.differences == []
