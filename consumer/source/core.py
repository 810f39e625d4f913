"""Finalized Core blocks, in height order, with no gap and no repeat.

The only module that speaks gRPC: thin drivers over the rules in
consumer.source.sequencer. Replies are read through the wire-compatible view messages
(proto/core/v1/view.proto): the block envelope here, each transaction later in
decode, so one undecodable transaction or block never wedges the chain. gRPC
errors are translated to ours at this boundary, and the source itself
reconnects from the next height with backoff: the runner only ever sees
blocks, or an error that waiting will not fix (a chain mismatch, a block over
the size limit, a call the node does not serve).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio
from prometheus_client import CollectorRegistry

from consumer._pb.core.v1 import types_pb2, view_pb2
from consumer.backoff import Backoff
from consumer.config import SourceMode, SourceSettings, parse_core_url
from consumer.errors import ConfigError, SourceFailed, SourceUnavailable
from consumer.metrics import Metrics
from consumer.model import Block, RawTx, ReconnectTarget, Rpc
from consumer.source.sequencer import (
    Path,
    Sequencer,
    Verdict,
    WindowSizer,
    choose_path,
    is_stalled,
    poll_limit,
)

__all__ = [
    "CoreClient",
    "CoreSource",
    "NodeInfo",
    "parse_block",
    "parse_core_url",
    "tls_failure",
]

log = logging.getLogger(__name__)

_SERVICE = "/core.v1.CoreService/"
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass(frozen=True, slots=True)
class NodeInfo:
    chain_id: str
    head: int


class _Unimplemented(SourceFailed):
    """The node does not serve a call. StreamBlocks: an older node, to be polled
    instead; any other call is a SourceFailed like any refusal waiting cannot fix."""

    def __init__(self, message: str, call: str) -> None:
        super().__init__(message)
        self.call = call


class _TooLarge(ConfigError):
    """A reply over --max-message-bytes. For one block it is the operator's to fix;
    for a GetBlocks window of several, a smaller window is (see WindowSizer.too_large)."""


def tls_failure(detail: str) -> str | None:
    """What to fix when a TLS handshake failed, or None if the error is not one.

    Retrying a handshake cannot help: the port speaks plaintext, or the node's
    certificate is not trusted. The operator is told which at once.
    """
    lowered = detail.lower()
    if "handshake failed" not in lowered:
        return None
    if "wrong_version_number" in lowered or "packet_length_too_long" in lowered:
        return "TLS handshake failed: the port speaks plaintext; use http://host:port"
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return (
            "TLS handshake failed: the node's certificate is not trusted; give its CA in "
            "--core-ca-file"
        )
    return "TLS handshake failed: check the scheme (http vs https) and --core-ca-file"


def parse_block(raw: bytes, expected_height: int, via: Rpc = Rpc.UNKNOWN) -> Block:
    """Read a block's envelope; an unreadable one becomes a Block carrying the error."""
    return _read_block(raw, expected_height, via)[0]


def _read_block(raw: bytes, expected_height: int, via: Rpc) -> tuple[Block, tuple[str, ...]]:
    """The block and the chain ids its transactions name (empty where unset)."""
    try:
        view = view_pb2.BlockView.FromString(raw)
    except DecodeError as exc:
        return Block.unreadable(expected_height, raw, f"block envelope: {exc}", via), ()
    ts = view.timestamp
    txs = tuple(RawTx(tx.hash, tx.transaction) for tx in view.transactions)
    chains = tuple({tx.chain_id for tx in view.transactions if tx.chain_id})
    block = Block(view.height, view.hash, view.chain_id, ts.seconds, ts.nanos, txs, via=via)
    return block, chains


def _delivered(raw: bytes, height: int, via: Rpc) -> tuple[Block, tuple[str, ...]]:
    """A block delivered for `height`. An envelope that parses but names no height
    (empty bytes read as height 0) can never be a block: set aside, as garbage is."""
    block, chains = _read_block(raw, height, via)
    if not block.error and block.height <= 0:
        return Block.unreadable(height, raw, f"envelope says height {block.height}", via), ()
    return block, chains


class CoreClient:
    """One channel to one node: every unary call has a deadline, every error is ours."""

    def __init__(self, settings: SourceSettings) -> None:
        self.settings = settings
        self.url = settings.core_url
        target, tls = parse_core_url(settings.core_url)
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.enable_retries", 0),
        ]
        if tls:
            ca = settings.core_ca_file
            try:
                roots = pathlib.Path(ca).read_bytes() if ca is not None else None
            except OSError as exc:
                raise ConfigError(f"--core-ca-file {ca}: {exc.strerror}") from None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = aio.secure_channel(target, credentials, options)
        else:
            self._channel = aio.insecure_channel(target, options)
        ser = _serialize
        ch = self._channel
        self._node_info = ch.unary_unary(
            _SERVICE + "GetNodeInfo", ser, types_pb2.GetNodeInfoResponse.FromString
        )
        self._status = ch.unary_unary(
            _SERVICE + "GetStatus", ser, types_pb2.GetStatusResponse.FromString
        )
        self._get_block = ch.unary_unary(
            _SERVICE + "GetBlock", ser, view_pb2.GetBlockResponseView.FromString
        )
        self._get_blocks = ch.unary_unary(_SERVICE + "GetBlocks", ser, _identity)
        self._stream = ch.unary_stream(_SERVICE + "StreamBlocks", ser, _identity)

    async def close(self) -> None:
        await self._channel.close(None)

    def _error(self, exc: aio.AioRpcError, call: str) -> Exception:
        code = exc.code()
        detail = exc.details() or ""
        where = f"{call} on {self.url}"
        tls_hint = tls_failure(detail)
        if tls_hint is not None:
            return ConfigError(f"{where}: {tls_hint}")
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return _Unimplemented(f"{where}: UNIMPLEMENTED {detail}".rstrip(), call)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in detail:
            return _TooLarge(
                f"{where}: a reply exceeds the receive limit ({detail}); "
                "raise --max-message-bytes (CORE_PLAYS_MAX_MESSAGE_BYTES)"
            )
        message = f"{where}: {code.name} {detail}".rstrip()
        if code in _RETRYABLE:
            return SourceUnavailable(message, code.name)
        return SourceFailed(message)

    async def _unary(self, call: str, fn: Any, request: Any) -> Any:
        try:
            return await fn(request, timeout=self.settings.rpc_timeout_s)
        except aio.AioRpcError as exc:
            raise self._error(exc, call) from exc

    async def node_info(self) -> NodeInfo:
        reply = await self._unary("GetNodeInfo", self._node_info, types_pb2.GetNodeInfoRequest())
        return NodeInfo(reply.chainid, reply.current_height)

    async def head(self) -> int:
        """The node's current height; GetStatus first, GetNodeInfo on nodes without it."""
        try:
            reply = await self._unary("GetStatus", self._status, types_pb2.GetStatusRequest())
            return int(reply.chain_info.current_height)
        except _Unimplemented:
            return (await self.node_info()).head

    async def block(self, height: int) -> Block | None:
        """One block, None if not produced yet."""
        raw = await self.block_raw(height)
        return None if raw is None else parse_block(raw, height, Rpc.GET_BLOCK)

    async def block_raw(self, height: int) -> bytes | None:
        """One block's bytes, None if not produced yet (a node answers height -1)."""
        reply = await self._unary(
            f"GetBlock({height})", self._get_block, types_pb2.GetBlockRequest(height=height)
        )
        block = parse_block(reply.block, height, Rpc.GET_BLOCK)
        if block.error == "" and block.height == -1:
            return None
        return bytes(reply.block)

    async def blocks_raw(self, heights: list[int]) -> tuple[dict[int, bytes], int]:
        """Raw block bytes by height (absent heights are not produced yet) and the head."""
        raw = await self._unary(
            f"GetBlocks({heights[0]}..{heights[-1]})",
            self._get_blocks,
            types_pb2.GetBlocksRequest(height=heights),
        )
        try:
            reply = view_pb2.GetBlocksResponseView.FromString(raw)
        except DecodeError as exc:
            raise SourceUnavailable(
                f"GetBlocks on {self.url}: unreadable reply: {exc}", "MALFORMED_REPLY"
            ) from exc
        return dict(reply.blocks), reply.current_height

    async def stream_raw(self, start: int) -> AsyncGenerator[bytes, None]:
        """Raw block bytes from StreamBlocks(canon=true, start_height=start)."""
        call = self._stream(types_pb2.StreamBlocksRequest(canon=True, start_height=start))
        try:
            async for message in call:
                block = view_pb2.StreamBlocksResponseView.FromString(message).block
                # Not held while the block is used: a big block is not kept twice.
                del message
                yield block
                del block
        except aio.AioRpcError as exc:
            raise self._error(exc, f"StreamBlocks({start})") from exc
        except DecodeError as exc:
            raise SourceUnavailable(
                f"StreamBlocks on {self.url}: unreadable message: {exc}", "MALFORMED_REPLY"
            ) from exc
        finally:
            call.cancel()


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]


def _identity(raw: bytes) -> bytes:
    return raw


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
        metrics: Metrics,
        backoff: Backoff | None = None,
        on_mode: Callable[[str], None] | None = None,
        chain_id: str = "",
        quiet: bool = False,
    ) -> None:
        """`quiet`: a reader that re-reads heights every few seconds (the audit) logs
        its routine path changes at DEBUG, not INFO."""
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.backoff = backoff or Backoff(cap_s=settings.retry_cap_s)
        self.streaming_supported = settings.source_mode != SourceMode.POLL
        self.chain_id = chain_id
        self._on_mode = on_mode or (lambda mode: None)
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
        of another chain; its fetches go to a registry of their own, not into the
        service's fetch metrics."""
        return cls(
            client,
            replace(settings, source_mode=SourceMode.POLL),
            Metrics(CollectorRegistry()),
            chain_id=chain_id,
            quiet=quiet,
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
            self.metrics.set_head(head)

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
                self._on_mode(path)
                reader = self._stream(seq) if path is Path.STREAM else self._poll(seq)
                async with contextlib.aclosing(reader) as blocks:
                    async for block in blocks:
                        self.chain_id = seq.chain_id
                        self._recovered(block.height)
                        yield block
                        self.backoff.reset()
            except _Unimplemented as exc:
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
        self.metrics.source_errors_total.labels(exc.code).inc()
        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED.name:
            self.metrics.source_stalls_total.inc()
        self.metrics.reconnects_total.labels(ReconnectTarget.NODE).inc()
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
        fetch = self.metrics.block_fetch_seconds
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
                    block, chains = _delivered(raw, seq.next_height, Rpc.STREAM)
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
                    fetch.observe(now - waited)
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
            self.metrics.source_stalls_total.inc()
            raise SourceUnavailable(
                f"StreamBlocks on {self.client.url} sent nothing for {patience_s:g} s "
                f"while the node's head is {head}",
                "STALLED",
            )
        log.debug("no block for %g s at the tip (head %d); reopening the stream", patience_s, head)
        self._reopening = True

    async def _poll(self, seq: Sequencer) -> AsyncGenerator[Block, None]:
        """Windows of GetBlocks, several in flight; yields in height order and stops
        at the first height the node does not have yet ("not yet", never skipped).

        A sliding window: while the oldest reply is being yielded (and decoded and
        written downstream), the next `poll_concurrency - 1` calls are already on
        the wire, and a new one goes out as soon as one is used up. Calls go out
        only from here, between yields, so a consumer that stops reading stops the
        fetching too: in-flight memory is at most `poll_concurrency` windows,
        each sized by the WindowSizer to about its target bytes, and when single
        blocks are bigger than that, as few calls as keep it so (at least one).
        """
        log.log(
            self._routine,
            "polling GetBlocks from height %d on %s",
            seq.next_height,
            self.client.url,
        )
        settings = self.settings
        sizer = self._sizer
        inflight: deque[_Call] = deque()
        next_fetch = seq.next_height  # the next height to ask for
        if self._head < next_fetch:
            await self.head()
        try:
            while not seq.done:
                if self._path(seq.next_height) is Path.STREAM:
                    return  # near the tip in auto mode: hand over to the canonical stream
                last = poll_limit(
                    settings.source_mode,
                    self.streaming_supported,
                    self._head,
                    seq.end,
                    settings.catchup_threshold_blocks,
                )
                while len(inflight) < sizer.calls(settings.poll_concurrency) and next_fetch <= last:
                    high = min(next_fetch + sizer.size() - 1, last)
                    heights = list(range(next_fetch, high + 1))
                    reply = asyncio.ensure_future(self.client.blocks_raw(heights))
                    inflight.append(_Call(next_fetch, high, time.monotonic(), reply))
                    next_fetch = high + 1
                if not inflight:
                    await asyncio.sleep(settings.poll_interval_s)
                    await self.head()
                    continue
                call = inflight.popleft()
                try:
                    blocks, head = await call.reply
                except _TooLarge:
                    if not sizer.too_large(call.high - call.low + 1):
                        raise  # one block over the limit: the operator's to fix
                    await _cancel(inflight)
                    next_fetch = call.low
                    log.info(
                        "GetBlocks(%d..%d) was over --max-message-bytes: asking for %d "
                        "heights per call",
                        call.low,
                        call.high,
                        sizer.size(),
                    )
                    continue
                self._note_head(head)
                sizer.observe(sum(map(len, blocks.values())), len(blocks))
                self._observe_fetch(time.monotonic() - call.sent, len(blocks))
                for height in range(call.low, call.high + 1):
                    raw = blocks.pop(height, None)  # pop: memory goes as blocks are used
                    if raw is None:
                        # The node did not have a height it reported: wait, never skip,
                        # and ask again from there (later replies are past the gap).
                        await _cancel(inflight)
                        next_fetch = height
                        await asyncio.sleep(settings.poll_interval_s)
                        await self.head()
                        break
                    block = await self._polled(raw, seq)
                    seq.accept(block)
                    yield block
        finally:
            await _cancel(inflight)

    async def _polled(self, raw: bytes, seq: Sequencer) -> Block:
        """The block GetBlocks gave for seq.next_height, or GetBlock's when GetBlocks
        gave another height's there (counted; never quarantined, never skipped)."""
        height = seq.next_height
        block, chains = _delivered(raw, height, Rpc.GET_BLOCKS)
        verdict = seq.judge(block, chains)
        if verdict is Verdict.YIELD:
            return block
        self.metrics.source_errors_total.labels(verdict.value).inc()
        log.warning(
            "GetBlocks on %s gave block %d for height %d: asking GetBlock(%d) instead",
            self.client.url,
            block.height,
            height,
            height,
        )
        again = await self.client.block_raw(height)
        if again is not None:
            block, chains = _delivered(again, height, Rpc.GET_BLOCK)
            verdict = seq.judge(block, chains)
            if verdict is Verdict.YIELD:
                return block
        raise SourceUnavailable(
            f"GetBlock({height}) on {self.client.url} did not give block {height} either",
            Verdict.WRONG_HEIGHT.value,
        )

    def _observe_fetch(self, seconds: float, blocks: int) -> None:
        if blocks:
            per_block = seconds / blocks
            observe = self.metrics.block_fetch_seconds.observe
            for _ in range(blocks):
                observe(per_block)


@dataclass(slots=True)
class _Call:
    """One GetBlocks call in flight, for heights low..high."""

    low: int
    high: int
    sent: float
    reply: asyncio.Future[tuple[dict[int, bytes], int]]


async def _cancel(calls: deque[_Call]) -> None:
    """Cancel calls in flight and collect them, so no error is left unretrieved."""
    for call in calls:
        call.reply.cancel()
    await asyncio.gather(*(call.reply for call in calls), return_exceptions=True)
    calls.clear()
