"""Soak: the consumer against the devnet for N blocks with faults switched on at random.

Runs the consumer as a subprocess (its memory alone is measured) between an
in-process devnet and PostgreSQL behind a loopback TCP proxy, and every few
seconds switches on a fault at random: streams aborted, the node unavailable
or slow, a lagging head, blocks delivered twice, the database cut. It samples
the consumer's resident memory against the height it has committed, prints
the series, the least-squares slope of memory per 10,000 blocks over the
second half of the run (after warm-up), and checks that the plays table ends
exactly as the chain says.

    python scripts/soak.py --blocks 100000            # the long run
    python scripts/soak.py --quick                    # what the test suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consumer.devnet import ChainSpec, DevChain, DevnetServer  # noqa: E402
from consumer.sink.migrate import apply_migrations  # noqa: E402
from tests.procs import ConsumerProcess, start_consumer  # noqa: E402
from tests.proxy import TcpProxy  # noqa: E402
from tests.reference import expected_rows, plays_rows  # noqa: E402


@dataclass
class Sample:
    seconds: float
    height: int
    rss_kb: int


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def slope_kb_per_10k(samples: list[Sample]) -> float:
    """Least squares of RSS against height over the second half of the run."""
    tail = samples[len(samples) // 2 :]
    if len(tail) < 3:
        return 0.0
    n = len(tail)
    mean_h = sum(s.height for s in tail) / n
    mean_r = sum(s.rss_kb for s in tail) / n
    var = sum((s.height - mean_h) ** 2 for s in tail)
    if var == 0:
        return 0.0
    cov = sum((s.height - mean_h) * (s.rss_kb - mean_r) for s in tail)
    return cov / var * 10_000


async def inject_faults(
    devnet: DevnetServer,
    proxy: TcpProxy,
    interval_s: float,
    rng: random.Random,
    done: asyncio.Event,
    log: list[str],
) -> None:
    faults = devnet.faults
    while not done.is_set():
        await asyncio.sleep(interval_s * rng.uniform(0.5, 1.5))
        kind = rng.choice(["abort", "unavailable", "slow", "head_behind", "repeat", "db_cut"])
        log.append(kind)
        if kind == "abort":
            faults.abort_stream_every = rng.randint(3, 50)
        elif kind == "unavailable":
            faults.unavailable_calls = rng.randint(1, 20)
        elif kind == "slow":
            faults.delay_s = rng.uniform(0.05, 0.5)
        elif kind == "head_behind":
            faults.head_behind = rng.randint(1, 200)
        elif kind == "repeat":
            faults.repeat_every = rng.randint(2, 20)
        else:
            await proxy.stop()
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await proxy.start()
        await asyncio.sleep(interval_s * rng.uniform(0.2, 0.8))
        faults.abort_stream_every = faults.unavailable_calls = faults.head_behind = 0
        faults.repeat_every = 0
        faults.delay_s = 0.0


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    admin = args.database_url
    name = f"cpc_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database = make_conninfo(admin, dbname=name)
    try:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await apply_migrations(conn)
        params = conninfo_to_dict(admin)
        proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port") or 5432))
        await proxy.start()
        spec = ChainSpec(seed=args.seed, genesis_time_s=int(time.time()) - args.blocks)
        devnet = DevnetServer(DevChain(spec), height=args.blocks)
        await devnet.start()
        consumer = await start_consumer(
            "--core-url",
            devnet.url,
            "--database-url",
            make_conninfo(database, host="127.0.0.1", port=proxy.port),
            "--from-height",
            "1",
            "--to-height",
            str(args.blocks),
            "--retry-cap-s",
            "1",
            "--lease-retry-s",
            "0.5",
            "--rpc-timeout-s",
            "2",
        )
        done = asyncio.Event()
        fault_log: list[str] = []
        faults = asyncio.create_task(
            inject_faults(devnet, proxy, args.fault_interval_s, rng, done, fault_log)
        )
        samples = await sample_until_exit(consumer, args.sample_s)
        done.set()
        faults.cancel()
        code = await consumer.wait()
        await devnet.stop(0)
        await proxy.stop()
        async with await psycopg.AsyncConnection.connect(database) as conn:
            exact = await plays_rows(conn) == expected_rows(devnet.chain, 1, args.blocks)
        report(args, samples, fault_log, code, exact)
        if code != 0:
            print(consumer.text()[-4000:], file=sys.stderr)
        return 0 if code == 0 and exact else 1
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def sample_until_exit(consumer: ConsumerProcess, every_s: float) -> list[Sample]:
    samples: list[Sample] = []
    started = time.monotonic()
    height = 0
    while consumer.proc.returncode is None:
        try:
            rss = rss_kb(consumer.proc.pid)
        except FileNotFoundError:
            break
        value = await consumer.sample("core_plays_processed_height")
        if value is not None and not math.isnan(value):
            height = int(value)
        samples.append(Sample(time.monotonic() - started, height, rss))
        try:
            async with asyncio.timeout(every_s):
                await consumer.proc.wait()
        except TimeoutError:
            pass
    return samples


def report(
    args: argparse.Namespace, samples: list[Sample], fault_log: list[str], code: int, exact: bool
) -> None:
    print(f"{'seconds':>8} {'height':>8} {'rss MB':>8}")
    step = max(1, len(samples) // 20)
    for s in samples[::step]:
        print(f"{s.seconds:8.1f} {s.height:8d} {s.rss_kb / 1024:8.1f}")
    rss = [s.rss_kb for s in samples if s.rss_kb] or [0]
    kinds = {k: fault_log.count(k) for k in sorted(set(fault_log))}
    print(
        f"soak: blocks={args.blocks} exit={code} rows_exact={'yes' if exact else 'NO'} "
        f"faults={len(fault_log)} {kinds}"
    )
    print(
        f"soak: rss_start_mb={rss[0] / 1024:.1f} rss_end_mb={rss[-1] / 1024:.1f} "
        f"rss_peak_mb={max(rss) / 1024:.1f} "
        f"slope_kb_per_10k_blocks={slope_kb_per_10k(samples):.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fault-interval-s", type=float, default=3.0)
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run for the test suite (5,000 blocks, frequent faults)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "CORE_PLAYS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    if args.quick:
        args.blocks, args.fault_interval_s, args.sample_s = 5_000, 0.3, 0.2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
