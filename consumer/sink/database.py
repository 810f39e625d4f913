"""Connections to PostgreSQL, and what each database error means for the service.

Every psycopg error is sorted, by its SQLSTATE, into one of four kinds:

- CONFIG: only the operator can fix it (wrong password, missing database,
  missing privilege). At start-up it exits 2 with one line; later it is waited
  out, because a rotated password or a revoked grant is fixed without a restart.
- WORLD: the database is failing over, shutting down, short of resources, read
  only, cancelling our statement or breaking our lock. Waiting fixes it: the
  runner retries with backoff, not ready, and logs once what it waits for.
- REFUSED: PostgreSQL will not take these rows (class 22 data, 23 integrity,
  54 limits, P0001 from a trigger). It might be the rows, or someone's trigger
  failing for a while: the batch is retried for a bounded time, and only then
  are the refused transactions set aside, with their bytes, for `quarantine retry`.
- BUG: anything else (a missing table after start, a syntax error): crash loudly.

libpq gives no SQLSTATE for an error during connection start-up (psycopg's
`sqlstate` is None there), so `_connect_sqlstate` recovers it from the server's
FATAL line for the few start-up errors that matter; nothing else here reads
message text.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from enum import StrEnum

import psycopg
from psycopg.rows import TupleRow

from consumer.backoff import Backoff, Retry, Waiting
from consumer.config import SinkSettings
from consumer.errors import ConfigError, SinkUnavailable
from consumer.sink.migrate import explain_database_errors, prepare_database

__all__ = [
    "Fault",
    "classify",
    "command_session",
    "connect",
    "describe",
    "describe_wait",
    "migrate_when_ready",
    "open_session",
]

log = logging.getLogger(__name__)

APPLICATION_NAME = "core-plays-consumer"

# What the service's own sessions need, whatever the DBA set for the database
# or role (startup options win over ALTER DATABASE/ROLE ... SET). A batch is
# bounded by --max-blocks/--max-plays, so no statement of ours needs a timeout
# to end, and a DBA's `statement_timeout = 50ms` would cancel the same batch
# forever. Idle-in-transaction never happens: the writer sends a batch's
# statements back to back. A lock wait is logged by the runner (write stall),
# not cut short: giving up on a lock would only queue us again behind it.
SESSION_OPTIONS = (
    "-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0"
    " -c idle_session_timeout=0"
)


class Fault(StrEnum):
    CONFIG = "config"
    WORLD = "world"
    REFUSED = "refused"
    BUG = "bug"


# SQLSTATE classes (first two characters) and codes. A code wins over its class.
_CONFIG_CODES = {"28000", "28P01", "3D000", "42501"}
_WORLD_CLASSES = {"08", "53", "57", "58", "40"}
_WORLD_CODES = {"25006", "55P03", "25P03", "25P04", "55006", "55000"}
_REFUSED_CLASSES = {"22", "23", "54"}
_REFUSED_CODES = {"P0001", "P0004"}

# The server's FATAL line at start-up (prefix, suffix), for the errors whose
# SQLSTATE libpq hides. Anything not listed is taken for the network's.
_CONNECT_FATAL = (
    ("password authentication failed", "", "28P01"),
    ("no pg_hba.conf entry", "", "28000"),
    ('role "', "does not exist", "28000"),
    ('database "', "does not exist", "3D000"),
    ("permission denied for database", "", "42501"),
    ("sorry, too many clients", "", "53300"),
    ("too many connections for", "", "53300"),  # a database's or role's CONNECTION LIMIT
    ("remaining connection slots", "", "53300"),
    ("the database system is", "", "57P03"),  # starting up, shutting down, in recovery
    ("terminating connection due to administrator", "", "57P01"),
)


def _connect_sqlstate(exc: psycopg.Error) -> str | None:
    pgconn = getattr(exc, "pgconn", None)
    if pgconn is not None and pgconn.needs_password and not pgconn.used_password:
        return "28P01"  # the server asked for a password and none was given
    for line in str(exc).splitlines():
        _, fatal, text = line.partition("FATAL:")
        text = text.strip()
        for prefix, suffix, code in _CONNECT_FATAL if fatal else ():
            if text.startswith(prefix) and text.endswith(suffix):
                return code
    return None


def sqlstate(exc: psycopg.Error) -> str | None:
    return exc.sqlstate or _connect_sqlstate(exc)


def classify(exc: psycopg.Error, *, at_start: bool = False) -> Fault:
    """What an error means; configuration errors count only at start-up (see module doc)."""
    code = sqlstate(exc)
    if code is None:
        # No answer from a server at all (refused, reset, timed out): the network's.
        return Fault.WORLD if isinstance(exc, psycopg.OperationalError) else Fault.BUG
    if code in _CONFIG_CODES:
        return Fault.CONFIG if at_start else Fault.WORLD
    if code in _WORLD_CODES or code[:2] in _WORLD_CLASSES:
        return Fault.WORLD
    if code in _REFUSED_CODES or code[:2] in _REFUSED_CLASSES:
        return Fault.REFUSED
    return Fault.BUG


def describe(exc: psycopg.Error) -> str:
    """One line: the SQLSTATE and the server's primary message."""
    code = sqlstate(exc)
    text = exc.diag.message_primary if exc.sqlstate else None
    if not text:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        text = lines[0] if lines else type(exc).__name__
        text = text.removeprefix("connection failed: ")
    return f"{text} (SQLSTATE {code})" if code else text


async def open_session(
    conninfo: str, application_name: str = APPLICATION_NAME
) -> psycopg.AsyncConnection[TupleRow]:
    """One attempt at a session with the settings the service needs; SinkUnavailable if not.
    A session of another part (the audit) says so in its name, for pg_stat_activity."""
    try:
        return await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, application_name=application_name, options=SESSION_OPTIONS
        )
    except psycopg.Error as exc:
        raise SinkUnavailable(describe(exc)) from exc


@contextlib.asynccontextmanager
async def command_session(sink: SinkSettings) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
    """An operator command's own connection (status, quarantine, reasons, gaps,
    backfill-plan --resume, verify), closed at the end, with a missing privilege
    or a never-migrated database explained in one line instead of a traceback."""
    conn = await connect(sink.conninfo, sink.safe_url, sink.connect_timeout_s)
    async with conn:
        with explain_database_errors(sink.safe_url):
            yield conn


async def connect(
    conninfo: str,
    safe_url: str,
    timeout_s: float,
    retry: Retry | None = None,
    waiting: Waiting | None = None,
) -> psycopg.AsyncConnection[TupleRow]:
    """Connect at start-up, trying for `timeout_s`.

    A configuration error stops at once; a server that answers but cannot take
    us yet (too many clients, starting up) is waited for as long as it takes;
    no answer at all is tried until the deadline, then reported with the time
    really spent. Stop (Ctrl-C, SIGTERM) ends the wait at once.
    """
    retry = retry or Retry(Backoff(initial_s=0.2, cap_s=2.0))
    waiting = waiting or Waiting()
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo,
                autocommit=True,
                connect_timeout=max(1, round(min(timeout_s, 10))),
                application_name=APPLICATION_NAME,
                options=SESSION_OPTIONS,
            )
            waiting.end()
            return conn
        except psycopg.Error as exc:
            fault = classify(exc, at_start=True)
            answered = sqlstate(exc) is not None
            spent = time.monotonic() - started
            if fault is not Fault.WORLD or (not answered and time.monotonic() >= deadline):
                raise ConfigError(
                    f"cannot use PostgreSQL at {safe_url}: {describe(exc)} (tried for "
                    f"{spent:.1f} s; check --database-url, the password and the grants)"
                ) from None
            waiting.begin(
                f"PostgreSQL at {safe_url} ({describe(exc)}); retrying"
                + ("" if answered else f" for up to {timeout_s:g} s")
            )
            if not await retry.pause(None if answered else deadline):
                raise ConfigError(
                    f"cannot use PostgreSQL at {safe_url}: {describe(exc)} "
                    f"(stopped after {time.monotonic() - started:.1f} s)"
                ) from None


# What a backend waits for, and who holds it up (for the write-stall warning).
_WAIT = """
SELECT coalesce(a.wait_event_type || ':' || a.wait_event, 'running'),
       string_agg(format('pid %%s (%%s, %%s): %%s', b.pid, b.application_name, b.state,
                         left(b.query, 80)), '; ')
FROM pg_stat_activity a
LEFT JOIN pg_stat_activity b ON b.pid = ANY (pg_blocking_pids(a.pid))
WHERE a.pid = %s GROUP BY a.wait_event_type, a.wait_event
"""


async def describe_wait(conninfo: str, pid: int) -> str:
    """What backend `pid` waits for, asked on a session of its own (never the writer's)."""
    try:
        async with await open_session(conninfo) as conn:
            cur = await conn.execute(_WAIT, (pid,))
            row = await cur.fetchone()
    except (SinkUnavailable, psycopg.Error) as exc:
        return f"cannot tell ({exc})"
    if row is None:
        return "its session is gone"
    event, blockers = row
    return f"{event}, blocked by {blockers}" if blockers else str(event)


async def migrate_when_ready(
    conninfo: str, safe_url: str, timeout_s: float, retry: Retry, waiting: Waiting
) -> bool:
    """Connect, migrate and check the schema, as `run` does at start; False if stopped.

    A read-only database or a session killed mid-migration is waited out;
    configuration errors (and a missing privilege) raise ConfigError."""
    while True:
        try:
            conn = await connect(conninfo, safe_url, timeout_s, retry, waiting)
        except ConfigError:
            if retry.stopped:
                return False
            raise
        try:
            await prepare_database(conn, safe_url)
            waiting.end()
            return True
        except psycopg.Error as exc:
            if classify(exc, at_start=True) is not Fault.WORLD:
                raise
            waiting.begin(f"the database to accept migrations: {describe(exc)}")
        finally:
            await conn.close()
        if not await retry.pause():
            return False
