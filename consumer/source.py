"""Finalized Core blocks, in height order, with no gap and no repeat.

The only module that speaks gRPC. Replies are read through the wire-compatible
view messages (proto/core/v1/view.proto): the block envelope here, each
transaction later in decode, so one undecodable transaction or block never
wedges the chain. gRPC errors are translated to ours at this boundary, and the
source itself reconnects from the next height with backoff: the runner only
ever sees blocks, or an error that waiting will not fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from consumer._pb.core.v1 import types_pb2, view_pb2
from consumer.backoff import Backoff
from consumer.config import SourceSettings, parse_core_url
from consumer.errors import ConfigError, SourceFailed, SourceUnavailable
from consumer.metrics import Metrics
from consumer.model import Block, RawTx, Rpc

__all__ = [
    "BlockSource",
    "CoreClient",
    "CoreSource",
    "NodeInfo",
    "parse_block",
    "parse_core_url",
    "tls_failure",
]

log = logging.getLogger(__name__)

_SERVICE = "/core.v1.CoreService/"
MAX_WINDOW = 500  # GetBlocks refuses more heights per call
# About this many reply bytes per GetBlocks call (see _WindowSizer), and the heights
# asked for before any block size is known.
_WINDOW_BYTES = 2 * 1024 * 1024
_FIRST_WINDOW = 32
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

Req = TypeVar("Req")


class BlockSource(Protocol):
    def blocks(self, start: int, end: int | None) -> AsyncGenerator[Block, None]: ...

    async def head(self) -> int: ...


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
    try:
        view = view_pb2.BlockView.FromString(raw)
    except DecodeError as exc:
        return Block.unreadable(expected_height, raw, f"block envelope: {exc}", via)
    ts = view.timestamp
    txs = tuple(RawTx(tx.hash, tx.transaction) for tx in view.transactions)
    return Block(view.height, view.hash, view.chain_id, ts.seconds, ts.nanos, txs, via=via)


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
                roots = Path(ca).read_bytes() if ca is not None else None
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
            return ConfigError(
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
        """One block (transactions in the node's sorted order), None if not produced yet."""
        reply = await self._unary(
            f"GetBlock({height})", self._get_block, types_pb2.GetBlockRequest(height=height)
        )
        block = parse_block(reply.block, height, Rpc.GET_BLOCK)
        if block.error == "" and block.height == -1:
            return None
        return block

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
            async for raw in call:
                yield view_pb2.StreamBlocksResponseView.FromString(raw).block
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

    Mode `auto` catches up with GetBlocks windows (one call carries up to 500
    blocks, several in flight) and switches to the canonical stream near the
    tip; `stream` and `poll` force one path. A node answering UNIMPLEMENTED to
    StreamBlocks is polled from then on.
    """

    def __init__(
        self,
        client: CoreClient,
        settings: SourceSettings,
        metrics: Metrics,
        backoff: Backoff | None = None,
        on_mode: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.backoff = backoff or Backoff(cap_s=settings.retry_cap_s)
        self.streaming_supported = settings.source_mode != "poll"
        self._on_mode = on_mode or (lambda mode: None)
        self._head = 0
        # Kept across reconnects: what a block of this chain weighs is still true.
        self._sizer = _WindowSizer(min(settings.poll_window, MAX_WINDOW))

    async def head(self) -> int:
        head = await self.client.head()
        self._note_head(head)
        return head

    def _note_head(self, head: int) -> None:
        if head > 0:
            self._head = max(self._head, head)
            self.metrics.set_head(head)

    async def blocks(self, start: int, end: int | None = None) -> AsyncGenerator[Block, None]:
        if start < 1:
            raise ConfigError(f"start height must be at least 1, got {start}")
        next_height = start
        while end is None or next_height <= end:
            try:
                if self._head == 0:
                    await self.head()
                if self._use_stream(next_height):
                    self._on_mode("stream")
                    path = self._stream(next_height, end)
                else:
                    self._on_mode("poll")
                    path = self._poll(next_height, end)
                async with contextlib.aclosing(path) as blocks:
                    async for block in blocks:
                        yield block
                        next_height = block.height + 1
                        self.backoff.reset()
            except _Unimplemented as exc:
                if not exc.call.startswith("StreamBlocks") or not self.streaming_supported:
                    raise  # GetBlocks or the head is not served: polling cannot help
                log.warning("node does not serve StreamBlocks (%s); polling GetBlocks instead", exc)
                self.streaming_supported = False
            except SourceUnavailable as exc:
                self.metrics.source_errors_total.labels(exc.code).inc()
                self.metrics.reconnects_total.labels("node").inc()
                delay = self.backoff.next_delay()
                log.warning(
                    "node unavailable, retrying from height %d in %.2f s: %s",
                    next_height,
                    delay,
                    exc,
                )
                await self.backoff.sleep(delay)

    def _use_stream(self, next_height: int) -> bool:
        if not self.streaming_supported:
            return False
        if self.settings.source_mode == "stream":
            return True
        return self._head - next_height < self.settings.catchup_threshold_blocks

    async def _stream(self, start: int, end: int | None) -> AsyncGenerator[Block, None]:
        log.info(
            "streaming blocks from height %d from %s (canonical order)", start, self.client.url
        )
        expected = start
        fetch = self.metrics.block_fetch_seconds
        waited = time.monotonic()
        # aclosing: the call ends now, not at garbage collection; a node that caps
        # concurrent streams would otherwise refuse our reconnect.
        async with contextlib.aclosing(self.client.stream_raw(start)) as raws:
            async for raw in raws:
                block = parse_block(raw, expected, Rpc.STREAM)
                if block.height < start:
                    # Below where this stream began, so not a repeat (an empty or zeroed
                    # envelope says height 0): an error block, as _poll makes, not a wedge.
                    block = Block.unreadable(
                        expected, raw, f"envelope says height {block.height}", Rpc.STREAM
                    )
                elif block.height < expected:
                    log.warning(
                        "stream repeated block %d (expected %d): ignored", block.height, expected
                    )
                    continue
                if block.height > expected:
                    raise SourceUnavailable(
                        f"StreamBlocks on {self.client.url} skipped from {expected} "
                        f"to {block.height}",
                        "GAP",
                    )
                now = time.monotonic()
                fetch.observe(now - waited)
                waited = now
                self._note_head(expected)
                yield block
                expected += 1
                if end is not None and expected > end:
                    return
        raise SourceUnavailable(f"StreamBlocks on {self.client.url} ended", "STREAM_ENDED")

    async def _poll(self, start: int, end: int | None) -> AsyncGenerator[Block, None]:
        """Windows of GetBlocks, several in flight; yields in height order and stops
        at the first height the node does not have yet ("not yet", never skipped).

        A sliding window: while the oldest reply is being yielded (and decoded and
        written downstream), the next `poll_concurrency - 1` calls are already on
        the wire, and a new one goes out as soon as one is used up. Calls go out
        only from here, between yields, so a consumer that stops reading stops the
        fetching too: in-flight memory is at most `poll_concurrency` windows,
        each sized by `_WindowSizer` to about `_WINDOW_BYTES`.
        """
        log.info("polling GetBlocks from height %d on %s", start, self.client.url)
        settings = self.settings
        sizer = self._sizer
        inflight: deque[_Call] = deque()
        next_height = start  # the next height to yield
        next_fetch = start  # the next height to ask for
        if self._head < next_height:
            await self.head()
        try:
            while end is None or next_height <= end:
                if (
                    settings.source_mode == "auto"
                    and self.streaming_supported
                    and self._use_stream(next_height)
                ):
                    return  # near the tip: hand over to the canonical stream
                last = self._poll_limit(end)
                while len(inflight) < settings.poll_concurrency and next_fetch <= last:
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
                blocks, head = await call.reply
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
                    yield _checked_block(raw, height)
                    next_height = height + 1
        finally:
            await _cancel(inflight)

    def _poll_limit(self, end: int | None) -> int:
        """The last height worth asking for now: the head, the end, and in auto
        mode the height where the stream takes over."""
        last = self._head if end is None else min(self._head, end)
        if self.settings.source_mode == "auto" and self.streaming_supported:
            last = min(last, self._head - self.settings.catchup_threshold_blocks)
        return last

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


def _checked_block(raw: bytes, height: int) -> Block:
    """The block at `height`, or an error block if its envelope names another height."""
    block = parse_block(raw, height, Rpc.GET_BLOCKS)
    if block.error == "" and block.height != height:
        return Block.unreadable(height, raw, f"envelope says height {block.height}", Rpc.GET_BLOCKS)
    return block


class _WindowSizer:
    """Heights per GetBlocks call, so that one reply carries about `target_bytes`.

    Blocks range from ~150 bytes (empty) to hundreds of KB (thousands of plays):
    a fixed count of heights is either slow on an empty chain or hundreds of MB
    in flight on a busy one. The block size estimate rises at once (the next
    window must not be huge) and falls gradually (one quiet window among busy
    ones must not bring a 500-block request).
    """

    def __init__(self, limit: int, target_bytes: int = _WINDOW_BYTES) -> None:
        self.limit = limit
        self.target_bytes = target_bytes
        self._block_bytes = 0.0  # not known until the first reply

    def size(self) -> int:
        if self._block_bytes <= 0:
            return min(self.limit, _FIRST_WINDOW)
        return max(1, min(self.limit, int(self.target_bytes / self._block_bytes)))

    def observe(self, total_bytes: int, blocks: int) -> None:
        if blocks:
            per_block = total_bytes / blocks
            if per_block >= self._block_bytes:
                self._block_bytes = per_block
            else:
                self._block_bytes = (self._block_bytes + per_block) / 2
