"""/metrics, /healthz and /readyz on the consumer's own event loop.

A few lines of asyncio instead of a web framework: three GET routes need no
dependency, and answering from the same loop that runs the pipeline is what
makes /healthz mean "the loop is turning". Nothing here can block the loop
for long: a scrape renders a few dozen series.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

__all__ = ["HttpServer", "Readiness"]

log = logging.getLogger(__name__)

# Returns (ready, reason): the reason is shown to whoever probes /readyz.
Readiness = Callable[[], tuple[bool, str]]

# The classic text format: every Prometheus 2.x parses it, and our names and
# labels are plain ASCII, so nothing the newer 1.0.0 format adds is needed.
_METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HttpServer:
    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, readiness: Readiness
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("serving /metrics, /healthz and /readyz on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers are not needed
                status, ctype, body = self._route(request)
                head = (
                    f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, request: bytes) -> tuple[int, str, bytes]:
        parts = request.decode("latin-1").split()
        if len(parts) < 2:
            return 404, "text/plain", b"bad request\n"
        method, path = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        if path == "/metrics":
            return 200, _METRICS_CONTENT_TYPE, generate_latest(self.registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ready, reason = self.readiness()
            return (200 if ready else 503), "text/plain", f"{reason}\n".encode()
        return 404, "text/plain", b"not found\n"
