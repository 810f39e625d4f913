"""Tip latency: from the devnet sending each new block to its commit."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.process import run_consumer
from bench.report import progress
from bench.scenario import Figures, Scenario
from consumer.devnet import DevChain, DevnetServer

__all__ = ["follow_tip", "percentile"]


async def follow_tip(scenario: Scenario, url: str, figures: Figures) -> None:
    """Resume from the catch-up's checkpoint while the chain grows one block per
    interval; each block's latency runs from the devnet sending it to its commit."""
    first = scenario.blocks + 1
    last = scenario.blocks + scenario.tip_blocks
    tip = DevnetServer(
        DevChain(scenario.spec()),
        height=scenario.blocks,
        block_interval_s=scenario.tip_interval_s,
        max_height=last,
        record_served=True,
    )
    async with tip:
        run = await run_consumer(tip.url, url, "--to-height", str(last))
    figures.listener_reconnects += run.listener_reconnects
    latencies = []
    for height in range(first, last + 1):
        committed = run.committed_at(height)
        if committed is not None and height in tip.served:
            latencies.append((committed - tip.served[height]) * 1000)
    if latencies:
        figures.tip_p50_ms = percentile(latencies, 50)
        figures.tip_p99_ms = percentile(latencies, 99)
        figures.tip_max_ms = max(latencies)
        figures.tip_samples = len(latencies)
    progress(
        f"{scenario.profile}: tip p50 {figures.tip_p50_ms:.1f} ms, "
        f"p99 {figures.tip_p99_ms:.1f} ms over {figures.tip_samples} blocks"
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a real block)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
