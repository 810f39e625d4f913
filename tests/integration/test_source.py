"""CoreSource and CoreClient against a real devnet over gRPC."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc import aio

from consumer._pb.core.v1 import types_pb2, view_pb2
from consumer.config import SourceSettings
from consumer.devnet import ChainSpec, DevChain, DevnetServer, Faults, Profile
from consumer.errors import ConfigError, SourceFailed, SourceUnavailable
from consumer.metrics import Metrics, SourceMetrics
from consumer.model import Block, Rpc
from consumer.source.core import (
    CoreClient,
    CoreSource,
    parse_block,
    parse_core_url,
)
from tests.conftest import DevnetFactory, eventually, sample

MODES = ["stream", "poll", "auto"]
GARBAGE = b"\xff\xff\xff\xff not a block"
# A guard so that a wedged source fails the test instead of hanging it; not a timing assertion.
GUARD_S = 10.0


def source_settings(core_url: str, **overrides: Any) -> SourceSettings:
    values: dict[str, Any] = {
        "core_url": core_url,
        "rpc_timeout_s": 5.0,
        "retry_cap_s": 0.01,
        "poll_interval_s": 0.01,
    }
    return SourceSettings(**(values | overrides))


@asynccontextmanager
async def open_source(
    devnet: DevnetServer,
    metrics: Metrics,
    on_mode: Callable[[str], None] | None = None,
    **overrides: Any,
) -> AsyncIterator[CoreSource]:
    settings = source_settings(devnet.url, **overrides)
    client = CoreClient(settings)
    observer = SourceMetrics(metrics) if on_mode is None else _NotingPaths(metrics, on_mode)
    try:
        yield CoreSource(client, settings, observer)
    finally:
        await client.close()


class _NotingPaths(SourceMetrics):
    """The service's observer that also tells the test each path the source takes."""

    def __init__(self, metrics: Metrics, on_mode: Callable[[str], None]) -> None:
        super().__init__(metrics)
        self._on_mode = on_mode

    def path_chosen(self, path: str) -> None:
        super().path_chosen(path)
        self._on_mode(path)


async def collect(source: CoreSource, start: int, end: int) -> list[Block]:
    async with asyncio.timeout(GUARD_S):
        return [block async for block in source.blocks(start, end)]


def heights(blocks: list[Block]) -> list[int]:
    return [block.height for block in blocks]


async def follow(source: CoreSource, start: int, end: int | None, received: list[int]) -> None:
    """Read the source as a consumer at the tip does, noting each height as it arrives."""
    async for block in source.blocks(start, end):
        received.append(block.height)


class ChainWithBrokenBlock(DevChain):
    """A chain that serves `envelope` instead of its block at one height."""

    def __init__(self, spec: ChainSpec, broken_height: int, envelope: bytes) -> None:
        super().__init__(spec)
        self.broken_height = broken_height
        self.envelope = envelope

    def block_bytes(self, height: int, canon: bool) -> bytes:
        if height == self.broken_height:
            return self.envelope
        return super().block_bytes(height, canon)


class GetBlocksRecorder(DevnetServer):
    """A devnet that records every GetBlocks request, and holds the first `hold`
    calls until they are all in flight together (a source that sent them one at
    a time would wait forever, and fail on the test's guard)."""

    def __init__(self, *args: Any, hold: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[list[int]] = []
        self._hold = hold
        self._all_in_flight = asyncio.Event()

    async def _get_blocks(
        self, request: types_pb2.GetBlocksRequest, context: aio.ServicerContext[Any, Any]
    ) -> view_pb2.GetBlocksResponseView:
        self.requests.append(list(request.height))
        if len(self.requests) >= self._hold:
            self._all_in_flight.set()
        await self._all_in_flight.wait()
        return await super()._get_blocks(request, context)


class FirstCallLastDevnet(DevnetServer):
    """A node that answers the first GetBlocks call only after `later` other calls
    have been answered: replies arrive in another order than the heights."""

    def __init__(self, *args: Any, later: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.answer_order: list[int] = []  # first height of each reply, as sent
        self._later = later
        self._others_answered = asyncio.Event()

    async def _get_blocks(
        self, request: types_pb2.GetBlocksRequest, context: aio.ServicerContext[Any, Any]
    ) -> view_pb2.GetBlocksResponseView:
        self.calls += 1
        if self.calls == 1:
            await self._others_answered.wait()
        reply = await super()._get_blocks(request, context)
        self.answer_order.append(min(request.height))
        if len(self.answer_order) >= self._later:
            self._others_answered.set()
        return reply


class StatusAheadDevnet(DevnetServer):
    """A node whose GetStatus runs 5 blocks ahead of the blocks it serves, as behind
    a load balancer whose replicas stand at different heights."""

    async def _get_status(
        self, request: types_pb2.GetStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> types_pb2.GetStatusResponse:
        reply = await super()._get_status(request, context)
        reply.chain_info.current_height += 5
        return reply


class OldDevnet(DevnetServer):
    """A node that serves neither GetBlocks nor GetNodeInfo."""

    async def _get_blocks(
        self, request: types_pb2.GetBlocksRequest, context: aio.ServicerContext[Any, Any]
    ) -> view_pb2.GetBlocksResponseView:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetBlocks not implemented")

    async def _get_node_info(
        self, request: types_pb2.GetNodeInfoRequest, context: aio.ServicerContext[Any, Any]
    ) -> types_pb2.GetNodeInfoResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetNodeInfo not implemented")


# --- complete ranges in every mode ------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_blocks_yields_exactly_start_to_end_in_order(
    devnet_factory: DevnetFactory, metrics: Metrics, mode: str
) -> None:
    devnet = await devnet_factory(height=300)
    async with open_source(
        devnet,
        metrics,
        source_mode=mode,
        poll_window=7,
        poll_concurrency=3,
        catchup_threshold_blocks=50,
    ) as source:
        blocks = await collect(source, 5, 290)
    assert [(b.height, b.hash) for b in blocks] == [
        (h, devnet.chain.block_hash(h)) for h in range(5, 291)
    ]


async def test_blocks_of_a_single_height_yields_that_block(
    devnet: DevnetServer, metrics: Metrics
) -> None:
    async with open_source(devnet, metrics, source_mode="poll") as source:
        blocks = await collect(source, 42, 42)
    assert heights(blocks) == [42]


async def test_auto_mode_catches_up_by_polling_then_streams_near_the_tip(
    devnet_factory: DevnetFactory, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=300)
    modes: list[str] = []
    async with open_source(
        devnet,
        metrics,
        modes.append,
        source_mode="auto",
        poll_window=10,
        poll_concurrency=2,
        catchup_threshold_blocks=100,
    ) as source:
        blocks = await collect(source, 1, 300)
    # Polled in rounds of 20 heights until within 100 of the head (at 201), then streamed.
    assert (modes, heights(blocks)) == (["poll", "stream"], list(range(1, 301)))


async def test_poll_mode_asks_for_windows_of_at_most_poll_window_heights(
    metrics: Metrics,
) -> None:
    devnet = GetBlocksRecorder(DevChain(ChainSpec()), height=100)
    async with devnet, open_source(devnet, metrics, source_mode="poll", poll_window=7) as source:
        await collect(source, 1, 100)
    assert max(len(request) for request in devnet.requests) == 7
    assert sorted(h for request in devnet.requests for h in request) == list(range(1, 101))


async def test_poll_mode_keeps_several_get_blocks_calls_in_flight(metrics: Metrics) -> None:
    devnet = GetBlocksRecorder(DevChain(ChainSpec()), height=100, hold=3)
    async with (
        devnet,
        open_source(
            devnet, metrics, source_mode="poll", poll_window=10, poll_concurrency=3
        ) as source,
    ):
        blocks = await collect(source, 1, 100)
    assert heights(blocks) == list(range(1, 101))


async def test_poll_mode_yields_in_height_order_when_replies_arrive_out_of_order(
    metrics: Metrics,
) -> None:
    devnet = FirstCallLastDevnet(DevChain(ChainSpec()), height=100, later=2)
    async with (
        devnet,
        open_source(
            devnet, metrics, source_mode="poll", poll_window=10, poll_concurrency=3
        ) as source,
    ):
        blocks = await collect(source, 1, 100)
    assert devnet.answer_order[:3] == [11, 21, 1]  # the first window answered last
    assert heights(blocks) == list(range(1, 101))


async def test_poll_mode_asks_for_fewer_heights_per_call_when_blocks_are_big(
    metrics: Metrics,
) -> None:
    """Thousands of plays per block: a 500-height window would be ~80 MB per call."""
    devnet = GetBlocksRecorder(DevChain(ChainSpec(profile=Profile.BUSY)), height=120)
    async with devnet, open_source(devnet, metrics, source_mode="poll") as source:
        blocks = await collect(source, 1, 120)
    assert heights(blocks) == list(range(1, 121))
    assert max(len(request) for request in devnet.requests) <= 32


async def test_poll_mode_widens_its_windows_to_poll_window_when_blocks_are_small(
    metrics: Metrics,
) -> None:
    devnet = GetBlocksRecorder(DevChain(ChainSpec(profile=Profile.EMPTY)), height=3000)
    async with devnet, open_source(devnet, metrics, source_mode="poll") as source:
        await collect(source, 1, 3000)
    assert max(len(request) for request in devnet.requests) == 500


# --- faults -----------------------------------------------------------------------


async def test_stream_mode_resumes_after_aborted_streams_without_gap_or_repeat(
    devnet_factory: DevnetFactory, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=200, faults=Faults(abort_stream_every=30))
    async with open_source(devnet, metrics, source_mode="stream") as source:
        blocks = await collect(source, 1, 200)
    assert heights(blocks) == list(range(1, 201))


async def test_aborted_streams_are_counted_as_source_errors_and_node_reconnects(
    devnet_factory: DevnetFactory, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=200, faults=Faults(abort_stream_every=30))
    async with open_source(devnet, metrics, source_mode="stream") as source:
        await collect(source, 1, 200)
    # Streams of 30 blocks: 1-30 ... 151-180 end ABORTED, 181-200 reaches the end.
    assert sample(metrics, "source_errors_total", code="ABORTED") == 6
    assert sample(metrics, "reconnects_total", target="node") == 6


@pytest.mark.parametrize("mode", MODES)
async def test_unavailable_bursts_are_retried_and_the_blocks_arrive_complete(
    devnet_factory: DevnetFactory, metrics: Metrics, mode: str
) -> None:
    devnet = await devnet_factory(height=200, faults=Faults(unavailable_calls=3))
    async with open_source(devnet, metrics, source_mode=mode) as source:
        blocks = await collect(source, 1, 200)
    assert heights(blocks) == list(range(1, 201))


@pytest.mark.parametrize("mode", MODES)
async def test_unavailable_bursts_are_counted_as_source_errors(
    devnet_factory: DevnetFactory, metrics: Metrics, mode: str
) -> None:
    devnet = await devnet_factory(height=200, faults=Faults(unavailable_calls=3))
    async with open_source(devnet, metrics, source_mode=mode) as source:
        await collect(source, 1, 200)
    assert sample(metrics, "source_errors_total", code="UNAVAILABLE") == 3


@pytest.mark.parametrize("mode", ["stream", "auto"])
async def test_a_node_answering_unimplemented_to_stream_blocks_is_polled_instead(
    devnet_factory: DevnetFactory, metrics: Metrics, mode: str
) -> None:
    devnet = await devnet_factory(height=200, faults=Faults(stream_unimplemented=True))
    modes: list[str] = []
    async with open_source(devnet, metrics, modes.append, source_mode=mode) as source:
        blocks = await collect(source, 1, 200)
    assert heights(blocks) == list(range(1, 201))
    assert modes[-1] == "poll"


async def test_unimplemented_stream_blocks_is_not_counted_as_an_error(
    devnet_factory: DevnetFactory, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=200, faults=Faults(stream_unimplemented=True))
    async with open_source(devnet, metrics, source_mode="stream") as source:
        await collect(source, 1, 200)
    assert math.isnan(sample(metrics, "source_errors_total", code="UNIMPLEMENTED"))


@pytest.mark.parametrize(
    ("mode", "faults"),
    [("poll", Faults()), ("stream", Faults(stream_unimplemented=True))],
    ids=["poll", "stream-unimplemented"],
)
async def test_a_node_without_get_blocks_fails_the_source_instead_of_retrying(
    metrics: Metrics, mode: str, faults: Faults
) -> None:
    devnet = OldDevnet(DevChain(ChainSpec()), height=50, faults=faults)
    async with devnet, open_source(devnet, metrics, source_mode=mode) as source:
        with pytest.raises(SourceFailed, match="GetBlocks"):
            await collect(source, 1, 50)


async def test_a_get_blocks_reply_with_another_heights_block_is_read_again_through_get_block(
    devnet_factory: DevnetFactory, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=50, faults=Faults(shifted_get_blocks_replies=1))
    async with open_source(devnet, metrics, source_mode="poll") as source:
        blocks = await collect(source, 1, 50)
    assert [(b.height, b.hash) for b in blocks] == [
        (h, devnet.chain.block_hash(h)) for h in range(1, 51)
    ]
    assert [(b.height, b.via) for b in blocks if b.via is not Rpc.GET_BLOCKS] == [
        (1, Rpc.GET_BLOCK)
    ]


@pytest.mark.parametrize("mode", ["poll", "stream"])
async def test_a_single_block_over_max_message_bytes_is_still_a_config_error(
    devnet_factory: DevnetFactory, metrics: Metrics, mode: str
) -> None:
    devnet = await devnet_factory(ChainSpec(profile=Profile.BUSY), height=20)
    limit = len(devnet.chain.block_bytes(1, canon=True)) // 2
    async with open_source(devnet, metrics, source_mode=mode, max_message_bytes=limit) as source:
        with pytest.raises(ConfigError, match="--max-message-bytes"):
            await collect(source, 1, 5)


async def test_blocks_too_large_together_for_one_reply_are_polled_in_smaller_windows(
    devnet_factory: DevnetFactory, metrics: Metrics
) -> None:
    devnet = await devnet_factory(ChainSpec(profile=Profile.BUSY), height=20)
    limit = len(devnet.chain.block_bytes(1, canon=True)) * 5 // 2
    async with open_source(devnet, metrics, source_mode="poll", max_message_bytes=limit) as source:
        blocks = await collect(source, 1, 20)
    assert heights(blocks) == list(range(1, 21))


# --- following the tip ------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_following_the_tip_yields_blocks_produced_later(
    devnet: DevnetServer, metrics: Metrics, mode: str
) -> None:
    received: list[Block] = []
    async with open_source(devnet, metrics, source_mode=mode) as source:
        async with asyncio.timeout(GUARD_S):
            async for block in source.blocks(199, None):
                received.append(block)
                if block.height == 200:  # the head when the source started
                    await devnet.advance(3)
                if block.height == 203:
                    break
    assert [(b.height, b.hash) for b in received] == [
        (h, devnet.chain.block_hash(h)) for h in range(199, 204)
    ]


async def test_poll_mode_at_the_tip_waits_for_heights_not_produced_yet(
    devnet: DevnetServer, metrics: Metrics
) -> None:
    received: list[int] = []
    async with open_source(devnet, metrics, source_mode="poll") as source:
        follower = asyncio.create_task(follow(source, 199, None, received))
        try:
            await eventually(lambda: received == [199, 200])
            await devnet.advance()
            await eventually(lambda: received == [199, 200, 201])
            await devnet.advance()
            await eventually(lambda: received == [199, 200, 201, 202])
            assert not follower.done()  # still waiting for 203, not finished
        finally:
            follower.cancel()
            with pytest.raises(asyncio.CancelledError):
                await follower


async def test_poll_mode_waits_for_a_height_the_node_reported_but_does_not_serve_yet(
    metrics: Metrics,
) -> None:
    received: list[int] = []
    async with (
        StatusAheadDevnet(DevChain(ChainSpec()), height=200) as devnet,
        open_source(devnet, metrics, source_mode="poll") as source,
    ):
        follower = asyncio.create_task(follow(source, 195, 210, received))
        await eventually(lambda: received == list(range(195, 201)))
        await devnet.advance(10)
        async with asyncio.timeout(GUARD_S):
            await follower
    assert received == list(range(195, 211))


class StreamCounter(DevnetServer):
    """A devnet that counts the StreamBlocks calls opened on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams_opened = 0

    async def _stream_blocks(
        self, request: types_pb2.StreamBlocksRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[view_pb2.StreamBlocksResponseView]:
        self.streams_opened += 1
        async for reply in super()._stream_blocks(request, context):
            yield reply


async def test_silence_at_the_tip_of_a_quiet_chain_reopens_the_stream_without_a_stall(
    metrics: Metrics,
) -> None:
    received: list[int] = []
    devnet = StreamCounter(DevChain(ChainSpec()), height=200)
    async with (
        devnet,
        open_source(devnet, metrics, source_mode="stream", stall_timeout_s=0.05) as source,
    ):
        follower = asyncio.create_task(follow(source, 199, None, received))
        try:
            await eventually(lambda: devnet.streams_opened >= 3)
            await devnet.advance()
            await eventually(lambda: received == [199, 200, 201])
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    assert sample(metrics, "source_stalls_total") == 0
    assert math.isnan(sample(metrics, "source_errors_total", code="STALLED"))


# --- head -------------------------------------------------------------------------


async def test_head_reports_the_nodes_head(devnet: DevnetServer, metrics: Metrics) -> None:
    await devnet.advance(5)
    async with open_source(devnet, metrics) as source:
        assert await source.head() == 205


async def test_head_sets_the_chain_head_height_gauge(
    devnet: DevnetServer, metrics: Metrics
) -> None:
    async with open_source(devnet, metrics) as source:
        await source.head()
    assert sample(metrics, "chain_head_height") == 200


async def test_a_start_height_below_one_is_a_config_error(
    devnet: DevnetServer, metrics: Metrics
) -> None:
    async with open_source(devnet, metrics) as source:
        with pytest.raises(ConfigError, match="start height"):
            await collect(source, 0, 10)


# --- CoreClient -------------------------------------------------------------------


async def test_client_block_above_the_head_is_none(devnet: DevnetServer) -> None:
    client = CoreClient(source_settings(devnet.url))
    try:
        assert await client.block(201) is None
    finally:
        await client.close()


async def test_client_node_info_reports_chain_id_and_head(devnet: DevnetServer) -> None:
    client = CoreClient(source_settings(devnet.url))
    try:
        info = await client.node_info()
    finally:
        await client.close()
    assert (info.chain_id, info.head) == (devnet.chain.spec.chain_id, 200)


async def test_client_node_info_on_a_node_without_it_is_a_source_failure(
    metrics: Metrics,
) -> None:
    devnet = OldDevnet(DevChain(ChainSpec()), height=50)
    async with devnet:
        client = CoreClient(source_settings(devnet.url))
        try:
            with pytest.raises(SourceFailed, match="GetNodeInfo"):
                await client.node_info()
        finally:
            await client.close()


# --- envelopes --------------------------------------------------------------------


def test_parse_block_on_garbage_returns_a_block_with_the_error_at_the_expected_height() -> None:
    block = parse_block(GARBAGE, 42)
    assert (block.height, block.raw, block.error != "") == (42, GARBAGE, True)


def test_parse_block_reads_a_served_block() -> None:
    chain = DevChain(ChainSpec())
    block = parse_block(chain.block_bytes(7, canon=True), 7)
    assert (block.height, block.hash, block.error) == (7, chain.block_hash(7), "")


@pytest.mark.parametrize("mode", ["stream", "poll"])
@pytest.mark.parametrize(
    "envelope",
    # Garbage fails to parse; an empty message parses, with height 0.
    [GARBAGE, b""],
    ids=["garbage", "empty"],
)
async def test_an_envelope_broken_block_reaches_the_consumer_as_an_error_block(
    metrics: Metrics, mode: str, envelope: bytes
) -> None:
    chain = ChainWithBrokenBlock(ChainSpec(), broken_height=25, envelope=envelope)
    async with (
        DevnetServer(chain, height=50) as devnet,
        open_source(devnet, metrics, source_mode=mode) as source,
    ):
        blocks = await collect(source, 1, 50)
    assert heights(blocks) == list(range(1, 51))
    assert [(b.height, b.raw) for b in blocks if b.error] == [(25, envelope)]


# --- URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("core.example:50051", ("core.example:50051", False)),
        ("http://core.example:8080", ("core.example:8080", False)),
        ("https://core.example", ("core.example:443", True)),
        ("https://core.example:8443", ("core.example:8443", True)),
        ("http://[::1]:50051", ("[::1]:50051", False)),
    ],
    ids=["host-port", "http", "https-default-port", "https-port", "ipv6"],
)
def test_parse_core_url_accepts_plaintext_and_tls_forms(
    url: str, expected: tuple[str, bool]
) -> None:
    assert parse_core_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["ftp://core.example:21", "grpc://core.example:50051", "unix:///tmp/core.sock", "http://"],
    ids=["ftp", "grpc", "unix", "no-host"],
)
def test_parse_core_url_rejects_other_schemes_naming_the_flag(url: str) -> None:
    with pytest.raises(ConfigError, match="--core-url"):
        parse_core_url(url)


def test_parse_core_url_rejects_a_port_out_of_range_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="--core-url"):
        parse_core_url("http://core.example:99999")


# Long enough that gRPC's own reconnect backoff (1 s growing by 1.6 up to 120 s) would
# have grown far past the cap below; the assertion leaves a wide margin on purpose.
OUTAGE_S = 30.0
RECONNECT_CAP_S = 1.0
RECONNECT_MARGIN_S = 10.0


async def _answers(client: CoreClient) -> bool:
    try:
        return await client.block(1) is not None
    except SourceUnavailable:
        return False


async def test_a_node_back_after_an_outage_longer_than_the_retry_cap_is_reached_within_it(
    devnet_factory: DevnetFactory,
) -> None:
    """--retry-cap-s bounds gRPC's reconnect backoff too: the channel tries the node again
    at least once a cap, so a node restarted on the same port is used within about one cap."""
    devnet = await devnet_factory(height=5)
    port = devnet.port
    settings = source_settings(devnet.url, retry_cap_s=RECONNECT_CAP_S, rpc_timeout_s=2.0)
    client = CoreClient(settings)
    try:
        assert await _answers(client)
        await devnet.stop(0)
        down_until = time.monotonic() + OUTAGE_S
        while time.monotonic() < down_until:  # calls fail throughout, as the runner's do
            assert not await _answers(client)
            await asyncio.sleep(0.5)
        await devnet_factory(height=5, port=port)
        await eventually(lambda: _answers(client), timeout_s=RECONNECT_CAP_S + RECONNECT_MARGIN_S)
    finally:
        await client.close()
