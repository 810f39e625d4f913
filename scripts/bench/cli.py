"""The command line: which profiles at which sizes, then the report."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import bench
from bench.databases import ADMIN_URL
from bench.measure import bench_profile
from bench.report import machine, progress, shown_command, summary, table
from bench.scenario import DEFAULT_BLOCKS, Scenario
from consumer.devnet import Profile

__all__ = ["main", "parse_args", "scenarios"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=(bench.__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--profile",
        action="append",
        choices=[p.value for p in Profile],
        help="chain profile (repeat for several; default all)",
    )
    parser.add_argument("--blocks", type=int, help="blocks to backfill (default per profile)")
    parser.add_argument("--busy-txs", type=int, default=10, help="play txs per busy block")
    parser.add_argument("--busy-plays", type=int, default=200, help="plays per busy tx")
    parser.add_argument("--tip-blocks", type=int, default=120, help="blocks measured at the tip")
    parser.add_argument("--tip-interval-s", type=float, default=1.0, help="block interval at tip")
    parser.add_argument(
        "--ceiling-blocks", type=int, default=0, help="blocks for the ceiling (default: all)"
    )
    parser.add_argument(
        "--ceiling-batch-plays", type=int, default=5000, help="plays per ceiling transaction"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=ADMIN_URL, help="admin connection to PostgreSQL")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every profile, 300 blocks (busy: 2 txs of 50 plays), 4 tip blocks 0.1 s apart: "
        "what the test suite runs to keep the benchmark working (overrides the sizes)",
    )
    return parser.parse_args(argv)


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    profiles = [Profile(p) for p in args.profile] if args.profile else list(Profile)
    out = []
    for profile in profiles:
        quick = args.quick
        blocks = args.blocks or (300 if quick else DEFAULT_BLOCKS[profile])
        out.append(
            Scenario(
                profile=profile,
                blocks=blocks,
                busy_txs=2 if quick else args.busy_txs,
                busy_plays=50 if quick else args.busy_plays,
                tip_blocks=4 if quick else args.tip_blocks,
                tip_interval_s=0.1 if quick else args.tip_interval_s,
                ceiling_blocks=args.ceiling_blocks or blocks,
                ceiling_batch_plays=args.ceiling_batch_plays,
                seed=args.seed,
            )
        )
    return out


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tag = f"{os.getpid()}"
    results = []
    for scenario in scenarios(args):
        progress(f"{scenario.profile}: {scenario.describe()}")
        results.append(await bench_profile(scenario, args.database_url, tag))
    print(f"machine: {await machine(args.database_url)}")
    print(f"command: {shown_command(sys.argv[1:] if argv is None else argv)}")
    for f in results:
        print(summary(f))
    print()
    print(table(results))
    return 0
