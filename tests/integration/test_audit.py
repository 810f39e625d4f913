"""The continuous audit: stream-delivered blocks re-read through GetBlocks and repaired."""

from __future__ import annotations

from collections import Counter

import psycopg
from prometheus_client import CollectorRegistry

from consumer.devnet import Faults, TxKind
from consumer.metrics import Metrics
from consumer.model import DecodedBlock, Rpc
from consumer.source.core import CoreClient
from consumer.trust.audit import Auditor
from tests.conftest import DevnetFactory, make_settings, run_consumer, sample
from tests.reference import expected_rows, first_play_tx_hashes, plays_rows

LAST = 120


def auditor(url: str) -> Auditor:
    settings = make_settings(url, "postgresql://unused")
    client = CoreClient(settings.source)
    return Auditor(client, settings.source, "", "c", "live", 60.0, Metrics(CollectorRegistry()))


def blocks(heights: range, via: Rpc) -> list[DecodedBlock]:
    return [DecodedBlock(h, f"H{h}", "c", None, (), via=via) for h in heights]


async def test_blocks_delivered_by_getblocks_count_as_audited_at_once() -> None:
    audit = auditor("http://127.0.0.1:1")
    audit.written(blocks(range(1, 11), Rpc.GET_BLOCKS))
    assert audit.audited_height == 10


async def test_blocks_delivered_by_the_stream_wait_for_the_audit() -> None:
    audit = auditor("http://127.0.0.1:1")
    audit.written(blocks(range(1, 6), Rpc.GET_BLOCKS))
    audit.written(blocks(range(6, 11), Rpc.STREAM))
    audit.written(blocks(range(11, 13), Rpc.GET_BLOCKS))
    assert audit.audited_height == 5


async def test_a_restart_audits_what_was_written_after_the_saved_audited_height() -> None:
    audit = auditor("http://127.0.0.1:1")
    audit.resume(checkpoint_height=40, audited_height=25)
    assert audit.audited_height == 25


async def test_a_ledger_from_before_the_audit_is_not_audited_again() -> None:
    audit = auditor("http://127.0.0.1:1")
    audit.resume(checkpoint_height=40, audited_height=None)
    assert audit.audited_height == 40


async def test_following_a_stream_that_drops_transactions_ends_with_every_play(
    devnet_factory: DevnetFactory, database: str
) -> None:
    # StreamBlocks drops each block's first transaction; GetBlocks serves them whole.
    devnet = await devnet_factory(height=LAST, faults=Faults(stream_omits_first_tx=True))
    chain = devnet.chain
    metrics = Metrics(CollectorRegistry())
    await run_consumer(
        devnet.url, database, metrics, from_height=1, to_height=LAST, source_mode="stream"
    )
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected_rows(chain, 1, LAST)
    assert sample(metrics, "audit_mismatches_total", kind="missing") == len(
        first_play_tx_hashes(chain, 1, LAST)
    )
    assert sample(metrics, "audit_repaired_plays_total") > 0


async def test_a_bounded_run_ends_with_its_whole_range_audited(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=LAST)
    metrics = Metrics(CollectorRegistry())
    await run_consumer(
        devnet.url, database, metrics, from_height=1, to_height=LAST, source_mode="stream"
    )
    assert sample(metrics, "audited_height") == LAST
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT audited_height FROM core_plays.checkpoint")
        assert await cur.fetchone() == (LAST,)


async def test_without_the_audit_a_dropped_transaction_stays_unwritten(
    devnet_factory: DevnetFactory, database: str
) -> None:
    # StreamBlocks drops each block's first transaction; GetBlocks serves them whole.
    devnet = await devnet_factory(height=LAST, faults=Faults(stream_omits_first_tx=True))
    chain = devnet.chain
    await run_consumer(
        devnet.url, database, from_height=1, to_height=LAST, source_mode="stream", no_audit=True
    )
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) != expected_rows(chain, 1, LAST)


async def test_a_restart_re_reads_what_was_written_but_not_yet_audited(
    devnet_factory: DevnetFactory, database: str
) -> None:
    # StreamBlocks drops each block's first transaction; GetBlocks serves them whole.
    devnet = await devnet_factory(height=LAST, faults=Faults(stream_omits_first_tx=True))
    chain = devnet.chain
    await run_consumer(
        devnet.url, database, from_height=1, to_height=LAST, source_mode="stream", no_audit=True
    )
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        # As if the process died after auditing height 10 and writing up to LAST.
        await conn.execute("UPDATE core_plays.checkpoint SET audited_height = 10")
    await devnet.advance(5)
    await run_consumer(devnet.url, database, to_height=LAST + 5, source_mode="stream")
    async with await psycopg.AsyncConnection.connect(database) as conn:
        rows = await plays_rows(conn)
    above = Counter({row: n for row, n in rows.items() if row[3] > 10})
    assert above == expected_rows(chain, 11, LAST + 5)


async def test_a_missing_transaction_postgresql_refuses_is_set_aside_and_counted(
    devnet_factory: DevnetFactory, database: str
) -> None:
    # StreamBlocks drops each block's first transaction; only the audit writes them.
    devnet = await devnet_factory(height=LAST, faults=Faults(stream_omits_first_tx=True))
    refused = next(
        txs[0].plays[0].signature
        for h in range(1, LAST + 1)
        if (txs := devnet.chain.txs(h))
        and txs[0].kind is TxKind.PLAYS
        and txs[0].plays
        and txs[0].plays[0].signature
    )
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            f"""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN IF NEW.signature = '{refused}' THEN RAISE EXCEPTION 'refused'; END IF;
                RETURN NEW; END $$;
                CREATE TRIGGER refuse AFTER INSERT ON plays
                FOR EACH ROW EXECUTE FUNCTION refuse()"""
        )
    metrics = Metrics(CollectorRegistry())
    await run_consumer(
        devnet.url, database, metrics, from_height=1, to_height=LAST, source_mode="stream"
    )
    assert sample(metrics, "set_aside_total") == 1
    assert sample(metrics, "set_aside_pending") == 1
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM core_plays.quarantine WHERE kind = 'refused'"
        )
        assert await cur.fetchone() == (1,)
