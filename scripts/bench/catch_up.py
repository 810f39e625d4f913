"""The catch-up: blocks 1..N backfilled by the consumer, timed from the first block
served to the commit of the last; its CPU and its memory over the run."""

from __future__ import annotations

import math
import resource
from collections.abc import Sequence

from bench.databases import count_plays
from bench.process import run_consumer
from bench.records import Sample
from bench.report import progress
from bench.scenario import Figures, Scenario, ServedChain
from consumer.devnet import DevnetServer

__all__ = ["catch_up", "rss_profile", "rss_slope_mb_per_10k"]


async def catch_up(scenario: Scenario, url: str, figures: Figures) -> None:
    """Backfill blocks 1..N with the consumer; the clock runs from the first block
    served to the commit of the last (the process's start-up is not catching up)."""
    blocks = scenario.blocks
    server = DevnetServer(ServedChain(scenario.spec(), blocks), height=blocks, record_served=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    async with server:
        run = await run_consumer(server.url, url, "--from-height", "1", "--to-height", str(blocks))
        started = min(server.served.values())
    after = resource.getrusage(resource.RUSAGE_SELF)
    # The devnet shares the machine: what it took is not there for PostgreSQL
    # and the consumer (the ceiling runs without it).
    figures.bench_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    finished = run.committed_at(blocks)
    if finished is None:
        raise RuntimeError("no commit was seen for the last block")
    figures.seconds = finished - started
    figures.plays = await count_plays(url)
    figures.cpu_s = run.cpu_at(finished) - run.cpu_at(started)
    figures.maxrss_kb = run.maxrss_kb
    figures.listener_reconnects = run.listener_reconnects
    figures.rss_slope_mb, figures.rss_samples = rss_slope_mb_per_10k(run.samples, blocks)
    figures.rss_marks = rss_profile(run.samples, blocks)
    progress(
        f"{scenario.profile}: catch-up {figures.blocks_per_s:,.0f} blocks/s, "
        f"{figures.plays_per_s:,.0f} plays/s, whole process {run.cpu_s:.2f} CPU s, "
        f"devnet {figures.bench_cpu_s:.2f} CPU s"
    )


def rss_slope_mb_per_10k(samples: Sequence[Sample], blocks: int) -> tuple[float, int]:
    """Least-squares RSS growth per 10,000 committed blocks, after the first fifth.

    The first fifth is warm-up (allocator arenas, caches, the first big batch);
    what must be flat is what comes after.
    """
    points = [(s.height, s.rss_kb / 1024) for s in samples if s.height > blocks / 5]
    if len({h for h, _ in points}) < 3:
        return math.nan, len(points)
    n = len(points)
    mean_h = sum(h for h, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    cov = sum((h - mean_h) * (r - mean_r) for h, r in points)
    var = sum((h - mean_h) ** 2 for h, _ in points)
    return cov / var * 10_000, n


def rss_profile(samples: Sequence[Sample], blocks: int) -> str:
    """RSS when a quarter, half, three quarters and all of the blocks were committed."""
    marks = []
    for quarter in (1, 2, 3, 4):
        at = [s.rss_kb for s in samples if s.height >= blocks * quarter / 4]
        marks.append(f"{at[0] / 1024:.0f}" if at else "?")
    return "/".join(marks)
