"""Following each faulty devnet of issue 11 ends with the complete chain's plays,
and the counters say what happened (a stream without first transactions; a
GetBlocks that re-sorts a block's transactions)."""

from __future__ import annotations

import asyncio

import psycopg
from prometheus_client import CollectorRegistry

from consumer.devnet import DevChain, DevnetServer, Faults
from consumer.metrics import Metrics
from consumer.model import DifferenceKind
from consumer.trust.verify import VerifyReport
from tests.conftest import DevnetFactory, run_consumer, sample
from tests.consumers import verify_heights
from tests.reference import expected_rows, first_play_tx_hashes, plays_rows

LAST = 150


def multi_play_tx_blocks(chain: DevChain, last: int) -> int:
    return sum(1 for h in range(1, last + 1) if sum(t.kind == "plays" for t in chain.txs(h)) > 1)


async def verify(devnet: DevnetServer, database: str, repair: bool = False) -> VerifyReport:
    chain_id = devnet.chain.spec.chain_id
    return await verify_heights(devnet.url, database, chain_id, 1, LAST, repair)


async def rows_match(database: str, chain: DevChain) -> bool:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        return await plays_rows(conn) == expected_rows(chain, 1, LAST)


async def test_a_stream_without_first_transactions_ends_with_every_play_and_says_so(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=LAST, faults=Faults(stream_omits_first_tx=True))
    metrics = Metrics(CollectorRegistry())
    await run_consumer(
        devnet.url, database, metrics, from_height=1, to_height=LAST, source_mode="stream"
    )
    assert await rows_match(database, devnet.chain)
    lost = len(first_play_tx_hashes(devnet.chain, 1, LAST))
    assert lost > 0
    assert sample(metrics, "audit_mismatches_total", kind="missing") == lost
    # The stream shifted every later transaction one place up: the repaired ones
    # arrive at positions the shifted ones hold.
    assert sample(metrics, "source_conflicts_total", kind="position_taken") > 0
    assert (await verify(devnet, database)).ok


async def test_verify_reports_what_a_stream_lost_before_a_repair_and_nothing_after(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=LAST, faults=Faults(stream_omits_first_tx=True))
    await run_consumer(
        devnet.url, database, from_height=1, to_height=LAST, source_mode="stream", no_audit=True
    )
    before = await verify(devnet, database)
    assert before.counts[DifferenceKind.MISSING] == len(first_play_tx_hashes(devnet.chain, 1, LAST))
    repaired = await verify(devnet, database, repair=True)
    assert repaired.repaired_transactions == before.counts[DifferenceKind.MISSING]
    after = await verify(devnet, database)
    assert after.ok, after.format_text()
    assert await rows_match(database, devnet.chain)


async def test_a_getblocks_that_resorts_blocks_costs_no_play_and_shows_as_moved(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=LAST, faults=Faults(get_blocks_resorts_txs=True))
    # Written from re-sorted GetBlocks windows, then replayed from the stream's chain order.
    await run_consumer(devnet.url, database, from_height=1, to_height=LAST, source_mode="poll")
    replay = Metrics(CollectorRegistry())
    await run_consumer(
        devnet.url, database, replay, from_height=1, to_height=LAST, source_mode="stream"
    )
    assert await rows_match(database, devnet.chain)
    assert sample(replay, "plays_written_total") == 0
    assert multi_play_tx_blocks(devnet.chain, LAST) > 0
    assert sample(replay, "source_conflicts_total", kind="moved") > 0
    assert sample(replay, "audit_mismatches_total", kind="missing") == 0
    report = await verify(devnet, database)
    assert report.ok, report.format_text()


async def test_a_replay_and_a_repair_beside_the_live_service_never_double_a_play(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(
        height=LAST, faults=Faults(stream_omits_first_tx=True, get_blocks_resorts_txs=True)
    )
    stop = asyncio.Event()
    live = asyncio.create_task(
        run_consumer(devnet.url, database, stop=stop, from_height=1, source_mode="stream")
    )
    await asyncio.gather(
        run_consumer(
            devnet.url,
            database,
            from_height=1,
            to_height=LAST,
            source_mode="poll",
            stream="replay",
        ),
        verify(devnet, database, repair=True),
        verify(devnet, database, repair=True),
    )
    stop.set()
    await live
    assert await rows_match(database, devnet.chain)
