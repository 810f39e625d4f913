"""The writer side of a session: the one task that uses the lease's connection.

It writes batches through the sink and, while idle, proves the session is
alive itself (consumer.sink.lease says why no other task may). A batch PostgreSQL
refuses is retried for --refused-retry-s, not ready and with
`write_refused` at 1, before what PostgreSQL still refuses is set aside; a
write that PostgreSQL holds up (a lock, most often) is logged with what it
waits for, and again when it goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from consumer.backoff import Backoff, Retry, Waiting
from consumer.config import Settings
from consumer.errors import SinkRefused, Stopped
from consumer.logs import counted
from consumer.metrics import Metrics
from consumer.model import BatchResult, DecodedBlock
from consumer.sink.database import describe_wait
from consumer.sink.lease import Lease
from consumer.sink.plays import PlaysSink, count_set_aside, report_set_aside

__all__ = ["Writer"]

log = logging.getLogger(__name__)


class Writer:
    # A write waiting this long on PostgreSQL is logged with what it waits for.
    stall_s = 10.0

    def __init__(
        self,
        sink: PlaysSink,
        lease: Lease,
        settings: Settings,
        metrics: Metrics,
        stop: asyncio.Event,
        waiting: Waiting,
    ) -> None:
        self.sink = sink
        self.lease = lease
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.waiting = waiting
        self._counted_at = time.monotonic()

    async def idle(self) -> None:
        """Between batches at the tip: the session is alive, and the set-aside count fresh
        (`quarantine retry` from another process lowers it)."""
        await self.lease.check()
        await self.count_set_aside()

    async def count_set_aside(self) -> None:
        pending = await count_set_aside(self.sink.conn, self.sink.chain_id)
        self.metrics.set_aside_pending.set(pending)
        self._counted_at = time.monotonic()

    async def _count_set_aside_if_due(self) -> None:
        """After a commit, recount at most every --head-refresh-s: a busy chain never
        leaves the writer idle, yet a page for set-aside plays must clear soon after
        `quarantine retry` writes them. One indexed count per interval costs nothing."""
        if time.monotonic() - self._counted_at >= self.settings.source.head_refresh_s:
            await self.count_set_aside()

    async def write(self, batch: list[DecodedBlock]) -> BatchResult:
        """Write one batch; a refusal is retried until --refused-retry-s has passed,
        then the transactions PostgreSQL still refuses are set aside."""
        return await self._retrying(batch, functools.partial(self.sink.write, batch))

    async def write_parts(
        self, batch: list[DecodedBlock], parts: Callable[[], AsyncIterator[DecodedBlock]]
    ) -> BatchResult:
        """One large block (`batch` is its header), decoded a part at a time, retried as
        `write` retries a batch."""
        return await self._retrying(batch, functools.partial(self.sink.write_parts, parts))

    async def _retrying(
        self, batch: list[DecodedBlock], attempt: Callable[[bool], Awaitable[BatchResult]]
    ) -> BatchResult:
        limit_s = self.settings.sink.refused_retry_s
        deadline: float | None = None
        retry = Retry(Backoff(cap_s=self.settings.source.retry_cap_s), self.stop)
        while True:
            set_aside = deadline is not None and time.monotonic() >= deadline
            try:
                result = await self._watched(batch, attempt(set_aside))
            except SinkRefused as exc:
                self.metrics.write_refused.set(1)
                self.metrics.db_errors_total.inc()
                if deadline is None:
                    deadline = time.monotonic() + limit_s
                self.waiting.begin(
                    f"PostgreSQL to accept the batch: {exc} (retried for up to {limit_s:g} s, "
                    "then what it refuses is set aside)"
                )
                if not await retry.pause(deadline) and self.stop.is_set():
                    raise Stopped from None
                continue
            self.metrics.write_refused.set(0)
            self.waiting.end(
                f"after {limit_s:g} s, set aside {counted(result.set_aside, 'transaction')} "
                "it still refuses; the rest of the batch is written"
                if result.set_aside
                else None
            )
            if result.set_aside:
                await report_set_aside(
                    self.sink.conn,
                    self.sink.chain_id,
                    self.metrics,
                    result.set_aside,
                    f"blocks {batch[0].height}..{batch[-1].height}",
                )
            await self._count_set_aside_if_due()
            return result

    async def _watched(
        self, batch: list[DecodedBlock], write: Awaitable[BatchResult]
    ) -> BatchResult:
        """Await a write; if PostgreSQL holds it long, say what it waits for."""
        task = asyncio.ensure_future(write)
        span = f"blocks {batch[0].height}..{batch[-1].height}"
        try:
            done, _ = await asyncio.wait({task}, timeout=self.stall_s)
            if done:
                return task.result()
            pid = self.sink.conn.info.backend_pid
            log.warning(
                "writing %s has waited %.0f s on PostgreSQL (backend pid %d): %s",
                span,
                self.stall_s,
                pid,
                await describe_wait(self.settings.sink.conninfo, pid),
            )
            await asyncio.wait({task})
            log.info("writing %s went through", span)
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
