#!/usr/bin/env python
"""What the handover costs: adoption beside catch-up, and verify over legacy rows.

    .venv/bin/python scripts/bench_handover.py                  # 1,000 busy blocks: 1M plays
    .venv/bin/python scripts/bench_handover.py --blocks 50      # seconds (the test runs it)

Three figures, printed (never asserted in tests):

1. catch-up: `run` of blocks 1..N into a fresh database: plays/s.
2. adoption: the same blocks into a database whose `plays` already holds them at
   `slot = height`, as the Go ETL's plays hook writes them, with its progress table
   `core_indexed_blocks` at N + REPEAT_REACH; `run --handover-from
   core_indexed_blocks` adopts every transaction: plays/s, and its ratio to 1
   (goal of issue 17: at least 0.5).
3. verify: `verify 1..N` of that legacy database before the adoption (every
   transaction *written by another writer*, recognised by its rows), and after it
   (every transaction in the ledger as adopted): plays/s.

The legacy rows are the service's own, with its ledger and checkpoint deleted
after: the same rows a Go-shaped writer would put, made at the service's speed.
Devnet, service and this script share one process and the machine's cores with
PostgreSQL: the ratio of 2 to 1 is the figure, both measured alike.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import psycopg
from prometheus_client import CollectorRegistry
from psycopg.conninfo import make_conninfo

from consumer.config import BatchSettings, HttpSettings, Settings, SinkSettings, SourceSettings
from consumer.devnet import ChainSpec, DevChain, DevnetServer, Profile
from consumer.metrics import Metrics
from consumer.model import REPEAT_REACH
from consumer.service.runner import Runner
from consumer.sink.migrate import apply_migrations
from consumer.source.core import CoreClient
from consumer.trust.verify import VerifyReport, verify_range

_CREATE = """
CREATE TABLE core_indexed_blocks (
    chain_id varchar NOT NULL, height integer NOT NULL, blockhash varchar NOT NULL,
    parenthash varchar, plays_slot integer DEFAULT 0, em_block integer,
    PRIMARY KEY (chain_id, height))
"""
_PROGRESS = """
INSERT INTO core_indexed_blocks (chain_id, height, blockhash)
SELECT 'devnet-1', g, 'H' || g FROM generate_series(1, %s) AS g;
"""


def settings(url: str, database: str, last: int, handover: bool) -> Settings:
    source = SourceSettings(core_url=url, retry_cap_s=0.5, head_refresh_s=0.5)
    return Settings(
        source=source,
        sink=SinkSettings(database_url=database),
        batch=BatchSettings(),
        http=HttpSettings(metrics_addr="127.0.0.1:0"),
        from_height=1,
        to_height=last,
        no_audit=True,
        handover_from="core_indexed_blocks" if handover else None,
    )


async def run(url: str, database: str, last: int, handover: bool = False) -> float:
    started = time.perf_counter()
    runner = Runner(settings(url, database, last, handover), Metrics(CollectorRegistry()),
                    asyncio.Event())  # fmt: skip
    await runner.run()
    return time.perf_counter() - started


async def verify(
    url: str, conn: psycopg.AsyncConnection[tuple[int]], last: int
) -> tuple[float, VerifyReport]:
    client = CoreClient(SourceSettings(core_url=url))
    started = time.perf_counter()
    try:
        report = await verify_range(client, conn, SourceSettings(core_url=url), "devnet-1", 1, last)
    finally:
        await client.close()
    return time.perf_counter() - started, report


async def plays(database: str) -> int:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT count(*) FROM plays")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--database-url", default="host=127.0.0.1 user=postgres dbname=postgres")
    args = parser.parse_args()
    spec = ChainSpec(profile=Profile.BUSY, busy_txs_per_block=10, busy_plays_per_tx=100)
    devnet = DevnetServer(DevChain(spec), height=args.blocks + REPEAT_REACH)
    await devnet.start()
    names = [f"bench_handover_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    urls = [make_conninfo(args.database_url, dbname=name) for name in names]
    async with await psycopg.AsyncConnection.connect(args.database_url, autocommit=True) as a:
        for name, url in zip(names, urls, strict=True):
            await a.execute(f'CREATE DATABASE "{name}"')
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await apply_migrations(conn)
    try:
        fresh, legacy = urls
        catch_up_s = await run(devnet.url, fresh, args.blocks)
        total = await plays(fresh)
        await run(devnet.url, legacy, args.blocks)
        async with await psycopg.AsyncConnection.connect(legacy, autocommit=True) as conn:
            await conn.execute("TRUNCATE core_plays.tx_ledger, core_plays.checkpoint")
            await conn.execute(_CREATE)
            await conn.execute(_PROGRESS, (args.blocks + REPEAT_REACH,))
            await conn.execute("VACUUM ANALYZE")
            verify_s, report = await verify(devnet.url, conn, args.blocks)
        adopt_s = await run(devnet.url, legacy, args.blocks, handover=True)
        async with await psycopg.AsyncConnection.connect(legacy, autocommit=True) as conn:
            after_s, after = await verify(devnet.url, conn, args.blocks)
        print(f"blocks 1..{args.blocks}: {total:,} plays (busy: 10 txs x 100 plays a block)")
        print(f"catch-up:  {catch_up_s:7.1f} s  {total / catch_up_s:>10,.0f} plays/s")
        print(f"adoption:  {adopt_s:7.1f} s  {total / adopt_s:>10,.0f} plays/s  "
              f"({catch_up_s / adopt_s:.2f} of catch-up; goal >= 0.5)")  # fmt: skip
        print(f"verify of the legacy rows: {verify_s:7.1f} s  {total / verify_s:>10,.0f} plays/s"
              f"  (foreign {report.foreign:,}, differences {report.counts.total()})")  # fmt: skip
        print(f"verify after the adoption: {after_s:7.1f} s  {total / after_s:>10,.0f} plays/s"
              f"  (foreign {after.foreign:,}, differences {after.counts.total()})")  # fmt: skip
    finally:
        await devnet.stop(0)
        async with await psycopg.AsyncConnection.connect(args.database_url, autocommit=True) as a:
            for name in names:
                await a.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
