"""Numbered SQL migrations, each applied once, in its own transaction; and the checks
that the schema they leave is the one this build writes to.

The migrator holds one session-level advisory lock while it works, so two
processes starting at once (two replicas, a backfill job) apply each migration
exactly once and the later one simply finds it done.

A migration that must not block writers on a big table puts its slow,
idempotent statements (CREATE INDEX CONCURRENTLY IF NOT EXISTS ...) before a
line `-- transaction --`: they run one by one outside any transaction, under a
session advisory lock, before the transactional part. That part sets its own
`lock_timeout`; when it cannot get its locks in time (a writer's batch is open)
it is rolled back and tried again, so writers never queue behind it for long.

Least privilege: only `migrate` needs DDL rights. `run` first reads the schema
version and issues no DDL at all when it is current, so a runtime role with
the grants of `runtime_grants` (consumer/sink/privileges.py) runs; when the
schema is behind, `run` applies it if it may and otherwise says to run
`migrate` as the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from consumer.errors import ConfigError, SchemaMismatch
from consumer.sink.privileges import check_runtime_privileges

__all__ = [
    "PLAYS_COLUMNS",
    "Migration",
    "apply_migrations",
    "check_plays_schema",
    "explain_database_errors",
    "migrate_database",
    "migrations",
    "prepare_database",
    "schema_version",
]

log = logging.getLogger(__name__)

# Any constant works; this one is "core_plays" folded into a bigint.
_MIGRATION_LOCK = 0x636F72655F706C61
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_TRANSACTION_MARK = "-- transaction --"
# Waiting for a busy table's lock: how long between tries of the transactional part.
_LOCK_RETRY_S = 0.5
_LOCK_POLL_S = 0.1

# The plays columns this service writes, with the types it needs.
PLAYS_COLUMNS = {
    "user_id": "integer",
    "source": "character varying",
    "play_item_id": "integer",
    "created_at": "timestamp without time zone",
    "updated_at": "timestamp without time zone",
    "slot": "integer",
    "signature": "character varying",
    "city": "character varying",
    "region": "character varying",
    "country": "character varying",
}

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS core_plays;
CREATE TABLE IF NOT EXISTS core_plays.migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str  # the transactional part
    online: tuple[str, ...] = ()  # statements run before it, outside any transaction

    @classmethod
    def parse(cls, version: int, name: str, text: str) -> Migration:
        if _TRANSACTION_MARK not in text:
            return cls(version, name, text)
        before, _, after = text.partition(_TRANSACTION_MARK)
        online = tuple(
            statement.strip()
            for statement in before.split(";\n")
            if any(
                line.strip() and not line.strip().startswith("--")
                for line in statement.splitlines()
            )
        )
        return cls(version, name, after, online)


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("consumer.sink.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration.parse(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


async def apply_migrations(
    conn: psycopg.AsyncConnection[TupleRow], up_to: int | None = None
) -> list[int]:
    """Apply what is missing (up to version `up_to`, for upgrade tests and
    benchmarks); return the versions applied now. Safe to run concurrently."""
    applied_now = []
    async with _migration_lock(conn):
        for migration in migrations():
            if up_to is not None and migration.version > up_to:
                break
            if not await _apply(conn, migration):
                continue
            applied_now.append(migration.version)
            log.info("applied migration %04d_%s", migration.version, migration.name)
    return applied_now


@contextlib.asynccontextmanager
async def _migration_lock(conn: psycopg.AsyncConnection[TupleRow]) -> AsyncIterator[None]:
    """One migrator at a time, by a session lock taken by polling.

    Polling rather than waiting: CREATE INDEX CONCURRENTLY waits for every
    transaction that started before it, so a second migrator blocked on a lock
    inside a transaction would wait for the first while the first waits for it.
    """
    while True:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_MIGRATION_LOCK,))
        row = await cur.fetchone()
        if row is not None and row[0]:
            break
        await asyncio.sleep(_LOCK_POLL_S)
    try:
        yield
    finally:
        if not conn.closed:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))


async def _apply(conn: psycopg.AsyncConnection[TupleRow], migration: Migration) -> bool:
    """Apply one migration unless it is recorded as applied; under the migration lock."""
    await conn.execute(_BOOTSTRAP)
    cur = await conn.execute(
        "SELECT 1 FROM core_plays.migrations WHERE version = %s", (migration.version,)
    )
    if await cur.fetchone() is not None:
        return False
    await _run_online(conn, migration)
    while True:
        try:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO core_plays.migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            return True
        except psycopg.errors.LockNotAvailable:
            log.warning(
                "migration %04d_%s is waiting for writers to let go of a table; trying "
                "again in %.1f s (writers are not held up meanwhile)",
                migration.version,
                migration.name,
                _LOCK_RETRY_S,
            )
            await asyncio.sleep(_LOCK_RETRY_S)


async def _run_online(conn: psycopg.AsyncConnection[TupleRow], migration: Migration) -> None:
    """The statements that must not run in a transaction.

    An index build that was interrupted (a kill, a lost session) leaves an
    INVALID index that IF NOT EXISTS would then take for done: such leftovers in
    our schema are dropped first, so the build starts again.
    """
    if not migration.online:
        return
    cur = await conn.execute(
        """SELECT n.nspname, c.relname
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'core_plays' AND NOT i.indisvalid"""
    )
    for schema, index in await cur.fetchall():
        log.warning("dropping the unfinished index %s left by an interrupted migration", index)
        await conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                sql.Identifier(schema), sql.Identifier(index)
            )
        )
    for statement in migration.online:
        log.info(
            "migration %04d_%s: %s (writers go on meanwhile)",
            migration.version,
            migration.name,
            next(line for line in statement.splitlines() if not line.startswith("--"))[:80],
        )
        await conn.execute(statement)


async def schema_version(conn: psycopg.AsyncConnection[TupleRow]) -> int | None:
    """The highest applied migration; None on a database never migrated.

    Read-only on purpose: a runtime role without CREATE can ask it.
    """
    cur = await conn.execute("SELECT to_regclass('core_plays.migrations') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return None
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM core_plays.migrations")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate_database(conn: psycopg.AsyncConnection[TupleRow], safe_url: str) -> list[int]:
    """`migrate`: apply what is missing (DDL rights needed), then check plays."""
    try:
        applied = await apply_migrations(conn)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"the database user cannot create the core_plays schema at {safe_url}: "
            f"{exc.diag.message_primary}; grant CREATE on the database or run "
            "`plays-consumer migrate` as its owner"
        ) from None
    await check_plays_schema(conn)
    return applied


async def prepare_database(conn: psycopg.AsyncConnection[TupleRow], safe_url: str) -> list[int]:
    """`run`: check the schema version, migrate only when behind and allowed, then
    check plays and this user's privileges, so a missing grant stops the start with
    one line instead of failing the first batch."""
    needed = len(migrations())
    found = await schema_version(conn)
    applied: list[int] = []
    if found is None or found < needed:
        try:
            applied = await apply_migrations(conn)
        except psycopg.errors.InsufficientPrivilege:
            have = "never migrated" if found is None else f"at schema version {found}"
            raise ConfigError(
                f"the database at {safe_url} is {have}, this build needs version {needed}, "
                "and this user may not change the schema: run `plays-consumer migrate` "
                "as the owner"
            ) from None
    await check_plays_schema(conn)
    await check_runtime_privileges(conn, safe_url)
    return applied


@contextlib.contextmanager
def explain_database_errors(safe_url: str) -> Iterator[None]:
    """One line an operator can act on, instead of a traceback, for the read-only
    commands (status, gaps, backfill-plan --resume)."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"{exc.diag.message_primary} at {safe_url}: as the owner, apply what "
            "`plays-consumer migrate --print-grants ROLE` prints for this user"
        ) from None
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        raise ConfigError(
            f"the database at {safe_url} was never migrated (no core_plays schema): "
            "run `plays-consumer migrate` as its owner"
        ) from None


async def check_plays_schema(conn: psycopg.AsyncConnection[TupleRow]) -> None:
    """Fail at start, naming the column, rather than at the first insert."""
    cur = await conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, NULL)
        FROM pg_attribute a
        WHERE a.attrelid = to_regclass('plays') AND a.attnum > 0 AND NOT a.attisdropped
        """
    )
    found: dict[str, str] = dict(await cur.fetchall())
    if not found:
        raise SchemaMismatch("table plays does not exist (run `plays-consumer migrate`)")
    missing = [c for c in PLAYS_COLUMNS if c not in found]
    if missing:
        raise SchemaMismatch(f"table plays lacks column(s) {', '.join(missing)}")
    wrong = [
        f"{c} is {found[c]}, expected {t}"
        for c, t in PLAYS_COLUMNS.items()
        if found[c] != t and not (t == "character varying" and found[c] == "text")
    ]
    if wrong:
        raise SchemaMismatch(f"table plays has unexpected column types: {'; '.join(wrong)}")
