"""The source's rules, apart from gRPC: which path, which heights, which block to keep.

Pure: no I/O, no asyncio, no clock. The drivers in consumer.source.core ask these
rules what to do and then do it, so every ordering rule can be tested in
milliseconds and changed in one place. A block that is not the one asked for
is never quarantined and never skipped: it is a source error, and the height
is asked for again. Only bytes that can never be a block are set aside.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from consumer.errors import ChainMismatch
from consumer.model import MAX_GETBLOCKS_HEIGHTS, Block, Rpc

__all__ = [
    "FIRST_WINDOW",
    "MAX_GETBLOCKS_HEIGHTS",
    "WINDOW_BYTES",
    "Path",
    "Sequencer",
    "Verdict",
    "WindowSizer",
    "choose_path",
    "is_stalled",
    "poll_limit",
]
# About this many reply bytes per GetBlocks call (see WindowSizer), and the heights
# asked for before any block size is known.
WINDOW_BYTES = 2 * 1024 * 1024
FIRST_WINDOW = 32


class Path(StrEnum):
    """How blocks are read: the canonical stream, or GetBlocks windows."""

    STREAM = "stream"
    POLL = "poll"


def choose_path(
    mode: str, streaming_supported: bool, head: int, next_height: int, catchup_threshold: int
) -> Path:
    """The auto-mode rule, written once: stream near the tip, poll windows when far behind.

    `stream` and `poll` force one path; a node without StreamBlocks is polled
    whatever the mode.
    """
    if mode == "poll" or not streaming_supported:
        return Path.POLL
    if mode == "stream":
        return Path.STREAM
    return Path.STREAM if head - next_height < catchup_threshold else Path.POLL


def poll_limit(
    mode: str, streaming_supported: bool, head: int, end: int | None, catchup_threshold: int
) -> int:
    """The last height worth asking GetBlocks for now: the head, the end, and in
    auto mode the height where the stream takes over."""
    last = head if end is None else min(head, end)
    if mode == "auto" and streaming_supported:
        last = min(last, head - catchup_threshold)
    return last


def is_stalled(head: int, next_height: int) -> bool:
    """Silence is a stall only when the node has the block we wait for; at the
    tip of a quiet chain it is just a chain with nothing new."""
    return head >= next_height


class Verdict(StrEnum):
    """What to do with a delivered block. Every value but YIELD and REPEAT is a
    source error code (`source_errors_total{code}`): retry, never skip."""

    YIELD = "yield"
    REPEAT = "repeat"  # the block just yielded, delivered again: ignore it
    STALE = "STALE_BLOCK"  # an older block than the one asked for
    GAP = "GAP"  # the stream skipped ahead
    WRONG_HEIGHT = "WRONG_HEIGHT"  # a reply's block names another height than asked


@dataclass(slots=True)
class Sequencer:
    """Where the source stands: the next height to yield, and the chain it follows.

    An empty `chain_id` adopts the first block's chain. A block of another chain
    (or a transaction naming another chain) raises ChainMismatch: nothing of it
    may be written, and waiting will not make it ours.
    """

    next_height: int
    end: int | None = None
    chain_id: str = ""
    _last_hash: str = ""

    @property
    def done(self) -> bool:
        return self.end is not None and self.next_height > self.end

    def judge(self, block: Block, tx_chain_ids: Iterable[str] = ()) -> Verdict:
        """The verdict on `block`, delivered when `next_height` was asked for.

        A block whose envelope could not be read (`error` set) was already made
        at the asked height by the driver and is yielded to be quarantined.
        """
        if block.error:
            return Verdict.YIELD
        if block.height != self.next_height:
            return self._misplaced(block)
        self._check_chain(block, tx_chain_ids)
        return Verdict.YIELD

    def new_delivery(self) -> None:
        """A new stream begins: only a block this delivery sent can be its repeat."""
        self._last_hash = ""

    def accept(self, block: Block) -> None:
        """`block` is handed downstream: move to the next height."""
        if not self.chain_id and block.chain_id and not block.error:
            self.chain_id = block.chain_id
        self._last_hash = block.hash
        self.next_height += 1

    def _misplaced(self, block: Block) -> Verdict:
        if block.via is not Rpc.STREAM:
            return Verdict.WRONG_HEIGHT
        if block.height > self.next_height:
            return Verdict.GAP
        if block.height == self.next_height - 1 and block.hash == self._last_hash:
            return Verdict.REPEAT
        return Verdict.STALE

    def _check_chain(self, block: Block, tx_chain_ids: Iterable[str]) -> None:
        expected = self.chain_id or block.chain_id
        if block.chain_id != expected:
            raise ChainMismatch(
                f"block {block.height} ({block.via or 'unknown call'}) is on chain "
                f"{block.chain_id!r}, but this service follows chain {expected!r}"
            )
        for tx_chain in tx_chain_ids:
            if tx_chain and tx_chain != expected:
                raise ChainMismatch(
                    f"a transaction in block {block.height} is on chain {tx_chain!r}, "
                    f"but this service follows chain {expected!r}"
                )


class WindowSizer:
    """Heights per GetBlocks call, so that one reply carries about `target_bytes`.

    Blocks range from ~150 bytes (empty) to hundreds of KB (thousands of plays):
    a fixed count of heights is either slow on an empty chain or hundreds of MB
    in flight on a busy one. The block size estimate rises at once (the next
    window must not be huge) and falls gradually (one quiet window among busy
    ones must not bring a 500-block request).
    """

    def __init__(self, limit: int, target_bytes: int = WINDOW_BYTES) -> None:
        self.limit = min(limit, MAX_GETBLOCKS_HEIGHTS)
        self.target_bytes = target_bytes
        self._block_bytes = 0.0  # not known until the first reply

    def size(self) -> int:
        if self._block_bytes <= 0:
            return min(self.limit, FIRST_WINDOW)
        return max(1, min(self.limit, int(self.target_bytes / self._block_bytes)))

    def calls(self, concurrency: int) -> int:
        """How many calls may be in flight: `concurrency`, unless blocks are bigger
        than a window's target, when replies of one block each would hold
        `concurrency` big blocks at once. In flight stays within `concurrency`
        windows' worth of target bytes, and at least one call (one block)."""
        if self._block_bytes <= self.target_bytes:
            return concurrency
        return max(1, min(concurrency, int(concurrency * self.target_bytes / self._block_bytes)))

    def observe(self, total_bytes: int, blocks: int) -> None:
        if blocks:
            per_block = total_bytes / blocks
            if per_block >= self._block_bytes:
                self._block_bytes = per_block
            else:
                self._block_bytes = (self._block_bytes + per_block) / 2

    def too_large(self, heights: int) -> bool:
        """A reply for `heights` heights was over the receive limit. Halve the
        window (the estimate then falls back gradually as usual); False when a
        single block is over the limit, which no window can fix."""
        if heights <= 1:
            return False
        self._block_bytes = max(self._block_bytes, 2 * self.target_bytes / heights)
        return True
