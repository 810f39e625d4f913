#!/usr/bin/env python
"""How fast the consumer catches up, next to what PostgreSQL itself can take.

    .venv/bin/python scripts/bench.py                    # every profile, default sizes
    .venv/bin/python scripts/bench.py --profile busy --blocks 1000
    .venv/bin/python scripts/bench.py --profile busy --blocks 100000 \
        --busy-txs 5 --busy-plays 200 --tip-blocks 0 --ceiling-blocks 2000  # memory, ~1 h
    .venv/bin/python scripts/bench.py --quick            # every profile, small, seconds

For each chain profile it serves a devnet from this process, backfills N blocks
into a fresh database (the real migrations plus an on_play-style aggregate
trigger) with the consumer as its own process, then lets the chain grow one
block per interval and measures tip latency. It prints one Markdown table.

Why it is built this way:
- The consumer is `python -m consumer run`, the real command line, in a child
  process: its CPU seconds (/proc/PID/stat, over the measured span) and peak RSS
  (the kernel's VmHWM for its own address space) are its own, not the devnet's
  or the benchmark's.
- The ceiling is measured in the same run on the same rows: the blocks are
  decoded outside the timed section and inserted with the best plain idempotent
  path we know (binary COPY into a temporary staging table, ledger rows with
  ON CONFLICT DO NOTHING RETURNING feeding INSERT ... SELECT into plays), into a
  second fresh database with the same trigger, in batches of a few thousand
  rows. Only the inserts are timed, so the ratio says what the pipeline costs.
  Half of its rows go in before the consumer runs and half after, so a change
  in the load of a shared machine lands on both sides of the ratio.
- Commit times come from NOTIFY, sent by a trigger on the checkpoint row: the
  server delivers it when the transaction commits, so its arrival here is the
  commit on the same clock (time.time()) as the devnet's `served` times.
- Memory flatness is a slope, not a peak: RSS is sampled through the run and
  fitted against the committed height, so a leak shows as MB per 10k blocks
  even in a run too short to reach any limit.
- The devnet serves blocks generated before the clock starts (ServedChain), so
  its Python block generator does not take CPU from the two being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consumer.decode import decode_block  # noqa: E402
from consumer.devnet import ChainSpec, DevChain, DevnetServer, Profile  # noqa: E402
from consumer.migrate import apply_migrations  # noqa: E402
from consumer.model import DecodedBlock  # noqa: E402
from consumer.source import parse_block  # noqa: E402

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CHANNEL = "bench_commit"
SAMPLE_EVERY_S = 0.02
_TICKS = os.sysconf("SC_CLK_TCK")

# The aggregate trigger of a discovery database, as the tests use it: per inserted
# row, two upserts into aggregate tables, as the real on_play does.
AGGREGATE_TRIGGER = (ROOT / "tests" / "fixtures" / "on_play.sql").read_text()

# Instrumentation only: tells this process the moment each checkpoint move commits.
COMMIT_NOTIFY = f"""
CREATE FUNCTION bench_notify_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('{CHANNEL}', NEW.height::text); RETURN NULL; END
$$;
CREATE TRIGGER bench_notify_commit AFTER INSERT OR UPDATE ON core_plays.checkpoint
FOR EACH ROW EXECUTE FUNCTION bench_notify_commit();
"""

_CEILING_STAGING = """
CREATE TEMP TABLE ceiling_staging (
    ord int, h int, i int, u int, t int, c timestamp, g text, ci text, r text, co text
) ON COMMIT DELETE ROWS
"""
_CEILING_COPY = "COPY ceiling_staging FROM STDIN (FORMAT BINARY)"
_CEILING_TYPES = ["int4"] * 5 + ["timestamp"] + ["text"] * 4
# Rows decoded ahead of the ceiling's clock (~50 MB of tuples at most).
CEILING_CHUNK_ROWS = 100_000
_CEILING_INSERT = """
WITH new AS (
    INSERT INTO core_plays.tx_ledger
        (chain_id, block_height, tx_index, tx_hash, play_count, skipped_count)
    SELECT %(chain)s, h, i, x, p, 0
    FROM unnest(%(heights)b::bigint[], %(indexes)b::int[], %(hashes)b::text[],
                %(plays)b::int[]) AS l(h, i, x, p)
    ON CONFLICT DO NOTHING
    RETURNING block_height, tx_index
)
INSERT INTO plays (user_id, source, play_item_id, created_at, updated_at, slot,
                   signature, city, region, country)
SELECT s.u, 'relay', s.t, s.c, now(), s.h, s.g, s.ci, s.r, s.co
FROM ceiling_staging s JOIN new n ON n.block_height = s.h AND n.tx_index = s.i
ORDER BY s.ord
"""


@dataclass(frozen=True, slots=True)
class Scenario:
    """One profile's run: how many blocks, how busy, how long at the tip."""

    profile: Profile
    blocks: int
    busy_txs: int
    busy_plays: int
    tip_blocks: int
    tip_interval_s: float
    ceiling_blocks: int
    ceiling_batch_plays: int
    seed: int = 1

    def spec(self) -> ChainSpec:
        return ChainSpec(
            seed=self.seed,
            profile=self.profile,
            busy_txs_per_block=self.busy_txs,
            busy_plays_per_tx=self.busy_plays,
        )

    def describe(self) -> str:
        if self.profile is Profile.BUSY:
            per = self.busy_txs * self.busy_plays
            return f"{self.blocks:,} busy blocks of {per:,} plays ({self.busy_txs} txs)"
        return f"{self.blocks:,} {self.profile.value} blocks"


@dataclass(slots=True)
class Sample:
    """The consumer process at one instant, with the height committed by then."""

    at: float
    height: int
    cpu_s: float
    rss_kb: int


@dataclass(slots=True)
class ConsumerRun:
    """What one `plays-consumer run` did, as seen from outside it."""

    exit_code: int = 0
    cpu_s: float = 0.0  # whole process, from wait4
    maxrss_kb: int = 0  # peak resident set: the last VmHWM sampled
    commits: list[tuple[float, int]] = field(default_factory=list)  # (time, height)
    samples: list[Sample] = field(default_factory=list)
    stderr: str = ""
    listener_reconnects: int = 0  # commit notifications lost to a dropped connection

    def committed_at(self, height: int) -> float | None:
        for at, committed in self.commits:
            if committed >= height:
                return at
        return None

    def cpu_at(self, at: float) -> float:
        """CPU seconds used by `at` (the last sample taken at or before it)."""
        used = 0.0
        for sample in self.samples:
            if sample.at > at:
                break
            used = sample.cpu_s
        return used


@dataclass(slots=True)
class Figures:
    """One row of the report table."""

    scenario: Scenario
    plays: int = 0
    seconds: float = math.nan
    cpu_s: float = math.nan
    maxrss_kb: int = 0
    rss_slope_mb: float = math.nan
    rss_samples: int = 0
    rss_marks: str = ""
    bench_cpu_s: float = math.nan  # this process (the devnet serving) during the catch-up
    listener_reconnects: int = 0  # commit times after one are upper bounds
    ceiling_plays_per_s: float = math.nan
    ceiling_rows: int = 0
    tip_p50_ms: float = math.nan
    tip_p99_ms: float = math.nan
    tip_max_ms: float = math.nan
    tip_samples: int = 0
    floor_p50_ms: float = math.nan  # PostgreSQL alone, one tip block per transaction
    floor_p99_ms: float = math.nan

    @property
    def blocks_per_s(self) -> float:
        return self.scenario.blocks / self.seconds

    @property
    def plays_per_s(self) -> float:
        return self.plays / self.seconds

    @property
    def ratio(self) -> float:
        return self.plays_per_s / self.ceiling_plays_per_s if self.plays else math.nan


# --- the chain ------------------------------------------------------------------


class ServedChain(DevChain):
    """A DevChain whose blocks are generated and serialized before the clock starts.

    The devnet's Python block generator costs up to 70 us a block (typical
    profile): served live, it would take a share of the same two cores the
    consumer and PostgreSQL are measured on. A real node serves stored bytes;
    so does this, up to a memory budget (past it, blocks are made on demand).
    """

    def __init__(self, spec: ChainSpec, last: int, budget_bytes: int = 1 << 30) -> None:
        super().__init__(spec)
        self._served: dict[tuple[int, bool], bytes] = {}
        size = 0
        for height in range(1, last + 1):
            for canon in (False, True):
                data = super().block_bytes(height, canon)
                size += len(data)
                if size > budget_bytes:
                    self._served.clear()
                    return
                self._served[height, canon] = data

    def block_bytes(self, height: int, canon: bool) -> bytes:
        data = self._served.get((height, canon))
        return data if data is not None else super().block_bytes(height, canon)


# --- databases ----------------------------------------------------------------


def _db_url(admin_url: str, name: str) -> str:
    return make_conninfo(admin_url, dbname=name)


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str, name: str, *, notify: bool) -> AsyncIterator[str]:
    """A new database with the real migrations and the aggregate trigger; dropped after."""
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    url = _db_url(admin_url, name)
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await apply_migrations(conn)
            await conn.execute(AGGREGATE_TRIGGER)
            if notify:
                await conn.execute(COMMIT_NOTIFY)
            await conn.execute("CHECKPOINT")  # start each measurement with no dirty backlog
        yield url
    finally:
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def count_plays(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT count(*) FROM plays")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


# --- the ceiling: PostgreSQL without the consumer --------------------------------


def _decoded_batches(
    chain: DevChain, first: int, last: int, batch_plays: int
) -> Iterator[list[DecodedBlock]]:
    """Whole blocks, as many as fit in `batch_plays` plays (one at least).

    Measured on busy blocks: 2,000-4,000 plays per transaction is fastest with
    the aggregate trigger, 6,000 is 10-20% slower and 10,000 a third slower.
    """
    batch: list[DecodedBlock] = []
    plays = 0
    for height in range(first, last + 1):
        block = decode_block(parse_block(chain.block_bytes(height, canon=True), height))
        if batch and plays + block.play_count > batch_plays:
            yield batch
            batch, plays = [], 0
        batch.append(block)
        plays += block.play_count
    if batch:
        yield batch


@dataclass(slots=True)
class _CeilingBatch:
    """One ceiling transaction, ready to send: the ledger arrays and the plays rows."""

    params: dict[str, object]
    rows: list[tuple[object, ...]]


def _ceiling_batch(chain_id: str, batch: list[DecodedBlock]) -> _CeilingBatch:
    heights, indexes, hashes, counts = [], [], [], []
    rows: list[tuple[object, ...]] = []
    for block in batch:
        for tx in block.txs:
            heights.append(block.height)
            indexes.append(tx.tx_index)
            hashes.append(tx.tx_hash)
            counts.append(len(tx.plays))
            for p in tx.plays:
                rows.append(
                    (len(rows), block.height, tx.tx_index, p.user_id, p.play_item_id,
                     p.created_at, p.signature, p.city, p.region, p.country)
                )  # fmt: skip
    params: dict[str, object] = {
        "chain": chain_id,
        "heights": heights,
        "indexes": indexes,
        "hashes": hashes,
        "plays": counts,
    }
    return _CeilingBatch(params, rows)


def _ceiling_chunks(
    chain: DevChain, first: int, last: int, batch_plays: int
) -> Iterator[list[_CeilingBatch]]:
    """Ready batches, CEILING_CHUNK_ROWS rows at a time: decoded up front, in
    chunks so that memory stays bounded whatever the number of blocks."""
    chunk: list[_CeilingBatch] = []
    rows = 0
    for batch in _decoded_batches(chain, first, last, batch_plays):
        ready = _ceiling_batch(chain.spec.chain_id, batch)
        if not ready.rows:
            continue
        chunk.append(ready)
        rows += len(ready.rows)
        if rows >= CEILING_CHUNK_ROWS:
            yield chunk
            chunk, rows = [], 0
    if chunk:
        yield chunk


async def measure_ceiling(
    url: str, chain: DevChain, first: int, last: int, batch_plays: int
) -> tuple[int, float]:
    """(rows, seconds) for the best plain idempotent insert of blocks first..last.

    The batches of a chunk are sent back to back and timed together: PostgreSQL
    stays as busy as it is under the consumer, with no idle pause after each
    transaction in which its background writers could catch up for free.
    """
    rows_total = 0
    seconds = 0.0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(_CEILING_STAGING)
        for chunk in _ceiling_chunks(chain, first, last, batch_plays):
            started = time.perf_counter()
            for ready in chunk:
                rows_total += await _insert_batch(conn, ready)
            seconds += time.perf_counter() - started
    return rows_total, seconds


async def _insert_batch(
    conn: psycopg.AsyncConnection[tuple[object, ...]], ready: _CeilingBatch
) -> int:
    """One ceiling transaction, committed; the plays rows it inserted."""
    async with conn.transaction():
        cur = conn.cursor()
        async with cur.copy(_CEILING_COPY) as copy:
            copy.set_types(_CEILING_TYPES)
            for row in ready.rows:
                await copy.write_row(row)
        await cur.execute(_CEILING_INSERT, ready.params)
        return cur.rowcount


async def measure_tip_floor(
    url: str, chain: DevChain, first: int, last: int, interval_s: float
) -> list[float]:
    """Milliseconds PostgreSQL alone takes to commit each block first..last.

    The tip's floor: the rows of one block, ready before the clock starts, sent
    in one transaction by the ceiling's path, one block per interval as at the
    tip. No client can commit a block faster than its rows can be inserted, so
    this is the part of the tip latency that is PostgreSQL's, measured on the
    same machine in the same run.
    """
    times: list[float] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(_CEILING_STAGING)
        for height in range(first, last + 1):
            block = decode_block(parse_block(chain.block_bytes(height, canon=True), height))
            ready = _ceiling_batch(chain.spec.chain_id, [block])
            started = time.perf_counter()
            await _insert_batch(conn, ready)
            times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(max(0.0, interval_s - times[-1] / 1000))
    return times


# --- the consumer as a process ---------------------------------------------------


def _proc_sample(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds, RSS KB, peak RSS KB) of a live process, None once it is gone.

    The peak is the kernel's VmHWM for the process's own address space. (wait4's
    ru_maxrss would not do: it carries over the high-water mark of the address
    space the child was forked from, this benchmark's with its pre-built chain.)
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    memory = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            memory[key] = int(value.split()[0])
    if "VmRSS" not in memory:  # a zombie: the address space is gone already
        return None
    return cpu_s, memory["VmRSS"], memory.get("VmHWM", memory["VmRSS"])


class CommitListener:
    """The checkpoint trigger's commit notifications, on a connection that may be lost.

    A backfill of 100,000 busy blocks runs for an hour; a PostgreSQL restart in
    that hour (another job on a shared machine) must cost a few notifications,
    not the run. After a reconnect the checkpoint's height is read back and
    recorded as committed at that moment: later than the true commit, never
    earlier, and the reconnect is reported beside the figures.
    """

    def __init__(self, url: str, run: ConsumerRun) -> None:
        self.url = url
        self.run = run
        self.height = 0
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        await conn.execute(f"LISTEN {CHANNEL}")
        self._conn = conn
        # What committed before LISTEN: nothing on a fresh start of the catch-up, the
        # catch-up's last height for the tip, the outage's commits after a reconnect.
        cur = await conn.execute("SELECT coalesce(max(height), 0) FROM core_plays.checkpoint")
        row = await cur.fetchone()
        self._note(int(row[0]) if row else 0)

    async def listen(self, quiet_s: float | None = None) -> None:
        """Record commits until cancelled, or with `quiet_s` until a quiet spell."""
        while True:
            try:
                assert self._conn is not None
                async for note in self._conn.notifies(timeout=quiet_s):
                    self._note(int(note.payload))
                return
            except psycopg.OperationalError as exc:
                self.run.listener_reconnects += 1
                _progress(f"commit listener lost its connection ({exc}); reconnecting")
                await self._reconnect()

    async def _reconnect(self) -> None:
        await self.close()
        while True:
            try:
                await self.connect()
                return
            except psycopg.OperationalError:
                await asyncio.sleep(0.5)

    def _note(self, height: int) -> None:
        if height > self.height:
            self.height = height
            self.run.commits.append((time.time(), height))

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None


async def run_consumer(core_url: str, db_url: str, *args: str) -> ConsumerRun:
    """Run `python -m consumer run` to completion, watching its commits, CPU and RSS."""
    run = ConsumerRun()
    listener = CommitListener(db_url, run)
    await listener.connect()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORE_PLAYS_")}
        argv = [
            sys.executable, "-m", "consumer", "run",
            "--core-url", core_url, "--database-url", db_url,
            "--metrics-addr", "127.0.0.1:0", "--log-level", "warning", *args,
        ]  # fmt: skip
        with tempfile.TemporaryFile() as err:
            proc = await asyncio.to_thread(
                subprocess.Popen, argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err
            )
            # wait4: this child's own exit status and total CPU time.
            waiter = asyncio.ensure_future(asyncio.to_thread(os.wait4, proc.pid, 0))

            async def sample() -> None:
                while True:
                    got = _proc_sample(proc.pid)
                    if got is not None:
                        cpu_s, rss_kb, run.maxrss_kb = got
                        run.samples.append(Sample(time.time(), listener.height, cpu_s, rss_kb))
                    await asyncio.sleep(SAMPLE_EVERY_S)

            tasks = [asyncio.ensure_future(listener.listen()), asyncio.ensure_future(sample())]
            try:
                _, status, usage = await waiter
            finally:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks)
            proc.returncode = os.waitstatus_to_exitcode(status)
            # Notifications that arrived while the process was exiting.
            await listener.listen(quiet_s=0.2)
            err.seek(0)
            run.stderr = err.read().decode(errors="replace")
    finally:
        await listener.close()
    run.exit_code = proc.returncode
    run.cpu_s = usage.ru_utime + usage.ru_stime
    if run.exit_code != 0:
        raise RuntimeError(f"consumer exited {run.exit_code}:\n{run.stderr[-4000:]}")
    return run


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


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a real block)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --- one profile -----------------------------------------------------------------


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
            _progress(
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
                _progress(
                    f"{scenario.profile}: PostgreSQL alone commits a tip block in "
                    f"p50 {figures.floor_p50_ms:.1f} ms, p99 {figures.floor_p99_ms:.1f} ms"
                )
    return figures


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
    _progress(
        f"{scenario.profile}: catch-up {figures.blocks_per_s:,.0f} blocks/s, "
        f"{figures.plays_per_s:,.0f} plays/s, whole process {run.cpu_s:.2f} CPU s, "
        f"devnet {figures.bench_cpu_s:.2f} CPU s"
    )


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
    _progress(
        f"{scenario.profile}: tip p50 {figures.tip_p50_ms:.1f} ms, "
        f"p99 {figures.tip_p99_ms:.1f} ms over {figures.tip_samples} blocks"
    )


def _progress(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


# --- report --------------------------------------------------------------------------

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


def _fmt(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def table(rows: Sequence[Figures]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for f in rows:
        cpu_per_k = f.cpu_s / f.plays * 1000 if f.plays else math.nan
        cells = (
            f.scenario.profile.value,
            f"{f.scenario.blocks:,}",
            f"{f.plays:,}",
            _fmt(f.blocks_per_s),
            _fmt(f.plays_per_s),
            _fmt(cpu_per_k, 3),
            _fmt(f.maxrss_kb / 1024, 1),
            _fmt(f.rss_slope_mb, 1),
            _fmt(f.ceiling_plays_per_s),
            _fmt(f.ratio, 2),
            _fmt(f.tip_p50_ms, 1),
            _fmt(f.tip_p99_ms, 1),
            _fmt(f.floor_p99_ms, 1),
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


def rss_profile(samples: Sequence[Sample], blocks: int) -> str:
    """RSS when a quarter, half, three quarters and all of the blocks were committed."""
    marks = []
    for quarter in (1, 2, 3, 4):
        at = [s.rss_kb for s in samples if s.height >= blocks * quarter / 4]
        marks.append(f"{at[0] / 1024:.0f}" if at else "?")
    return "/".join(marks)


def shown_command(argv: Sequence[str]) -> str:
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
    return " ".join(["scripts/bench.py", *shown])


# --- command line ----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
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


_DEFAULT_BLOCKS = {Profile.EMPTY: 50_000, Profile.TYPICAL: 20_000, Profile.BUSY: 500}


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    profiles = [Profile(p) for p in args.profile] if args.profile else list(Profile)
    out = []
    for profile in profiles:
        quick = args.quick
        blocks = args.blocks or (300 if quick else _DEFAULT_BLOCKS[profile])
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
        _progress(f"{scenario.profile}: {scenario.describe()}")
        results.append(await bench_profile(scenario, args.database_url, tag))
    print(f"machine: {await machine(args.database_url)}")
    print(f"command: {shown_command(sys.argv[1:] if argv is None else argv)}")
    for f in results:
        s = f.scenario
        print(
            f"{s.profile.value}: {s.describe()}; ceiling over {f.ceiling_rows:,} rows in "
            f"batches of up to {s.ceiling_batch_plays:,} plays; tip {f.tip_samples} blocks "
            f"every {s.tip_interval_s:g} s (max {_fmt(f.tip_max_ms, 1)} ms; PostgreSQL alone "
            f"p50 {_fmt(f.floor_p50_ms, 1)} ms); RSS MB at "
            f"1/4, 1/2, 3/4, all of the blocks {f.rss_marks}, slope from {f.rss_samples} samples; "
            f"the devnet serving the catch-up used {_fmt(f.bench_cpu_s, 2)} CPU s"
            + (
                f"; the commit listener reconnected {f.listener_reconnects} times"
                if f.listener_reconnects
                else ""
            )
        )
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
