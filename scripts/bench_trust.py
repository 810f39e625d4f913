#!/usr/bin/env python
"""What trusting no single delivery costs: `verify` against `run`, and the audit's price.

    .venv/bin/python scripts/bench_trust.py                 # default sizes, ~15 minutes
    .venv/bin/python scripts/bench_trust.py --quick         # small, seconds (the test runs it)
    .venv/bin/python scripts/bench_trust.py --empty-blocks 200000 --tip-s 90 --rounds 2
    .venv/bin/python scripts/bench_trust.py --part tip --audit-interval-s 15  # one measurement

Three measurements, each printed as figures (the targets of issue 11 are judged
here, never by timed assertions in the tests):

1. verify against run: on a devnet chain, `run --from-height 1 --to-height N`
   catches up into a fresh database, then `verify --from-height 1 --to-height N`
   re-reads the same range against that database; blocks/s of each and their
   ratio (target on empty blocks: verify at least as fast as run).
2. The audit at the tip: a devnet growing one block a second, followed by `run`
   for a fixed time once with the audit and once with `--no-audit`; the
   consumer process's CPU seconds per 100 blocks over the same window (target:
   under 5% more with the audit).
3. The audit during catch-up: N typical blocks caught up with and without the
   audit; both rates and their ratio (target: no change).

Why it is built this way:
- The consumer is the real command line (`python -m consumer ...`) in a child
  process, so its CPU seconds (utime+stime from /proc/PID/stat) are its own,
  not the devnet's or this script's.
- Every measured run gets a fresh database (the real migrations and an
  on_play-style aggregate trigger), dropped afterwards even on Ctrl-C, so no
  run sees another's ledger.
- A catch-up's clock runs from the devnet's first block served to the commit of
  the last (NOTIFY from the checkpoint row): process start-up is not catching
  up. A bounded run with the audit exits only once its range is audited, so
  the time to its exit is printed beside it; verify has no commit, so its
  clock stops at its exit (which favours run).
- Catch-up chains are generated and serialized before the clock starts: the
  devnet shares the machine's cores with the consumer and PostgreSQL.
- Audit and no-audit alternate over the rounds (AB, BA, ...) so drift in a
  shared machine's load lands on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The benchmark package beside this script (scripts/ is on sys.path when run as a file).
from bench.databases import ADMIN_URL, CHANNEL, prepare_database  # noqa: E402
from bench.report import fmt, progress, shown_command  # noqa: E402
from bench.scenario import ServedChain  # noqa: E402

from consumer.devnet import ChainSpec, DevChain, DevnetServer, Profile  # noqa: E402

PARTS = ("verify", "tip", "catch-up")
DB_PREFIX = "bench_trust"
_TICKS = os.sysconf("SC_CLK_TCK")


def _rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


# --- the chain and the databases --------------------------------------------------


class Databases:
    """Fresh databases named after this process, all dropped when the block ends
    (even on Ctrl-C). The drops wait for the end: DROP DATABASE forces a
    checkpoint, which would land on the next measurement."""

    def __init__(self, admin_url: str, checkpoint: bool) -> None:
        self.admin_url = admin_url
        self.checkpoint = checkpoint
        self.names: list[str] = []

    async def __aenter__(self) -> Databases:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Shielded: a Ctrl-C that cancelled the run must not cancel the drops.
        await asyncio.shield(self._drop_all())

    async def _drop_all(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.admin_url, autocommit=True) as admin:
            while self.names:
                name = self.names.pop()
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def fresh(self) -> str:
        """A new database with the real migrations and the aggregate trigger."""
        name = f"{DB_PREFIX}_{os.getpid()}_{len(self.names) + 1}"
        self.names.append(name)
        async with await psycopg.AsyncConnection.connect(self.admin_url, autocommit=True) as admin:
            await admin.execute(f'CREATE DATABASE "{name}"')
        url = make_conninfo(self.admin_url, dbname=name)
        await prepare_database(url, notify=True, checkpoint=self.checkpoint)
        return url


# --- the consumer as a process ------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass(slots=True)
class Commits:
    """Checkpoint heights as they commit, on the clock of time.time()."""

    height: int = 0
    times: list[tuple[float, int]] = field(default_factory=list)

    def at(self, height: int) -> float:
        for when, committed in self.times:
            if committed >= height:
                return when
        return math.nan


@contextlib.asynccontextmanager
async def watching_commits(url: str) -> AsyncIterator[Commits]:
    """LISTEN to the checkpoint trigger for as long as the block runs."""
    commits = Commits()
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)

    async def listen() -> None:
        async for note in conn.notifies():
            height = int(note.payload)
            if height > commits.height:
                commits.height = height
                commits.times.append((time.time(), height))

    try:
        await conn.execute(f"LISTEN {CHANNEL}")
        task = asyncio.ensure_future(listen())
        try:
            yield commits
        finally:
            await asyncio.sleep(0.05)  # notifications of the last commit, in flight
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await task
    finally:
        with contextlib.suppress(psycopg.Error):
            await conn.close()


class Consumer:
    """`python -m consumer COMMAND ...` as a child process."""

    def __init__(self, argv: list[str], out: IO[bytes], err: IO[bytes]) -> None:
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu_s = math.nan
        self._out = out
        self._err = err

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORE_PLAYS_")}
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=env, stdout=self._out, stderr=self._err
        )

    async def wait(self) -> tuple[int, float]:
        """(exit code, time.time() of the exit)."""
        assert self.proc is not None
        # wait4: the exit status and the child's whole CPU time, start-up included.
        _, status, usage = await asyncio.to_thread(os.wait4, self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        return self.proc.returncode, time.time()

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not go within 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        for _ in range(1500):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.01)
        self.proc.kill()
        return self.proc.wait()

    def output(self) -> str:
        texts = []
        for f in (self._out, self._err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
        return "\n".join(texts)[-4000:]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.asynccontextmanager
async def consumer(command: str, core_url: str, db_url: str, *args: str) -> AsyncIterator[Consumer]:
    extra = ["--metrics-addr", "127.0.0.1:0"] if command == "run" else []
    argv = [
        sys.executable, "-m", "consumer", command,
        "--core-url", core_url, "--database-url", db_url,
        "--log-level", "warning", *extra, *args,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = Consumer(argv, out, err)
        try:
            await asyncio.to_thread(child.start)
            yield child
        finally:
            child.close()


async def _checked(child: Consumer, figures: Bounded) -> float:
    code, exited = await child.wait()
    if code != 0:
        raise RuntimeError(f"{' '.join(child.argv[3:5])} exited {code}:\n{child.output()}")
    figures.cpu_s = child.cpu_s
    return exited


# --- 1 and 3: bounded runs ------------------------------------------------------------


@dataclass(slots=True)
class Bounded:
    """One bounded command over 1..N: seconds to the last commit and to the exit."""

    blocks: int
    to_commit_s: float = math.nan
    to_exit_s: float = math.nan
    cpu_s: float = math.nan

    @property
    def cpu_per_1k(self) -> float:
        """Whole-process CPU seconds per 1,000 blocks (start-up included)."""
        return self.cpu_s / self.blocks * 1000

    @property
    def commit_rate(self) -> float:
        return _rate(self.blocks, self.to_commit_s)

    @property
    def exit_rate(self) -> float:
        return _rate(self.blocks, self.to_exit_s)


async def timed_catch_up(
    chain: DevChain, blocks: int, url: str, *args: str
) -> tuple[Bounded, DevnetServer]:
    """`run --from-height 1 --to-height N` on a devnet whose head is N."""
    server = DevnetServer(chain, height=blocks, record_served=True)
    figures = Bounded(blocks)
    async with server, watching_commits(url) as commits:
        run_args = ("--from-height", "1", "--to-height", str(blocks), *args)
        async with consumer("run", server.url, url, *run_args) as child:
            exited = await _checked(child, figures)
    started = min(server.served.values())
    figures.to_commit_s = commits.at(blocks) - started
    figures.to_exit_s = exited - started
    return figures, server


async def timed_verify(chain: DevChain, blocks: int, url: str) -> Bounded:
    """`verify --from-height 1 --to-height N` against what a run wrote; must exit 0."""
    server = DevnetServer(chain, height=blocks, record_served=True)
    figures = Bounded(blocks)
    async with server:
        verify_args = ("--from-height", "1", "--to-height", str(blocks))
        async with consumer("verify", server.url, url, *verify_args) as child:
            exited = await _checked(child, figures)
    figures.to_exit_s = exited - min(server.served.values())
    return figures


@dataclass(slots=True)
class VerifyFigures:
    profile: Profile
    run: Bounded
    verify: Bounded

    @property
    def ratio(self) -> float:
        return self.verify.exit_rate / self.run.commit_rate


async def verify_against_run(dbs: Databases, spec: ChainSpec, blocks: int) -> VerifyFigures:
    chain = ServedChain(spec, blocks)
    url = await dbs.fresh()
    run, _ = await timed_catch_up(chain, blocks, url)
    verify = await timed_verify(chain, blocks, url)
    figures = VerifyFigures(spec.profile, run, verify)
    progress(
        f"{spec.profile}: run {fmt(run.commit_rate)} blocks/s to the last commit "
        f"({fmt(run.exit_rate)} to its exit), verify {fmt(verify.exit_rate)} blocks/s, "
        f"verify/run {figures.ratio:.2f}"
    )
    return figures


@dataclass(slots=True)
class CatchUpAudit:
    blocks: int
    audit: list[Bounded] = field(default_factory=list)
    no_audit: list[Bounded] = field(default_factory=list)

    @staticmethod
    def _total(runs: list[Bounded], commit: bool) -> float:
        seconds = sum(r.to_commit_s if commit else r.to_exit_s for r in runs)
        return _rate(sum(r.blocks for r in runs), seconds)

    def rate(self, audit: bool, commit: bool) -> float:
        return self._total(self.audit if audit else self.no_audit, commit)

    def cpu_per_1k(self, audit: bool) -> float:
        runs = self.audit if audit else self.no_audit
        return sum(r.cpu_s for r in runs) / sum(r.blocks for r in runs) * 1000

    def ratio(self, commit: bool) -> float:
        return self.rate(True, commit) / self.rate(False, commit)


def audit_flags(audit: bool, interval_s: float | None) -> list[str]:
    if not audit:
        return ["--no-audit"]
    return [] if interval_s is None else ["--audit-interval-s", f"{interval_s:g}"]


def _orders(rounds: int) -> list[bool]:
    """Audit first in even rounds, last in odd ones: True means with the audit."""
    out: list[bool] = []
    for r in range(rounds):
        out += [True, False] if r % 2 == 0 else [False, True]
    return out


async def audit_catch_up(
    dbs: Databases, spec: ChainSpec, blocks: int, rounds: int, interval_s: float | None
) -> CatchUpAudit:
    chain = ServedChain(spec, blocks)
    figures = CatchUpAudit(blocks)
    for audit in _orders(rounds):
        url = await dbs.fresh()
        run, _ = await timed_catch_up(chain, blocks, url, *audit_flags(audit, interval_s))
        (figures.audit if audit else figures.no_audit).append(run)
        progress(
            f"catch-up {'with' if audit else 'without'} the audit: "
            f"{fmt(run.commit_rate)} blocks/s to the last commit, "
            f"{fmt(run.exit_rate)} to the exit, {run.cpu_s:.2f} CPU s"
        )
    return figures


# --- 2: the tip -----------------------------------------------------------------------


@dataclass(slots=True)
class TipWindow:
    cpu_s: float
    blocks: int

    @property
    def per_100(self) -> float:
        return self.cpu_s / self.blocks * 100 if self.blocks else math.nan


@dataclass(slots=True)
class TipFigures:
    label: str
    seconds: float
    audit: list[TipWindow] = field(default_factory=list)
    no_audit: list[TipWindow] = field(default_factory=list)

    @staticmethod
    def _per_100(windows: list[TipWindow]) -> float:
        blocks = sum(w.blocks for w in windows)
        return sum(w.cpu_s for w in windows) / blocks * 100 if blocks else math.nan

    def per_100(self, audit: bool) -> float:
        return self._per_100(self.audit if audit else self.no_audit)

    @property
    def extra(self) -> float:
        """Relative CPU added by the audit (0.05 is 5% more); NaN when the run without it
        measured no CPU at all (a quick run's clock tick can be coarser than its work)."""
        without = self.per_100(False)
        return self.per_100(True) / without - 1 if without else math.nan


async def tip_window(
    dbs: Databases,
    spec: ChainSpec,
    audit: bool,
    seconds: float,
    interval_s: float,
    warmup_s: float,
    audit_interval_s: float | None,
) -> TipWindow:
    """Follow a growing chain; CPU and blocks committed over `seconds` after warm-up."""
    start = 20
    server = DevnetServer(DevChain(spec), height=start, block_interval_s=interval_s)
    url = await dbs.fresh()
    async with server, watching_commits(url) as commits:
        args = ["--from-height", "1", *audit_flags(audit, interval_s=audit_interval_s)]
        async with consumer("run", server.url, url, *args) as child:
            began = time.monotonic()
            while commits.height < server.head - 1 or time.monotonic() - began < warmup_s:
                if child.proc is not None and child.proc.poll() is not None:
                    raise RuntimeError(f"run exited {child.proc.returncode}:\n{child.output()}")
                await asyncio.sleep(0.05)
            cpu0, height0 = cpu_seconds(child.pid), commits.height
            await asyncio.sleep(seconds)
            cpu1, height1 = cpu_seconds(child.pid), commits.height
            code = await child.stop()
            if code not in (0, -signal.SIGTERM):
                raise RuntimeError(f"run exited {code} on SIGTERM:\n{child.output()}")
    window = TipWindow(cpu1 - cpu0, height1 - height0)
    progress(
        f"tip {spec.profile} {'with' if audit else 'without'} the audit: "
        f"{window.cpu_s:.2f} CPU s over {window.blocks} blocks"
    )
    return window


async def audit_at_tip(
    dbs: Databases, label: str, spec: ChainSpec, args: argparse.Namespace
) -> TipFigures:
    figures = TipFigures(label, args.tip_s)
    for audit in _orders(args.rounds):
        window = await tip_window(
            dbs, spec, audit, args.tip_s, args.tip_interval_s, args.warmup_s, args.audit_interval_s
        )
        (figures.audit if audit else figures.no_audit).append(window)
    return figures


# --- report --------------------------------------------------------------------------


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def report(
    verified: Sequence[VerifyFigures],
    tips: Sequence[TipFigures],
    catch_up: CatchUpAudit | None,
    args: argparse.Namespace,
) -> str:
    lines = []
    for v in verified:
        lines.append(
            f"verify {v.profile.value}: {v.run.blocks:,} blocks; "
            f"run {fmt(v.run.commit_rate)} blocks/s (to its exit {fmt(v.run.exit_rate)}); "
            f"verify {fmt(v.verify.exit_rate)} blocks/s; verify/run {fmt(v.ratio, 2)}; "
            f"CPU s per 1k blocks run {fmt(v.run.cpu_per_1k, 3)}, "
            f"verify {fmt(v.verify.cpu_per_1k, 3)}"
        )
    for t in tips:
        lines.append(
            f"tip {t.label}: {args.rounds} rounds of {t.seconds:g} s each side; "
            f"CPU s per 100 blocks with the audit {fmt(t.per_100(True), 3)}, "
            f"without {fmt(t.per_100(False), 3)}; audit adds {fmt(100 * t.extra, 1)}%"
        )
    if catch_up is None:
        return "\n".join(lines)
    lines.append(
        f"catch-up typical: {catch_up.blocks:,} blocks, {args.rounds} rounds; "
        f"blocks/s to the last commit with the audit {fmt(catch_up.rate(True, True))}, "
        f"without {fmt(catch_up.rate(False, True))}, ratio {fmt(catch_up.ratio(True), 2)}; "
        f"to the exit with the audit {fmt(catch_up.rate(True, False))}, "
        f"without {fmt(catch_up.rate(False, False))}, ratio {fmt(catch_up.ratio(False), 2)}; "
        f"CPU s per 1k blocks with the audit {fmt(catch_up.cpu_per_1k(True), 3)}, "
        f"without {fmt(catch_up.cpu_per_1k(False), 3)}"
    )
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--empty-blocks", type=int, default=50_000, help="empty blocks: verify")
    parser.add_argument(
        "--typical-blocks", type=int, default=10_000, help="typical blocks: verify and catch-up"
    )
    parser.add_argument("--tip-s", type=float, default=90.0, help="measured seconds per tip run")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--tip-interval-s", type=float, default=1.0, help="block interval at tip")
    parser.add_argument("--rounds", type=int, default=2, help="audit/no-audit rounds (AB, BA, ...)")
    parser.add_argument(
        "--audit-interval-s",
        type=float,
        help="passed to run when the audit is on (default: run's own default)",
    )
    parser.add_argument("--busy-txs", type=int, default=2, help="play txs per busy tip block")
    parser.add_argument("--busy-plays", type=int, default=50, help="plays per busy tip tx")
    parser.add_argument(
        "--part",
        action="append",
        choices=PARTS,
        help="measure only this (repeat for several; default all)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=ADMIN_URL, help="admin connection to PostgreSQL")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2,000 empty and 500 typical blocks, 1.5 s tip runs after 0.5 s, one round: "
        "what the test suite runs to keep the script working (overrides the sizes)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.empty_blocks, args.typical_blocks = 2_000, 500
        args.tip_s, args.warmup_s, args.rounds = 1.5, 0.5, 1
        args.tip_interval_s = 0.5
    return args


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    before = load_average()
    async with Databases(args.database_url, checkpoint=not args.quick) as dbs:
        return await measure(dbs, args, before, sys.argv[1:] if argv is None else argv)


async def measure(
    dbs: Databases, args: argparse.Namespace, before: str, argv: Sequence[str]
) -> int:
    typical = ChainSpec(seed=args.seed, profile=Profile.TYPICAL)
    busy = ChainSpec(
        seed=args.seed,
        profile=Profile.BUSY,
        busy_txs_per_block=args.busy_txs,
        busy_plays_per_tx=args.busy_plays,
    )
    parts = args.part or PARTS
    verified, tips, catch_up = [], [], None
    if "verify" in parts:
        empty = ChainSpec(seed=args.seed, profile=Profile.EMPTY)
        verified.append(await verify_against_run(dbs, empty, args.empty_blocks))
        verified.append(await verify_against_run(dbs, typical, args.typical_blocks))
    if "tip" in parts:
        tips.append(await audit_at_tip(dbs, "typical", typical, args))
        busy_label = f"busy ({args.busy_txs * args.busy_plays} plays a block)"
        tips.append(await audit_at_tip(dbs, busy_label, busy, args))
    if "catch-up" in parts:
        catch_up = await audit_catch_up(
            dbs, typical, args.typical_blocks, args.rounds, args.audit_interval_s
        )
    print(f"command: {shown_command(argv, 'scripts/bench_trust.py')}")
    print(f"load average: before {before}, after {load_average()} ({os.cpu_count()} CPUs)")
    print(report(verified, tips, catch_up, args))
    return 0


if __name__ == "__main__":
    # Ctrl-C drops the databases even when started in the background of a script,
    # which would otherwise inherit SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(asyncio.run(main()))
