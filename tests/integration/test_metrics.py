"""Every metric moves as the consumer works against the devnet (read from the registry)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from datetime import datetime

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from consumer.devnet import ChainSpec, DevChain, Faults, TxKind
from consumer.metrics import Metrics
from consumer.model import RepairReason, SkipReason
from consumer.ops.admin import quarantine_command
from consumer.service.readiness import Readiness, Role
from tests.conftest import DevnetFactory, eventually, make_settings, run_consumer, sample
from tests.consumers import Consumer, query
from tests.reference import expected_rows


def tx_kinds(chain: DevChain, first: int, last: int) -> Counter[TxKind]:
    return Counter(tx.kind for h in range(first, last + 1) for tx in chain.txs(h))


async def test_a_run_moves_the_progress_and_volume_metrics(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=300)
    await run_consumer(devnet.url, database, metrics, from_height=1, to_height=300)
    kinds = tx_kinds(devnet.chain, 1, 300)
    assert sample(metrics, "blocks_total") == 300
    assert sample(metrics, "processed_height") == 300
    assert sample(metrics, "chain_head_height") == 300
    assert sample(metrics, "lag_blocks") == 0
    assert sample(metrics, "plays_written_total") == expected_rows(devnet.chain, 1, 300).total()
    assert sample(metrics, "transactions_total", type="plays") == kinds[TxKind.PLAYS]
    assert sample(metrics, "transactions_total", type="undecodable") == kinds[TxKind.MALFORMED]
    assert sample(metrics, "quarantined_total", kind="transaction") == kinds[TxKind.MALFORMED]
    assert sample(metrics, "last_commit_timestamp_seconds") > 0
    assert sample(metrics, "batch_commit_seconds_count") >= 1
    assert sample(metrics, "batch_blocks_sum") == 300
    assert sample(metrics, "block_fetch_seconds_count") == 300


async def test_skips_and_repairs_are_counted_by_reason(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=400)
    await run_consumer(devnet.url, database, metrics, from_height=1, to_height=400)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT coalesce(sum(skipped_count), 0) FROM core_plays.tx_ledger")
        (ledger_skipped,) = await cur.fetchone() or (0,)
    skipped = sum(sample(metrics, "plays_skipped_total", reason=r.value) for r in SkipReason)
    assert skipped == ledger_skipped > 0
    assert sample(metrics, "plays_repaired_total", reason="timestamp_missing") > 0
    assert sample(metrics, "plays_repaired_total", reason="nul_removed") > 0


async def test_a_replay_moves_the_duplicate_counter_and_not_the_written_one(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=100)
    await run_consumer(
        devnet.url, database, Metrics(CollectorRegistry()), from_height=1, to_height=100
    )
    metrics = Metrics(CollectorRegistry())
    await run_consumer(devnet.url, database, metrics, from_height=1, to_height=100)
    assert sample(metrics, "plays_written_total") == 0
    assert (
        sample(metrics, "duplicate_transactions_total")
        == tx_kinds(devnet.chain, 1, 100)[TxKind.PLAYS]
    )


async def test_node_errors_and_reconnects_are_counted_by_code(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=60, faults=Faults(abort_stream_every=20))
    await run_consumer(
        devnet.url, database, metrics, from_height=1, to_height=60, source_mode="stream"
    )
    assert sample(metrics, "source_errors_total", code="ABORTED") >= 2
    assert sample(metrics, "reconnects_total", target="node") >= 2
    assert sample(metrics, "blocks_total") == 60


async def test_a_lost_database_session_is_counted_and_the_run_recovers(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=20)
    stop = asyncio.Event()
    task = asyncio.create_task(run_consumer(devnet.url, database, metrics, stop, from_height=1))
    await eventually(lambda: sample(metrics, "processed_height") == 20)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'core-plays-consumer' "
            "AND datname = current_database()"
        )
    await devnet.advance(5)
    await eventually(lambda: sample(metrics, "processed_height") == 25)
    stop.set()
    await task
    assert sample(metrics, "db_errors_total") >= 1
    assert sample(metrics, "reconnects_total", target="database") >= 1


async def test_is_leader_and_build_info_describe_the_running_instance(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=10)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(devnet.url, database, metrics, stop, from_height=1, source_mode="stream")
    )
    await eventually(lambda: sample(metrics, "is_leader") == 1)
    assert (
        sample(
            metrics,
            "build_info",
            version="0.1.0",
            chain_id="devnet-1",
            source_mode="stream",
            stream="live",
        )
        == 1
    )
    stop.set()
    await task
    assert sample(metrics, "is_leader") == 0


async def test_lag_seconds_keeps_rising_while_the_node_stalls(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    spec = ChainSpec(genesis_time_s=int(time.time()) - 30, block_time_step_s=1.0)
    devnet = await devnet_factory(spec, height=30)
    stop = asyncio.Event()
    task = asyncio.create_task(run_consumer(devnet.url, database, metrics, stop, from_height=1))
    await eventually(lambda: sample(metrics, "processed_height") == 30)
    # The node stops producing: nothing is committed, and lag must say so.
    first = sample(metrics, "lag_seconds")
    await eventually(lambda: sample(metrics, "lag_seconds") > first + 0.2)
    assert sample(metrics, "processed_height") == 30
    stop.set()
    await task


def test_lag_is_unknown_rather_than_zero_before_anything_is_known() -> None:
    metrics = Metrics(CollectorRegistry())
    assert math.isnan(sample(metrics, "lag_seconds"))
    assert math.isnan(sample(metrics, "lag_blocks"))


def test_lag_seconds_and_ready_are_the_readiness_state_read_at_scrape_time() -> None:
    clock = [1_000.0]
    ready = Readiness(30.0, clock=lambda: clock[0])
    ready.role = Role.LEADER
    metrics = Metrics(CollectorRegistry())
    metrics.watch(lambda: ready.verdict()[0], ready.lag_s)
    ready.positioned(datetime(1970, 1, 1, 0, 16, 30))  # 990 s after the epoch
    assert (sample(metrics, "lag_seconds"), sample(metrics, "ready")) == (10.0, 1.0)
    clock[0] += 50
    assert (sample(metrics, "lag_seconds"), sample(metrics, "ready")) == (60.0, 0.0)


def test_a_head_reported_lower_later_does_not_shrink_lag() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.set_processed(90)
    metrics.set_head(100)
    metrics.set_head(95)
    assert sample(metrics, "lag_blocks") == 10


@pytest.mark.parametrize(
    ("name", "reason"),
    [("plays_skipped_total", r) for r in SkipReason]
    + [("plays_repaired_total", r) for r in RepairReason],
    ids=str,
)
def test_every_skip_and_repair_reason_is_exported_at_zero_from_the_start(
    name: str, reason: SkipReason | RepairReason
) -> None:
    metrics = Metrics(CollectorRegistry())
    assert sample(metrics, name, reason=reason.value) == 0.0


def _series(metrics: Metrics, name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for metric in metrics.registry.collect()
        if metric.name == f"core_plays_{name}"
        for sample in metric.samples
    ]


async def test_build_info_keeps_one_series_while_the_source_path_changes(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=400)
    await run_consumer(
        devnet.url,
        database,
        metrics,
        from_height=1,
        to_height=400,
        source_mode="auto",
        catchup_threshold_blocks=100,
        poll_window=50,
    )
    assert _series(metrics, "build_info") == [
        {"version": "0.1.0", "chain_id": "devnet-1", "source_mode": "auto", "stream": "live"}
    ]
    assert sample(metrics, "source_mode", mode="stream") == 1
    assert sample(metrics, "source_mode", mode="poll") == 0


def test_every_source_path_is_exported_at_zero_from_the_start(metrics: Metrics) -> None:
    assert _series(metrics, "source_mode") == [{"mode": "stream"}, {"mode": "poll"}]
    assert sample(metrics, "source_mode", mode="stream") == 0


async def test_the_ready_gauge_is_what_readyz_answers(
    devnet_factory: DevnetFactory, database: str, metrics: Metrics
) -> None:
    devnet = await devnet_factory(height=20)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(devnet.url, database, metrics, stop, from_height=1, ready_max_lag_s=1e9)
    )
    assert sample(metrics, "ready") == 0
    await eventually(lambda: sample(metrics, "ready") == 1)
    assert sample(metrics, "is_leader") == 1
    stop.set()
    await task


async def test_set_aside_pending_falls_after_a_retry_on_a_chain_that_never_idles(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=20, block_interval_s=0.02)  # a block every 20 ms
    bad = min(int(str(row[3])) for row in expected_rows(devnet.chain, 1, 20))
    await query(
        database,
        f"""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.slot = {bad} THEN RAISE EXCEPTION 'refused'; END IF;
            RETURN NULL; END $$;
            CREATE TRIGGER refuse AFTER INSERT ON plays FOR EACH ROW EXECUTE FUNCTION refuse()""",
    )
    # The writer is idle only after 1 s without a block, which this chain never leaves.
    consumer = Consumer(devnet.url, database, from_height=1, refused_retry_s=0, head_refresh_s=1)
    await eventually(lambda: consumer.value("set_aside_pending") > 0)
    await query(database, "DROP TRIGGER refuse ON plays")
    assert await quarantine_command(make_settings(devnet.url, database), "retry") == 0
    await eventually(lambda: consumer.value("set_aside_pending") == 0)
    await consumer.finish()
