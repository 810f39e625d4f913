"""Before anything is written: first contact with the node, and where a session starts.

First contact retries GetNodeInfo for --connect-timeout-s and then fails with
one line naming the URL: a node that is down at start is most often a wrong
--core-url, and a pod that says so beats one that waits forever.

Each writing session starts from the checkpoint only once the node proves it
holds the very block the checkpoint was written from (a restored node or
another chain behind the same URL would otherwise write a second history into
plays); the height itself is the pure rule of consumer.service.start_rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg

from consumer.backoff import Backoff, Retry
from consumer.config import Settings
from consumer.errors import (
    ChainMismatch,
    CheckpointMissing,
    ConfigError,
    SourceFailed,
    SourceUnavailable,
    Stopped,
)
from consumer.metrics import Metrics
from consumer.model import Block, Checkpoint
from consumer.service.start_rule import is_replay, start_height
from consumer.sink.plays import other_chains
from consumer.source.core import CoreClient, NodeInfo

__all__ = ["StartPoint", "first_contact"]

log = logging.getLogger(__name__)


async def first_contact(
    client: CoreClient, timeout_s: float, stop: asyncio.Event, metrics: Metrics
) -> NodeInfo | None:
    """The node's chain and head; None if stopped first; ConfigError past the timeout."""
    deadline = time.monotonic() + timeout_s
    retry = Retry(Backoff(initial_s=0.2, cap_s=2.0), stop)
    while True:
        try:
            return await client.node_info()
        except SourceUnavailable as exc:
            metrics.source_errors_total.labels(exc.code).inc()
            if retry.backoff.attempts == 0:
                log.warning(
                    "cannot reach the Core node at %s yet (%s); retrying for up to %g s",
                    client.url,
                    exc,
                    timeout_s,
                )
            if not await retry.pause(deadline):
                if stop.is_set():
                    return None
                raise ConfigError(
                    f"cannot reach the Core node at {client.url}: GetNodeInfo failed for "
                    f"{timeout_s:g} s, last: {exc} (check --core-url, http vs https)"
                ) from None
        except SourceFailed as exc:
            raise ConfigError(f"the Core node at {client.url} refused GetNodeInfo: {exc}") from None


class StartPoint:
    """The first height of each writing session of one process.

    It remembers across sessions whether the run is a replay and where this
    process itself stopped (`written`), which is where a replay resumes after
    a lost session: its checkpoint does not follow it.
    """

    def __init__(
        self,
        settings: Settings,
        client: CoreClient,
        chain_id: str,
        metrics: Metrics,
        stop: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.client = client
        self.chain_id = chain_id
        self.metrics = metrics
        self.stop = stop
        self._replay: bool | None = None
        self._resume_at: int | None = None

    def written(self, height: int) -> None:
        """This process committed up to `height`."""
        self._resume_at = height + 1

    async def height(
        self, conn: psycopg.AsyncConnection[Any], checkpoint: Checkpoint | None
    ) -> int:
        stream = self.settings.sink.stream
        if checkpoint is not None:
            await self._verify(checkpoint)
            log.info(
                "checkpoint loaded: chain %s stream %s at height %d (%s)",
                checkpoint.chain_id,
                stream,
                checkpoint.height,
                checkpoint.block_hash,
            )
        height = None if checkpoint is None else checkpoint.height
        if self._replay is None:
            self._replay = is_replay(self.settings.from_height, height)
        start = start_height(
            stream=stream,
            from_height=self.settings.from_height,
            checkpoint_height=height,
            resume_at=self._resume_at,
            replay=self._replay,
        )
        if start is not None:
            return start
        others = await other_chains(conn, stream)
        if others:
            raise ChainMismatch(
                f"the node at {self.client.url} is on chain {self.chain_id}, but this "
                f"database's '{stream}' checkpoint is for chain {', '.join(others)}; a new "
                "chain needs an explicit --from-height (its first blocks may re-write "
                "history already in plays)"
            )
        raise CheckpointMissing(
            f"no checkpoint for chain {self.chain_id} stream '{stream}' in "
            f"{self.settings.sink.safe_url}: start with --from-height N"
        )

    async def _verify(self, checkpoint: Checkpoint) -> None:
        """The node must hold the very block the checkpoint was written from."""
        block = await self._block_at(checkpoint.height)
        if block.hash != checkpoint.block_hash:
            raise ChainMismatch(
                f"checkpoint for chain {checkpoint.chain_id} is at height {checkpoint.height} "
                f"with block hash {checkpoint.block_hash}, but the node at {self.client.url} "
                f"has {block.hash or '(unreadable block)'} there: a different chain or a "
                "restored node; nothing was written"
            )

    async def _block_at(self, height: int) -> Block:
        """The node's block at `height`, waiting for the node to reach it; Stopped if stopped."""
        retry = Retry(Backoff(cap_s=self.settings.source.retry_cap_s), self.stop)
        while True:
            try:
                block = await self.client.block(height)
            except SourceUnavailable as exc:
                self.metrics.source_errors_total.labels(exc.code).inc()
                log.warning("%s; retrying", exc)
            else:
                if block is not None:
                    return block
                log.warning(
                    "node %s has not reached checkpoint height %d yet; waiting",
                    self.client.url,
                    height,
                )
            if not await retry.pause():
                raise Stopped
