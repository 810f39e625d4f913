#!/usr/bin/env python
"""How long migration 0004 (the ledger keyed by tx_hash) blocks writers on a big ledger.

    .venv/bin/python scripts/migration_bench.py --rows 5000000   # the README's figures
    .venv/bin/python scripts/migration_bench.py --rows 20000     # what the test suite runs

In a database of its own (dropped at the end, also on Ctrl-C) it applies the
migrations up to 0003, generates a ledger of --rows rows in SQL, and starts
writers that commit small transactions continuously as the service does
(ledger, plays, checkpoint), timing each commit. Then `apply_migrations`
applies 0004 on another connection while they go on. A writer blocked by a
lock shows as a long commit, so the longest commit during the migration is the
longest stall; the same figures over an equal span with no migration (right
after it) say how much of that is only the load of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import signal
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consumer.sink.migrate import apply_migrations  # noqa: E402

CHAIN = "bench-chain"
TXS_PER_HEIGHT = 4
CHUNK_ROWS = 500_000
GENERATE = """
INSERT INTO core_plays.tx_ledger
    (chain_id, block_height, tx_index, tx_hash, play_count, skipped_count)
SELECT %(chain)s, n / %(per)s, n %% %(per)s,
       upper(encode(sha256(convert_to(n::text, 'UTF8')), 'hex')), 1 + n %% 3, (n %% 50 = 0)::int
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
"""
DROP_KEYS = """
ALTER TABLE core_plays.tx_ledger
    DROP CONSTRAINT tx_ledger_pkey, DROP CONSTRAINT tx_ledger_hash_key
"""
ADD_KEYS = """
ALTER TABLE core_plays.tx_ledger
    ADD CONSTRAINT tx_ledger_pkey PRIMARY KEY (chain_id, block_height, tx_index),
    ADD CONSTRAINT tx_ledger_hash_key UNIQUE (chain_id, tx_hash)
"""
# Before 0004 the ledger's conflict target is positional, after it the hash:
# without a target the same statement works on both sides of the migration.
WRITE_LEDGER = """
INSERT INTO core_plays.tx_ledger
    (chain_id, block_height, tx_index, tx_hash, play_count, skipped_count)
VALUES (%s, %s, 0, %s, 1, 0) ON CONFLICT DO NOTHING
"""
WRITE_PLAY = """
INSERT INTO plays (user_id, source, play_item_id, created_at, updated_at, slot, signature)
VALUES (1, 'relay', 1, now(), now(), %s, %s)
"""
WRITE_CHECKPOINT = """
INSERT INTO core_plays.checkpoint (chain_id, stream, start_height, height, block_hash)
VALUES (%(chain)s, %(stream)s, 0, %(height)s, %(hash)s)
ON CONFLICT (chain_id, stream) DO UPDATE SET height = EXCLUDED.height,
    block_hash = EXCLUDED.block_hash, updated_at = now()
"""
INDEX_BUILDS = "SELECT count(*) FROM pg_stat_progress_create_index WHERE datname = %s"


@dataclass
class Commits:
    """Every writer commit as (start, seconds), on the time.monotonic() clock."""

    done: list[tuple[float, float]] = field(default_factory=list)
    failed: list[tuple[float, str]] = field(default_factory=list)

    def figures(self, start: float, end: float) -> dict[str, str]:
        commits = [(t, s) for t, s in self.done if t < end and t + s > start]
        within = [s for _, s in commits]
        longest = max(commits, key=lambda c: c[1], default=(start, 0.0))
        failed = [e for t, e in self.failed if start <= t < end]
        p99 = (
            statistics.quantiles(within, n=100, method="inclusive")[98]
            if len(within) > 1
            else max(within, default=0)
        )
        return {
            "writer commits": f"{len(within):,}",
            "commits/s": f"{len(within) / max(end - start, 1e-9):,.0f}",
            "p99 commit ms": f"{p99 * 1000:,.1f}",
            "longest writer stall ms": f"{longest[1] * 1000:,.1f}",
            "longest stall began at s": f"{max(longest[0] - start, 0):,.2f}",
            "failed commits": f"{len(failed)}" + (f" ({failed[0]})" if failed else ""),
        }


class LockRetries(logging.Handler):
    """Counts the migrator's 'waiting for writers' retries of the transactional part."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "waiting for writers" in record.getMessage()


async def write(url: str, writer: int, first_height: int, pause_s: float, log: Commits) -> None:
    """Commit one transaction after another, as the service does at the tip."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for n in range(sys.maxsize):
            height = first_height + n
            tx_hash = hashlib.sha256(f"writer {writer} tx {n}".encode()).hexdigest().upper()
            started = time.monotonic()
            try:
                async with conn.transaction():
                    await conn.execute(WRITE_LEDGER, (CHAIN, height, tx_hash))
                    await conn.execute(WRITE_PLAY, (height, tx_hash))
                    stream = f"writer-{writer}"
                    row = {"chain": CHAIN, "stream": stream, "height": height, "hash": tx_hash}
                    await conn.execute(WRITE_CHECKPOINT, row)
                log.done.append((started, time.monotonic() - started))
            except psycopg.Error as exc:
                log.failed.append((started, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            await asyncio.sleep(pause_s)


async def generate(url: str, rows: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await apply_migrations(conn, up_to=3)
        # Loaded without its two indexes, which are then built as 0002 made them:
        # a sort is much faster than five million inserts into a random-order index.
        await conn.execute(DROP_KEYS)
        for first in range(0, rows, CHUNK_ROWS):
            last = min(first + CHUNK_ROWS, rows) - 1
            args = {"chain": CHAIN, "per": TXS_PER_HEIGHT, "first": first, "last": last}
            await conn.execute(GENERATE, args)
            print(f"  generated {last + 1:,} rows", file=sys.stderr, flush=True)
        await conn.execute(ADD_KEYS)
        await conn.execute("VACUUM ANALYZE core_plays.tx_ledger")


async def migrate(url: str, dbname: str) -> tuple[float, float, float]:
    """Apply 0004; return its wall time, the time an index build was in progress
    (pg_stat_progress_create_index, sampled every 50 ms from another connection)
    and when the last one was seen, after which only the key swap is left."""
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as watch,
    ):
        started = time.monotonic()
        task = asyncio.create_task(apply_migrations(conn))
        building, built, sampled = 0.0, started, started
        while not task.done():
            cur = await watch.execute(INDEX_BUILDS, (dbname,))
            row = await cur.fetchone()
            now = time.monotonic()
            if row is not None and row[0]:
                building, built = building + now - sampled, now
            sampled = now
            await asyncio.sleep(0.05)
        applied = await task
        assert 4 in applied, f"expected to apply migration 4, applied {applied}"
        return time.monotonic() - started, building, built


async def bench(url: str, dbname: str, args: argparse.Namespace) -> None:
    started = time.monotonic()
    await generate(url, args.rows)
    print(f"ledger rows: {args.rows:,} (generated in {time.monotonic() - started:,.1f} s)")
    retries = LockRetries()
    logging.getLogger("consumer.sink.migrate").addHandler(retries)
    commits = Commits()
    first = args.rows // TXS_PER_HEIGHT + 1
    async with asyncio.TaskGroup() as group:
        writers = [
            group.create_task(write(url, w, first + w * 10**8, args.pause_s, commits))
            for w in range(args.writers)
        ]
        await asyncio.sleep(args.warmup_s)
        migration_start = time.monotonic()
        wall_s, index_s, indexes_built = await migrate(url, dbname)
        migration_end = time.monotonic()
        await asyncio.sleep(wall_s)
        baseline_end = time.monotonic()
        for task in writers:
            task.cancel()
    print(f"writers: {args.writers}, pausing {args.pause_s * 1000:g} ms between commits")
    print(f"migration wall time s: {wall_s:,.2f}")
    print(f"index build time s: {index_s:,.2f}")
    print(f"transactional part retried: {retries.count}")
    during = commits.figures(migration_start, migration_end)
    swap = commits.figures(indexes_built, migration_end)
    baseline = commits.figures(migration_end, baseline_end)
    print(
        "\n| figure | during the migration | of which after the index builds | "
        "baseline, no migration |\n|---|---|---|---|"
    )
    for name, value in during.items():
        print(f"| {name} | {value} | {swap[name]} | {baseline[name]} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="ledger rows to generate")
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="admin connection; the benchmark creates and drops its own database",
    )
    parser.add_argument("--writers", type=int, default=2, help="concurrent writer connections")
    parser.add_argument("--pause-s", type=float, default=0.01, help="between a writer's commits")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="writers alone before 0004")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(message)s")
    # SIGTERM ends the run like Ctrl-C, so the database is dropped either way. SIGINT
    # is set too: a process started in the background of a script inherits it ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    dbname = f"cpc_migration_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    print(f"database: {dbname} (dropped at the end)", flush=True)
    try:
        asyncio.run(bench(make_conninfo(args.database_url, dbname=dbname), dbname, args))
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(sql.Identifier(dbname)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
