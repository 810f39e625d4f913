"""Finalized Core blocks, in height order, with no gap and no repeat.

Thin drivers over the rules in consumer.source.sequencer, carried out through
the gRPC client of consumer.source.client (which translates every gRPC error to
ours). The source itself reconnects from the next height with backoff: the
runner only ever sees blocks, or an error that waiting will not fix (a chain
mismatch, a block over the size limit, a call the node does not serve).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import replace

import grpc

from consumer.backoff import Backoff
from consumer.config import SourceMode, SourceSettings, parse_core_url
from consumer.errors import ConfigError, SourceUnavailable
from consumer.model import Block, Rpc
from consumer.source.client import (
    CoreClient,
    NodeInfo,
    Unimplemented,
    delivered,
    parse_block,
    tls_failure,
)
from consumer.source.observer import NoObserver, SourceObserver
from consumer.source.sequencer import (
    Path,
    Sequencer,
    Verdict,
    WindowSizer,
    choose_path,
    is_stalled,
    poll_limit,
)
from consumer.source.windows import InFlight

# CoreClient, NodeInfo, parse_block, parse_core_url and tls_failure are re-exported:
# callers that know them from here keep working.
__all__ = [
    "CoreClient",
    "CoreSource",
    "NodeInfo",
    "parse_block",
    "parse_core_url",
    "tls_failure",
]

log = logging.getLogger(__name__)


class CoreSource:
    """Streams when it can, polls GetBlocks windows when it must or when far behind.

    Which path, which height and which block to keep are the sequencer's rules
    (consumer.source.sequencer); this class only carries them out over gRPC. It follows
    one chain id: the one given (the runner's, from GetNodeInfo), else the first
    block's.
    """

    def __init__(
        self,
        client: CoreClient,
        settings: SourceSettings,
        observer: SourceObserver | None = None,
        backoff: Backoff | None = None,
        chain_id: str = "",
        quiet: bool = False,
    ) -> None:
        """`observer`: told what happens (by default nobody); `quiet`: a reader that
        re-reads heights every few seconds (the audit) logs its routine path changes
        at DEBUG, not INFO."""
        self.client = client
        self.settings = settings
        self.observer = observer or NoObserver()
        self.backoff = backoff or Backoff(cap_s=settings.retry_cap_s)
        self.streaming_supported = settings.source_mode != SourceMode.POLL
        self.chain_id = chain_id
        self._head = 0
        # Kept across reconnects: what a block of this chain weighs is still true.
        self._sizer = WindowSizer(settings.poll_window)
        self._troubled_since: float | None = None  # the first error since the last block
        self._reopening = False  # the next stream follows silence at a quiet tip
        self._routine = logging.DEBUG if quiet else logging.INFO

    @classmethod
    def rereader(
        cls, client: CoreClient, settings: SourceSettings, chain_id: str, quiet: bool = False
    ) -> CoreSource:
        """A source for re-reading written heights (verify, the audit): GetBlocks
        windows whatever the service follows with, the other path, refusing blocks
        of another chain; it reports to nobody, so its fetches never count as the
        service's."""
        return cls(
            client, replace(settings, source_mode=SourceMode.POLL), chain_id=chain_id, quiet=quiet
        )

    async def head(self) -> int:
        head = await self.client.head()
        self._note_head(head)
        return head

    def assume_head(self, height: int) -> None:
        """The node has at least `height` (the caller saw it written): asking the
        head again before reading up to it would be a wasted call."""
        self._note_head(height)

    def _note_head(self, head: int) -> None:
        if head > 0:
            self._head = max(self._head, head)
            self.observer.head_seen(head)

    def _path(self, next_height: int) -> Path:
        settings = self.settings
        return choose_path(
            settings.source_mode,
            self.streaming_supported,
            self._head,
            next_height,
            settings.catchup_threshold_blocks,
        )

    async def blocks(self, start: int, end: int | None = None) -> AsyncGenerator[Block, None]:
        if start < 1:
            raise ConfigError(f"start height must be at least 1, got {start}")
        seq = Sequencer(start, end, self.chain_id)
        while not seq.done:
            try:
                if self._head == 0:
                    await self.head()
                path = self._path(seq.next_height)
                self.observer.path_chosen(path)
                reader = self._stream(seq) if path is Path.STREAM else self._poll(seq)
                async with contextlib.aclosing(reader) as blocks:
                    async for block in blocks:
                        self.chain_id = seq.chain_id
                        self._recovered(block.height)
                        yield block
                        self.backoff.reset()
            except Unimplemented as exc:
                if not exc.call.startswith("StreamBlocks") or not self.streaming_supported:
                    raise  # GetBlocks or the head is not served: polling cannot help
                log.warning("node does not serve StreamBlocks (%s); polling GetBlocks instead", exc)
                self.streaming_supported = False
            except SourceUnavailable as exc:
                await self._wait_after(exc, seq.next_height)

    async def _wait_after(self, exc: SourceUnavailable, next_height: int) -> None:
        """Count, say what is being waited for, back off; the caller then reconnects.

        A call past its deadline is a node that answers nothing: a stall, like a
        stream that goes silent while the head is ahead."""
        self.observer.refused(exc.code)
        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED.name:
            self.observer.stalled()
        self.observer.reconnecting()
        if self._troubled_since is None:
            self._troubled_since = time.monotonic()
        delay = self.backoff.next_delay()
        log.warning(
            "waiting for block %d from the node at %s (%s), retrying in %.2f s: %s",
            next_height,
            self.client.url,
            exc.code,
            delay,
            exc,
        )
        await self.backoff.sleep(delay)

    def _recovered(self, height: int) -> None:
        if self._troubled_since is not None:
            log.info(
                "the node at %s recovered: blocks flow again from height %d after %.1f s",
                self.client.url,
                height,
                time.monotonic() - self._troubled_since,
            )
            self._troubled_since = None

    async def _stream(self, seq: Sequencer) -> AsyncGenerator[Block, None]:
        start = seq.next_height
        # Reopened after silence at a quiet tip: routine, not worth an INFO line each time.
        level = logging.DEBUG if self._reopening else logging.INFO
        self._reopening = False
        log.log(
            level,
            "streaming blocks from height %d from %s (canonical order)",
            start,
            self.client.url,
        )
        url = self.client.url
        fetched = self.observer.fetched
        waited = time.monotonic()
        # A repeat is only the block this very stream just sent; an old block at the
        # start of a new stream is stale, a source error.
        seq.new_delivery()
        loop = asyncio.get_running_loop()
        patience_s = self.settings.stall_timeout_s
        try:
            # aclosing: the call ends now, not at garbage collection; a node that caps
            # concurrent streams would otherwise refuse our reconnect. The deadline is
            # armed only while waiting for the node, never while a block is downstream.
            async with (
                contextlib.aclosing(self.client.stream_raw(start)) as raws,
                asyncio.timeout(None) as deadline,
            ):
                while not seq.done:
                    deadline.reschedule(loop.time() + patience_s)
                    raw = await anext(raws, None)
                    deadline.reschedule(None)
                    if raw is None:
                        raise SourceUnavailable(f"StreamBlocks on {url} ended", "STREAM_ENDED")
                    block, chains = delivered(raw, seq.next_height, Rpc.STREAM)
                    del raw  # the Block holds what is needed; a big block is not kept twice
                    verdict = seq.judge(block, chains)
                    if verdict is Verdict.REPEAT:
                        log.warning("stream repeated block %d: ignored", block.height)
                        continue
                    if verdict is not Verdict.YIELD:
                        raise SourceUnavailable(
                            f"StreamBlocks on {url} sent block {block.height} when "
                            f"{seq.next_height} was next",
                            verdict.value,
                        )
                    now = time.monotonic()
                    fetched(now - waited, 1)
                    waited = now
                    self._note_head(block.height)
                    seq.accept(block)
                    yield block
        except TimeoutError:
            # The wait cancelled the read, which ends the call: either way the
            # stream is opened again, and only silence while the head is ahead
            # (or a node that answers nothing) is a stall.
            await self._judge_silence(seq, patience_s)

    async def _judge_silence(self, seq: Sequencer, patience_s: float) -> None:
        """Raise STALLED when the node has the awaited block (or does not answer);
        at the tip of a quiet chain, silence is only a chain with nothing new."""
        head = await self.head()  # a node that answers nothing: a stall (see _wait_after)
        if is_stalled(head, seq.next_height):
            self.observer.stalled()
            raise SourceUnavailable(
                f"StreamBlocks on {self.client.url} sent nothing for {patience_s:g} s "
                f"while the node's head is {head}",
                "STALLED",
            )
        log.debug("no block for %g s at the tip (head %d); reopening the stream", patience_s, head)
        self._reopening = True

    async def _poll(self, seq: Sequencer) -> AsyncGenerator[Block, None]:
        """Windows of GetBlocks, several in flight (consumer.source.windows); yields
        in height order and stops at the first height the node does not have yet
        ("not yet", never skipped).

        While the oldest reply is being yielded (and decoded and written
        downstream), the next calls are already on the wire, and a new one goes
        out as soon as one is used up; calls go out only from here, between
        yields, so a consumer that stops reading stops the fetching too.
        """
        log.log(
            self._routine,
            "polling GetBlocks from height %d on %s",
            seq.next_height,
            self.client.url,
        )
        inflight = InFlight(self.client, self._sizer, self.settings.poll_concurrency)
        next_fetch = seq.next_height  # the next height to ask for
        if self._head < next_fetch:
            await self.head()
        try:
            while not seq.done:
                if self._path(seq.next_height) is Path.STREAM:
                    return  # near the tip in auto mode: hand over to the canonical stream
                next_fetch = inflight.send(next_fetch, self._poll_limit(seq))
                if not inflight:
                    await self._wait_for_head()
                    continue
                call, blocks, head = await inflight.take()
                if blocks is None:
                    next_fetch = call.low  # too large: asked again in smaller windows
                    continue
                self._note_head(head)
                self.observer.fetched(time.monotonic() - call.sent, len(blocks))
                for height in range(call.low, call.high + 1):
                    raw = blocks.pop(height, None)  # pop: memory goes as blocks are used
                    if raw is None:
                        # The node did not have a height it reported: wait, never skip,
                        # and ask again from there (later replies are past the gap).
                        await inflight.cancel()
                        next_fetch = height
                        await self._wait_for_head()
                        break
                    block = await self._polled(raw, seq)
                    seq.accept(block)
                    yield block
        finally:
            await inflight.cancel()

    def _poll_limit(self, seq: Sequencer) -> int:
        """The last height to ask for now (see sequencer.poll_limit)."""
        settings = self.settings
        return poll_limit(
            settings.source_mode,
            self.streaming_supported,
            self._head,
            seq.end,
            settings.catchup_threshold_blocks,
        )

    async def _wait_for_head(self) -> None:
        """Nothing to ask for yet: wait a poll interval, then ask the head again."""
        await asyncio.sleep(self.settings.poll_interval_s)
        await self.head()

    async def _polled(self, raw: bytes, seq: Sequencer) -> Block:
        """The block GetBlocks gave for seq.next_height, or GetBlock's when GetBlocks
        gave another height's there (counted; never quarantined, never skipped)."""
        height = seq.next_height
        block, chains = delivered(raw, height, Rpc.GET_BLOCKS)
        verdict = seq.judge(block, chains)
        if verdict is Verdict.YIELD:
            return block
        self.observer.refused(verdict.value)
        log.warning(
            "GetBlocks on %s gave block %d for height %d: asking GetBlock(%d) instead",
            self.client.url,
            block.height,
            height,
            height,
        )
        again = await self.client.block_raw(height)
        if again is not None:
            block, chains = delivered(again, height, Rpc.GET_BLOCK)
            verdict = seq.judge(block, chains)
            if verdict is Verdict.YIELD:
                return block
        raise SourceUnavailable(
            f"GetBlock({height}) on {self.client.url} did not give block {height} either",
            Verdict.WRONG_HEIGHT.value,
        )
