"""One profile, start to end: the ceiling's two halves around the catch-up, then the tip
and PostgreSQL's own floor for it."""

from __future__ import annotations

import contextlib
import math

from bench.catch_up import catch_up
from bench.ceiling import measure_ceiling, measure_tip_floor
from bench.databases import fresh_database
from bench.report import progress
from bench.scenario import Figures, Scenario
from bench.tip import follow_tip, percentile
from consumer.devnet import DevChain, Profile

__all__ = ["bench_profile"]


async def bench_profile(scenario: Scenario, admin_url: str, tag: str) -> Figures:
    """Ceiling (first half), catch-up, ceiling (second half), then the tip."""
    figures = Figures(scenario)
    name = f"bench_{tag}_{scenario.profile.value}"
    blocks = scenario.blocks
    async with contextlib.AsyncExitStack() as stack:
        ceiling_url = ""
        ceiling_last = min(blocks, scenario.ceiling_blocks)
        middle = ceiling_last // 2
        rows = 0
        seconds = 0.0
        if scenario.profile is not Profile.EMPTY and ceiling_last > 0:
            # Half the rows before the consumer runs and half after, into one
            # database: the same rows from the same empty table, and a change in
            # machine load during the run lands on both sides of the ratio.
            ceiling_url = await stack.enter_async_context(
                fresh_database(admin_url, name + "_ceiling", notify=False)
            )
            rows, seconds = await measure_ceiling(
                ceiling_url, DevChain(scenario.spec()), 1, middle, scenario.ceiling_batch_plays
            )
        url = await stack.enter_async_context(fresh_database(admin_url, name, notify=True))
        await catch_up(scenario, url, figures)
        if ceiling_url:
            more_rows, more_seconds = await measure_ceiling(
                ceiling_url,
                DevChain(scenario.spec()),
                middle + 1,
                ceiling_last,
                scenario.ceiling_batch_plays,
            )
            rows += more_rows
            seconds += more_seconds
            figures.ceiling_rows = rows
            figures.ceiling_plays_per_s = rows / seconds if seconds > 0 else math.nan
            progress(
                f"{scenario.profile}: ceiling {figures.ceiling_plays_per_s:,.0f} plays/s, "
                f"ratio {figures.ratio:.2f}"
            )
        if scenario.tip_blocks > 0:
            await follow_tip(scenario, url, figures)
            if ceiling_url:
                floor = await measure_tip_floor(
                    ceiling_url,
                    DevChain(scenario.spec()),
                    blocks + 1,
                    blocks + scenario.tip_blocks,
                    scenario.tip_interval_s,
                )
                figures.floor_p50_ms = percentile(floor, 50)
                figures.floor_p99_ms = percentile(floor, 99)
                progress(
                    f"{scenario.profile}: PostgreSQL alone commits a tip block in "
                    f"p50 {figures.floor_p50_ms:.1f} ms, p99 {figures.floor_p99_ms:.1f} ms"
                )
    return figures
