"""The report: the machine, the command, one line per profile and the Markdown table."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg

from bench.scenario import Figures

__all__ = ["fmt", "machine", "progress", "shown_command", "summary", "table"]


def progress(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


COLUMNS = (
    "profile",
    "blocks",
    "plays",
    "blocks/s",
    "plays/s",
    "CPU s / 1k plays",
    "peak RSS MB",
    "RSS slope MB / 10k blocks",
    "ceiling plays/s",
    "consumer / ceiling",
    "tip p50 ms",
    "tip p99 ms",
    "PostgreSQL alone, tip p99 ms",
)


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def table(rows: Sequence[Figures]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for f in rows:
        cpu_per_k = f.cpu_s / f.plays * 1000 if f.plays else math.nan
        cells = (
            f.scenario.profile.value,
            f"{f.scenario.blocks:,}",
            f"{f.plays:,}",
            fmt(f.blocks_per_s),
            fmt(f.plays_per_s),
            fmt(cpu_per_k, 3),
            fmt(f.maxrss_kb / 1024, 1),
            fmt(f.rss_slope_mb, 1),
            fmt(f.ceiling_plays_per_s),
            fmt(f.ratio, 2),
            fmt(f.tip_p50_ms, 1),
            fmt(f.tip_p99_ms, 1),
            fmt(f.floor_p99_ms, 1),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _host() -> tuple[str, float]:
    """(CPU model, memory in GB) of this machine."""
    cpu = "unknown CPU"
    memory_gb = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = int(line.split()[1]) / 1024**2
    return cpu, memory_gb


async def machine(admin_url: str) -> str:
    """What the figures depend on: cores, CPU model, memory, PostgreSQL and its durability."""
    cpu, memory_gb = _host()
    async with await psycopg.AsyncConnection.connect(admin_url) as conn:
        cur = await conn.execute(
            "SELECT current_setting('server_version'), current_setting('shared_buffers'), "
            "current_setting('synchronous_commit'), current_setting('fsync')"
        )
        version, shared_buffers, synchronous_commit, fsync = await cur.fetchone() or ("?",) * 4
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory_gb:.0f} GB; Python {sys.version.split()[0]}; "
        f"PostgreSQL {version} on the same machine (shared_buffers {shared_buffers}, "
        f"synchronous_commit {synchronous_commit}, fsync {fsync})"
    )


def summary(f: Figures) -> str:
    """What the table's row for one profile was measured on, in one line."""
    s = f.scenario
    return (
        f"{s.profile.value}: {s.describe()}; ceiling over {f.ceiling_rows:,} rows in "
        f"batches of up to {s.ceiling_batch_plays:,} plays; tip {f.tip_samples} blocks "
        f"every {s.tip_interval_s:g} s (max {fmt(f.tip_max_ms, 1)} ms; PostgreSQL alone "
        f"p50 {fmt(f.floor_p50_ms, 1)} ms); RSS MB at "
        f"1/4, 1/2, 3/4, all of the blocks {f.rss_marks}, slope from {f.rss_samples} samples; "
        f"the devnet serving the catch-up used {fmt(f.bench_cpu_s, 2)} CPU s"
        + (
            f"; the commit listener reconnected {f.listener_reconnects} times"
            if f.listener_reconnects
            else ""
        )
    )


def shown_command(argv: Sequence[str], program: str = "scripts/bench") -> str:
    """The command as run, without --database-url (it may carry a password)."""
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--database-url":
            skip = True
        elif not arg.startswith("--database-url="):
            shown.append(arg)
    return " ".join([program, *shown])
