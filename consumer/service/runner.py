"""One consumer process, wired as the README's "How it works" draws it.

    node --(CoreSource)--> decode --> queue --> Writer(PlaysSink) --> PostgreSQL
                                   audit (Auditor) re-reads what the stream delivered

First contact with the node and the database (consumer.service.startup,
consumer.sink.database), then writing sessions until --to-height or stop: each
holds the writer lock (consumer.sink.lease), starts where consumer.service.startup says,
and runs the pipeline (consumer.service.pipeline); every commit is observed
(consumer.service.commits) and readiness is this process's own state
(consumer.service.readiness).

Retries: the source reconnects to the node itself. What the database's world
does (a lost session, a failover to a read-only replica, too many clients, a
cancelled statement) ends the writing session: the lease goes with it, the
runner waits with backoff (not ready), competes for the lease again, re-reads
the checkpoint and resumes. A batch PostgreSQL refuses is retried for
--refused-retry-s before its refused transactions are set aside
(consumer.service.writer). Errors that waiting cannot fix propagate and stop the
process with one line.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from consumer import __version__
from consumer.backoff import Backoff, Retry, Waiting
from consumer.config import Settings
from consumer.errors import SinkUnavailable, Stopped
from consumer.metrics import Metrics, SourceMetrics
from consumer.model import BatchResult, ReconnectTarget
from consumer.service.commits import CommitObserver
from consumer.service.pipeline import Pipeline
from consumer.service.progress import RunProgress
from consumer.service.readiness import Readiness, Role
from consumer.service.startup import StartPoint, first_contact
from consumer.service.writer import Writer
from consumer.sink.database import migrate_when_ready
from consumer.sink.lease import Holder, Lease
from consumer.sink.plays import PlaysSink, read_checkpoint
from consumer.sink.written import DEFAULT_OTHER_WRITER
from consumer.source.core import CoreClient, CoreSource
from consumer.trust.audit import Auditor
from consumer.trust.handover import Handover, refuse_another_writers_heights

__all__ = ["Runner"]

log = logging.getLogger(__name__)


class Runner:
    """One consumer process: first contact, then writing sessions until done or stopped."""

    def __init__(self, settings: Settings, metrics: Metrics, stop: asyncio.Event) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.chain_id = ""
        self.ready = Readiness(settings.http.ready_max_lag_s)
        self.progress = RunProgress(metrics.head_value, settings.to_height)
        self._commits = CommitObserver(metrics, self.progress)
        self._retry = Retry(Backoff(cap_s=settings.source.retry_cap_s), stop)
        self._handover: Handover | None = None
        metrics.watch(lambda: self.readiness()[0], self.ready.lag_s)

    @property
    def waiting(self) -> Waiting:
        """What the service waits for on the database, if anything."""
        return self.ready.waiting

    def readiness(self) -> tuple[bool, str]:
        return self.ready.verdict()

    async def run(self) -> None:
        """Return when --to-height is reached or stop is set; raise on a fatal error."""
        settings = self.settings
        client = CoreClient(settings.source)
        try:
            timeout_s = settings.source.connect_timeout_s
            info = await first_contact(client, timeout_s, self.stop, self.metrics)
            if info is None or not await self._prepare_database():
                return
            self.chain_id = info.chain_id
            self.metrics.set_head(info.head)
            log.info("node %s is on chain %s at height %d", client.url, info.chain_id, info.head)
            self.metrics.set_build(
                __version__, info.chain_id, settings.source.source_mode, settings.sink.stream
            )
            start_point = StartPoint(settings, client, info.chain_id, self.metrics, self.stop)
            if settings.handover_from is not None:
                self._handover = Handover(
                    settings.handover_from,
                    info.chain_id,
                    settings.sink.conninfo,
                    settings.handover_quiet_s,
                    self.metrics,
                    self.stop,
                    self.metrics.head_value,
                    CoreSource.rereader(client, settings.source, info.chain_id).blocks,
                )
            source = CoreSource(
                client, settings.source, SourceMetrics(self.metrics), chain_id=info.chain_id
            )
            while not self.stop.is_set():
                if await self._session(client, source, start_point):
                    break
            self.progress.finish()
        finally:
            if self._handover is not None:
                await self._handover.close()
            await client.close()

    async def _prepare_database(self) -> bool:
        sink = self.settings.sink
        retry = Retry(Backoff(initial_s=0.2, cap_s=self.settings.source.retry_cap_s), self.stop)
        return await migrate_when_ready(
            sink.conninfo, sink.safe_url, sink.connect_timeout_s, retry, self.waiting
        )

    async def _session(
        self, client: CoreClient, source: CoreSource, start_point: StartPoint
    ) -> bool:
        """Hold the lease and write until done (True), stopped (True) or a world's error."""
        settings = self.settings.sink
        lease = Lease(
            settings.conninfo,
            self.chain_id,
            settings.stream,
            settings.lease_retry_s,
            on_change=self._on_lease,
            on_standby=self._on_standby,
        )
        try:
            conn = await lease.acquire(self.stop)
            if conn is None:
                return True
            self.waiting.end()
            return await self._write(conn, lease, client, source, start_point)
        except Stopped:
            return True
        except SinkUnavailable as exc:
            await lease.release()  # is_leader drops now, not after the back-off
            self.metrics.db_errors_total.inc()
            self.metrics.reconnects_total.labels(ReconnectTarget.DATABASE).inc()
            self.waiting.begin(f"the database: {exc}")
            await self._retry.pause()
            return False
        finally:
            await lease.release()

    async def _write(
        self,
        conn: AsyncConnection[TupleRow],
        lease: Lease,
        client: CoreClient,
        source: CoreSource,
        start_point: StartPoint,
    ) -> bool:
        """With the lease held: write from the start rule's height until done or stopped."""
        settings = self.settings.sink
        start = await self._start_height(conn, start_point)
        end = self.settings.to_height
        if end is not None and start > end:
            log.info("nothing to do: start height %d is past --to-height %d", start, end)
            return True
        log.info(
            "writing chain %s stream %s from height %d%s",
            self.chain_id,
            settings.stream,
            start,
            f" to {end}" if end else "",
        )
        handover = self._handover
        sink = PlaysSink(
            conn,
            self.chain_id,
            settings.stream,
            start,
            rewind=settings.rewind_checkpoint,
            prepare=None if handover is None else handover.prepare,
        )
        writer = Writer(sink, lease, self.settings, self.metrics, self.stop, self.waiting)
        pipeline = Pipeline(
            source if handover is None else handover.gated(source),
            writer,
            self.settings,
            self.metrics,
            self.stop,
            auditor=self._auditor(client),
            on_commit=functools.partial(self._committed, start_point),
        )
        done = await pipeline.run(start, end)
        self._retry.reset()
        return done

    async def _start_height(self, conn: AsyncConnection[TupleRow], start_point: StartPoint) -> int:
        """Where this session starts; the checkpoint it read already shows in metrics and
        readiness, and another writer's heights are refused unless handing over."""
        checkpoint = await read_checkpoint(conn, self.chain_id, self.settings.sink.stream)
        if checkpoint is not None:
            self.metrics.set_processed(checkpoint.height)
            self.ready.positioned(checkpoint.block_time)
        start = await start_point.height(conn, checkpoint)
        if self._handover is None:
            await refuse_another_writers_heights(conn, self.chain_id, start)
        return start

    def _auditor(self, client: CoreClient) -> Auditor | None:
        if self.settings.no_audit:
            return None
        return Auditor(
            client,
            self.settings.source,
            self.settings.sink.conninfo,
            self.chain_id,
            self.settings.sink.stream,
            self.settings.audit_interval_s,
            self.metrics,
            self.settings.handover_from or DEFAULT_OTHER_WRITER,
        )

    def _committed(self, start_point: StartPoint, result: BatchResult) -> None:
        start_point.written(result.height)
        self.ready.positioned(result.block_time)
        self._commits.observe(result)

    def _on_lease(self, held: bool) -> None:
        self.metrics.is_leader.set(1 if held else 0)
        self.ready.role = Role.LEADER if held else Role.RECONNECTING

    def _on_standby(self, holder: Holder | None) -> None:
        self.ready.role = Role.STANDBY
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
