"""Migrations: a fresh database gets everything, a live one keeps its plays untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from consumer.errors import SchemaMismatch
from consumer.migrate import apply_migrations, check_plays_schema, migrations
from tests.conftest import DISCOVERY_SQL

PLAYS_SHAPE = """
SELECT (SELECT relfilenode FROM pg_class WHERE oid = 'plays'::regclass),
       (SELECT array_agg(indexdef ORDER BY indexname) FROM pg_indexes WHERE tablename = 'plays'),
       (SELECT array_agg(tgname ORDER BY tgname) FROM pg_trigger
         WHERE tgrelid = 'plays'::regclass AND NOT tgisinternal),
       (SELECT array_agg(attname || ':' || format_type(atttypid, atttypmod) ORDER BY attnum)
         FROM pg_attribute WHERE attrelid = 'plays'::regclass AND attnum > 0),
       (SELECT count(*) FROM plays)
"""


async def connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def test_a_fresh_database_gets_plays_and_the_core_plays_schema(empty_database: str) -> None:
    async with await connect(empty_database) as conn:
        applied = await apply_migrations(conn)
        await check_plays_schema(conn)
        cur = await conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', 'core_plays') ORDER BY 1"
        )
        tables = [r[0] for r in await cur.fetchall()]
    assert applied == [m.version for m in migrations()]
    assert tables == [
        "core_plays.checkpoint",
        "core_plays.conflicts",
        "core_plays.migrations",
        "core_plays.quarantine",
        "core_plays.tx_ledger",
        "public.plays",
    ]


async def test_migrating_twice_applies_nothing_the_second_time(empty_database: str) -> None:
    async with await connect(empty_database) as conn:
        await apply_migrations(conn)
        assert await apply_migrations(conn) == []


async def test_concurrent_migrations_apply_each_version_once(empty_database: str) -> None:
    conns = [await connect(empty_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        cur = await conns[0].execute("SELECT version FROM core_plays.migrations ORDER BY 1")
        versions = [r[0] for r in await cur.fetchall()]
    finally:
        for c in conns:
            await c.close()
    assert sorted(v for applied in results for v in applied) == versions
    assert versions == [m.version for m in migrations()]


async def test_an_existing_plays_table_is_left_exactly_as_it_was(empty_database: str) -> None:
    async with await connect(empty_database) as conn:
        await conn.execute(DISCOVERY_SQL)
        before = await (await conn.execute(PLAYS_SHAPE)).fetchone()
        await apply_migrations(conn)
        await check_plays_schema(conn)
        after = await (await conn.execute(PLAYS_SHAPE)).fetchone()
    assert after == before


@pytest.mark.parametrize("column", ["slot", "signature", "country"])
async def test_a_plays_table_without_a_written_column_is_refused_by_name(
    empty_database: str, column: str
) -> None:
    async with await connect(empty_database) as conn:
        await conn.execute(DISCOVERY_SQL)
        await conn.execute(f"ALTER TABLE plays DROP COLUMN {column}")
        await apply_migrations(conn)
        with pytest.raises(SchemaMismatch, match=column):
            await check_plays_schema(conn)


async def test_the_identity_migration_keeps_the_ledger_and_frees_positions(
    empty_database: str,
) -> None:
    async with await connect(empty_database) as conn:
        await apply_migrations(conn, up_to=3)
        await conn.execute(
            "INSERT INTO core_plays.tx_ledger (chain_id, block_height, tx_index, tx_hash, "
            "play_count, skipped_count) VALUES ('c', 5, 0, 'A', 1, 0)"
        )
        assert await apply_migrations(conn, up_to=4) == [4]
        # A different transaction at the position A holds is now a new row, not a replay.
        await conn.execute(
            "INSERT INTO core_plays.tx_ledger (chain_id, block_height, tx_index, tx_hash, "
            "play_count, skipped_count) VALUES ('c', 5, 0, 'X', 1, 0) ON CONFLICT DO NOTHING"
        )
        duplicate = await conn.execute(
            "INSERT INTO core_plays.tx_ledger (chain_id, block_height, tx_index, tx_hash, "
            "play_count, skipped_count) VALUES ('c', 9, 3, 'A', 1, 0) ON CONFLICT DO NOTHING"
        )
        cur = await conn.execute(
            "SELECT tx_hash, block_height, tx_index FROM core_plays.tx_ledger ORDER BY 1"
        )
        assert await cur.fetchall() == [("A", 5, 0), ("X", 5, 0)]
        assert duplicate.rowcount == 0


async def test_an_index_left_invalid_by_an_interrupted_migration_is_built_again(
    empty_database: str,
) -> None:
    async with await connect(empty_database) as conn:
        await apply_migrations(conn, up_to=3)
        # What a killed CREATE INDEX CONCURRENTLY leaves: the index, marked invalid.
        await conn.execute(
            "CREATE INDEX tx_ledger_position ON core_plays.tx_ledger (chain_id, block_height)"
        )
        await conn.execute(
            "UPDATE pg_index SET indisvalid = false "
            "WHERE indexrelid = 'core_plays.tx_ledger_position'::regclass"
        )
        await apply_migrations(conn)
        cur = await conn.execute(
            "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indexrelid = 'core_plays.tx_ledger_position'::regclass"
        )
        valid, definition = await cur.fetchone() or (False, "")
    assert valid
    assert "tx_index" in definition
