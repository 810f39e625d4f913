"""The writer lease: one leader per (chain, stream), a healthy standby, a clean hand-over."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from consumer.errors import CheckpointMissing
from consumer.service.readiness import Role
from consumer.service.writer import Writer
from consumer.sink.lease import Holder, find_holder, lock_key
from tests.conftest import ADMIN_URL, DevnetFactory, eventually, through
from tests.consumers import Consumer, query
from tests.proxy import TcpProxy
from tests.reference import assert_rows_exact


async def holder(database: str, chain_id: str, stream: str = "live") -> Holder | None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        return await find_holder(conn, lock_key(chain_id, stream))


async def kill(pid: int) -> None:
    await query(ADMIN_URL, "SELECT pg_terminate_backend(%s)", pid)


async def test_an_ex_leader_stands_by_ready_and_resumes_from_the_checkpoint(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=30)
    first = Consumer(devnet.url, database)
    with pytest.raises(CheckpointMissing):  # no checkpoint yet: needs --from-height
        await first.task
    a = Consumer(devnet.url, database, from_height=1)
    await a.reach(30)
    b = Consumer(devnet.url, database)
    await eventually(lambda: b.runner.ready.role is Role.STANDBY)
    assert b.runner.readiness()[0]
    leader = await holder(database, a.runner.chain_id)
    assert leader is not None
    await kill(leader.pid)  # A's session is gone: B takes over
    await eventually(lambda: b.value("is_leader") == 1)
    await eventually(lambda: a.runner.ready.role is Role.STANDBY)
    assert a.value("is_leader") == 0
    assert a.runner.readiness() == (True, "standby: another instance holds the writer lock")
    await devnet.advance(20)
    await b.reach(50)
    await b.finish()  # A takes the lock back; B wrote 31..50, which A must not write again
    await eventually(lambda: a.value("is_leader") == 1)
    await devnet.advance(10)
    await a.reach(60)
    await a.finish()
    assert a.value("duplicate_transactions_total") == 0
    await assert_rows_exact(database, devnet, 60)


async def test_is_leader_drops_as_soon_as_the_writers_session_is_lost(
    devnet_factory: DevnetFactory, database: str, db_proxy: TcpProxy
) -> None:
    devnet = await devnet_factory(height=30)
    url = through(db_proxy, database)
    consumer = Consumer(devnet.url, url, from_height=1, retry_cap_s=5.0)
    await consumer.reach(30)
    assert consumer.value("is_leader") == 1
    await db_proxy.stop()
    await eventually(lambda: consumer.value("db_errors_total") >= 1)
    assert consumer.value("is_leader") == 0
    await db_proxy.start()
    await eventually(lambda: consumer.value("is_leader") == 1, timeout_s=20)
    await consumer.finish()


async def test_a_writer_idle_at_the_tip_notices_its_lost_session_itself(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=20)
    consumer = Consumer(devnet.url, database, from_height=1)
    await consumer.reach(20)
    leader = await holder(database, consumer.runner.chain_id)
    assert leader is not None
    await kill(leader.pid)  # no block arrives: only the idle check can notice
    await eventually(lambda: consumer.value("reconnects_total", target="database") >= 1)
    await eventually(lambda: consumer.value("is_leader") == 1)
    await devnet.advance(5)
    await consumer.reach(25)
    await consumer.finish()
    await assert_rows_exact(database, devnet, 25)


async def test_a_bounded_run_says_at_once_who_holds_the_lock_and_how_to_run_beside_it(
    devnet_factory: DevnetFactory, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    devnet = await devnet_factory(height=30)
    live = Consumer(devnet.url, database, from_height=1)
    await live.reach(30)
    leader = await holder(database, live.runner.chain_id)
    assert leader is not None
    caplog.set_level(logging.WARNING, logger="consumer.service.runner")
    replay = Consumer(devnet.url, database, from_height=10, to_height=20)
    await eventually(lambda: replay.runner.ready.role is Role.STANDBY)
    [warning] = [r for r in caplog.records if "standing by" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert f"pid {leader.pid}" in warning.getMessage() and "--stream" in warning.getMessage()
    await replay.finish()
    await live.finish()


async def test_a_write_held_up_by_a_table_lock_is_logged_with_what_it_waits_for(
    devnet_factory: DevnetFactory,
    database: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Writer, "stall_s", 0.3)
    devnet = await devnet_factory(height=10)
    consumer = Consumer(devnet.url, database, from_height=1)
    await consumer.reach(10)
    caplog.set_level(logging.INFO, logger="consumer.service.writer")
    async with await psycopg.AsyncConnection.connect(database) as locker:
        await locker.execute("LOCK TABLE plays IN ACCESS EXCLUSIVE MODE")
        await devnet.advance(5)

        def stalled() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "has waited" in r.getMessage()]

        [warning] = await eventually(stalled)
        assert warning.levelno == logging.WARNING and "Lock" in warning.getMessage()
        await asyncio.sleep(0)  # the lock is released as the block ends
    await consumer.reach(15)
    assert [r for r in caplog.records if "went through" in r.getMessage()]
    await consumer.finish()
    await assert_rows_exact(database, devnet, 15)
