"""The single-writer lease: a session-level advisory lock per (chain, stream).

Who owns the connection: the lock lives on one connection that `acquire`
hands to the session's write loop (consumer.service.pipeline), and from then on that
task is its only user. The sink writes batches through it, and between batches
(or while idle at the tip) the same task calls `check()` to prove the session is alive. No
other task may touch it: a statement from elsewhere could land inside the
sink's open transaction. Other sessions (status, the write-stall probe) use
connections of their own.

PostgreSQL releases the lock the moment the session ends (process killed,
network cut), so a standby takes over within one retry interval, and a writer
whose session is gone cannot write anything at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg.rows import TupleRow

from consumer.backoff import stopped_within
from consumer.errors import SinkUnavailable
from consumer.sink.database import describe, open_session

__all__ = ["Holder", "Lease", "find_holder", "lock_key"]

log = logging.getLogger(__name__)

_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"

# The session holding a (chain, stream) lock, from pg_locks: the advisory lock
# key is split over classid and objid, objsubid 1 marks a bigint key.
_HOLDER = """
SELECT pid, application_name, client_addr::text FROM pg_locks JOIN pg_stat_activity USING (pid)
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0)
"""


def lock_key(chain_id: str, stream: str) -> str:
    """The text whose 64-bit hash names the lock (hashed in SQL, so any language agrees)."""
    return f"core_plays:{chain_id}:{stream}"


@dataclass(frozen=True, slots=True)
class Holder:
    """The session that holds a writer lock, as pg_stat_activity shows it."""

    pid: int
    application: str
    client: str | None

    def __str__(self) -> str:
        """Says whose pid it is: an operator reads it in a pod's log, where a bare pid
        reads as a process of that pod, yet it is the backend's on the database server."""
        return (
            f"PostgreSQL backend pid {self.pid} "
            f"({self.application or 'no application_name'}, client {self.client_text})"
        )

    @property
    def client_text(self) -> str:
        """The client address, or why there is none: PostgreSQL hides other roles'
        addresses from a role without pg_read_all_stats, and a Unix socket has none."""
        return self.client or "unknown"


async def find_holder(conn: psycopg.AsyncConnection[TupleRow], key: str) -> Holder | None:
    cur = await conn.execute(_HOLDER, (key,))
    row = await cur.fetchone()
    return None if row is None else Holder(*row)


class Lease:
    def __init__(
        self,
        conninfo: str,
        chain_id: str,
        stream: str,
        retry_s: float,
        on_change: Callable[[bool], None] = lambda held: None,
        on_standby: Callable[[Holder | None], None] = lambda holder: None,
    ) -> None:
        self.conninfo = conninfo
        self.key = lock_key(chain_id, stream)
        self.retry_s = retry_s
        self._on_change = on_change
        self._on_standby = on_standby
        self.conn: psycopg.AsyncConnection[TupleRow] | None = None

    async def acquire(self, stop: asyncio.Event) -> psycopg.AsyncConnection[TupleRow] | None:
        """Return the writer connection once the lock is ours; None if stopped first.

        Connection failures raise SinkUnavailable; waiting for another holder
        does not (a standby waits as long as it takes).
        """
        announced = False
        while not stop.is_set():
            conn = await open_session(self.conninfo)
            try:
                cur = await conn.execute(_TRY_LOCK, (self.key,))
                row = await cur.fetchone()
                held = row is not None and bool(row[0])
                holder = None if held or announced else await find_holder(conn, self.key)
            except psycopg.Error as exc:
                await conn.close()
                raise SinkUnavailable(f"taking the writer lock: {describe(exc)}") from exc
            if held:
                self.conn = conn
                self._on_change(True)
                log.info("writer lock %s acquired: this instance writes", self.key)
                return conn
            await conn.close()
            if not announced:
                self._on_change(False)
                self._on_standby(holder)
                announced = True
            await stopped_within(stop, self.retry_s)
        return None

    async def check(self) -> None:
        """Prove the session (and so the lock) is still there; raise if not.

        Only the writer task calls this, between batches (see the module doc)."""
        if self.conn is None or self.conn.closed:
            raise SinkUnavailable("writer lock connection is closed")
        try:
            await self.conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise SinkUnavailable(f"writer lock session lost: {describe(exc)}") from exc

    async def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self._on_change(False)
            if not conn.closed:
                await conn.close()  # ends the session, which releases the lock
