"""The single-writer lease: a session-level advisory lock per (chain, stream).

The lock lives on a dedicated connection, and the sink writes through that
same connection. PostgreSQL releases the lock the moment the session ends
(process killed, network cut), so a standby takes over within one retry
interval, and a writer whose session is gone cannot write anything at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg
from psycopg.rows import TupleRow

from consumer.errors import SinkUnavailable

__all__ = ["Lease", "lock_key"]

log = logging.getLogger(__name__)


def lock_key(chain_id: str, stream: str) -> str:
    """The text whose 64-bit hash names the lock (hashed in SQL, so any language agrees)."""
    return f"core_plays:{chain_id}:{stream}"


class Lease:
    def __init__(
        self,
        conninfo: str,
        chain_id: str,
        stream: str,
        retry_s: float,
        on_change: Callable[[bool], None] = lambda held: None,
        application_name: str = "core-plays-consumer",
    ) -> None:
        self.conninfo = conninfo
        self.key = lock_key(chain_id, stream)
        self.retry_s = retry_s
        self._on_change = on_change
        self._application_name = application_name
        self.conn: psycopg.AsyncConnection[TupleRow] | None = None

    async def acquire(self, stop: asyncio.Event) -> psycopg.AsyncConnection[TupleRow] | None:
        """Return the writer connection once the lock is ours; None if stopped first.

        Connection failures raise SinkUnavailable; waiting for another holder
        does not (a standby waits as long as it takes).
        """
        announced = False
        while not stop.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, application_name=self._application_name
                )
            except psycopg.OperationalError as exc:
                raise SinkUnavailable(f"connecting for the writer lock: {exc}") from exc
            try:
                cur = await conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (self.key,)
                )
                row = await cur.fetchone()
            except psycopg.OperationalError as exc:
                await conn.close()
                raise SinkUnavailable(f"taking the writer lock: {exc}") from exc
            if row is not None and row[0]:
                self.conn = conn
                self._on_change(True)
                log.info("writer lock %s acquired: this instance writes", self.key)
                return conn
            await conn.close()
            if not announced:
                log.info("writer lock %s is held by another instance: standing by", self.key)
                self._on_change(False)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.retry_s)
        return None

    async def check(self) -> None:
        """Prove the session (and so the lock) is still there; raise if not."""
        if self.conn is None or self.conn.closed:
            raise SinkUnavailable("writer lock connection is closed")
        try:
            await self.conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            raise SinkUnavailable(f"writer lock session lost: {exc}") from exc

    async def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self._on_change(False)
            if not conn.closed:
                await conn.close()  # ends the session, which releases the lock
