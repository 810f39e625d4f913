"""The devnet behaves like a Core node (WIRE.md), observed over real gRPC.

Replies that parse as full core.v1 messages (empty-profile blocks, node info,
status) are read with the generated stubs; blocks carrying malformed
transactions are read through CoreClient, which keeps them as bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc import aio

from consumer._pb.core.v1 import service_pb2_grpc, types_pb2, view_pb2
from consumer.config import SourceSettings
from consumer.devnet import (
    MAX_GETBLOCKS_HEIGHTS,
    ChainSpec,
    DevChain,
    DevnetServer,
    Faults,
    Profile,
    TxKind,
)
from consumer.devnet.main import devnet_from_args
from consumer.model import Block
from consumer.ops.cli import build_parser
from consumer.source.core import CoreClient, parse_block
from tests.conftest import DevnetFactory, eventually

if TYPE_CHECKING:
    from consumer._pb.core.v1.service_pb2_grpc import CoreServiceAsyncStub

EMPTY = ChainSpec(profile=Profile.EMPTY)
StreamCall = aio.UnaryStreamCall[types_pb2.StreamBlocksRequest, types_pb2.StreamBlocksResponse]
# A guard so that a broken stream fails the test instead of hanging it; not a timing assertion.
GUARD_S = 10.0


@asynccontextmanager
async def core_stub(devnet: DevnetServer) -> AsyncIterator[CoreServiceAsyncStub]:
    async with aio.insecure_channel(f"127.0.0.1:{devnet.port}") as channel:
        yield service_pb2_grpc.CoreServiceStub(channel)


@asynccontextmanager
async def core_client(devnet: DevnetServer) -> AsyncIterator[CoreClient]:
    client = CoreClient(SourceSettings(core_url=devnet.url, rpc_timeout_s=5.0))
    try:
        yield client
    finally:
        await client.close()


async def read_heights(call: StreamCall, count: int) -> list[int]:
    """The heights of the next `count` stream messages."""
    heights = []
    async with asyncio.timeout(GUARD_S):
        for _ in range(count):
            reply = await call.read()
            assert isinstance(reply, types_pb2.StreamBlocksResponse), "stream ended early"
            heights.append(reply.block.height)
    return heights


async def read_error(call: StreamCall) -> grpc.StatusCode:
    """Read the stream until it fails; the status code it failed with."""
    async with asyncio.timeout(GUARD_S):
        with pytest.raises(aio.AioRpcError) as failure:
            while True:
                await call.read()
    return failure.value.code()


async def first_streamed_block(client: CoreClient, height: int) -> Block:
    async with asyncio.timeout(GUARD_S):
        async for raw in client.stream_raw(height):
            return parse_block(raw, height)
    raise AssertionError("the stream ended without a block")


async def blocks_by_height(devnet: DevnetServer, start: int, end: int) -> dict[int, bytes]:
    """Raw blocks start..end through GetBlocks, in calls the node accepts."""
    out: dict[int, bytes] = {}
    async with core_client(devnet) as client:
        for low in range(start, end + 1, MAX_GETBLOCKS_HEIGHTS):
            high = min(low + MAX_GETBLOCKS_HEIGHTS - 1, end)
            blocks, _head = await client.blocks_raw(list(range(low, high + 1)))
            out.update(blocks)
    return out


def unsorted_height(chain: DevChain, last: int) -> int:
    """A height whose on-chain transaction order is not already hash order."""
    for height in range(1, last + 1):
        hashes = [tx.hash for tx in chain.txs(height)]
        if hashes != sorted(hashes):
            return height
    raise AssertionError("the chain has no block whose order re-sorting would change")


# --- GetBlock / GetBlocks -------------------------------------------------------


async def test_get_block_above_the_head_answers_height_minus_one(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=200)
    async with core_stub(devnet) as stub:
        reply = await stub.GetBlock(types_pb2.GetBlockRequest(height=201))
    assert (reply.block.height, reply.current_height) == (-1, 0)


async def test_get_block_at_the_head_answers_the_block_and_the_head(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=200)
    async with core_stub(devnet) as stub:
        reply = await stub.GetBlock(types_pb2.GetBlockRequest(height=200))
    assert (reply.block.height, reply.block.hash, reply.current_height) == (
        200,
        devnet.chain.block_hash(200),
        200,
    )


async def test_get_blocks_with_more_than_500_heights_is_invalid_argument(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=600)
    async with core_stub(devnet) as stub:
        with pytest.raises(aio.AioRpcError) as failure:
            await stub.GetBlocks(types_pb2.GetBlocksRequest(height=range(1, 502)))
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_get_blocks_with_exactly_500_heights_answers_them_all(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=600)
    async with core_stub(devnet) as stub:
        reply = await stub.GetBlocks(types_pb2.GetBlocksRequest(height=range(1, 501)))
    assert sorted(reply.blocks) == list(range(1, 501))


async def test_get_blocks_omits_heights_above_the_head(devnet_factory: DevnetFactory) -> None:
    devnet = await devnet_factory(EMPTY, height=200)
    async with core_stub(devnet) as stub:
        reply = await stub.GetBlocks(types_pb2.GetBlocksRequest(height=[199, 200, 201, 202]))
    assert (sorted(reply.blocks), reply.current_height) == ([199, 200], 200)


def chain_order(devnet: DevnetServer, height: int) -> list[str]:
    return [tx.hash for tx in devnet.chain.txs(height)]


async def read_block(client: CoreClient, call: str, height: int) -> Block:
    """The block at `height` as one unary call (GetBlock or GetBlocks) serves it."""
    if call == "GetBlock":
        block = await client.block(height)
        assert block is not None
        return block
    blocks, _head = await client.blocks_raw([height])
    return parse_block(blocks[height], height)


@pytest.mark.parametrize("call", ["GetBlock", "GetBlocks"])
@pytest.mark.parametrize(
    "resorts", [False, True], ids=["chain_order_by_default", "get_blocks_resorts_txs_by_hash"]
)
async def test_unary_calls_serve_transactions_in_chain_order_unless_the_resort_switch_is_on(
    devnet_factory: DevnetFactory, call: str, resorts: bool
) -> None:
    devnet = await devnet_factory(faults=Faults(get_blocks_resorts_txs=resorts))
    height = unsorted_height(devnet.chain, devnet.head)
    async with core_client(devnet) as client:
        block = await read_block(client, call, height)
    order = chain_order(devnet, height)
    assert [tx.hash for tx in block.txs] == (sorted(order) if resorts else order)


async def test_get_blocks_resorts_txs_switch_leaves_the_stream_in_chain_order(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(faults=Faults(get_blocks_resorts_txs=True))
    height = unsorted_height(devnet.chain, devnet.head)
    async with core_client(devnet) as client:
        block = await first_streamed_block(client, height)
    assert [tx.hash for tx in block.txs] == chain_order(devnet, height)


async def test_stream_omits_first_tx_switch_streams_every_block_without_its_first_transaction(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(faults=Faults(stream_omits_first_tx=True))
    height = next(h for h in range(1, devnet.head) if len(devnet.chain.txs(h)) >= 2)
    async with core_client(devnet) as client:
        block = await first_streamed_block(client, height)
    assert [tx.hash for tx in block.txs] == chain_order(devnet, height)[1:]


async def test_stream_omits_first_tx_switch_streams_one_transaction_blocks_empty(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(faults=Faults(stream_omits_first_tx=True))
    height = next(h for h in range(1, devnet.head) if len(devnet.chain.txs(h)) == 1)
    async with core_client(devnet) as client:
        block = await first_streamed_block(client, height)
    assert (block.height, block.hash, block.txs) == (height, devnet.chain.block_hash(height), ())


@pytest.mark.parametrize("call", ["GetBlock", "GetBlocks"])
async def test_stream_omits_first_tx_switch_leaves_get_block_and_get_blocks_complete(
    devnet_factory: DevnetFactory, call: str
) -> None:
    devnet = await devnet_factory(faults=Faults(stream_omits_first_tx=True))
    height = next(h for h in range(1, devnet.head) if len(devnet.chain.txs(h)) >= 2)
    async with core_client(devnet) as client:
        block = await read_block(client, call, height)
    assert [tx.hash for tx in block.txs] == chain_order(devnet, height)


async def test_stream_blocks_canon_keeps_the_on_chain_transaction_order(
    devnet: DevnetServer,
) -> None:
    height = unsorted_height(devnet.chain, devnet.head)
    async with core_client(devnet) as client:
        block = await first_streamed_block(client, height)
    assert [(tx.hash, tx.data) for tx in block.txs] == [
        (tx.hash, tx.data) for tx in devnet.chain.txs(height)
    ]


# --- StreamBlocks -----------------------------------------------------------------


async def test_stream_blocks_sends_every_block_from_start_height_to_the_head(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=200)
    async with core_stub(devnet) as stub:
        call = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=150))
        try:
            heights = await read_heights(call, 51)
        finally:
            call.cancel()
    assert heights == list(range(150, 201))


async def test_stream_blocks_follows_blocks_produced_by_advance(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=200)
    async with core_stub(devnet) as stub:
        call = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=199))
        try:
            heights = await read_heights(call, 2)
            await devnet.advance(3)
            heights += await read_heights(call, 3)
        finally:
            call.cancel()
    assert heights == [199, 200, 201, 202, 203]


async def test_stream_blocks_follows_blocks_produced_by_the_block_interval_timer(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=10, block_interval_s=0.002)
    async with core_stub(devnet) as stub:
        call = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=1))
        try:
            heights = await read_heights(call, 25)
        finally:
            call.cancel()
    assert heights == list(range(1, 26))


async def test_stream_blocks_from_height_zero_sends_only_new_blocks(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=200)
    async with core_stub(devnet) as stub:
        call = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=0))
        reader = asyncio.create_task(read_heights(call, 3))

        async def reader_has_three() -> bool:
            # The call reaches the node at some point; blocks produced before then
            # are not new to it, so keep producing until the reader has three.
            await devnet.advance()
            return reader.done()

        try:
            await eventually(reader_has_three)
            heights = reader.result()
        finally:
            call.cancel()
    assert heights[0] > 200
    assert heights == list(range(heights[0], heights[0] + 3))


async def test_stream_unimplemented_switch_answers_unimplemented(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, faults=Faults(stream_unimplemented=True))
    async with core_stub(devnet) as stub:
        call = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=1))
        assert await read_error(call) is grpc.StatusCode.UNIMPLEMENTED


async def test_a_node_without_stream_blocks_still_serves_get_blocks(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=200, faults=Faults(stream_unimplemented=True))
    async with core_stub(devnet) as stub:
        reply = await stub.GetBlocks(types_pb2.GetBlocksRequest(height=[1, 2, 3]))
    assert sorted(reply.blocks) == [1, 2, 3]


async def test_abort_stream_every_ends_a_stream_with_aborted_after_that_many_blocks(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=200, faults=Faults(abort_stream_every=5))
    async with core_stub(devnet) as stub:
        call = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=10))
        heights = await read_heights(call, 5)
        code = await read_error(call)
    assert (heights, code) == ([10, 11, 12, 13, 14], grpc.StatusCode.ABORTED)


async def test_stream_concurrency_limit_answers_resource_exhausted_to_one_stream_too_many(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=200, faults=Faults(stream_concurrency=1))
    async with core_stub(devnet) as stub:
        first = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=1))
        try:
            await read_heights(first, 1)  # the first stream is being served
            second = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=1))
            assert await read_error(second) is grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            first.cancel()


# --- faults on every call -------------------------------------------------------


async def test_unavailable_burst_fails_exactly_the_next_n_calls(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, faults=Faults(unavailable_calls=2))
    codes = []
    async with core_stub(devnet) as stub:
        for _ in range(3):
            try:
                await stub.GetNodeInfo(types_pb2.GetNodeInfoRequest())
                codes.append(grpc.StatusCode.OK)
            except aio.AioRpcError as exc:
                codes.append(exc.code())
    assert codes == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK]


async def test_unavailable_burst_also_refuses_streams(devnet_factory: DevnetFactory) -> None:
    devnet = await devnet_factory(EMPTY, faults=Faults(unavailable_calls=1))
    async with core_stub(devnet) as stub:
        call = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=1))
        assert await read_error(call) is grpc.StatusCode.UNAVAILABLE


# --- node info and head -----------------------------------------------------------


async def test_get_node_info_reports_chain_id_and_head(devnet_factory: DevnetFactory) -> None:
    devnet = await devnet_factory(ChainSpec(chain_id="devnet-info"), height=123)
    async with core_stub(devnet) as stub:
        reply = await stub.GetNodeInfo(types_pb2.GetNodeInfoRequest())
    assert (reply.chainid, reply.current_height) == ("devnet-info", 123)


async def test_get_status_reports_chain_id_head_and_head_hash(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(ChainSpec(chain_id="devnet-status"), height=123)
    async with core_stub(devnet) as stub:
        reply = await stub.GetStatus(types_pb2.GetStatusRequest())
    info = reply.chain_info
    assert (info.chain_id, info.current_height, info.current_block_hash) == (
        "devnet-status",
        123,
        devnet.chain.block_hash(123),
    )


async def test_advance_raises_the_reported_head(devnet: DevnetServer) -> None:
    await devnet.advance(7)
    async with core_stub(devnet) as stub:
        reply = await stub.GetStatus(types_pb2.GetStatusRequest())
    assert reply.chain_info.current_height == 207


async def test_head_behind_makes_the_reported_head_lag(devnet_factory: DevnetFactory) -> None:
    devnet = await devnet_factory(EMPTY, height=200, faults=Faults(head_behind=5))
    async with core_stub(devnet) as stub:
        status = await stub.GetStatus(types_pb2.GetStatusRequest())
        info = await stub.GetNodeInfo(types_pb2.GetNodeInfoRequest())
        blocks = await stub.GetBlocks(types_pb2.GetBlocksRequest(height=[1]))
    assert [status.chain_info.current_height, info.current_height, blocks.current_height] == [
        195,
        195,
        195,
    ]


async def test_head_behind_answers_blocks_above_the_reported_head_as_not_produced(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, height=200, faults=Faults(head_behind=5))
    async with core_stub(devnet) as stub:
        reply = await stub.GetBlock(types_pb2.GetBlockRequest(height=200))
    assert reply.block.height == -1


# --- the generated chain ----------------------------------------------------------


async def test_the_same_seed_serves_byte_identical_blocks(devnet_factory: DevnetFactory) -> None:
    first = await devnet_factory(ChainSpec(seed=42), height=200)
    second = await devnet_factory(ChainSpec(seed=42), height=200)
    assert await blocks_by_height(first, 1, 200) == await blocks_by_height(second, 1, 200)


async def test_a_different_seed_serves_a_different_chain(devnet_factory: DevnetFactory) -> None:
    first = await devnet_factory(ChainSpec(seed=42), height=200)
    second = await devnet_factory(ChainSpec(seed=43), height=200)
    one = await blocks_by_height(first, 1, 200)
    other = await blocks_by_height(second, 1, 200)

    def tx_hashes(blocks: dict[int, bytes]) -> set[str]:
        return {tx.hash for h, raw in blocks.items() for tx in parse_block(raw, h).txs}

    assert all(one[h] != other[h] for h in range(1, 201))
    assert tx_hashes(one).isdisjoint(tx_hashes(other))


async def test_a_different_hash_salt_changes_block_hashes_but_not_transactions(
    devnet_factory: DevnetFactory,
) -> None:
    plain = await devnet_factory(ChainSpec(seed=42), height=100)
    salted = await devnet_factory(ChainSpec(seed=42, hash_salt="restored"), height=100)
    one = {h: parse_block(raw, h) for h, raw in (await blocks_by_height(plain, 1, 100)).items()}
    other = {h: parse_block(raw, h) for h, raw in (await blocks_by_height(salted, 1, 100)).items()}
    assert all(one[h].hash != other[h].hash for h in range(1, 101))
    assert all(one[h].txs == other[h].txs for h in range(1, 101))


async def test_the_typical_profile_carries_anonymous_non_play_and_malformed_transactions(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(ChainSpec(profile=Profile.TYPICAL), height=300)
    kinds: set[str] = set()
    for height, raw in (await blocks_by_height(devnet, 1, 300)).items():
        for tx in parse_block(raw, height).txs:
            try:
                signed = types_pb2.SignedTransaction.FromString(tx.data)
            except DecodeError:
                kinds.add("malformed")
                continue
            if signed.WhichOneof("transaction") != "plays":
                kinds.add("non_play")
            elif any(not play.user_id.isdigit() for play in signed.plays.plays):
                kinds.add("anonymous")
    assert kinds == {"malformed", "non_play", "anonymous"}


async def test_the_typical_profile_has_empty_blocks_and_blocks_with_plays(
    devnet: DevnetServer,
) -> None:
    kinds_per_block = [{tx.kind for tx in devnet.chain.txs(h)} for h in range(1, 201)]
    assert set() in kinds_per_block
    assert any(TxKind.PLAYS in kinds for kinds in kinds_per_block)


async def test_the_busy_profile_gives_unique_tx_hashes_across_blocks(
    devnet_factory: DevnetFactory,
) -> None:
    spec = ChainSpec(profile=Profile.BUSY)
    devnet = await devnet_factory(spec, height=20)
    hashes = [
        tx.hash
        for height, raw in (await blocks_by_height(devnet, 1, 20)).items()
        for tx in parse_block(raw, height).txs
    ]
    assert len(hashes) == 20 * spec.busy_txs_per_block
    assert len(set(hashes)) == len(hashes)


async def test_a_tx_hash_is_the_upper_hex_sha256_of_its_bytes(devnet: DevnetServer) -> None:
    txs = [
        tx
        for height, raw in (await blocks_by_height(devnet, 1, 200)).items()
        for tx in parse_block(raw, height).txs
    ]
    assert txs
    assert all(tx.hash == hashlib.sha256(tx.data).hexdigest().upper() for tx in txs)


# --- fault switches for blocks that are not the ones asked for --------------------


async def test_shifted_get_blocks_reply_carries_the_next_block_under_the_lowest_key_once(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(faults=Faults(shifted_get_blocks_replies=1))
    async with core_client(devnet) as client:
        first, _ = await client.blocks_raw([10, 11])
        second, _ = await client.blocks_raw([10, 11])
    assert [parse_block(first[h], h).height for h in (10, 11)] == [11, 11]
    assert [parse_block(second[h], h).height for h in (10, 11)] == [10, 11]


async def test_stale_stream_start_sends_the_block_before_the_start_height_first(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, faults=Faults(stale_stream_starts=1))
    async with core_stub(devnet) as stub:
        call = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=150))
        assert await read_heights(call, 3) == [149, 150, 151]
        call.cancel()
        again = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=150))
        assert await read_heights(again, 2) == [150, 151]
        again.cancel()


async def test_misnumbered_blocks_name_the_next_height_in_their_envelope(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(faults=Faults(misnumbered_blocks=1))
    async with core_client(devnet) as client:
        first = await client.block(10)
        second = await client.block(10)
    assert first is not None and second is not None
    assert (first.height, first.hash, second.height) == (11, devnet.chain.block_hash(10), 10)


async def test_foreign_chain_id_names_another_chain_in_blocks_but_not_in_node_info(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(faults=Faults(foreign_chain_id="devnet-2"))
    async with core_client(devnet) as client:
        block = await client.block(10)
        info = await client.node_info()
    assert block is not None
    assert (block.chain_id, info.chain_id) == ("devnet-2", "devnet-1")


async def test_foreign_tx_chain_id_names_another_chain_in_every_transaction(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(faults=Faults(foreign_tx_chain_id="devnet-2"))
    height = next(h for h in range(1, devnet.head) if devnet.chain.txs(h))
    async with core_client(devnet) as client:
        blocks, _ = await client.blocks_raw([height])
    view = view_pb2.BlockView.FromString(blocks[height])
    assert {tx.chain_id for tx in view.transactions} == {"devnet-2"}


async def test_stream_silent_after_sends_that_many_blocks_then_nothing_without_ending(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(EMPTY, faults=Faults(stream_silent_after=2))
    async with core_stub(devnet) as stub:
        call = stub.StreamBlocks(types_pb2.StreamBlocksRequest(canon=True, start_height=150))
        assert await read_heights(call, 2) == [150, 151]
        third = asyncio.ensure_future(call.read())
        done, _ = await asyncio.wait((third,), timeout=0.2)
        assert (done, call.done()) == (set(), False)
        call.cancel()
        await asyncio.gather(third, return_exceptions=True)


def test_devnet_command_line_switches_set_the_matching_faults() -> None:
    args = build_parser().parse_args(
        ["devnet", "--stream-omits-first-tx", "--get-blocks-resorts-txs"]
    )
    faults = devnet_from_args(args).faults
    assert (faults.stream_omits_first_tx, faults.get_blocks_resorts_txs) == (True, True)


def test_devnet_command_line_serves_chain_order_everywhere_by_default() -> None:
    faults = devnet_from_args(build_parser().parse_args(["devnet"])).faults
    assert (faults.stream_omits_first_tx, faults.get_blocks_resorts_txs) == (False, False)
