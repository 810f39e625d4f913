"""The rules verify and the audit compare by: pure, one behaviour each."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from consumer.model import DecodedBlock, DecodedTx, PlayRow, Rpc
from consumer.trust.compare import Findings, LedgerEntry, Written, compare_blocks, rows_by_height

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


def at(height: int, *plays: PlayRow) -> dict[int, list[PlayRow]]:
    return {height: list(plays)}


def cmp(
    blocks: Sequence[DecodedBlock],
    ledger: Iterable[LedgerEntry] = (),
    elsewhere: Mapping[str, LedgerEntry] | None = None,
    quarantined: frozenset[str] = frozenset(),
    rows: Mapping[int, Sequence[PlayRow]] | None = None,
    pruned_before: datetime | None = None,
    play_counts: bool = True,
    context: Sequence[DecodedBlock] = (),
) -> Findings:
    """compare_blocks over what a reader would hand it; row ids are numbered from 1."""
    ids = iter(range(1, 1_000_000))
    written = Written(
        list(ledger),
        dict(elsewhere or {}),
        quarantined,
        None
        if rows is None
        else rows_by_height({h: [(next(ids), r) for r in rs] for h, rs in rows.items()}),
    )
    return compare_blocks(blocks, written, pruned_before, play_counts, context)


def kinds(found: Findings) -> dict[str, int]:
    return {k.value: n for k, n in found.counts().items()}


def test_a_block_written_whole_has_no_difference() -> None:
    found = cmp([block(5, tx(0, "A", play(1)))], [entry(5, 0, "A")], {}, rows=at(5, play(1)))
    assert found.differences == []
    assert (found.heights, found.transactions, found.plays) == (1, 1, 1)


def test_a_transaction_the_ledger_lacks_is_missing_and_offered_for_repair() -> None:
    found = cmp([block(5, tx(0, "X", play(9)), tx(1, "A", play(1)))], [entry(5, 0, "A")], {})
    assert kinds(found) == {"missing": 1}
    assert [[t.tx_hash for t in b.txs] for b in found.missing] == [["X"]]


def test_a_ledger_transaction_the_block_lacks_is_extra_and_never_offered_for_repair() -> None:
    found = cmp([block(5, tx(0, "A", play(1)))], [entry(5, 0, "A"), entry(5, 1, "Z")], {})
    assert kinds(found) == {"extra": 1}
    assert found.missing == []


def test_ledger_rows_at_a_height_outside_the_blocks_read_are_extra() -> None:
    found = cmp([block(5)], [entry(6, 0, "Z")], {})
    assert kinds(found) == {"extra": 1}


def test_another_position_is_counted_as_moved_not_as_a_difference() -> None:
    found = cmp([block(5, tx(1, "A", play(1)))], [entry(5, 0, "A")], {})
    assert (found.differences, found.moved) == ([], 1)


def test_a_transaction_written_at_another_height_is_repeated_not_missing() -> None:
    found = cmp([block(9, tx(0, "A", play(1)))], [], {"A": entry(5, 0, "A")})
    assert (found.differences, found.repeated, found.missing) == ([], 1, [])


def test_a_play_count_that_differs_from_the_ledger_is_a_difference() -> None:
    found = cmp([block(5, tx(0, "A", play(1), play(2)))], [entry(5, 0, "A", plays=1)], {})
    assert kinds(found) == {"play_count": 1}


def test_a_block_hash_other_than_the_one_written_from_is_a_difference() -> None:
    found = cmp(
        [block(5, tx(0, "A", play(1)), block_hash="NEW")], [entry(5, 0, "A", block_hash="OLD")], {}
    )
    assert kinds(found) == {"block_hash": 1}


def test_a_quarantined_transaction_is_reported_and_not_offered_for_repair() -> None:
    found = cmp([block(5, tx(0, "Q", play(1)))], [], {}, quarantined=frozenset({"Q"}))
    assert kinds(found) == {"quarantined": 1}
    assert found.missing == []


def test_rows_the_block_maps_to_that_are_not_in_plays_are_missing_rows() -> None:
    found = cmp(
        [block(5, tx(0, "A", play(1), play(2)))],
        [entry(5, 0, "A", plays=2)],
        {},
        rows=at(5, play(1)),
    )
    assert kinds(found) == {"missing_rows": 1}


def test_missing_rows_older_than_the_pruning_horizon_are_pruned_or_missing() -> None:
    found = cmp(
        [block(5, tx(0, "A", play(1, OLD)))],
        [entry(5, 0, "A")],
        {},
        rows=at(5),
        pruned_before=HORIZON,
    )
    assert kinds(found) == {"pruned_or_missing": 1}


def test_a_row_that_differs_in_any_field_is_missing_and_extra() -> None:
    written = PlayRow(7, 1, T0, "sig", "Porto", "Lisboa", "PT")
    found = cmp([block(5, tx(0, "A", play(1)))], [entry(5, 0, "A")], {}, rows=at(5, written))
    assert kinds(found) == {"missing_rows": 1, "extra_rows": 1}


def test_rows_at_the_slot_that_no_transaction_maps_to_are_extra_rows() -> None:
    found = cmp(
        [block(5, tx(0, "A", play(1)))], [entry(5, 0, "A")], {}, rows=at(5, play(1), play(77))
    )
    assert kinds(found) == {"extra_rows": 1}


def test_a_transaction_whose_rows_another_writer_wrote_is_not_missing() -> None:
    found = cmp([block(5, tx(0, "OLD", play(3), play(4)))], [], {}, rows=at(5, play(3), play(4)))
    assert (found.differences, found.foreign, found.missing) == ([], 1, [])


def test_a_transaction_absent_with_all_its_plays_past_the_horizon_is_never_repaired() -> None:
    found = cmp([block(5, tx(0, "A", play(1, OLD)))], [], {}, rows=at(5), pruned_before=HORIZON)
    assert kinds(found) == {"pruned_or_missing": 1}
    assert found.missing == []


def test_without_rows_only_transactions_are_compared() -> None:
    found = cmp([block(5, tx(0, "A", play(1)))], [entry(5, 0, "A")], {}, rows=None)
    assert found.differences == []


def test_without_play_counts_a_block_of_hashes_only_matches_its_ledger_rows() -> None:
    # The audit's blocks carry hashes, not plays (consumer.trust.audit._thin).
    thin = block(5, tx(0, "A"))
    found = cmp([thin], [entry(5, 0, "A", plays=3)], {}, play_counts=False)
    assert found.differences == []


# --- other writers and the chain's repeats (DESIGN §4b) ------------------------------


def test_a_transaction_the_chain_carries_twice_in_one_block_is_repeated_not_missing() -> None:
    twice = block(5, tx(0, "A", play(1)), tx(1, "A", play(1)))
    found = cmp([twice], [entry(5, 0, "A")], rows=at(5, play(1)))
    assert (found.differences, found.repeated, found.missing) == ([], 1, [])


def test_by_hashes_alone_a_transaction_carried_twice_in_a_block_is_not_missing() -> None:
    thin = block(5, tx(0, "A"), tx(3, "A"))
    found = cmp([thin], [entry(5, 0, "A")], play_counts=False)
    assert (found.differences, found.repeated) == ([], 1)


def test_another_writer_that_wrote_a_repeat_twice_is_reported_as_repeated_rows() -> None:
    twice = block(5, tx(0, "A", play(1)), tx(1, "A", play(1)))
    found = cmp([twice], rows=at(5, play(1), play(1)))
    assert kinds(found) == {"repeated_rows": 1}
    assert (found.foreign, found.missing) == (1, [])


def test_a_transaction_with_only_some_of_its_rows_there_is_ambiguous_and_never_written() -> None:
    found = cmp([block(5, tx(0, "P", play(1), play(2), play(3)))], rows=at(5, play(1), play(2)))
    assert kinds(found) == {"ambiguous": 1}
    assert (found.missing, found.foreign) == ([], 0)


def test_k_identical_plays_need_k_rows_to_be_another_writers() -> None:
    doubled = tx(0, "D", play(1), play(1))
    assert kinds(cmp([block(5, doubled)], rows=at(5, play(1)))) == {"ambiguous": 1}
    assert cmp([block(5, doubled)], rows=at(5, play(1), play(1))).foreign == 1


def test_a_row_accounts_for_one_play_of_one_transaction_only() -> None:
    same = block(5, tx(0, "A", play(1)), tx(1, "B", play(1)))
    found = cmp([same], rows=at(5, play(1)))
    assert (found.foreign, kinds(found)) == (1, {"missing": 1})
    assert [t.tx_hash for b in found.missing for t in b.txs] == ["B"]


def test_a_lost_transaction_whose_plays_contain_a_written_ones_is_missing_not_ambiguous() -> None:
    # The larger transaction was lost; the smaller one (a subset of it) was written.
    larger, smaller = tx(0, "L", play(1), play(2)), tx(1, "S", play(1))
    found = cmp([block(5, larger, smaller)], rows=at(5, play(1)))
    assert kinds(found) == {"missing": 1}
    assert [t.tx_hash for b in found.missing for t in b.txs] == ["L"]


def test_a_lost_transaction_whose_plays_are_inside_a_written_ones_is_missing() -> None:
    smaller, larger = tx(0, "S", play(1)), tx(1, "L", play(1), play(2))
    found = cmp([block(5, smaller, larger)], rows=at(5, play(1), play(2)))
    assert kinds(found) == {"missing": 1}
    assert [t.tx_hash for b in found.missing for t in b.txs] == ["S"]


def test_an_adoptable_transaction_names_the_row_ids_it_claimed() -> None:
    found = cmp([block(5, tx(0, "O", play(3), play(4)))], rows=at(5, play(3), play(4)))
    assert [(a.tx.tx_hash, sorted(a.play_ids)) for a in found.adoptable] == [("O", [1, 2])]


def test_this_services_own_transactions_take_their_rows_before_another_writers() -> None:
    # Ours and a lost one carry the same play: the row is ours, the lost one is missing.
    found = cmp([block(5, tx(0, "A", play(1)), tx(1, "X", play(1)))], [entry(5, 0, "A")],
                rows=at(5, play(1)))  # fmt: skip
    assert kinds(found) == {"missing": 1}


def test_a_transaction_carried_again_in_a_later_block_is_missing_once_not_twice() -> None:
    found = cmp([block(5, tx(0, "A", play(1))), block(6, tx(0, "A", play(1)))], rows={})
    assert (kinds(found), found.repeated) == ({"missing": 1}, 1)
    assert [(b.height, [t.tx_hash for t in b.txs]) for b in found.missing] == [(5, ["A"])]


def test_another_writer_that_wrote_only_the_later_copy_of_a_repeat_wrote_it() -> None:
    found = cmp([block(5, tx(0, "A", play(1))), block(6, tx(0, "A", play(1)))], rows=at(6, play(1)))
    assert (found.differences, found.foreign, found.missing) == ([], 1, [])


def test_another_writer_that_wrote_both_copies_of_a_repeat_is_reported_once_as_repeated_rows(
) -> None:  # fmt: skip
    found = cmp(
        [block(5, tx(0, "A", play(1))), block(6, tx(0, "A", play(1)))],
        rows={5: [play(1)], 6: [play(1)]},
    )
    assert (kinds(found), found.foreign) == ({"repeated_rows": 1}, 1)


def test_a_transaction_lost_at_a_windows_edge_finds_its_rows_at_its_repeat_in_the_context() -> None:
    found = cmp(
        [block(9, tx(0, "R", play(1), play(2)))],
        rows=at(10, play(1), play(2)),
        context=[block(10, tx(0, "R", play(1), play(2)))],
    )
    assert found.differences == [] and found.missing == []
    assert [(a.block.height, sorted(a.play_ids)) for a in found.adoptable] == [(9, [1, 2])]


def test_nothing_in_the_context_heights_is_counted_or_reported() -> None:
    found = cmp(
        [block(9, tx(0, "A", play(1)))],
        rows={9: [play(1)], 10: [play(5)]},
        context=[block(10, tx(0, "X", play(3)))],
    )
    assert found.differences == [] and found.missing == []
    assert (found.heights, found.transactions, found.foreign) == (1, 1, 1)
