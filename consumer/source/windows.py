"""GetBlocks calls in flight: the sliding window of the poll path.

Up to `poll_concurrency` calls are on the wire at once, each for a window of
heights the WindowSizer (consumer.source.sequencer) sizes to about its target
bytes. Calls go out only when the driver asks (`send`), between the blocks it
yields, so a reader that stops reading stops the fetching too. A reply over
--max-message-bytes makes the windows smaller and the calls after it are
cancelled; one block over the limit is the operator's to fix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from consumer.source.client import CoreClient, TooLarge
from consumer.source.sequencer import WindowSizer

__all__ = ["Call", "InFlight"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Call:
    """One GetBlocks call in flight, for heights low..high."""

    low: int
    high: int
    sent: float
    reply: asyncio.Future[tuple[dict[int, bytes], int]]


class InFlight:
    """The GetBlocks calls on the wire, oldest first."""

    def __init__(self, client: CoreClient, sizer: WindowSizer, concurrency: int) -> None:
        self.client = client
        self.sizer = sizer
        self.concurrency = concurrency
        self._calls: deque[Call] = deque()

    def __bool__(self) -> bool:
        return bool(self._calls)

    def send(self, next_fetch: int, last: int) -> int:
        """Put calls on the wire up to the window's width and `last`; the next height
        to ask for after them."""
        sizer = self.sizer
        width = sizer.calls(self.concurrency)
        while len(self._calls) < width and next_fetch <= last:
            high = min(next_fetch + sizer.size() - 1, last)
            heights = list(range(next_fetch, high + 1))
            reply = asyncio.ensure_future(self.client.blocks_raw(heights))
            self._calls.append(Call(next_fetch, high, time.monotonic(), reply))
            next_fetch = high + 1
        return next_fetch

    async def take(self) -> tuple[Call, dict[int, bytes] | None, int]:
        """The oldest call with its blocks by height and the head it reported; blocks
        None when the reply was over --max-message-bytes: the windows are smaller
        now, the later calls cancelled, and the call's heights are to be asked again."""
        call = self._calls.popleft()
        try:
            blocks, head = await call.reply
        except TooLarge:
            if not self.sizer.too_large(call.high - call.low + 1):
                raise  # one block over the limit: the operator's to fix
            await self.cancel()
            log.info(
                "GetBlocks(%d..%d) was over --max-message-bytes: asking for %d heights per call",
                call.low,
                call.high,
                self.sizer.size(),
            )
            return call, None, 0
        self.sizer.observe(sum(map(len, blocks.values())), len(blocks))
        return call, blocks, head

    async def cancel(self) -> None:
        """Cancel the calls in flight and collect them, so no error is left unretrieved."""
        calls = self._calls
        for call in calls:
            call.reply.cancel()
        await asyncio.gather(*(call.reply for call in calls), return_exceptions=True)
        calls.clear()
