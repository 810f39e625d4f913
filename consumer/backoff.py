"""One retry delay policy, and one retry wait, for every retry in the service.

Capped exponential backoff with full jitter: many replicas restarted by the
same outage do not hammer a node or database in lock-step, and a long outage
costs one attempt per `cap_s`, never a hot loop. `Retry` adds what every
retry loop needs besides the delay: stop (SIGTERM, Ctrl-C) ends the wait at
once, and a deadline ends it for good, so no loop handles either its own way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Backoff", "Retry", "Waiting", "stopped_within"]

log = logging.getLogger(__name__)


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


@dataclass(slots=True)
class Retry:
    """The wait between two attempts: backoff, cut short by stop or a deadline.

    Usage: `while True: try: return await call() except Transient: if not await
    retry.pause(deadline): give up`.
    """

    backoff: Backoff = field(default_factory=Backoff)
    stop: asyncio.Event | None = None

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    async def pause(self, deadline: float | None = None) -> bool:
        """Wait the next delay (never past `deadline`, a time.monotonic() value).

        False, without waiting, once stop is set or the deadline has passed;
        False too if stop is set during the wait.
        """
        now = time.monotonic()
        if self.stopped or (deadline is not None and now >= deadline):
            return False
        delay = self.backoff.next_delay()
        if deadline is not None:
            delay = min(delay, deadline - now)
        if self.stop is None:
            await self.backoff.sleep(delay)
            return True
        return not await stopped_within(self.stop, delay)

    def reset(self) -> None:
        self.backoff.reset()


async def stopped_within(stop: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `stop` is set or `timeout_s` has passed; whether stop is set.

    asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation
    that arrives as stop is set (SIGTERM does both in one turn of the loop).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await stop.wait()
    return stop.is_set()


class Waiting:
    """What the service waits for on the database, if anything.

    Readiness reports it; it is logged when a wait begins (WARNING) and when
    it ends (INFO), never once per retry, so a long outage is two lines.
    """

    def __init__(self) -> None:
        self.what: str | None = None

    def begin(self, what: str) -> None:
        if self.what is None:
            log.warning("waiting for %s", what)
        self.what = what

    def end(self, gave_up: str | None = None) -> None:
        """The wait is over: what was waited for happened, or, with `gave_up`, the
        service stopped waiting and did that instead. The line says which, so a
        batch set aside never reads as a batch that went through."""
        if self.what is None:
            return
        if gave_up is None:
            log.info("no longer waiting for %s", self.what)
        else:
            log.warning("gave up waiting for %s: %s", self.what, gave_up)
        self.what = None
