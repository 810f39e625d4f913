"""The service's composition root: one registry, the runner and the HTTP server, until stopped.

Everything `run` builds is built here and nowhere else, so the close order
(runner, then server, then signal handlers) is read in one place.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import CollectorRegistry

from consumer import __version__
from consumer.config import Settings
from consumer.errors import ConfigError
from consumer.metrics import Metrics
from consumer.service.http import HttpServer
from consumer.service.runner import Runner

__all__ = ["serve"]

log = logging.getLogger("consumer")


async def serve(settings: Settings, registry: CollectorRegistry | None = None) -> None:
    """The service: metrics endpoint plus the runner, until done or signalled."""
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    log.info("starting core-plays-consumer %s: %s", __version__, _effective(settings))
    runner = Runner(settings, metrics, stop)
    host, port = settings.http.host_port
    server = HttpServer(host, port, registry, runner.readiness)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(f"--metrics-addr {settings.http.metrics_addr}: {exc.strerror}") from None
    try:
        await runner.run()
    finally:
        await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped cleanly")


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("%s received: finishing the open batch, then stopping", sig.name)
    stop.set()


def _effective(settings: Settings) -> str:
    """The configuration in one line, as values an operator reads (no Python reprs) and
    without secrets (safe_url has no password)."""
    sink, batch = settings.sink, settings.batch
    return (
        f"core_url={settings.source.core_url} mode={settings.source.source_mode.value} "
        f"database=[{sink.safe_url}] stream={sink.stream} "
        f"from_height={settings.from_height or 'checkpoint'} "
        f"to_height={settings.to_height or 'none (follow the chain)'} "
        f"batch={batch.max_blocks} blocks/{batch.max_plays} plays "
        f"metrics_addr={settings.http.metrics_addr}"
    )
