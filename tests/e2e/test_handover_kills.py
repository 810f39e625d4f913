"""The handover under SIGKILL: beside a legacy writer that loses transactions and stops.

The Monday-to-Friday of the README's cutover, compressed: the legacy writer
(tests/legacy.py) follows the real chain of take1.pb as it grows, losing one
transaction in forty, and stops at a random height; the service runs beside it
with `--handover-from core_indexed_blocks --handover-quiet-s 2` as a real
process, SIGKILLed several times at random moments; at the end every play of
the chain is in `plays` exactly as often as it must be, and `verify` agrees.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from functools import partial
from pathlib import Path

from consumer.devnet import ChainSpec
from tests.conftest import DevnetFactory, eventually
from tests.consumers import query
from tests.integration.test_handover import assert_every_play_once, every_nth
from tests.legacy import LegacyWriter, Shape
from tests.procs import ConsumerProcess, start_consumer

TAKE1 = Path(__file__).resolve().parents[3] / "shared" / "data" / "take1.pb"
KILLS = int(os.environ.get("CORE_PLAYS_TEST_KILLS", "4"))


async def _leading(consumer: ConsumerProcess) -> bool:
    return await consumer.sample("core_plays_is_leader") == 1


async def test_sigkills_beside_a_legacy_writer_that_stops_leave_every_play_once(
    devnet_factory: DevnetFactory, database: str
) -> None:
    rng = random.Random(KILLS)
    devnet = await devnet_factory(
        ChainSpec(recorded=str(TAKE1)), height=50, block_interval_s=0.03, max_height=900
    )
    stop_at = rng.randint(250, 550)
    legacy = LegacyWriter(devnet.chain, database, Shape.PYTHON, loses=every_nth(40))
    await legacy.create()
    stop = asyncio.Event()
    follow = asyncio.create_task(legacy.follow(lambda: devnet.head, stop_at, stop))
    args = (
        "--core-url", devnet.url, "--database-url", database, "--from-height", "1",
        "--handover-from", "core_indexed_blocks", "--handover-quiet-s", "2",
        "--lease-retry-s", "0.2", "--max-blocks", "20",
    )  # fmt: skip
    for _ in range(KILLS):
        consumer = await start_consumer(*args)
        await eventually(partial(_leading, consumer), timeout_s=30)
        await asyncio.sleep(rng.uniform(0.2, 3.0))
        consumer.signal(signal.SIGKILL)
        assert await consumer.wait() == -signal.SIGKILL
    await follow
    await eventually(lambda: devnet.head >= 900, timeout_s=180)
    consumer = await start_consumer(*args)

    async def caught_up() -> bool:
        return await consumer.sample("core_plays_processed_height") == 900

    await eventually(caught_up, timeout_s=180)
    assert await consumer.sample("core_plays_handover_state") == 2
    consumer.signal(signal.SIGTERM)
    assert await consumer.wait() == 0, consumer.text()[-3000:]
    assert await legacy.height() == stop_at
    assert await query(database, "SELECT taken_over_height FROM core_plays.handover") == [
        (stop_at,)
    ]
    await assert_every_play_once(devnet, database, legacy, stop_at, 900)
