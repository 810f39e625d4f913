"""How verify cuts a range into chunks, each with the heights after it as context."""

from __future__ import annotations

from datetime import datetime

from consumer.model import REPEAT_REACH, DecodedBlock, DecodedTx, PlayRow, Rpc
from consumer.trust.verify import _CHUNK_HEIGHTS, _CHUNK_PLAYS, _Window

T0 = datetime(2026, 1, 1)


def block(height: int, plays: int = 0) -> DecodedBlock:
    rows = tuple(PlayRow(None, 1, T0, "", "", "", "") for _ in range(plays))
    txs = (DecodedTx(0, f"T{height}", rows, 0),) if plays else ()
    return DecodedBlock(height, f"H{height}", "c", None, txs, via=Rpc.GET_BLOCKS)


def chunks(window: _Window, heights: range, plays: int = 0) -> list[tuple[int, int, int]]:
    """(first, last, context heights) of each chunk, as verify_range takes them."""
    taken = []
    for height in heights:
        window.add(block(height, plays))
        if window.ready():
            chunk, context = window.take()
            taken.append((chunk[0].height, chunk[-1].height, len(context)))
    while window.pending():
        chunk, context = window.take()
        taken.append((chunk[0].height, chunk[-1].height, len(context)))
    return taken


def test_each_full_chunk_is_taken_with_the_repeat_reach_after_it() -> None:
    last = 2 * _CHUNK_HEIGHTS + 10
    found = chunks(_Window(last), range(1, last + REPEAT_REACH + 1))
    assert found == [
        (1, _CHUNK_HEIGHTS, REPEAT_REACH),
        (_CHUNK_HEIGHTS + 1, 2 * _CHUNK_HEIGHTS, REPEAT_REACH),
        (2 * _CHUNK_HEIGHTS + 1, last, REPEAT_REACH),
    ]


def test_a_range_ending_at_the_head_has_a_last_chunk_without_context() -> None:
    assert chunks(_Window(30), range(1, 31)) == [(1, 30, 0)]


def test_a_chunk_ends_at_the_plays_bound_too() -> None:
    per = _CHUNK_PLAYS // 4
    found = chunks(_Window(10), range(1, 11), plays=per)
    assert [(first, last) for first, last, _ in found] == [(1, 4), (5, 8), (9, 10)]
