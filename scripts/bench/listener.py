"""Commit times, from the checkpoint trigger's notifications."""

from __future__ import annotations

import asyncio
import contextlib
import time

import psycopg

from bench.databases import CHANNEL
from bench.records import ConsumerRun
from bench.report import progress

__all__ = ["CommitListener"]


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
            # None after a reconnect that was cancelled while the server was away
            # (the run's listener task ends when the consumer exits, then this is
            # called again to drain the last notifications).
            conn = self._conn or await self._reconnect()
            try:
                async for note in conn.notifies(timeout=quiet_s):
                    self._note(int(note.payload))
                return
            except psycopg.OperationalError as exc:
                self.run.listener_reconnects += 1
                progress(f"commit listener lost its connection ({exc}); reconnecting")
                await self._reconnect()

    async def _reconnect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        await self.close()
        while True:
            try:
                await self.connect()
            except psycopg.OperationalError:
                await asyncio.sleep(0.5)
                continue
            assert self._conn is not None
            return self._conn

    def _note(self, height: int) -> None:
        if height > self.height:
            self.height = height
            self.run.commits.append((time.time(), height))

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None
