"""The node misbehaves; the consumer keeps going, retries at a bounded rate, loses nothing."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from grpc import aio

from consumer._pb.core.v1 import types_pb2
from consumer.devnet import ChainSpec, DevChain, DevnetServer, Faults, Profile
from consumer.errors import ChainMismatch
from tests.conftest import (
    DevnetFactory,
    assert_retries_back_off,
    eventually,
    run_consumer,
    sample,
)
from tests.consumers import Consumer
from tests.reference import assert_rows_exact


async def test_an_unavailable_node_is_retried_with_backoff_and_progress_resumes(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=50)
    consumer = Consumer(devnet.url, database, from_height=1, source_mode="poll")
    await consumer.reach(50)
    devnet.faults.unavailable_calls = 10_000  # down until we say otherwise
    await devnet.advance(20)
    await assert_retries_back_off(lambda: consumer.value("source_errors_total", code="UNAVAILABLE"))
    devnet.faults.unavailable_calls = 0
    await consumer.reach(70)
    await consumer.finish()
    await assert_rows_exact(database, devnet, 70)


async def test_streams_aborted_every_few_blocks_lose_and_repeat_nothing(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=100, faults=Faults(abort_stream_every=7))
    consumer = Consumer(devnet.url, database, from_height=1, source_mode="stream")
    await consumer.reach(100)
    await consumer.finish()
    assert consumer.value("source_errors_total", code="ABORTED") >= 100 // 7
    await assert_rows_exact(database, devnet, 100)


async def test_replies_slower_than_the_deadline_are_retried_until_the_node_heals(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=30)
    consumer = Consumer(devnet.url, database, from_height=1, source_mode="poll", rpc_timeout_s=0.2)
    await consumer.reach(30)
    devnet.faults.delay_s = 1.0
    await devnet.advance(10)
    await eventually(lambda: consumer.value("source_errors_total", code="DEADLINE_EXCEEDED") >= 2)
    devnet.faults.delay_s = 0.0
    await consumer.reach(40)
    await consumer.finish()
    await assert_rows_exact(database, devnet, 40)


async def test_a_node_restarted_on_the_same_port_is_followed_again(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=40)
    port = devnet.port
    consumer = Consumer(devnet.url, database, from_height=1, source_mode="stream")
    await consumer.reach(40)
    await devnet.stop(0)
    await eventually(lambda: consumer.value("reconnects_total", target="node") >= 1)
    restarted = await devnet_factory(height=60, port=port)
    await consumer.reach(60)
    await consumer.finish()
    await assert_rows_exact(database, restarted, 60)


class StatusCountingDevnet(DevnetServer):
    """Counts the GetStatus answers it gave while reporting a lagging head."""

    lagging_answers = 0

    async def _get_status(
        self, request: types_pb2.GetStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> types_pb2.GetStatusResponse:
        reply = await super()._get_status(request, context)
        if self.faults.head_behind:
            self.lagging_answers += 1
        return reply


async def test_a_head_that_goes_backwards_causes_no_gap_and_no_regression(
    database: str,
) -> None:
    devnet = StatusCountingDevnet(DevChain(ChainSpec()), height=100)
    async with devnet:
        consumer = Consumer(devnet.url, database, from_height=1, source_mode="poll")
        await consumer.reach(100)
        devnet.faults.head_behind = 30  # a lagging replica behind the load balancer
        await devnet.advance(20)  # it reports 90, below the 100 already written
        await eventually(lambda: devnet.lagging_answers >= 2)
        assert consumer.value("processed_height") == 100
        assert consumer.value("chain_head_height") == 100  # the highest seen, not 90
        assert not consumer.task.done()
        devnet.faults.head_behind = 0
        await consumer.reach(120)
        await consumer.finish()
        await assert_rows_exact(database, devnet, 120)


async def test_a_block_delivered_twice_is_written_once(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=150, faults=Faults(repeat_every=5))
    consumer = Consumer(devnet.url, database, from_height=1, source_mode="stream")
    await consumer.reach(150)
    await consumer.finish()
    assert consumer.value("blocks_total") == 150
    await assert_rows_exact(database, devnet, 150)


async def test_a_node_that_is_not_ready_at_start_is_waited_for(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=20, faults=Faults(unavailable_calls=3))
    consumer = Consumer(devnet.url, database, from_height=1, to_height=20)
    await consumer.task
    await assert_rows_exact(database, devnet, 20)


# --- blocks that are not the ones asked for (issue 14.2) -----------------------------


async def test_a_get_blocks_reply_carrying_the_next_block_under_a_key_is_read_again_not_quarantined(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=100, faults=Faults(shifted_get_blocks_replies=1))
    runner = await run_consumer(
        devnet.url, database, from_height=1, to_height=100, source_mode="poll"
    )
    assert sample(runner.metrics, "source_errors_total", code="WRONG_HEIGHT") == 1
    assert sample(runner.metrics, "quarantined_total", kind="block") == 0
    await assert_rows_exact(database, devnet, 100)


async def test_a_stale_block_first_on_a_reconnected_stream_is_retried_and_the_real_block_kept(
    devnet_factory: DevnetFactory, database: str
) -> None:
    # Streams of 20 blocks; the next three new streams begin with the block before.
    faults = Faults(abort_stream_every=20, stale_stream_starts=3)
    devnet = await devnet_factory(height=100, faults=faults)
    runner = await run_consumer(
        devnet.url, database, from_height=1, to_height=100, source_mode="stream"
    )
    assert sample(runner.metrics, "source_errors_total", code="STALE_BLOCK") == 3
    assert sample(runner.metrics, "quarantined_total", kind="block") == 0
    await assert_rows_exact(database, devnet, 100)


@pytest.mark.parametrize("mode", ["poll", "stream"])
async def test_a_block_whose_envelope_names_another_height_is_asked_again_not_quarantined(
    devnet_factory: DevnetFactory, database: str, mode: str
) -> None:
    devnet = await devnet_factory(height=100, faults=Faults(misnumbered_blocks=1))
    runner = await run_consumer(
        devnet.url, database, from_height=1, to_height=100, source_mode=mode
    )
    counts = [
        sample(runner.metrics, "source_errors_total", code=c) for c in ("WRONG_HEIGHT", "GAP")
    ]
    errors = sum(n for n in counts if not math.isnan(n))
    assert errors >= 1
    assert sample(runner.metrics, "quarantined_total", kind="block") == 0
    await assert_rows_exact(database, devnet, 100)


# --- another chain (issue 14.3) --------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [Faults(foreign_chain_id="devnet-2"), Faults(foreign_tx_chain_id="devnet-2")],
    ids=["block-chain-id", "transaction-chain-id"],
)
@pytest.mark.parametrize("mode", ["poll", "stream"])
async def test_blocks_of_another_chain_stop_the_service_and_nothing_of_them_is_written(
    devnet_factory: DevnetFactory, database: str, faults: Faults, mode: str
) -> None:
    devnet = await devnet_factory(height=50)
    consumer = Consumer(devnet.url, database, from_height=1, source_mode=mode)
    await consumer.reach(50)
    devnet.faults = faults
    await devnet.advance(20)
    with pytest.raises(ChainMismatch, match=r"devnet-2.*devnet-1") as stopped:
        await consumer.task
    assert stopped.value.exit_code == 2
    assert consumer.value("processed_height") == 50
    await assert_rows_exact(database, devnet, 50)


# --- silence (issues 14.5 and 12.8) ------------------------------------------------------


async def test_a_stream_that_goes_silent_while_the_head_is_ahead_is_reconnected_and_counted(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=60, faults=Faults(stream_silent_after=20))
    runner = await run_consumer(
        devnet.url,
        database,
        from_height=1,
        to_height=60,
        source_mode="stream",
        stall_timeout_s=0.3,
    )
    # Silent after blocks 20 and 40: two stalls; after 60 the run is complete.
    assert sample(runner.metrics, "source_stalls_total") == 2
    assert sample(runner.metrics, "source_errors_total", code="STALLED") == 2
    await assert_rows_exact(database, devnet, 60)


async def test_a_stall_is_logged_as_a_warning_naming_the_awaited_block_and_recovery_as_info(
    devnet_factory: DevnetFactory, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    devnet = await devnet_factory(height=30, faults=Faults(stream_silent_after=20))
    with caplog.at_level(logging.INFO, logger="consumer.source.core"):
        await run_consumer(
            devnet.url,
            database,
            from_height=1,
            to_height=30,
            source_mode="stream",
            stall_timeout_s=0.3,
        )
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "STALLED" in r.message
    ]
    recovered = [
        r for r in caplog.records if r.levelno == logging.INFO and "recovered" in r.message
    ]
    assert ["block 21" in r.message for r in warnings] == [True]
    assert ["height 21" in r.message for r in recovered] == [True]


@pytest.mark.parametrize("mode", ["stream", "poll"])
async def test_a_node_that_answers_nothing_is_a_stall_and_is_followed_again(
    devnet_factory: DevnetFactory, database: str, mode: str
) -> None:
    devnet = await devnet_factory(height=40)
    consumer = Consumer(
        devnet.url,
        database,
        from_height=1,
        source_mode=mode,
        stall_timeout_s=0.3,
        rpc_timeout_s=0.2,
    )
    await consumer.reach(40)
    devnet.faults.delay_s = 30.0  # every call, the stream too, waits past any deadline
    await devnet.advance(10)
    await eventually(lambda: consumer.value("source_stalls_total") >= 1)
    devnet.faults.delay_s = 0.0
    await consumer.reach(50)
    await consumer.finish()
    await assert_rows_exact(database, devnet, 50)


# --- replies too large together (issue 14.7) ---------------------------------------------


async def test_blocks_that_fit_the_message_limit_alone_but_not_together_are_read_in_smaller_windows(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(ChainSpec(profile=Profile.BUSY), height=10)
    block_bytes = len(devnet.chain.block_bytes(1, canon=True))
    runner = await run_consumer(
        devnet.url,
        database,
        from_height=1,
        to_height=10,
        source_mode="poll",
        max_message_bytes=block_bytes * 5 // 2,
    )
    assert sample(runner.metrics, "processed_height") == 10
    await assert_rows_exact(database, devnet, 10)
