"""Numbered SQL migrations, each applied once, in its own transaction.

Every migration transaction starts by taking one transaction-scoped advisory
lock, so two processes starting at once (two replicas, a backfill job) apply
each migration exactly once and the loser simply finds it done.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg.rows import TupleRow

from consumer.errors import ConfigError, SchemaMismatch

__all__ = [
    "PLAYS_COLUMNS",
    "Migration",
    "apply_migrations",
    "check_plays_schema",
    "migrations",
    "prepare_database",
]

log = logging.getLogger(__name__)

# Any constant works; this one is "core_plays" folded into a bigint.
_MIGRATION_LOCK = 0x636F72655F706C61
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

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
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("consumer.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


async def apply_migrations(conn: psycopg.AsyncConnection[TupleRow]) -> list[int]:
    """Apply what is missing; return the versions applied now. Safe to run concurrently."""
    applied_now = []
    for migration in migrations():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(_BOOTSTRAP)
            cur = await conn.execute(
                "SELECT 1 FROM core_plays.migrations WHERE version = %s", (migration.version,)
            )
            if await cur.fetchone() is not None:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO core_plays.migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration.version)
            log.info("applied migration %04d_%s", migration.version, migration.name)
    return applied_now


async def prepare_database(conn: psycopg.AsyncConnection[TupleRow], safe_url: str) -> list[int]:
    """Migrate and check, as `run` and `migrate` both do; a missing privilege is a
    configuration error that names what to grant."""
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
