"""Wires source -> decode -> sink with a bounded queue, and owns retries and stop.

Shape: a producer task reads blocks from the node and decodes them into a
queue bounded in blocks and in plays (the bound is the back-pressure, and it
bounds memory whatever the block size); the writer takes whatever the queue
holds, up to the batch limits, and commits it with its checkpoint. While the
node is ahead the queue fills during each commit, so batches grow by
themselves; at the tip the queue holds one block at a time, so each block
commits on its own as soon as it arrives (consumer.batching). Decode runs on
the loop: scripts/bench shows the database, not the loop, is what a
catch-up waits for.

Retries: the source reconnects to the node itself. What the database's world
does (a lost session, a failover to a read-only replica, too many clients, a
cancelled statement) ends the writing session: the lease goes with it, the
runner waits with backoff (not ready), competes for the lease again, re-reads
the checkpoint and resumes. A batch PostgreSQL refuses is retried for
--refused-retry-s before its refused transactions are set aside. Errors that
waiting cannot fix propagate and stop the process with one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Generator
from typing import Any

import psycopg

from consumer import __version__
from consumer.audit import Auditor
from consumer.backoff import Backoff, Retry
from consumer.batching import BlockQueue
from consumer.config import Settings
from consumer.database import Waiting, migrate_when_ready
from consumer.decode import (
    LARGE_BLOCK_BYTES,
    LARGE_BLOCK_PART_BYTES,
    block_parts,
    decode_steps,
    wire_bytes,
)
from consumer.errors import (
    ChainMismatch,
    CheckpointMissing,
    ConfigError,
    SinkUnavailable,
    SourceFailed,
    SourceUnavailable,
)
from consumer.lease import Holder, Lease
from consumer.metrics import Metrics
from consumer.model import Block, Checkpoint, DecodedBlock
from consumer.progress import RunProgress
from consumer.sink import BatchResult, PlaysSink, other_chains, read_checkpoint
from consumer.source import CoreClient, CoreSource, NodeInfo
from consumer.start import is_replay, start_height
from consumer.writer import Stopped, Writer

__all__ = ["Runner", "first_error"]

log = logging.getLogger(__name__)

_STOP = object()
_IDLE = object()
# Plays decoded between two turns of the loop: ~0.25 ms of decode (see decode_steps).
_DECODE_SLICE_PLAYS = 64
_ODD_LOG_INTERVAL_S = 60.0
_CONFLICTS_LOGGED = 10  # per batch; the rest are summed in one line


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a TaskGroup's group (cancellations are consequences)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


class Runner:
    """One consumer process: first contact, then writing sessions until done or stopped."""

    def __init__(self, settings: Settings, metrics: Metrics, stop: asyncio.Event) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.chain_id = ""
        self.role = "starting"
        self.waiting = Waiting()  # what the service waits for on the database, if anything
        self._resume_at: int | None = None
        self._replay: bool | None = None
        self._retry = Retry(Backoff(cap_s=settings.source.retry_cap_s), stop)
        self._odd: Counter[str] = Counter()
        self._odd_logged_at = -math.inf
        self.progress = RunProgress(metrics.head_value, settings.to_height)
        metrics.watch_readiness(lambda: self.readiness()[0])

    # --- readiness ----------------------------------------------------------

    @property
    def db_ok(self) -> bool:
        return self.waiting.what is None

    def readiness(self) -> tuple[bool, str]:
        """Ready: not waiting on the database, and either a standby or a leader within lag."""
        if self.waiting.what is not None:
            return False, self.waiting.what
        if self.role == "standby":
            return True, "standby: another instance holds the writer lock"
        if self.role != "leader":
            return False, self.role
        lag = self.metrics.lag_seconds_value()
        limit = self.settings.http.ready_max_lag_s
        if math.isnan(lag) or lag > limit:  # NaN: nothing committed or loaded yet
            return False, f"lag {lag:.1f} s over {limit:g} s"
        return True, f"leader, lag {lag:.1f} s"

    # --- the process --------------------------------------------------------

    async def run(self) -> None:
        """Return when --to-height is reached or stop is set; raise on a fatal error."""
        settings = self.settings
        client = CoreClient(settings.source)
        try:
            info = await self._first_contact(client)
            if info is None or not await self._prepare_database():
                return
            self.chain_id = info.chain_id
            self.metrics.set_head(info.head)
            log.info("node %s is on chain %s at height %d", client.url, info.chain_id, info.head)
            self.metrics.set_build(
                __version__, info.chain_id, settings.source.source_mode, settings.sink.stream
            )
            source = CoreSource(
                client,
                settings.source,
                self.metrics,
                on_mode=self.metrics.set_source_mode,
                chain_id=info.chain_id,
            )
            while not self.stop.is_set():
                if await self._session(client, source):
                    break
            self.progress.finish()
        finally:
            await client.close()

    async def _first_contact(self, client: CoreClient) -> NodeInfo | None:
        timeout_s = self.settings.source.connect_timeout_s
        deadline = time.monotonic() + timeout_s
        retry = Retry(Backoff(initial_s=0.2, cap_s=2.0), self.stop)
        while True:
            try:
                return await client.node_info()
            except SourceUnavailable as exc:
                self.metrics.source_errors_total.labels(exc.code).inc()
                if retry.backoff.attempts == 0:
                    log.warning(
                        "cannot reach the Core node at %s yet (%s); retrying for up to %g s",
                        client.url,
                        exc,
                        timeout_s,
                    )
                if not await retry.pause(deadline):
                    if self.stop.is_set():
                        return None
                    raise ConfigError(
                        f"cannot reach the Core node at {client.url}: GetNodeInfo failed for "
                        f"{timeout_s:g} s, last: {exc} (check --core-url, http vs https)"
                    ) from None
            except SourceFailed as exc:
                raise ConfigError(
                    f"the Core node at {client.url} refused GetNodeInfo: {exc}"
                ) from None

    async def _prepare_database(self) -> bool:
        sink = self.settings.sink
        retry = Retry(Backoff(initial_s=0.2, cap_s=self.settings.source.retry_cap_s), self.stop)
        return await migrate_when_ready(
            sink.conninfo, sink.safe_url, sink.connect_timeout_s, retry, self.waiting
        )

    async def _session(self, client: CoreClient, source: CoreSource) -> bool:
        """Hold the lease and write until done (True), stopped (True) or a world's error."""
        sink_settings = self.settings.sink
        lease = Lease(
            sink_settings.conninfo,
            self.chain_id,
            sink_settings.stream,
            sink_settings.lease_retry_s,
            on_change=self._on_lease,
            on_standby=self._on_standby,
        )
        try:
            conn = await lease.acquire(self.stop)
            if conn is None:
                return True
            self.waiting.end()
            checkpoint = await read_checkpoint(conn, self.chain_id, sink_settings.stream)
            start = await self._start_height(conn, checkpoint, client)
            end = self.settings.to_height
            if end is not None and start > end:
                log.info("nothing to do: start height %d is past --to-height %d", start, end)
                return True
            log.info(
                "writing chain %s stream %s from height %d%s",
                self.chain_id,
                sink_settings.stream,
                start,
                f" to {end}" if end else "",
            )
            sink = PlaysSink(
                conn,
                self.chain_id,
                sink_settings.stream,
                start,
                rewind=sink_settings.rewind_checkpoint,
            )
            auditor = None
            if not self.settings.no_audit:
                auditor = Auditor(
                    client,
                    self.settings.source,
                    sink_settings.conninfo,
                    self.chain_id,
                    sink_settings.stream,
                    self.settings.audit_interval_s,
                    self.metrics,
                )
            done = await self._pipeline(source, sink, lease, start, end, auditor)
            self._retry.reset()
            return done
        except Stopped:
            return True
        except SinkUnavailable as exc:
            await lease.release()  # is_leader drops now, not after the back-off
            self.metrics.db_errors_total.inc()
            self.metrics.reconnects_total.labels("database").inc()
            self.waiting.begin(f"the database: {exc}")
            await self._retry.pause()
            return False
        finally:
            await lease.release()

    def _on_lease(self, held: bool) -> None:
        self.metrics.is_leader.set(1 if held else 0)
        self.role = "leader" if held else "reconnecting"

    def _on_standby(self, holder: Holder | None) -> None:
        self.role = "standby"
        self.waiting.end()  # the database answered: a standby is healthy
        stream = self.settings.sink.stream
        held_by = f"held by {holder}" if holder else "held by another session"
        if self.settings.to_height is None:
            log.info("writer lock for stream '%s' is %s: standing by", stream, held_by)
            return
        log.warning(
            "standing by: the writer lock for chain %s stream '%s' is %s, most likely the "
            "live service; this bounded run waits until it is free. To run beside it, give "
            "the range a checkpoint of its own: add --stream NAME (e.g. --stream replay-%s-%s)",
            self.chain_id,
            stream,
            held_by,
            self.settings.from_height or "start",
            self.settings.to_height,
        )

    async def _start_height(
        self,
        conn: psycopg.AsyncConnection[Any],
        checkpoint: Checkpoint | None,
        client: CoreClient,
    ) -> int:
        settings = self.settings
        stream = settings.sink.stream
        if checkpoint is not None:
            self.metrics.set_position(checkpoint.height, checkpoint.block_time)
            await self._verify_checkpoint(checkpoint, client)
            log.info(
                "checkpoint loaded: chain %s stream %s at height %d (%s)",
                checkpoint.chain_id,
                stream,
                checkpoint.height,
                checkpoint.block_hash,
            )
        height = None if checkpoint is None else checkpoint.height
        if self._replay is None:
            self._replay = is_replay(settings.from_height, height)
        start = start_height(
            stream=stream,
            from_height=settings.from_height,
            checkpoint_height=height,
            resume_at=self._resume_at,
            replay=self._replay,
        )
        if start is not None:
            return start
        others = await other_chains(conn, stream)
        if others:
            raise ChainMismatch(
                f"the node at {client.url} is on chain {self.chain_id}, but this database's "
                f"'{stream}' checkpoint is for chain {', '.join(others)}; a new chain "
                "needs an explicit --from-height (its first blocks may re-write history "
                "already in plays)"
            )
        raise CheckpointMissing(
            f"no checkpoint for chain {self.chain_id} stream '{stream}' in "
            f"{settings.sink.safe_url}: start with --from-height N"
        )

    async def _verify_checkpoint(self, checkpoint: Checkpoint, client: CoreClient) -> None:
        """The node must hold the very block the checkpoint was written from."""
        retry = Retry(Backoff(cap_s=self.settings.source.retry_cap_s), self.stop)
        while True:
            try:
                block = await client.block(checkpoint.height)
            except SourceUnavailable as exc:
                self.metrics.source_errors_total.labels(exc.code).inc()
                log.warning("%s; retrying", exc)
                block = None
            else:
                if block is not None:
                    break
                log.warning(
                    "node %s has not reached checkpoint height %d yet; waiting",
                    client.url,
                    checkpoint.height,
                )
            if not await retry.pause():
                raise Stopped
        if block.hash != checkpoint.block_hash:
            raise ChainMismatch(
                f"checkpoint for chain {checkpoint.chain_id} is at height {checkpoint.height} "
                f"with block hash {checkpoint.block_hash}, but the node at {client.url} has "
                f"{block.hash or '(unreadable block)'} there: a different chain or a restored "
                "node; nothing was written"
            )

    # --- the pipeline -------------------------------------------------------

    async def _pipeline(
        self,
        source: CoreSource,
        sink: PlaysSink,
        lease: Lease,
        start: int,
        end: int | None,
        auditor: Auditor | None,
    ) -> bool:
        batch = self.settings.batch
        # Plays bound: one full batch ready behind the one being written, so the
        # database never waits for decode, and no more (see consumer.batching).
        queue = BlockQueue(batch.queue_blocks, 2 * batch.max_plays)
        writer = Writer(sink, lease, self.settings, self.metrics, self.stop, self.waiting)
        await writer.count_set_aside()
        try:
            async with asyncio.TaskGroup() as tg:
                producer = tg.create_task(self._produce(source, queue, start, end))
                watcher = tg.create_task(self._watch(source))
                audit = tg.create_task(auditor.run()) if auditor else None
                try:
                    done = await self._write_batches(queue, writer, auditor)
                    if done and end is not None and auditor is not None:
                        await self._until_audited(auditor, end)
                    return done
                finally:
                    producer.cancel()
                    watcher.cancel()
                    if audit is not None:
                        audit.cancel()
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _produce(
        self,
        source: CoreSource,
        queue: BlockQueue,
        start: int,
        end: int | None,
    ) -> None:
        async with contextlib.aclosing(source.blocks(start, end)) as blocks:
            async for block in blocks:
                if wire_bytes(block) > LARGE_BLOCK_BYTES:
                    await queue.put(block)  # decoded by the writer, a part at a time
                else:
                    await queue.put(await _decode_cooperatively(decode_steps(block)))
                del block  # not held while waiting for the next one
        await queue.put(None)

    async def _watch(self, source: CoreSource) -> None:
        """Keep the head fresh for lag (the writer's connection is not this task's)."""
        while True:
            await asyncio.sleep(self.settings.source.head_refresh_s)
            try:
                await source.head()
            except SourceUnavailable as exc:
                self.metrics.source_errors_total.labels(exc.code).inc()

    async def _until_audited(self, auditor: Auditor, end: int) -> None:
        """A bounded run ends verified: every height of it audited (or stopped)."""
        if auditor.audited_height >= end or self.stop.is_set():
            return
        log.info("--to-height %d written; waiting for the audit to re-read it", end)
        waiter = asyncio.ensure_future(auditor.until_audited(end))
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        if auditor.audited_height >= end:
            log.info("audited up to height %d", end)

    async def _write_batches(
        self, queue: BlockQueue, writer: Writer, auditor: Auditor | None
    ) -> bool:
        """Write batches until the source ends or stop is set (see consumer.batching).

        The only task that uses the writer's connection (see consumer.writer).
        """
        limits = self.settings.batch
        stopper: asyncio.Future[Any] = asyncio.ensure_future(self.stop.wait())
        try:
            while True:
                first = await self._next_or_stop(queue, stopper)
                while first is _IDLE:
                    await writer.idle()
                    first = await self._next_or_stop(queue, stopper)
                if first is _STOP or first is None:
                    return True
                if isinstance(first, Block):
                    batch, finished = [_header(first)], False
                    parts = functools.partial(_decoded_parts, first)
                    result = await writer.write_parts(batch, parts)
                else:
                    assert isinstance(first, DecodedBlock)
                    batch, finished = queue.take_batch(first, limits.max_blocks, limits.max_plays)
                    result = await writer.write(batch)
                self._resume_at = result.height + 1
                self._observe(result)
                if auditor is not None:
                    auditor.written(batch)
                if finished or self.stop.is_set():
                    return True
        finally:
            stopper.cancel()

    async def _next_or_stop(self, queue: BlockQueue, stopper: asyncio.Future[Any]) -> object:
        """The next queued block, or _STOP, or _IDLE after head_refresh_s without one."""
        if not queue.empty():
            return await queue.get()
        getter: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
        await asyncio.wait(
            {getter, stopper},
            timeout=self.settings.source.head_refresh_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if getter.done():
            return getter.result()
        getter.cancel()
        return _STOP if stopper.done() else _IDLE

    def _observe(self, result: BatchResult) -> None:
        self.progress.observe(result)
        self.metrics.observe_commit(
            blocks=result.blocks,
            height=result.height,
            block_time=result.block_time,
            plays_written=result.plays_written,
            duplicates=result.duplicates,
            tx_types=result.tx_types,
            skipped=result.skipped,
            repaired=result.repaired,
            quarantined=result.quarantined,
            seconds=result.seconds,
        )
        if result.quarantined:
            # A whole unreadable block is an incident (the alert rules page for it);
            # a single malformed transaction is data nobody validated.
            level = logging.ERROR if result.quarantined.get("block") else logging.WARNING
            log.log(
                level,
                "quarantined undecodable data in blocks up to %d: %s (see core_plays.quarantine)",
                result.height,
                dict(result.quarantined),
            )
        self._log_conflicts(result)
        self._log_odd_plays(result)
        log.debug(
            "committed %d blocks to height %d: %d plays, %d duplicate txs, %.1f ms",
            result.blocks,
            result.height,
            result.plays_written,
            result.duplicates,
            result.seconds * 1000,
        )

    def _log_conflicts(self, result: BatchResult) -> None:
        """Each new disagreement between deliveries once (the table keeps them all)."""
        for conflict in result.conflicts:
            self.metrics.source_conflicts_total.labels(conflict.kind).inc()
        for conflict in result.conflicts[:_CONFLICTS_LOGGED]:
            log.warning("delivery conflict: %s", conflict.describe())
        if len(result.conflicts) > _CONFLICTS_LOGGED:
            log.warning(
                "%d more delivery conflicts up to height %d (see core_plays.conflicts)",
                len(result.conflicts) - _CONFLICTS_LOGGED,
                result.height,
            )

    def _log_odd_plays(self, result: BatchResult) -> None:
        """Skips and repairs at info level, summed over at most one line a minute:
        odd data is normal on a chain nobody validates, and must not flood logs."""
        self._odd.update({f"skipped {k}": v for k, v in result.skipped.items()})
        self._odd.update({f"repaired {k}": v for k, v in result.repaired.items()})
        now = time.monotonic()
        if self._odd and now - self._odd_logged_at >= _ODD_LOG_INTERVAL_S:
            log.info(
                "plays up to height %d: %s",
                result.height,
                ", ".join(f"{k} {v}" for k, v in sorted(self._odd.items())),
            )
            self._odd.clear()
            self._odd_logged_at = now


async def _decoded_parts(block: Block) -> AsyncIterator[DecodedBlock]:
    for part, first_index in block_parts(block, LARGE_BLOCK_PART_BYTES):
        yield await _decode_cooperatively(decode_steps(part, first_index))


def _header(block: Block) -> DecodedBlock:
    """What the audit needs of a block written in parts: its height and its call."""
    return DecodedBlock(block.height, block.hash, block.chain_id, None, (), via=block.via)


async def _decode_cooperatively(steps: Generator[int, None, DecodedBlock]) -> DecodedBlock:
    """Drive a block's decode, letting the loop run every `_DECODE_SLICE_PLAYS` plays.

    Decode shares the loop with the writer. Decoded whole, a busy block holds the
    loop ~8 ms, and the producer decodes right after the writer takes a batch,
    just when the writer has its short statements (BEGIN, the COPYs) to send.
    Measured on busy blocks (sampling pg_stat_activity every 3 ms): PostgreSQL
    waited for the client ~10% of the catch-up with whole-block decode, ~7% with
    a turn of the loop after every transaction, ~6% every 64 plays; what is
    left is COPY formatting and psycopg between statements.
    """
    since_yield = 0
    while True:
        try:
            plays = next(steps)
        except StopIteration as done:
            decoded: DecodedBlock = done.value
            return decoded
        if plays - since_yield >= _DECODE_SLICE_PLAYS:
            since_yield = plays
            await asyncio.sleep(0)
