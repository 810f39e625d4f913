"""Fresh databases to measure in: the real migrations, the aggregate trigger, and the
commit notification the timings come from."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from consumer.sink.migrate import apply_migrations

__all__ = ["ADMIN_URL", "CHANNEL", "count_plays", "fresh_database", "prepare_database"]

ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CHANNEL = "bench_commit"

# The aggregate trigger of a discovery database, as the tests use it: per inserted
# row, two upserts into aggregate tables, as the real on_play does.
AGGREGATE_TRIGGER = (ROOT / "tests" / "fixtures" / "on_play.sql").read_text()

# Instrumentation only: tells this process the moment each checkpoint move commits.
COMMIT_NOTIFY = f"""
CREATE FUNCTION bench_notify_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('{CHANNEL}', NEW.height::text); RETURN NULL; END
$$;
CREATE TRIGGER bench_notify_commit AFTER INSERT OR UPDATE ON core_plays.checkpoint
FOR EACH ROW EXECUTE FUNCTION bench_notify_commit();
"""


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str, name: str, *, notify: bool) -> AsyncIterator[str]:
    """A new database with the real migrations and the aggregate trigger; dropped after."""
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(admin_url, dbname=name)
    try:
        await prepare_database(url, notify=notify)
        yield url
    finally:
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def prepare_database(url: str, *, notify: bool, checkpoint: bool = True) -> None:
    """Give a new, empty database the real migrations and the aggregate trigger, and with
    `notify` the commit notification."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await apply_migrations(conn)
        await conn.execute(AGGREGATE_TRIGGER)
        if notify:
            await conn.execute(COMMIT_NOTIFY)
        if checkpoint:
            await conn.execute("CHECKPOINT")  # start each measurement with no dirty backlog


async def count_plays(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT count(*) FROM plays")
        row = await cur.fetchone()
    return int(row[0]) if row else 0
