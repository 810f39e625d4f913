"""PostgreSQL fails, refuses or turns read-only: the consumer waits it out, not ready, and
loses nothing; plays it still cannot write are set aside, never dropped."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from consumer.ops.admin import quarantine_command
from tests.conftest import (
    ADMIN_URL,
    DevnetFactory,
    assert_retries_back_off,
    eventually,
    make_settings,
    restart_server,
    through,
)
from tests.consumers import Consumer, query
from tests.proxy import TcpProxy
from tests.reference import assert_aggregates_exact, assert_rows_exact, expected_rows, new_plays


async def cut_until_noticed(proxy: TcpProxy, consumer: Consumer) -> None:
    """Cut every database connection and restore them once the consumer has seen it."""
    errors = consumer.value("db_errors_total")
    await proxy.stop()
    await eventually(lambda: consumer.value("db_errors_total") > errors)
    await proxy.start()


async def test_a_database_outage_is_retried_reported_not_ready_and_survived(
    devnet_factory: DevnetFactory, database: str, db_proxy: TcpProxy
) -> None:
    devnet = await devnet_factory(height=30)
    consumer = Consumer(devnet.url, through(db_proxy, database), from_height=1)
    await consumer.reach(30)
    await db_proxy.stop()
    await devnet.advance(10)
    await eventually(lambda: consumer.value("db_errors_total") >= 1)
    ready, why = consumer.runner.readiness()
    assert not ready and why.startswith("the database:")
    await assert_retries_back_off(lambda: consumer.value("db_errors_total"))
    await db_proxy.start()
    await consumer.reach(40)
    await eventually(lambda: consumer.runner.waiting.what is None)
    await consumer.finish()
    assert consumer.value("reconnects_total", target="database") >= 1
    await assert_rows_exact(database, devnet, 40)


async def test_connections_cut_in_the_middle_of_a_catch_up_lose_nothing(
    devnet_factory: DevnetFactory, database: str, db_proxy: TcpProxy
) -> None:
    devnet = await devnet_factory(height=1500)
    consumer = Consumer(devnet.url, through(db_proxy, database), from_height=1, max_blocks=20)
    for height in (300, 700, 1100):
        await consumer.reach(height)
        await cut_until_noticed(db_proxy, consumer)
    await consumer.reach(1500, timeout_s=60)
    await consumer.finish()
    assert consumer.value("db_errors_total") >= 3
    await assert_rows_exact(database, devnet, 1500)


async def test_a_real_server_restart_is_survived(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=30)
    consumer = Consumer(devnet.url, database, from_height=1)
    await consumer.reach(30)
    if not await asyncio.to_thread(restart_server):
        await consumer.finish()
        pytest.skip("needs the suite's embedded PostgreSQL, or root and Debian's pg_ctlcluster")
    await devnet.advance(10)
    await consumer.reach(40, timeout_s=30)
    await consumer.finish()
    assert consumer.value("db_errors_total") >= 1
    await assert_rows_exact(database, devnet, 40)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT height FROM core_plays.checkpoint")
        assert await cur.fetchone() == (40,)


# An AFTER INSERT trigger on plays that fails while `trigger_state.failing` says so:
# someone else's bug, downstream of the service.
FLAKY_TRIGGER = """
CREATE TABLE trigger_state (failing boolean NOT NULL);
INSERT INTO trigger_state VALUES (true);
CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT failing FROM trigger_state) THEN PERFORM 1 / 0; END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER flaky AFTER INSERT ON plays FOR EACH ROW EXECUTE FUNCTION flaky();
"""


async def test_a_trigger_failing_for_a_while_delays_plays_but_loses_none(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(height=30)
    await query(discovery, FLAKY_TRIGGER)
    consumer = Consumer(devnet.url, discovery, from_height=1, refused_retry_s=120)
    await eventually(lambda: consumer.value("write_refused") == 1)
    assert not consumer.runner.readiness()[0]
    await eventually(lambda: consumer.value("db_errors_total") >= 2)  # retried, not set aside
    await query(discovery, "UPDATE trigger_state SET failing = false")
    await consumer.reach(30)
    assert consumer.value("write_refused") == 0
    await consumer.finish()
    assert await new_plays(discovery) == expected_rows(devnet.chain, 1, 30)
    await assert_aggregates_exact(discovery)
    assert await query(discovery, "SELECT count(*) FROM core_plays.quarantine") == [(0,)]
    assert consumer.value("set_aside_total") == 0


def busiest_height(devnet_rows: dict[tuple[object, ...], int]) -> int:
    per_height: dict[int, int] = {}
    for row, n in devnet_rows.items():
        height = int(str(row[3]))
        per_height[height] = per_height.get(height, 0) + n
    return max(per_height, key=lambda h: per_height[h])


async def test_plays_refused_for_good_are_set_aside_with_their_bytes_and_written_by_retry(
    devnet_factory: DevnetFactory, discovery: str
) -> None:
    devnet = await devnet_factory(height=30)
    expected = expected_rows(devnet.chain, 1, 30)
    bad = busiest_height(expected)
    await query(
        discovery,
        f"""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.slot = {bad} THEN RAISE EXCEPTION 'height {bad} refused'; END IF;
            RETURN NULL; END $$;
            CREATE TRIGGER refuse AFTER INSERT ON plays FOR EACH ROW EXECUTE FUNCTION refuse()""",
    )
    consumer = Consumer(devnet.url, discovery, from_height=1, refused_retry_s=1)
    await consumer.reach(30)
    set_aside = await query(
        discovery,
        "SELECT block_height, octet_length(data) > 0 FROM core_plays.quarantine "
        "WHERE kind = 'refused' AND written_at IS NULL",
    )
    assert set_aside and all(row == (bad, True) for row in set_aside)
    assert consumer.value("set_aside_pending") == len(set_aside)
    assert await new_plays(discovery) == expected - expected_rows(devnet.chain, bad, bad)

    await query(discovery, "DROP TRIGGER refuse ON plays")
    settings = make_settings(devnet.url, discovery)
    assert await quarantine_command(settings, "retry") == 0
    await eventually(lambda: consumer.value("set_aside_pending") == 0)
    await consumer.finish()
    assert await new_plays(discovery) == expected
    await assert_aggregates_exact(discovery)
    assert await quarantine_command(settings, "retry") == 0  # nothing left, nothing twice
    assert await new_plays(discovery) == expected


def dbname(database: str) -> str:
    return str(conninfo_to_dict(database)["dbname"])


async def terminate_consumers(database: str) -> None:
    await query(
        ADMIN_URL,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND application_name = 'core-plays-consumer'",
        dbname(database),
    )


async def test_a_failover_onto_a_read_only_database_is_waited_out(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=30)
    consumer = Consumer(devnet.url, database, from_height=1)
    await consumer.reach(30)
    name = dbname(database)
    await query(ADMIN_URL, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    await terminate_consumers(database)
    await devnet.advance(10)
    await eventually(lambda: "read-only" in (consumer.runner.waiting.what or ""))
    assert not consumer.runner.readiness()[0] and not consumer.task.done()
    await query(ADMIN_URL, f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    await consumer.reach(40)
    await eventually(lambda: consumer.runner.waiting.what is None)
    await consumer.finish()
    await assert_rows_exact(database, devnet, 40)


_MIGRATION_LOCK = 0x636F72655F706C61


async def test_a_session_killed_during_start_up_migrations_is_retried(
    devnet_factory: DevnetFactory, empty_database: str
) -> None:
    devnet = await devnet_factory(height=20)
    async with await psycopg.AsyncConnection.connect(empty_database, autocommit=True) as blocker:
        await blocker.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        consumer = Consumer(devnet.url, empty_database, from_height=1)
        sessions = (
            "SELECT pid FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = 'core-plays-consumer'"
        )

        async def migrators() -> set[int]:
            return {row[0] for row in await query(ADMIN_URL, sessions, dbname(empty_database))}

        first = await eventually(migrators)  # held up by the migration lock
        await terminate_consumers(empty_database)
        await eventually(lambda: consumer.runner.waiting.what is not None)

        async def came_back() -> bool:
            now = await migrators()
            return bool(now) and now.isdisjoint(first)

        await eventually(came_back)
        await blocker.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    await consumer.reach(20)
    await consumer.finish()
    await assert_rows_exact(empty_database, devnet, 20)


async def test_a_dbas_tight_statement_and_idle_timeouts_do_not_stop_the_writer(
    devnet_factory: DevnetFactory, database: str
) -> None:
    name = dbname(database)
    await query(
        database,
        """CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN PERFORM pg_sleep(0.1); RETURN NULL; END $$;
           CREATE TRIGGER slow AFTER INSERT ON plays FOR EACH STATEMENT EXECUTE FUNCTION slow()""",
    )
    await query(ADMIN_URL, f"ALTER DATABASE \"{name}\" SET statement_timeout = '50ms'")
    await query(
        ADMIN_URL, f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '2ms'"
    )
    devnet = await devnet_factory(height=30)
    consumer = Consumer(devnet.url, database, from_height=1, max_blocks=5)
    await consumer.reach(30)
    await consumer.finish()
    assert consumer.value("db_errors_total") == 0
    await query(ADMIN_URL, f'ALTER DATABASE "{name}" RESET ALL')  # for the check's own session
    await assert_rows_exact(database, devnet, 30)


async def test_stop_while_waiting_for_the_database_at_start_ends_the_run_quietly(
    devnet_factory: DevnetFactory,
) -> None:
    devnet = await devnet_factory(height=5)
    consumer = Consumer(devnet.url, "postgresql://postgres@127.0.0.1:1/postgres", from_height=1)
    await eventually(lambda: "PostgreSQL at" in (consumer.runner.waiting.what or ""))
    assert not consumer.runner.readiness()[0]
    await consumer.finish()  # returns, instead of a ConfigError after --connect-timeout-s
