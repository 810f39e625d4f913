"""Whether this process is ready (/readyz), decided from its own state.

The verdict is the runner's: its role from the lease, what it waits for on the
database, and the block time of the rows it has committed (or loaded from the
checkpoint). It is never read back from a metric: metrics observe the service,
they do not steer its probes, so a change to how a gauge is computed cannot
take a pod out of its Service by accident. The other way round, the `ready`
and `lag_seconds` gauges read this state at scrape (Metrics.watch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum

from consumer.backoff import Waiting

__all__ = ["Readiness", "Role"]


class Role(StrEnum):
    """What the process is doing about the writer lock of its stream."""

    STARTING = "starting"  # first contact with the node and the database
    STANDBY = "standby"  # another instance holds the lock; this one waits to take over
    LEADER = "leader"  # holds the lock and writes
    RECONNECTING = "reconnecting"  # lost the lock with its session; competing again


class Readiness:
    """Ready: not waiting on the database, and a standby, or a leader within lag.

    A standby is ready on purpose: it is healthy, and it must stay in the
    Service so that a rollout does not wait on it.
    """

    def __init__(self, max_lag_s: float, clock: Callable[[], float] = time.time) -> None:
        self.max_lag_s = max_lag_s
        self.role = Role.STARTING
        self.waiting = Waiting()  # what the service waits for on the database, if anything
        self._clock = clock
        self._block_time = math.nan  # Unix time of the last committed block; NaN: unknown

    def positioned(self, block_time: datetime | None) -> None:
        """The rows now stand at a block of this time (checkpoint loaded, or a commit)."""
        if block_time is not None:
            self._block_time = block_time.replace(tzinfo=UTC).timestamp()

    def lag_s(self) -> float:
        """Seconds between now and the last committed block; NaN before the first."""
        if math.isnan(self._block_time):
            return math.nan  # max() below would turn it into 0.0
        return max(0.0, self._clock() - self._block_time)

    def verdict(self) -> tuple[bool, str]:
        if self.waiting.what is not None:
            return False, self.waiting.what
        if self.role is Role.STANDBY:
            return True, "standby: another instance holds the writer lock"
        if self.role is not Role.LEADER:
            return False, self.role.value
        lag = self.lag_s()
        if math.isnan(lag) or lag > self.max_lag_s:  # NaN: nothing committed or loaded yet
            return False, f"lag {lag:.1f} s over {self.max_lag_s:g} s"
        return True, f"leader, lag {lag:.1f} s"
