"""The sink against real PostgreSQL: atomic batches, exactly-once plays, a monotonic checkpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg.rows import TupleRow

from consumer.errors import SinkRefused
from consumer.model import DecodedBlock, DecodedTx, PlayRow, Quarantined, Rpc
from consumer.sink.plays import PlaysSink, count_set_aside, read_checkpoint

CHAIN = "chain-a"
T0 = datetime(2026, 1, 1, 12, 0, 0)


def play(track: int, user: int | None = 7) -> PlayRow:
    return PlayRow(user, track, T0, "sig", "Lisbon", "Lisboa", "PT")


def block(height: int, *txs: DecodedTx, quarantined: tuple[Quarantined, ...] = ()) -> DecodedBlock:
    return DecodedBlock(
        height=height,
        hash=f"H{height}",
        chain_id=CHAIN,
        time=T0,
        txs=txs,
        quarantined=quarantined,
        tx_types={"plays": len(txs)},
    )


def tx(index: int, tx_hash: str, *tracks: int) -> DecodedTx:
    return DecodedTx(index, tx_hash, tuple(play(t) for t in tracks), 0)


@pytest_asyncio.fixture
async def conn(database: str) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as c:
        yield c


def sink_on(
    conn: psycopg.AsyncConnection[TupleRow], rewind: bool = False, stream: str = "live"
) -> PlaysSink:
    return PlaysSink(conn, CHAIN, stream, start_height=1, rewind=rewind)


async def rows(conn: psycopg.AsyncConnection[TupleRow], sql: str) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql)
    return await cur.fetchall()


async def test_batch_writes_plays_ledger_and_checkpoint(conn: Any) -> None:
    result = await sink_on(conn).write([block(1, tx(0, "A", 10, 11)), block(2, tx(0, "B", 12))])
    assert result.plays_written == 3
    assert await rows(conn, "SELECT play_item_id, slot, source FROM plays ORDER BY id") == [
        (10, 1, "relay"),
        (11, 1, "relay"),
        (12, 2, "relay"),
    ]
    assert await rows(
        conn, "SELECT tx_hash, play_count FROM core_plays.tx_ledger ORDER BY block_height"
    ) == [("A", 2), ("B", 1)]
    checkpoint = await read_checkpoint(conn, CHAIN, "live")
    assert checkpoint is not None
    assert (checkpoint.height, checkpoint.block_hash, checkpoint.block_time) == (2, "H2", T0)


async def test_plays_commit_in_chain_order(conn: Any) -> None:
    await sink_on(conn).write([block(h, tx(0, f"T{h}", h, h + 1000)) for h in range(1, 60)])
    tracks = [r[0] for r in await rows(conn, "SELECT play_item_id FROM plays ORDER BY id")]
    assert tracks == [t for h in range(1, 60) for t in (h, h + 1000)]


async def test_the_same_block_written_twice_writes_its_plays_once(conn: Any) -> None:
    sink = sink_on(conn)
    await sink.write([block(1, tx(0, "A", 10, 11))])
    second = await sink.write([block(1, tx(0, "A", 10, 11))])
    assert second.plays_written == 0
    assert second.duplicates == 1
    assert await rows(conn, "SELECT count(*) FROM plays") == [(2,)]


async def test_the_same_block_in_another_transaction_order_writes_nothing_new(conn: Any) -> None:
    sink = sink_on(conn)
    await sink.write([block(5, tx(0, "A", 10), tx(1, "B", 20))])
    again = await sink.write([block(5, tx(0, "B", 20), tx(1, "A", 10))])
    assert again.plays_written == 0
    assert await rows(conn, "SELECT count(*) FROM plays") == [(2,)]


async def test_a_block_repeated_inside_one_batch_writes_once(conn: Any) -> None:
    result = await sink_on(conn).write([block(3, tx(0, "A", 10)), block(3, tx(0, "A", 10))])
    assert result.plays_written == 1
    assert await rows(conn, "SELECT count(*) FROM plays") == [(1,)]


async def test_the_same_transaction_in_two_blocks_counts_once(conn: Any) -> None:
    result = await sink_on(conn).write([block(3, tx(0, "A", 10)), block(4, tx(0, "A", 10))])
    assert result.plays_written == 1
    assert result.duplicates == 1


async def test_anonymous_and_boundary_ids_are_stored_as_given(conn: Any) -> None:
    txs = DecodedTx(0, "A", (play(2**31 - 1, None), play(-(2**31), -(2**31))), 0)
    await sink_on(conn).write([block(1, txs)])
    assert await rows(conn, "SELECT user_id, play_item_id FROM plays ORDER BY id") == [
        (None, 2**31 - 1),
        (-(2**31), -(2**31)),
    ]


async def test_a_transaction_whose_plays_were_all_skipped_is_still_in_the_ledger(
    conn: Any,
) -> None:
    await sink_on(conn).write([block(1, DecodedTx(0, "A", (), 3))])
    assert await rows(conn, "SELECT play_count, skipped_count FROM core_plays.tx_ledger") == [
        (0, 3)
    ]
    assert await rows(conn, "SELECT count(*) FROM plays") == [(0,)]


async def test_a_failing_batch_leaves_no_rows_and_no_checkpoint(conn: Any) -> None:
    await conn.execute("""
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.play_item_id = 666 THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER refuse AFTER INSERT ON plays FOR EACH ROW EXECUTE FUNCTION refuse();
    """)
    with pytest.raises(SinkRefused):
        await sink_on(conn).write([block(1, tx(0, "A", 10)), block(2, tx(0, "B", 666))])
    assert await rows(conn, "SELECT count(*) FROM plays") == [(0,)]
    assert await rows(conn, "SELECT count(*) FROM core_plays.tx_ledger") == [(0,)]
    assert await read_checkpoint(conn, CHAIN, "live") is None


async def test_a_replay_below_the_checkpoint_does_not_move_it_back(conn: Any) -> None:
    sink = sink_on(conn)
    await sink.write([block(10, tx(0, "A", 1))])
    await sink.write([block(4, tx(0, "B", 2))])
    checkpoint = await read_checkpoint(conn, CHAIN, "live")
    assert checkpoint is not None and checkpoint.height == 10


async def test_rewind_moves_the_checkpoint_back_when_asked(conn: Any) -> None:
    await sink_on(conn).write([block(10, tx(0, "A", 1))])
    await sink_on(conn, rewind=True).write([block(4, tx(0, "B", 2))])
    checkpoint = await read_checkpoint(conn, CHAIN, "live")
    assert checkpoint is not None and checkpoint.height == 4


async def test_each_stream_keeps_its_own_checkpoint(conn: Any) -> None:
    await sink_on(conn).write([block(10, tx(0, "A", 1))])
    await sink_on(conn, stream="backfill-1").write([block(3, tx(0, "B", 2))])
    live = await read_checkpoint(conn, CHAIN, "live")
    backfill = await read_checkpoint(conn, CHAIN, "backfill-1")
    assert live is not None and backfill is not None
    assert (live.height, backfill.height) == (10, 3)


async def test_quarantined_bytes_are_stored_once_across_replays(conn: Any) -> None:
    bad = Quarantined(1, "BAD", b"\xff\x00garbage", "truncated")
    whole = Quarantined(-1, "BLOCK", b"\x01\x02", "block envelope: error")
    sink = sink_on(conn)
    first = await sink.write(
        [block(7, tx(0, "A", 1), quarantined=(bad,)), block(8, quarantined=(whole,))]
    )
    second = await sink.write([block(7, tx(0, "A", 1), quarantined=(bad,))])
    assert dict(first.quarantined) == {"transaction": 1, "block": 1}
    assert not second.quarantined
    assert await rows(
        conn,
        "SELECT block_height, tx_index, tx_hash, data, error "
        "FROM core_plays.quarantine ORDER BY block_height",
    ) == [
        (7, 1, "BAD", b"\xff\x00garbage", "truncated"),
        (8, -1, "BLOCK", b"\x01\x02", "block envelope: error"),
    ]


async def test_an_empty_block_still_moves_the_checkpoint(conn: Any) -> None:
    await sink_on(conn).write([block(1), block(2)])
    checkpoint = await read_checkpoint(conn, CHAIN, "live")
    assert checkpoint is not None and checkpoint.height == 2


async def test_a_dropped_connection_is_reported_as_unavailable(database: str) -> None:
    from consumer.errors import SinkUnavailable

    conn = await psycopg.AsyncConnection.connect(database, autocommit=True)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as killer:
        await killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(SinkUnavailable):
        await sink_on(conn).write([block(1, tx(0, "A", 1))])
    await conn.close()


async def test_the_ledger_keeps_skip_reasons_per_transaction(conn: Any) -> None:
    from consumer.model import SkipReason

    skipped = DecodedTx(0, "A", (play(1),), 2, {SkipReason.TRACK_ID_NOT_INTEGER: 2})
    await sink_on(conn).write([block(1, skipped, tx(1, "B", 2))])
    assert await rows(
        conn, "SELECT tx_hash, skip_reasons FROM core_plays.tx_ledger ORDER BY tx_index"
    ) == [("A", {"track_id_not_integer": 2}), ("B", None)]


HUGE = DecodedTx(1, "HUGE", (PlayRow(7, 5, T0, "s" * 10**6, "", "", ""),), 0, data=b"\x0a\x01")


async def test_a_batch_postgresql_refuses_is_not_set_aside_unless_asked(conn: Any) -> None:
    with pytest.raises(SinkRefused):
        await sink_on(conn).write([block(1, tx(0, "A", 10)), block(2, HUGE)])
    assert await rows(conn, "SELECT count(*) FROM core_plays.quarantine") == [(0,)]
    assert await read_checkpoint(conn, CHAIN, "live") is None


async def test_a_refused_transaction_is_set_aside_with_its_bytes_and_the_rest_written(
    conn: Any,
) -> None:
    batch = [block(1, tx(0, "A", 10)), block(2, tx(0, "B", 20), HUGE, tx(2, "C", 30))]
    result = await sink_on(conn).write(batch, set_aside=True)
    assert (result.plays_written, result.set_aside) == (3, 1)
    assert await rows(conn, "SELECT play_item_id FROM plays ORDER BY id") == [(10,), (20,), (30,)]
    assert await rows(
        conn,
        "SELECT block_height, tx_index, tx_hash, kind, data, retry_rows->>'tx_hash', written_at "
        "FROM core_plays.quarantine",
    ) == [(2, 1, "HUGE", "refused", b"\x0a\x01", "HUGE", None)]
    assert await count_set_aside(conn, CHAIN) == 1
    checkpoint = await read_checkpoint(conn, CHAIN, "live")
    assert checkpoint is not None and checkpoint.height == 2
    again = await sink_on(conn).write(batch, set_aside=True)
    assert (again.plays_written, again.set_aside) == (0, 0)


def via(decoded: DecodedBlock, rpc: Rpc) -> DecodedBlock:
    return replace(decoded, via=rpc)


async def test_a_transaction_an_earlier_delivery_lacked_is_written_at_a_position_another_holds(
    conn: Any,
) -> None:
    sink = sink_on(conn)
    # The chain's block 5 is [X, A]; a stream that drops the first transaction sent [A].
    await sink.write([via(block(5, tx(0, "A", 10)), Rpc.STREAM)])
    repaired = await sink.write([via(block(5, tx(0, "X", 30, 31), tx(1, "A", 10)), Rpc.GET_BLOCKS)])
    assert repaired.plays_written == 2
    assert await rows(conn, "SELECT play_item_id FROM plays ORDER BY id") == [(10,), (30,), (31,)]
    assert await rows(
        conn, "SELECT tx_hash, block_height, tx_index, rpc FROM core_plays.tx_ledger ORDER BY 1"
    ) == [("A", 5, 0, "StreamBlocks"), ("X", 5, 0, "GetBlocks")]


async def test_deliveries_that_disagree_on_positions_are_stored_as_conflicts(conn: Any) -> None:
    sink = sink_on(conn)
    await sink.write([via(block(5, tx(0, "A", 10)), Rpc.STREAM)])
    result = await sink.write([via(block(5, tx(0, "X", 30), tx(1, "A", 10)), Rpc.GET_BLOCKS)])
    assert sorted(
        (c.kind, c.tx_hash, c.rpc, c.other_hash, c.other_rpc) for c in result.conflicts
    ) == [
        ("moved", "A", "GetBlocks", "A", "StreamBlocks"),
        ("position_taken", "X", "GetBlocks", "A", "StreamBlocks"),
    ]
    assert await rows(
        conn,
        "SELECT kind, block_height, tx_index, tx_hash, other_index, other_hash "
        "FROM core_plays.conflicts ORDER BY kind",
    ) == [("moved", 5, 1, "A", 0, "A"), ("position_taken", 5, 0, "X", 0, "A")]


async def test_a_conflict_met_again_is_stored_and_returned_once(conn: Any) -> None:
    sink = sink_on(conn)
    await sink.write([via(block(5, tx(0, "A", 10), tx(1, "B", 20)), Rpc.STREAM)])
    resorted = via(block(5, tx(0, "B", 20), tx(1, "A", 10)), Rpc.GET_BLOCKS)
    first = await sink.write([resorted])
    again = await sink.write([resorted])
    assert len(first.conflicts) == 4  # each moved, each on a taken position
    assert again.conflicts == []
    assert await rows(conn, "SELECT count(*) FROM core_plays.conflicts") == [(4,)]


async def test_a_transaction_delivered_again_at_another_height_is_written_once(conn: Any) -> None:
    result = await sink_on(conn).write([block(5, tx(0, "A", 10)), block(9, tx(0, "A", 10))])
    assert result.plays_written == 1
    assert [(c.kind, c.height, c.other_height) for c in result.conflicts] == [
        ("other_height", 9, 5)
    ]


async def test_a_repair_writer_writes_missing_transactions_without_moving_the_checkpoint(
    conn: Any,
) -> None:
    await sink_on(conn).write([block(8, tx(0, "A", 10))])
    repair = PlaysSink(conn, CHAIN, "live", start_height=1, checkpoint=False)
    result = await repair.write([block(3, tx(0, "M", 40), tx(1, "N", 41))])
    assert result.plays_written == 2
    checkpoint = await read_checkpoint(conn, CHAIN, "live")
    assert checkpoint is not None
    assert checkpoint.height == 8


async def test_reapplying_set_aside_transactions_writes_them_once_after_the_fix(
    conn: Any,
) -> None:
    await sink_on(conn).write([block(2, tx(0, "B", 20), HUGE)], set_aside=True)
    still = await sink_on(conn).reapply_set_aside()
    assert (still.transactions, len(still.failed)) == (0, 1)
    await conn.execute("ALTER TABLE plays ALTER COLUMN signature TYPE text")
    await conn.execute("DROP INDEX IF EXISTS plays_signature_idx")
    await conn.execute(
        "DO $$ DECLARE i text; BEGIN FOR i IN SELECT indexname FROM pg_indexes "
        "WHERE tablename = 'plays' AND indexdef LIKE '%signature%' LOOP "
        "EXECUTE 'DROP INDEX ' || i; END LOOP; END $$"
    )
    done = await sink_on(conn).reapply_set_aside()
    assert (done.transactions, done.plays_written, done.failed) == (1, 1, {})
    assert await count_set_aside(conn, CHAIN) == 0
    assert await rows(conn, "SELECT play_item_id, slot FROM plays ORDER BY id") == [(20, 2), (5, 2)]
    again = await sink_on(conn).reapply_set_aside()
    assert again.transactions == 0
    assert await rows(conn, "SELECT count(*) FROM core_plays.tx_ledger") == [(2,)]


def parts_of(*parts: DecodedBlock) -> Callable[[], AsyncIterator[DecodedBlock]]:
    """What write_parts is given for a large block: its parts, made afresh on each call."""

    async def parts_made() -> AsyncIterator[DecodedBlock]:
        for part in parts:
            yield part

    return parts_made


async def test_a_large_block_postgresql_refuses_is_set_aside_a_part_at_a_time(conn: Any) -> None:
    parts = parts_of(block(2, tx(0, "B", 20)), block(2, HUGE, tx(2, "C", 30)))
    with pytest.raises(SinkRefused):
        await sink_on(conn).write_parts(parts)
    assert await rows(conn, "SELECT count(*) FROM plays") == [(0,)]
    assert await read_checkpoint(conn, CHAIN, "live") is None
    result = await sink_on(conn).write_parts(parts, set_aside=True)
    assert (result.blocks, result.plays_written, result.set_aside) == (1, 2, 1)
    assert await rows(conn, "SELECT play_item_id FROM plays ORDER BY id") == [(20,), (30,)]
    assert await rows(
        conn, "SELECT block_height, tx_index, tx_hash, kind FROM core_plays.quarantine"
    ) == [(2, 1, "HUGE", "refused")]
    checkpoint = await read_checkpoint(conn, CHAIN, "live")
    assert checkpoint is not None and checkpoint.height == 2
