"""Peak memory of `run` against the size of the largest block.

Each measurement serves a one-block busy chain from an in-process devnet, runs
`plays-consumer run --to-height 1` as a subprocess under `/usr/bin/time`, and
reads its peak RSS; the first row is a block of one play (the process itself).
Each run gets a database of its own, dropped afterwards.

    python scripts/bench_memory.py                # 1 play, 5, 20, 41 and 107 MB blocks
    python scripts/bench_memory.py --quick        # 1 play and 5 MB (seconds)
    python scripts/bench_memory.py --source-mode poll
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Sequence

import psycopg

from consumer.devnet import ChainSpec, DevChain, DevnetServer, Profile

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# (transactions, plays per transaction): about 82 bytes a play on the wire.
FULL = ((1, 1), (12, 5_000), (25, 10_000), (10, 50_000), (26, 50_000))
QUICK = ((1, 1), (12, 5_000))


async def measure(txs: int, plays: int, admin_url: str, extra: Sequence[str]) -> tuple[int, int]:
    """(block bytes, peak RSS bytes) of one run over a one-block chain."""
    spec = ChainSpec(profile=Profile.BUSY, busy_txs_per_block=txs, busy_plays_per_tx=plays)
    chain = DevChain(spec)
    size = len(chain.block_bytes(1, canon=True))
    name = f"bench_memory_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    devnet = DevnetServer(chain, height=1)
    await devnet.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORE_PLAYS_")}
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/time", "-f", "%M", sys.executable, "-m", "consumer", "run",
            "--core-url", devnet.url, "--database-url", url, "--from-height", "1",
            "--to-height", "1", "--metrics-addr", "127.0.0.1:0",
            "--max-message-bytes", str(2 * size + 2**20), *extra,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({proc.returncode}): {err.decode()[-2000:]}")
        return size, int(err.decode().strip().splitlines()[-1]) * 1024
    finally:
        await devnet.stop(0)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small sizes only")
    parser.add_argument("--database-url", default=ADMIN_URL, help="admin connection")
    parser.add_argument("--source-mode", default="auto", choices=("auto", "stream", "poll"))
    args = parser.parse_args(argv)
    extra = ["--source-mode", args.source_mode]
    print("| block MB | plays | peak RSS MB | RSS over the 1-play run, per block byte |")
    print("|---|---|---|---|")
    base = 0
    for txs, plays in QUICK if args.quick else FULL:
        size, rss = await measure(txs, plays, args.database_url, extra)
        base = base or rss
        per_byte = f"{(rss - base) / size:.1f}" if txs * plays > 1 else "n/a"
        print(f"| {size / 1e6:.1f} | {txs * plays:,} | {rss / 1e6:.0f} | {per_byte} |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
