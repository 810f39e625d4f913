"""The source's rules, without a node: which path, which height, which block to keep."""

from __future__ import annotations

import pytest

from consumer.config import SourceSettings
from consumer.errors import ChainMismatch, ConfigError
from consumer.model import Block, Rpc
from consumer.source.sequencer import (
    MAX_GETBLOCKS_HEIGHTS,
    Path,
    Sequencer,
    Verdict,
    WindowSizer,
    choose_path,
    is_stalled,
    poll_limit,
)

CHAIN = "chain-a"


def block(height: int, via: Rpc = Rpc.STREAM, chain_id: str = CHAIN, tag: str = "") -> Block:
    return Block(height, f"hash-{height}{tag}", chain_id, 0, 0, (), via=via)


def at(height: int, chain_id: str = CHAIN, end: int | None = None) -> Sequencer:
    return Sequencer(height, end, chain_id)


# --- which path -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "streaming", "head", "next_height", "path"),
    [
        ("auto", True, 5000, 100, Path.POLL),
        ("auto", True, 1099, 100, Path.STREAM),
        ("auto", True, 1100, 100, Path.POLL),
        ("auto", False, 100, 100, Path.POLL),
        ("stream", True, 5000, 100, Path.STREAM),
        ("stream", False, 5000, 100, Path.POLL),
        ("poll", True, 100, 100, Path.POLL),
    ],
    ids=[
        "auto-far-behind-polls",
        "auto-within-threshold-streams",
        "auto-exactly-threshold-behind-polls",
        "auto-without-stream-polls",
        "stream-forced",
        "stream-unsupported-polls",
        "poll-forced",
    ],
)
def test_choose_path_streams_near_the_tip_and_polls_far_behind(
    mode: str, streaming: bool, head: int, next_height: int, path: Path
) -> None:
    assert choose_path(mode, streaming, head, next_height, catchup_threshold=1000) == path


def test_poll_limit_in_auto_mode_stops_where_the_stream_takes_over() -> None:
    assert poll_limit("auto", True, head=5000, end=None, catchup_threshold=1000) == 4000


def test_poll_limit_stops_at_the_end_of_a_bounded_run() -> None:
    assert poll_limit("poll", True, head=5000, end=300, catchup_threshold=1000) == 300


def test_poll_limit_in_poll_mode_reaches_the_head() -> None:
    assert poll_limit("poll", True, head=5000, end=None, catchup_threshold=1000) == 5000


def test_the_get_blocks_limit_is_the_poll_window_bound() -> None:
    with pytest.raises(ConfigError, match=str(MAX_GETBLOCKS_HEIGHTS)):
        SourceSettings(poll_window=MAX_GETBLOCKS_HEIGHTS + 1)


# --- stalls -----------------------------------------------------------------------


def test_silence_while_the_head_has_the_next_block_is_a_stall() -> None:
    assert is_stalled(head=124, next_height=1)


def test_silence_at_the_tip_is_not_a_stall() -> None:
    assert not is_stalled(head=99, next_height=100)


# --- which block ------------------------------------------------------------------


def test_the_block_asked_for_is_yielded() -> None:
    assert at(10).judge(block(10)) is Verdict.YIELD


def test_accepting_a_block_moves_to_the_next_height() -> None:
    seq = at(10)
    seq.accept(block(10))
    assert seq.next_height == 11


def test_a_bounded_sequence_is_done_after_its_end() -> None:
    seq = at(10, end=10)
    seq.accept(block(10))
    assert seq.done


def test_a_stream_block_ahead_of_the_next_height_is_a_gap() -> None:
    assert at(10).judge(block(12)) is Verdict.GAP


def test_the_block_just_yielded_sent_again_by_the_same_stream_is_a_repeat() -> None:
    seq = at(10)
    seq.accept(block(10))
    assert seq.judge(block(10)) is Verdict.REPEAT


def test_an_older_block_than_the_last_one_yielded_is_stale() -> None:
    seq = at(10)
    seq.accept(block(10))
    assert seq.judge(block(9)) is Verdict.STALE


def test_another_block_at_the_last_height_is_stale_not_a_repeat() -> None:
    seq = at(10)
    seq.accept(block(10))
    assert seq.judge(block(10, tag="-fork")) is Verdict.STALE


def test_the_last_block_at_the_start_of_a_new_stream_is_stale() -> None:
    seq = at(10)
    seq.accept(block(10))
    seq.new_delivery()
    assert seq.judge(block(10)) is Verdict.STALE


def test_a_stale_block_leaves_the_next_height_where_it_was() -> None:
    seq = at(10)
    seq.accept(block(10))
    seq.new_delivery()
    seq.judge(block(10))
    assert seq.next_height == 11


@pytest.mark.parametrize("via", [Rpc.GET_BLOCKS, Rpc.GET_BLOCK], ids=["get-blocks", "get-block"])
@pytest.mark.parametrize("delivered", [9, 11], ids=["below", "above"])
def test_a_reply_block_naming_another_height_is_the_wrong_height(via: Rpc, delivered: int) -> None:
    assert at(10).judge(block(delivered, via)) is Verdict.WRONG_HEIGHT


def test_an_unreadable_block_is_yielded_to_be_set_aside() -> None:
    unreadable = Block.unreadable(10, b"\xff", "block envelope: truncated", Rpc.GET_BLOCKS)
    assert at(10).judge(unreadable) is Verdict.YIELD


def test_every_verdict_but_yield_and_repeat_is_a_source_error_code() -> None:
    codes = {v.value for v in Verdict} - {Verdict.YIELD.value, Verdict.REPEAT.value}
    assert codes == {"STALE_BLOCK", "GAP", "WRONG_HEIGHT"}


# --- which chain ------------------------------------------------------------------


def test_a_block_of_another_chain_is_a_chain_mismatch_naming_both() -> None:
    with pytest.raises(ChainMismatch, match=r"'chain-b'.*'chain-a'"):
        at(10).judge(block(10, chain_id="chain-b"))


def test_a_transaction_naming_another_chain_is_a_chain_mismatch_naming_both() -> None:
    with pytest.raises(ChainMismatch, match=r"'chain-b'.*'chain-a'"):
        at(10).judge(block(10), tx_chain_ids=["chain-b"])


def test_transactions_that_name_no_chain_are_of_the_block_s_chain() -> None:
    assert at(10).judge(block(10), tx_chain_ids=[""]) is Verdict.YIELD


def test_without_a_chain_id_the_first_block_s_chain_is_followed() -> None:
    seq = at(10, chain_id="")
    seq.accept(block(10, chain_id="chain-b"))
    with pytest.raises(ChainMismatch):
        seq.judge(block(11, chain_id="chain-a"))


# --- window sizing ----------------------------------------------------------------


def test_window_sizer_never_exceeds_the_get_blocks_limit() -> None:
    assert WindowSizer(limit=10_000, target_bytes=10**9).limit == MAX_GETBLOCKS_HEIGHTS


def test_window_sizer_halves_the_window_after_a_reply_over_the_size_limit() -> None:
    sizer = WindowSizer(limit=500, target_bytes=1_000_000)
    assert sizer.too_large(heights=32)
    assert sizer.size() == 16


def test_window_sizer_shrinks_down_to_one_height() -> None:
    sizer = WindowSizer(limit=500, target_bytes=1_000_000)
    heights = 3
    while sizer.too_large(heights):
        heights = sizer.size()
    assert heights == 1


def test_window_sizer_cannot_shrink_a_single_block_over_the_size_limit() -> None:
    assert not WindowSizer(limit=500, target_bytes=1_000_000).too_large(heights=1)


def test_window_sizer_starts_small_before_it_has_seen_a_block() -> None:
    assert WindowSizer(limit=500, target_bytes=1_000_000).size() == 32


def test_window_sizer_sizes_windows_to_carry_about_the_target_bytes() -> None:
    sizer = WindowSizer(limit=500, target_bytes=1_000_000)
    sizer.observe(total_bytes=32 * 100_000, blocks=32)
    assert sizer.size() == 10


def test_window_sizer_never_asks_for_more_than_its_limit_or_fewer_than_one() -> None:
    sizer = WindowSizer(limit=500, target_bytes=1_000_000)
    sizer.observe(total_bytes=150 * 32, blocks=32)
    assert sizer.size() == 500
    sizer.observe(total_bytes=5_000_000, blocks=1)
    assert sizer.size() == 1


def test_window_sizer_shrinks_at_once_when_blocks_grow() -> None:
    sizer = WindowSizer(limit=500, target_bytes=1_000_000)
    sizer.observe(total_bytes=500 * 1_000, blocks=500)
    sizer.observe(total_bytes=250_000, blocks=1)
    assert sizer.size() == 4


def test_window_sizer_widens_gradually_when_blocks_shrink() -> None:
    """One quiet window among busy ones must not bring a 500-block request."""
    sizer = WindowSizer(limit=500, target_bytes=1_000_000)
    sizer.observe(total_bytes=4 * 250_000, blocks=4)
    sizer.observe(total_bytes=4 * 150, blocks=4)
    assert sizer.size() == 7  # block estimate halved: 125,075 bytes
    for _ in range(20):
        sizer.observe(total_bytes=4 * 150, blocks=4)
    assert sizer.size() == 500


def test_calls_in_flight_stay_at_the_concurrency_while_blocks_fit_a_window() -> None:
    sizer = WindowSizer(500, target_bytes=2_000_000)
    sizer.observe(total_bytes=1_000_000, blocks=10)
    assert sizer.calls(4) == 4


def test_blocks_bigger_than_a_window_bring_fewer_calls_in_flight() -> None:
    sizer = WindowSizer(500, target_bytes=2_000_000)
    sizer.observe(total_bytes=4_000_000, blocks=1)
    assert sizer.calls(4) == 2


def test_a_block_far_bigger_than_every_window_together_is_fetched_alone() -> None:
    sizer = WindowSizer(500, target_bytes=2_000_000)
    sizer.observe(total_bytes=100_000_000, blocks=1)
    assert sizer.calls(4) == 1
