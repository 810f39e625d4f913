"""Helpers for tests that run the consumer in-process against a real database.

(What the plays table must hold, and the aggregate checks, are in tests/reference.py;
metric samples come from conftest.sample.)

`Consumer` follows a devnet until told to stop; `BusyServer` stands in front of
PostgreSQL and answers the first connections the way a server with every
connection slot taken does (FATAL 53300), then lets connections through.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry

from consumer.config import Settings
from consumer.metrics import Metrics
from consumer.service.runner import Runner
from consumer.source.core import CoreClient
from consumer.trust.verify import VerifyReport, verify_range
from tests.conftest import eventually, make_settings, sample
from tests.proxy import TcpProxy


class Consumer:
    """An in-process runner following a devnet until told to stop."""

    def __init__(self, url: str, database: str, settings: Settings | None = None, **overrides: Any):
        self.metrics = Metrics(CollectorRegistry())
        self.stop = asyncio.Event()
        self.runner = Runner(
            settings or make_settings(url, database, **overrides), self.metrics, self.stop
        )
        self.task = asyncio.create_task(self.runner.run())

    def value(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)

    async def reach(self, height: int, timeout_s: float = 15) -> None:
        await eventually(lambda: self.value("processed_height") >= height, timeout_s=timeout_s)

    async def finish(self) -> None:
        self.stop.set()
        await self.task


async def query(database: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        cur = await conn.execute(sql, params or None)
        return await cur.fetchall() if cur.description else []


def _error_response(sqlstate: str, message: str) -> bytes:
    fields = b"".join(
        kind + text.encode() + b"\0"
        for kind, text in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


class BusyServer(TcpProxy):
    """A loopback PostgreSQL front that refuses the first `busy` connections with
    FATAL 53300 (every connection slot taken), then forwards to the real server."""

    def __init__(self, target_host: str, target_port: int, busy: int) -> None:
        super().__init__(target_host, target_port)
        self.busy = busy
        self.refused = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refused >= self.busy:
            await super()._accept(reader, writer)
            return
        try:
            await self._refuse(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            (code,) = struct.unpack("!I", (await reader.readexactly(length - 4))[:4])
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                writer.write(b"N")
                await writer.drain()
                continue
            break
        self.refused += 1
        writer.write(_error_response("53300", "sorry, too many clients already"))
        await writer.drain()
        writer.close()


async def verify_heights(
    core_url: str,
    database: str,
    chain_id: str,
    first: int,
    last: int,
    repair: bool = False,
    pruned_before_days: float = 400.0,
) -> VerifyReport:
    """`verify` (or `verify --repair`) of heights first..last, in this process."""
    settings = make_settings(core_url, database)
    client = CoreClient(settings.source)
    try:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            return await verify_range(
                client,
                conn,
                settings.source,
                chain_id,
                first,
                last,
                repair=repair,
                pruned_before_days=pruned_before_days,
            )
    finally:
        await client.close()
