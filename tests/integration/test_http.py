"""/metrics, /healthz and /readyz over real HTTP, and what readiness means."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio
from prometheus_client import CollectorRegistry

from consumer.metrics import Metrics
from consumer.service.http import HttpServer


class Readiness:
    def __init__(self) -> None:
        self.answer = (False, "starting")

    def __call__(self) -> tuple[bool, str]:
        return self.answer


@pytest_asyncio.fixture
async def server(registry: CollectorRegistry) -> AsyncIterator[tuple[HttpServer, Readiness]]:
    readiness = Readiness()
    Metrics(registry)
    async with HttpServer("127.0.0.1", 0, registry, readiness) as http:
        yield http, readiness


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = (await reader.read()).decode()
    writer.close()
    head, _, body = data.partition("\r\n\r\n")
    return int(head.split()[1]), head, body


async def test_metrics_are_served_in_the_prometheus_text_format(
    server: tuple[HttpServer, Readiness],
) -> None:
    status, head, body = await get(server[0].port, "/metrics")
    assert status == 200
    assert "text/plain; version=0.0.4" in head
    assert "# TYPE core_plays_lag_seconds gauge" in body


async def test_healthz_answers_while_the_loop_turns(
    server: tuple[HttpServer, Readiness],
) -> None:
    assert (await get(server[0].port, "/healthz"))[0] == 200


async def test_readyz_follows_the_readiness_answer_and_says_why(
    server: tuple[HttpServer, Readiness],
) -> None:
    http, readiness = server
    status, _, body = await get(http.port, "/readyz")
    assert (status, body.strip()) == (503, "starting")
    readiness.answer = (True, "leader, lag 0.4 s")
    status, _, body = await get(http.port, "/readyz")
    assert (status, body.strip()) == (200, "leader, lag 0.4 s")


async def test_unknown_paths_and_methods_are_refused(
    server: tuple[HttpServer, Readiness],
) -> None:
    assert (await get(server[0].port, "/nope"))[0] == 404
    assert (await get(server[0].port, "/metrics", method="POST"))[0] == 405


async def test_a_client_that_never_finishes_its_request_does_not_block_others(
    server: tuple[HttpServer, Readiness],
) -> None:
    _, slow = await asyncio.open_connection("127.0.0.1", server[0].port)
    slow.write(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
    await slow.drain()
    assert (await get(server[0].port, "/healthz"))[0] == 200
    slow.close()
