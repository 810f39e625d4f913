"""Migrations: a fresh database gets everything, a live one keeps its plays untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from consumer.devnet import DevnetServer
from consumer.errors import SchemaMismatch
from consumer.sink.migrate import apply_migrations, check_plays_schema, migrations
from tests.conftest import DISCOVERY_SQL, TwoRoles
from tests.procs import flags, run_once
from tests.reference import expected_rows, plays_rows

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
        "core_plays.handover",
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


async def _migrate_and_print_grants(roles: TwoRoles) -> str:
    """As the owner: migrate, then what --print-grants prints for the runtime role."""
    code, _, err = await run_once("migrate", "--database-url", roles.owner_url)
    assert code == 0, err
    code, grants, err = await run_once(
        "migrate", "--database-url", roles.owner_url, "--print-grants", roles.runtime
    )
    assert code == 0, err
    return grants


async def _migrate_and_grant(roles: TwoRoles) -> str:
    """As the owner: migrate, then apply what --print-grants prints for the runtime role."""
    grants = await _migrate_and_print_grants(roles)
    async with await connect(roles.owner_url) as conn:
        await conn.execute(grants.encode())
    return grants


async def _run_as_runtime(devnet: DevnetServer, roles: TwoRoles, to_height: int) -> tuple[int, str]:
    """`run` of heights 1..to_height as the runtime role: the exit code and stderr."""
    code, _, err = await run_once(
        "run",
        *flags(
            core_url=devnet.url,
            database_url=roles.runtime_url,
            from_height=1,
            to_height=to_height,
            metrics_addr="127.0.0.1:0",
        ),
    )
    return code, err


async def test_run_works_as_a_role_with_only_the_printed_grants(
    devnet: DevnetServer, two_roles: TwoRoles
) -> None:
    await _migrate_and_grant(two_roles)
    code, err = await _run_as_runtime(devnet, two_roles, to_height=40)
    assert code == 0, err
    async with await connect(two_roles.owner_url) as conn:
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, 40)


async def test_the_runtime_role_owns_nothing_and_cannot_create_in_the_database(
    two_roles: TwoRoles,
) -> None:
    await _migrate_and_grant(two_roles)
    async with await connect(two_roles.runtime_url) as conn:
        cur = await conn.execute(
            "SELECT has_database_privilege(current_database(), 'CREATE'), "
            "has_schema_privilege('core_plays', 'CREATE'), "
            "(SELECT count(*) FROM pg_class WHERE relowner = "
            " (SELECT oid FROM pg_roles WHERE rolname = current_user))"
        )
        assert await cur.fetchone() == (False, False, 0)


async def test_run_without_a_grant_names_every_missing_privilege_and_exits_2(
    devnet: DevnetServer, two_roles: TwoRoles
) -> None:
    await _migrate_and_grant(two_roles)
    async with await connect(two_roles.owner_url) as conn:
        await conn.execute(
            f'REVOKE INSERT ON plays FROM "{two_roles.runtime}";'
            f'REVOKE TEMPORARY ON DATABASE "{two_roles.database}" FROM "{two_roles.runtime}"'
        )
    code, err = await _run_as_runtime(devnet, two_roles, to_height=40)
    [line] = [x for x in err.splitlines() if x.startswith("plays-consumer: error:")]
    assert code == 2, err
    assert "TEMPORARY on database" in line and "INSERT on table public.plays" in line
    assert "Traceback" not in err


async def test_run_on_a_schema_behind_tells_the_runtime_role_to_migrate_as_the_owner(
    devnet: DevnetServer, two_roles: TwoRoles
) -> None:
    await _migrate_and_grant(two_roles)
    latest = migrations()[-1].version
    async with await connect(two_roles.owner_url) as conn:
        await conn.execute("DELETE FROM core_plays.migrations WHERE version = %s", (latest,))
    code, err = await _run_as_runtime(devnet, two_roles, to_height=10)
    assert code == 2, err
    assert f"schema version {latest - 1}" in err
    assert "run `plays-consumer migrate` as the owner" in err


async def test_print_grants_changes_nothing_in_the_database(two_roles: TwoRoles) -> None:
    out = await _migrate_and_print_grants(two_roles)
    assert "GRANT SELECT, INSERT ON public.plays" in out.replace('"', "")
    async with await connect(two_roles.owner_url) as conn:
        cur = await conn.execute(
            "SELECT has_table_privilege(%s, 'plays', 'INSERT')", (two_roles.runtime,)
        )
        assert await cur.fetchone() == (False,)


async def test_verify_works_as_a_role_with_only_the_printed_grants(
    devnet: DevnetServer, two_roles: TwoRoles
) -> None:
    await _migrate_and_grant(two_roles)
    code, err = await _run_as_runtime(devnet, two_roles, to_height=20)
    assert code == 0, err
    code, out, err = await run_once(
        "verify",
        *flags(
            core_url=devnet.url, database_url=two_roles.runtime_url, from_height=1, to_height=20
        ),
    )
    assert code == 0, out + err


async def test_quarantine_retry_works_as_a_role_with_only_the_printed_grants(
    devnet: DevnetServer, two_roles: TwoRoles
) -> None:
    await _migrate_and_grant(two_roles)
    bad = min(int(str(row[3])) for row in expected_rows(devnet.chain, 1, 20))  # has plays
    async with await connect(two_roles.owner_url) as conn:
        await conn.execute(
            f"""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF NEW.slot = {bad} THEN RAISE EXCEPTION 'refused'; END IF;
               RETURN NULL; END $$;
               CREATE TRIGGER refuse AFTER INSERT ON plays
               FOR EACH ROW EXECUTE FUNCTION refuse()"""
        )
    code, _, err = await run_once(
        "run",
        *flags(
            core_url=devnet.url,
            database_url=two_roles.runtime_url,
            from_height=1,
            to_height=20,
            metrics_addr="127.0.0.1:0",
            refused_retry_s=0,
        ),
    )
    assert code == 0, err
    async with await connect(two_roles.owner_url) as conn:
        cur = await conn.execute(
            "SELECT count(*) > 0 FROM core_plays.quarantine WHERE written_at IS NULL"
        )
        assert await cur.fetchone() == (True,)  # something was set aside to retry
        await conn.execute("DROP TRIGGER refuse ON plays")
    code, out, err = await run_once("quarantine", "retry", "--database-url", two_roles.runtime_url)
    assert code == 0, out + err
    async with await connect(two_roles.owner_url) as conn:
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, 20)
