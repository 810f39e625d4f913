"""What the source reports as it reads: the events, not the metrics they become.

The source is given an observer instead of owning metrics, so a reader that only
re-reads written heights (verify, the audit) reports to nobody, and the service
decides what each event counts (consumer.metrics.SourceMetrics).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NoObserver", "SourceObserver"]


class SourceObserver(Protocol):
    def head_seen(self, height: int) -> None:
        """The node reported this head (a reply's head, or a block it sent)."""

    def path_chosen(self, path: str) -> None:
        """Blocks come by this path from now on: "stream" or "poll"."""

    def fetched(self, seconds: float, blocks: int) -> None:
        """`blocks` blocks arrived after `seconds` of waiting for the node."""

    def refused(self, code: str) -> None:
        """A call failed or a delivery was refused (WRONG_HEIGHT, STALE_BLOCK, ...)."""

    def stalled(self) -> None:
        """The node answered nothing, or its stream was silent while its head was ahead."""

    def reconnecting(self) -> None:
        """The source waits with backoff, then connects to the node again."""


class NoObserver:
    """Reports to nobody: for a reader whose events are not the service's to count."""

    def head_seen(self, height: int) -> None:
        pass

    def path_chosen(self, path: str) -> None:
        pass

    def fetched(self, seconds: float, blocks: int) -> None:
        pass

    def refused(self, code: str) -> None:
        pass

    def stalled(self) -> None:
        pass

    def reconnecting(self) -> None:
        pass
