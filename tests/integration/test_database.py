"""Connecting to PostgreSQL and telling its errors apart, against the real server."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from consumer.backoff import Backoff, Retry
from consumer.config import Settings, SinkSettings
from consumer.errors import ConfigError
from consumer.sink.database import Fault, classify, connect, open_session
from tests.conftest import ADMIN_URL
from tests.consumers import BusyServer

# (SQLSTATE, what it means at start-up, what it means later)
TABLE = [
    ("28P01", Fault.CONFIG, Fault.WORLD),  # wrong password
    ("28000", Fault.CONFIG, Fault.WORLD),  # no such role, pg_hba
    ("3D000", Fault.CONFIG, Fault.WORLD),  # missing database
    ("42501", Fault.CONFIG, Fault.WORLD),  # missing privilege
    ("25006", Fault.WORLD, Fault.WORLD),  # read-only: a failover onto a replica
    ("57P01", Fault.WORLD, Fault.WORLD),  # admin shutdown
    ("57P02", Fault.WORLD, Fault.WORLD),  # crash shutdown
    ("57P03", Fault.WORLD, Fault.WORLD),  # cannot connect now
    ("53300", Fault.WORLD, Fault.WORLD),  # too many connections
    ("53100", Fault.WORLD, Fault.WORLD),  # disk full
    ("40001", Fault.WORLD, Fault.WORLD),  # serialization failure
    ("40P01", Fault.WORLD, Fault.WORLD),  # deadlock
    ("55P03", Fault.WORLD, Fault.WORLD),  # lock not available
    ("57014", Fault.WORLD, Fault.WORLD),  # statement timeout, cancel
    ("08006", Fault.WORLD, Fault.WORLD),  # connection failure
    ("22012", Fault.REFUSED, Fault.REFUSED),  # 1/0 in someone's trigger
    ("22001", Fault.REFUSED, Fault.REFUSED),  # value too long
    ("23505", Fault.REFUSED, Fault.REFUSED),  # unique violation
    ("54000", Fault.REFUSED, Fault.REFUSED),  # index row too big
    ("P0001", Fault.REFUSED, Fault.REFUSED),  # RAISE EXCEPTION in a trigger
    ("42P01", Fault.BUG, Fault.BUG),  # undefined table
    ("42601", Fault.BUG, Fault.BUG),  # syntax error
]


@pytest_asyncio.fixture
async def conn() -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
    """Any session will do to make the server raise: no database of the test's own."""
    async with await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True) as c:
        yield c


async def raised_by_server(conn: psycopg.AsyncConnection[TupleRow], code: str) -> psycopg.Error:
    try:
        await conn.execute(f"DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}'; END $$")
    except psycopg.Error as exc:
        return exc
    raise AssertionError("nothing raised")


@pytest.mark.parametrize(("code", "at_start", "later"), TABLE, ids=[row[0] for row in TABLE])
async def test_errors_are_classified_by_sqlstate(
    conn: psycopg.AsyncConnection[TupleRow], code: str, at_start: Fault, later: Fault
) -> None:
    exc = await raised_by_server(conn, code)
    assert exc.sqlstate == code
    assert (classify(exc, at_start=True), classify(exc)) == (at_start, later)


async def test_a_message_saying_ssl_or_invalid_is_not_taken_for_configuration(
    conn: psycopg.AsyncConnection[TupleRow],
) -> None:
    try:
        await conn.execute(
            "DO $$ BEGIN RAISE EXCEPTION 'invalid SSL state' USING ERRCODE = '08006'; END $$"
        )
    except psycopg.Error as ssl_exc:
        assert classify(ssl_exc, at_start=True) is Fault.WORLD
        return
    raise AssertionError("nothing raised")


def settings_for(url: str, timeout_s: float) -> Settings:
    return Settings(sink=SinkSettings(database_url=url, connect_timeout_s=timeout_s))


def tried_for(message: str) -> float:
    found = re.search(r"(?:tried for|stopped after) ([0-9.]+) s", message)
    assert found, message
    return float(found[1])


async def test_the_connect_timeout_is_honoured_and_the_time_tried_reported() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        await connect("postgresql://postgres@127.0.0.1:1/postgres", "port 1", 1.0)
    assert time.monotonic() - started < 10  # the default is 30 s
    assert 1.0 <= tried_for(str(raised.value)) < 10


async def test_a_missing_database_stops_at_once_whatever_the_timeout() -> None:
    started = time.monotonic()
    url = make_conninfo(ADMIN_URL, dbname="cpc_no_such_database")
    with pytest.raises(ConfigError) as raised:
        await connect(url, "cpc_no_such_database", 30.0)
    assert time.monotonic() - started < 10
    assert "3D000" in str(raised.value) and tried_for(str(raised.value)) < 10


async def test_stop_ends_the_wait_for_the_database_at_once() -> None:
    stop = asyncio.Event()
    retry = Retry(Backoff(initial_s=0.2, cap_s=2.0), stop)
    attempt = asyncio.create_task(
        connect("postgresql://postgres@127.0.0.1:1/postgres", "port 1", 30.0, retry)
    )
    await asyncio.sleep(0.3)
    stop.set()
    with pytest.raises(ConfigError) as raised:
        await attempt
    assert "stopped after" in str(raised.value) and tried_for(str(raised.value)) < 10


async def test_a_server_with_every_connection_slot_taken_is_waited_for(database: str) -> None:
    params = conninfo_to_dict(database)
    busy = BusyServer(str(params.get("host", "127.0.0.1")), int(params.get("port") or 5432), 3)
    await busy.start()
    try:
        url = make_conninfo(database, host="127.0.0.1", port=busy.port, sslmode="disable")
        conn = await connect(url, "busy", 0.5)  # far shorter than the wait: 53300 is a wait
        await conn.close()
        assert busy.refused == 3
    finally:
        await busy.stop()


async def test_the_sessions_own_settings_win_over_a_dbas_database_settings(database: str) -> None:
    name = conninfo_to_dict(database)["dbname"]
    async with await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True) as admin:
        await admin.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '50ms'")
        await admin.execute(
            f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '2ms'"
        )
    async with await open_session(database) as conn, conn.transaction():
        await conn.execute("SELECT pg_sleep(0.2)")  # would be cancelled at 50 ms
        await asyncio.sleep(0.05)  # idle in transaction far longer than 2 ms
        cur = await conn.execute("SHOW statement_timeout")
        assert await cur.fetchone() == ("0",)


async def test_migrate_with_a_one_second_timeout_fails_within_seconds() -> None:
    from consumer.ops.admin import migrate_command

    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        await migrate_command(settings_for("postgresql://postgres@127.0.0.1:1/postgres", 1.0))
    assert time.monotonic() - started < 10
    assert tried_for(str(raised.value)) < 10
