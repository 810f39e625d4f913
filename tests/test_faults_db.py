"""PostgreSQL goes away: the consumer retries with backoff, reports not-ready, and resumes."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import ADMIN_URL, DevnetFactory, eventually
from tests.proxy import TcpProxy
from tests.test_faults_node import Consumer, assert_rows_exact


@pytest_asyncio.fixture
async def db_proxy() -> AsyncIterator[TcpProxy]:
    params = conninfo_to_dict(ADMIN_URL)
    proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port") or 5432))
    await proxy.start()
    yield proxy
    await proxy.stop()


def through(proxy: TcpProxy, database: str) -> str:
    return make_conninfo(database, host="127.0.0.1", port=proxy.port)


async def test_a_database_outage_is_retried_reported_not_ready_and_survived(
    devnet_factory: DevnetFactory, database: str, db_proxy: TcpProxy
) -> None:
    devnet = await devnet_factory(height=30)
    consumer = Consumer(devnet.url, through(db_proxy, database), from_height=1)
    await consumer.reach(30)
    await db_proxy.stop()
    await devnet.advance(10)
    await eventually(lambda: consumer.value("db_errors_total") >= 1)
    assert consumer.runner.readiness() == (False, "database unreachable")
    await asyncio.sleep(1.0)
    # Backoff between attempts: a hot loop would count thousands here.
    assert consumer.value("db_errors_total") < 20
    await db_proxy.start()
    await consumer.reach(40)
    await eventually(lambda: consumer.runner.db_ok)
    await consumer.finish()
    assert consumer.value("reconnects_total", target="database") >= 1
    await assert_rows_exact(database, devnet, 40)


async def test_connections_cut_in_the_middle_of_a_catch_up_lose_nothing(
    devnet_factory: DevnetFactory, database: str, db_proxy: TcpProxy
) -> None:
    devnet = await devnet_factory(height=3000)
    consumer = Consumer(devnet.url, through(db_proxy, database), from_height=1, max_blocks=20)
    for height in (300, 900, 1500):
        await consumer.reach(height)
        await db_proxy.stop()
        await asyncio.sleep(0.2)
        await db_proxy.start()
    await consumer.reach(3000, timeout_s=60)
    await consumer.finish()
    assert consumer.value("db_errors_total") >= 3
    await assert_rows_exact(database, devnet, 3000)


def _pg_cluster() -> tuple[str, str] | None:
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        return None
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    return (versions[-1], "main") if versions else None


async def test_a_real_server_restart_is_survived(
    devnet_factory: DevnetFactory, database: str
) -> None:
    cluster = _pg_cluster()
    if cluster is None:
        pytest.skip("needs root and Debian's pg_ctlcluster to restart the server")
    devnet = await devnet_factory(height=30)
    consumer = Consumer(devnet.url, database, from_height=1)
    await consumer.reach(30)
    await asyncio.to_thread(
        subprocess.run,
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart", "-m", "fast"],
        check=True,
        capture_output=True,
    )
    await devnet.advance(10)
    await consumer.reach(40, timeout_s=30)
    await consumer.finish()
    assert consumer.value("db_errors_total") >= 1
    await assert_rows_exact(database, devnet, 40)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT height FROM core_plays.checkpoint")
        assert await cur.fetchone() == (40,)
