"""One retry delay policy for every retry in the service.

Capped exponential backoff with full jitter: many replicas restarted by the
same outage do not hammer a node or database in lock-step, and a long outage
costs one attempt per `cap_s`, never a hot loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    initial_s: float = 0.1
    factor: float = 2.0
    cap_s: float = 10.0
    jitter: float = 0.5  # the fraction of each delay drawn at random
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        try:
            grown = self.initial_s * self.factor**self.attempts
        except OverflowError:  # float pow past ~1e308: a long outage, long since at the cap
            grown = self.cap_s
        base = min(self.cap_s, grown)
        self.attempts += 1
        return base * (1.0 - self.jitter) + base * self.jitter * self.rng.random()

    async def wait(self) -> float:
        delay = self.next_delay()
        await self.sleep(delay)
        return delay

    def reset(self) -> None:
        """Call after a success, so the next failure starts small again."""
        self.attempts = 0
