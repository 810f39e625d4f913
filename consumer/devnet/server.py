"""core.v1.CoreService over real gRPC, serving a DevChain, with fault switches.

It behaves like a Core node where the consumer can tell the difference:
height -1 above the head, at most 500 heights per GetBlocks, UNAVAILABLE until
ready, streams that end with ABORTED, and older nodes without StreamBlocks.
Every call serves a block's transactions in chain order, as nodes >= v1.9.0 do.
Responses are serialized through the wire-compatible view messages, so a
block's bytes are built once and malformed transactions can be served as they
are.

Fault switches (`Faults`, flipped by tests on a running devnet; the first two
are also `devnet` command-line flags) model what real nodes have done:

- `get_blocks_resorts_txs` (`--get-blocks-resorts-txs`): GetBlock and GetBlocks
  sort each block's transactions by hash, as nodes before v1.9.0 did, while
  StreamBlocks keeps chain order.
- `stream_omits_first_tx` (`--stream-omits-first-tx`): StreamBlocks sends every
  block without its first transaction (a published node version iterated
  `rows[1:]`), so one-transaction blocks arrive empty; GetBlock/GetBlocks stay
  complete.
- `shifted_get_blocks_replies`, `stale_stream_starts`, `misnumbered_blocks`:
  a block that is not the one asked for (next height's block under a GetBlocks
  key, the previous block first on a new stream, an envelope naming the next
  height). Each is a countdown, so the node heals.
- `foreign_chain_id`, `foreign_tx_chain_id`: blocks, or their transactions,
  naming another chain than GetNodeInfo does.
- `stream_silent_after`: each stream sends that many blocks, then nothing,
  without ending (a stalled stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from consumer._pb.core.v1 import types_pb2, view_pb2
from consumer.devnet.chain import DevChain
from consumer.model import MAX_GETBLOCKS_HEIGHTS

__all__ = ["MAX_GETBLOCKS_HEIGHTS", "DevnetServer", "Faults"]

log = logging.getLogger(__name__)

_SERVICE = "core.v1.CoreService"


@dataclass(slots=True)
class Faults:
    """Switches a test flips on a running devnet; each models a real node's habit."""

    stream_unimplemented: bool = False  # an older node without StreamBlocks
    unavailable_calls: int = 0  # the next N calls answer UNAVAILABLE
    abort_stream_every: int = 0  # end each stream with ABORTED after N blocks
    repeat_every: int = 0  # in streams, send every Nth block twice (a duplicated delivery)
    delay_s: float = 0.0  # every reply waits this long first
    head_behind: int = 0  # report a head this many blocks lower (a lagging replica)
    stream_concurrency: int = 0  # >0: more concurrent streams get RESOURCE_EXHAUSTED
    get_blocks_resorts_txs: bool = False  # GetBlock(s) sort txs by hash (nodes < v1.9.0)
    stream_omits_first_tx: bool = False  # StreamBlocks drops each block's first tx
    shifted_get_blocks_replies: int = 0  # next N GetBlocks: lowest key carries the next block
    stale_stream_starts: int = 0  # next N streams first send the block before start_height
    misnumbered_blocks: int = 0  # next N blocks served name height + 1 in their envelope
    foreign_chain_id: str = ""  # blocks name this chain id (GetNodeInfo keeps the real one)
    foreign_tx_chain_id: str = ""  # every transaction names this chain id
    stream_silent_after: int = 0  # each stream goes silent (without ending) after N blocks


class DevnetServer:
    """A Core node on 127.0.0.1 (or any address) whose chain grows on a timer."""

    def __init__(
        self,
        chain: DevChain,
        *,
        height: int,
        block_interval_s: float = 0.0,
        max_height: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        record_served: bool = False,
    ) -> None:
        self.chain = chain
        self.head = height
        self.block_interval_s = block_interval_s
        self.max_height = max_height
        self.faults = faults or Faults()
        self.record_served = record_served
        self._host = host
        self._port = port
        self._server: aio.Server | None = None
        self._grow_task: asyncio.Task[None] | None = None
        self._new_block = asyncio.Condition()
        self._streams = 0
        self.served: dict[int, float] = {}  # height -> time.time() first sent (record_served)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        server = aio.server(
            options=[
                ("grpc.max_send_message_length", 512 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((self._handlers(),))
        self.port = server.add_insecure_port(f"{self._host}:{self._port}")
        await server.start()
        self._server = server
        if self.block_interval_s > 0:
            self._grow_task = asyncio.create_task(self._grow())
        log.info(
            "devnet serving %s chain %s at height %d", self.url, self.chain.spec.chain_id, self.head
        )

    async def stop_growing(self) -> None:
        """Freeze the chain at its current head (the timer stops producing blocks)."""
        if self._grow_task is not None:
            self._grow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._grow_task
            self._grow_task = None

    async def stop(self, grace_s: float | None = None) -> None:
        await self.stop_growing()
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    async def __aenter__(self) -> DevnetServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def advance(self, blocks: int = 1) -> None:
        """Produce blocks now (tests use this instead of waiting for the timer)."""
        async with self._new_block:
            for _ in range(blocks):
                self.head += 1
            self._new_block.notify_all()

    async def _grow(self) -> None:
        next_at = time.monotonic()
        while self.max_height is None or self.head < self.max_height:
            next_at += self.block_interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await self.advance(1)

    # --- handlers -----------------------------------------------------------

    def _handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        def unary(
            fn: Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]], request: Any
        ) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=request.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )

        return grpc.method_handlers_generic_handler(
            _SERVICE,
            {
                "GetNodeInfo": unary(self._get_node_info, types_pb2.GetNodeInfoRequest),
                "GetStatus": unary(self._get_status, types_pb2.GetStatusRequest),
                "GetBlock": unary(self._get_block, types_pb2.GetBlockRequest),
                "GetBlocks": unary(self._get_blocks, types_pb2.GetBlocksRequest),
                "StreamBlocks": grpc.unary_stream_rpc_method_handler(
                    self._stream_blocks,
                    request_deserializer=types_pb2.StreamBlocksRequest.FromString,
                    response_serializer=lambda m: m.SerializeToString(),
                ),
            },
        )

    async def _enter(self, context: aio.ServicerContext[Any, Any]) -> None:
        """Apply the faults every call is subject to."""
        if self.faults.delay_s > 0:
            await asyncio.sleep(self.faults.delay_s)
        if self.faults.unavailable_calls > 0:
            self.faults.unavailable_calls -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "service not ready")

    def _reported_head(self) -> int:
        return max(0, self.head - self.faults.head_behind)

    def _block(self, height: int, *, stream: bool, canon: bool = True) -> bytes:
        """The block's bytes as this node serves them through one kind of call."""
        faults = self.faults
        resorted = not canon if stream else faults.get_blocks_resorts_txs
        data = self.chain.block_bytes(height, canon=not resorted)
        omit_first = stream and faults.stream_omits_first_tx
        if not (
            omit_first
            or faults.misnumbered_blocks
            or faults.foreign_chain_id
            or faults.foreign_tx_chain_id
        ):
            return data
        view = view_pb2.BlockView.FromString(data)
        if omit_first:
            del view.transactions[:1]
        if faults.misnumbered_blocks > 0:
            faults.misnumbered_blocks -= 1
            view.height = height + 1
        if faults.foreign_chain_id:
            view.chain_id = faults.foreign_chain_id
        for tx in view.transactions:
            tx.chain_id = faults.foreign_tx_chain_id
        return view.SerializeToString()

    def _mark_served(self, height: int) -> None:
        if self.record_served and height not in self.served:
            self.served[height] = time.time()

    async def _get_node_info(
        self, request: types_pb2.GetNodeInfoRequest, context: aio.ServicerContext[Any, Any]
    ) -> types_pb2.GetNodeInfoResponse:
        await self._enter(context)
        return types_pb2.GetNodeInfoResponse(
            chainid=self.chain.spec.chain_id, synced=True, current_height=self._reported_head()
        )

    async def _get_status(
        self, request: types_pb2.GetStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> types_pb2.GetStatusResponse:
        await self._enter(context)
        head = self._reported_head()
        return types_pb2.GetStatusResponse(
            live=True,
            ready=True,
            chain_info=types_pb2.GetStatusResponse.ChainInfo(
                chain_id=self.chain.spec.chain_id,
                current_height=head,
                current_block_hash=self.chain.block_hash(head) if head > 0 else "",
            ),
        )

    async def _get_block(
        self, request: types_pb2.GetBlockRequest, context: aio.ServicerContext[Any, Any]
    ) -> view_pb2.GetBlockResponseView:
        await self._enter(context)
        height = request.height
        head = self._reported_head()
        if height < 1 or height > head:
            # A real node answers "not produced yet" with height -1, not an error.
            missing = types_pb2.Block(height=-1).SerializeToString()
            return view_pb2.GetBlockResponseView(block=missing)
        self._mark_served(height)
        return view_pb2.GetBlockResponseView(
            block=self._block(height, stream=False), current_height=head
        )

    async def _get_blocks(
        self, request: types_pb2.GetBlocksRequest, context: aio.ServicerContext[Any, Any]
    ) -> view_pb2.GetBlocksResponseView:
        await self._enter(context)
        if len(request.height) > MAX_GETBLOCKS_HEIGHTS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {MAX_GETBLOCKS_HEIGHTS} heights per call, got {len(request.height)}",
            )
        head = self._reported_head()
        blocks = {}
        for height in request.height:
            if 1 <= height <= head:
                self._mark_served(height)
                blocks[height] = self._block(height, stream=False)
        if self.faults.shifted_get_blocks_replies > 0 and blocks and min(blocks) < head:
            self.faults.shifted_get_blocks_replies -= 1
            low = min(blocks)
            blocks[low] = self._block(low + 1, stream=False)
        return view_pb2.GetBlocksResponseView(blocks=blocks, current_height=head)

    async def _stream_blocks(
        self, request: types_pb2.StreamBlocksRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[view_pb2.StreamBlocksResponseView]:
        if self.faults.stream_unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "StreamBlocks not implemented")
        await self._enter(context)
        limit = self.faults.stream_concurrency
        if limit and self._streams >= limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many streams")
        self._streams += 1
        try:
            # start_height 0 means "only new blocks" on a real node.
            height = request.start_height if request.start_height > 0 else self.head + 1
            if self.faults.stale_stream_starts > 0 and 1 < height <= self.head + 1:
                self.faults.stale_stream_starts -= 1
                yield view_pb2.StreamBlocksResponseView(
                    block=self._block(height - 1, stream=True, canon=request.canon)
                )
            sent = 0
            while True:
                async with self._new_block:
                    while self.head < height:
                        await self._new_block.wait()
                while height <= self.head:
                    every = self.faults.abort_stream_every
                    if every and sent >= every:
                        await context.abort(grpc.StatusCode.ABORTED, "stream send failed")
                    silent = self.faults.stream_silent_after
                    if silent and sent >= silent:
                        await asyncio.Event().wait()  # until the client gives up on us
                    self._mark_served(height)
                    block = self._block(height, stream=True, canon=request.canon)
                    yield view_pb2.StreamBlocksResponseView(block=block)
                    repeat = self.faults.repeat_every
                    if repeat and height % repeat == 0:
                        yield view_pb2.StreamBlocksResponseView(block=block)
                    height += 1
                    sent += 1
        finally:
            self._streams -= 1
