"""verify and verify --repair against a real devnet and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import psycopg
import pytest_asyncio
from psycopg.rows import TupleRow

from consumer.decode.blocks import decode_block
from consumer.devnet import DevChain, DevnetServer
from consumer.model import DecodedBlock, Rpc
from consumer.sink.migrate import apply_migrations
from consumer.sink.plays import PlaysSink
from consumer.source.core import parse_block
from consumer.trust.compare import DifferenceKind
from consumer.trust.verify import VerifyReport
from tests.conftest import DevnetFactory, run_consumer
from tests.consumers import verify_heights
from tests.procs import flags, run_once
from tests.reference import (
    assert_aggregates_exact,
    expected_rows,
    first_play_tx_hashes,
    plays_rows,
)

LAST = 120


@pytest_asyncio.fixture
async def conn(database: str) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as c:
        yield c


def delivered(chain: DevChain, first: int, last: int, drop_first: bool) -> list[DecodedBlock]:
    """The chain as a stream delivers it; `drop_first`: as a node that sends every
    block without its first transaction (positions shift, one-tx blocks arrive empty)."""
    blocks = []
    for height in range(first, last + 1):
        block = parse_block(chain.block_bytes(height, canon=True), height, Rpc.STREAM)
        if drop_first:
            block = replace(block, txs=block.txs[1:])
        blocks.append(decode_block(block))
    return blocks


async def write_delivered(
    conn: psycopg.AsyncConnection[TupleRow], chain: DevChain, drop_first: bool
) -> None:
    await PlaysSink(conn, chain.spec.chain_id, "live", 1).write(
        delivered(chain, 1, LAST, drop_first)
    )


async def verify(
    devnet: DevnetServer, database: str, repair: bool = False, last: int = LAST
) -> VerifyReport:
    chain_id = devnet.chain.spec.chain_id
    return await verify_heights(devnet.url, database, chain_id, 1, last, repair)


async def test_a_range_written_from_complete_deliveries_matches(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=LAST)
    await run_consumer(devnet.url, database, from_height=1, to_height=LAST, source_mode="poll")
    report = await verify(devnet, database)
    assert report.ok, report.format_text()
    assert report.heights == LAST
    assert report.plays == sum(expected_rows(devnet.chain, 1, LAST).values())


async def test_each_transaction_a_delivery_missed_is_reported_with_its_height_and_hash(
    devnet_factory: DevnetFactory, database: str, conn: psycopg.AsyncConnection[TupleRow]
) -> None:
    devnet = await devnet_factory(height=LAST)
    await write_delivered(conn, devnet.chain, drop_first=True)
    report = await verify(devnet, database)
    dropped = first_play_tx_hashes(devnet.chain, 1, LAST)
    assert dropped  # the chain has such blocks, or this test shows nothing
    assert not report.ok
    assert report.counts[DifferenceKind.MISSING] == len(dropped)
    assert {d.tx_hash for d in report.first if d.kind is DifferenceKind.MISSING} <= dropped


async def test_repair_writes_what_was_missing_once_and_a_second_verify_matches(
    devnet_factory: DevnetFactory, database: str, conn: psycopg.AsyncConnection[TupleRow]
) -> None:
    devnet = await devnet_factory(height=LAST)
    await write_delivered(conn, devnet.chain, drop_first=True)
    repaired = await verify(devnet, database, repair=True)
    assert repaired.repaired_transactions == len(first_play_tx_hashes(devnet.chain, 1, LAST))
    assert repaired.ok
    assert await plays_rows(conn) == expected_rows(devnet.chain, 1, LAST)
    assert (await verify(devnet, database)).ok


async def test_repair_fires_on_play_once_per_play(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(height=LAST)
    async with await psycopg.AsyncConnection.connect(discovery, autocommit=True) as c:
        await apply_migrations(c)
        await write_delivered(c, devnet.chain, drop_first=True)
    await verify(devnet, discovery, repair=True)
    await verify(devnet, discovery, repair=True)  # a second repair finds nothing to write
    await assert_aggregates_exact(discovery)


async def test_rows_of_another_writer_at_a_slot_are_reported_and_never_deleted(
    devnet_factory: DevnetFactory, database: str, conn: psycopg.AsyncConnection[TupleRow]
) -> None:
    devnet = await devnet_factory(height=LAST)
    await write_delivered(conn, devnet.chain, drop_first=False)
    await conn.execute(
        "INSERT INTO plays (user_id, source, play_item_id, created_at, slot, signature) "
        "VALUES (1, 'relay', 424242, now(), 7, 'old-chain')"
    )
    report = await verify(devnet, database, repair=True)
    assert report.counts[DifferenceKind.EXTRA_ROWS] == 1
    cur = await conn.execute("SELECT count(*) FROM plays WHERE signature = 'old-chain'")
    assert await cur.fetchone() == (1,)


async def test_transactions_an_earlier_indexer_wrote_are_not_written_again(
    devnet_factory: DevnetFactory, database: str, conn: psycopg.AsyncConnection[TupleRow]
) -> None:
    devnet = await devnet_factory(height=LAST)
    # The indexer this service took over from wrote heights 1..LAST its own way: rows, no ledger.
    await write_delivered(conn, devnet.chain, drop_first=False)
    await conn.execute("TRUNCATE core_plays.tx_ledger")
    report = await verify(devnet, database, repair=True)
    assert report.ok, report.format_text()
    assert report.repaired_transactions == 0
    assert report.foreign > 0
    assert await plays_rows(conn) == expected_rows(devnet.chain, 1, LAST)


async def test_a_ledger_transaction_the_node_does_not_have_is_extra_and_kept(
    devnet_factory: DevnetFactory, database: str, conn: psycopg.AsyncConnection[TupleRow]
) -> None:
    devnet = await devnet_factory(height=LAST)
    await write_delivered(conn, devnet.chain, drop_first=False)
    await conn.execute(
        "INSERT INTO core_plays.tx_ledger (chain_id, block_height, tx_index, tx_hash, "
        "play_count, skipped_count) VALUES (%s, 9, 99, 'NOT-ON-CHAIN', 0, 0)",
        (devnet.chain.spec.chain_id,),
    )
    report = await verify(devnet, database, repair=True)
    assert report.counts[DifferenceKind.EXTRA] == 1
    cur = await conn.execute(
        "SELECT count(*) FROM core_plays.tx_ledger WHERE tx_hash = 'NOT-ON-CHAIN'"
    )
    assert await cur.fetchone() == (1,)
    # Kept for the audit trail, though nothing in its range was missing to repair.
    cur = await conn.execute("SELECT kind, block_height, tx_hash FROM core_plays.conflicts")
    assert await cur.fetchall() == [("extra", 9, "NOT-ON-CHAIN")]


async def test_a_repair_postgresql_refuses_is_set_aside_and_not_counted_as_repaired(
    devnet_factory: DevnetFactory, database: str, conn: psycopg.AsyncConnection[TupleRow]
) -> None:
    devnet = await devnet_factory(height=LAST)
    await write_delivered(conn, devnet.chain, drop_first=True)
    dropped = first_play_tx_hashes(devnet.chain, 1, LAST)
    bad = min(
        h for h in range(1, LAST + 1) if (txs := devnet.chain.txs(h)) and txs[0].hash in dropped
    )
    await conn.execute(
        f"""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.slot = {bad} THEN RAISE EXCEPTION 'height {bad} refused'; END IF;
            RETURN NEW; END $$;
            CREATE TRIGGER refuse AFTER INSERT ON plays FOR EACH ROW EXECUTE FUNCTION refuse()"""
    )
    report = await verify(devnet, database, repair=True)
    assert report.repaired_transactions == len(dropped) - 1
    assert not report.ok  # the set-aside one's plays are still not in plays
    cur = await conn.execute(
        "SELECT block_height FROM core_plays.quarantine WHERE kind = 'refused'"
    )
    assert await cur.fetchall() == [(bad,)]


async def test_repairs_beside_the_live_service_never_double_a_play(
    devnet_factory: DevnetFactory, database: str, conn: psycopg.AsyncConnection[TupleRow]
) -> None:
    devnet = await devnet_factory(height=LAST)
    await write_delivered(conn, devnet.chain, drop_first=True)
    # The live service replays the same heights from complete deliveries while two
    # repairs run over them: every missing transaction is claimed exactly once.
    await asyncio.gather(
        run_consumer(
            devnet.url,
            database,
            from_height=1,
            to_height=LAST,
            source_mode="poll",
            max_blocks=5,
        ),
        verify(devnet, database, repair=True),
        verify(devnet, database, repair=True),
    )
    assert await plays_rows(conn) == expected_rows(devnet.chain, 1, LAST)


async def test_the_command_exits_1_on_differences_and_0_once_repaired(
    devnet_factory: DevnetFactory, database: str, conn: psycopg.AsyncConnection[TupleRow]
) -> None:
    devnet = await devnet_factory(height=LAST)
    await write_delivered(conn, devnet.chain, drop_first=True)
    common = flags(core_url=devnet.url, database_url=database, from_height=1, to_height=LAST)
    code, out, _ = await run_once("verify", *common, "--json")
    assert code == 1
    assert json.loads(out)["differences"]["missing"] == len(
        first_play_tx_hashes(devnet.chain, 1, LAST)
    )
    code, out, _ = await run_once("verify", *common, "--repair")
    assert code == 0, out
    code, out, _ = await run_once("verify", *common)
    assert code == 0
    assert "OK, the table matches the chain" in out


async def test_the_command_exits_2_when_it_cannot_check(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=LAST)
    code, _, err = await run_once(
        "verify",
        *flags(core_url=devnet.url, database_url=database, from_height=1, to_height=LAST + 50),
    )
    assert code == 2
    assert "above the node's head" in err
