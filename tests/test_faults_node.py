"""The node misbehaves; the consumer keeps going, retries at a bounded rate, loses nothing."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry

from consumer.devnet import DevnetServer, Faults
from consumer.metrics import Metrics
from consumer.runner import Runner
from tests.conftest import DevnetFactory, eventually, make_settings
from tests.reference import expected_rows, plays_rows


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"core_plays_{name}", labels)
    return math.nan if value is None else value


class Consumer:
    """An in-process runner following a devnet until told to stop."""

    def __init__(self, url: str, database: str, **overrides: Any) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.stop = asyncio.Event()
        self.runner = Runner(make_settings(url, database, **overrides), self.metrics, self.stop)
        self.task = asyncio.create_task(self.runner.run())

    def value(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)

    async def reach(self, height: int, timeout_s: float = 15) -> None:
        await eventually(lambda: self.value("processed_height") >= height, timeout_s=timeout_s)

    async def finish(self) -> None:
        self.stop.set()
        await self.task


async def assert_rows_exact(database: str, devnet: DevnetServer, last: int) -> None:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, last)


async def test_an_unavailable_node_is_retried_with_backoff_and_progress_resumes(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=50)
    consumer = Consumer(devnet.url, database, from_height=1, source_mode="poll")
    await consumer.reach(50)
    devnet.faults.unavailable_calls = 10_000  # down until we say otherwise
    await devnet.advance(20)
    await eventually(lambda: consumer.value("source_errors_total", code="UNAVAILABLE") >= 3)
    await asyncio.sleep(1.0)
    # Backoff, not a hot loop: with a 0.5 s cap, about two attempts a second at most.
    errors = consumer.value("source_errors_total", code="UNAVAILABLE")
    assert errors < 40
    devnet.faults.unavailable_calls = 0
    await consumer.reach(70)
    await consumer.finish()
    await assert_rows_exact(database, devnet, 70)


async def test_streams_aborted_every_few_blocks_lose_and_repeat_nothing(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=200, faults=Faults(abort_stream_every=7))
    consumer = Consumer(devnet.url, database, from_height=1, source_mode="stream")
    await consumer.reach(200)
    await consumer.finish()
    assert consumer.value("source_errors_total", code="ABORTED") >= 200 // 7
    await assert_rows_exact(database, devnet, 200)


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
    await asyncio.sleep(0.3)
    restarted = await devnet_factory(height=60, port=port)
    await consumer.reach(60)
    await consumer.finish()
    assert consumer.value("reconnects_total", target="node") >= 1
    await assert_rows_exact(database, restarted, 60)


async def test_a_head_that_goes_backwards_causes_no_gap_and_no_regression(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=100)
    consumer = Consumer(devnet.url, database, from_height=1, source_mode="poll")
    await consumer.reach(100)
    devnet.faults.head_behind = 30  # a lagging replica behind the load balancer
    await devnet.advance(20)
    await asyncio.sleep(0.5)
    assert consumer.value("processed_height") == 100
    assert consumer.value("lag_blocks") >= 0
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
    devnet = await devnet_factory(height=20, faults=Faults(unavailable_calls=5))
    consumer = Consumer(devnet.url, database, from_height=1, to_height=20)
    await consumer.task
    await assert_rows_exact(database, devnet, 20)
