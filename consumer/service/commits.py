"""What each commit tells the operator: its metrics, the run's progress, and log lines.

Everything here observes a committed batch's summary (model.BatchResult) and
decides nothing. The log lines are rationed so that a chain full of odd data
cannot flood a pod's log: a quarantine is one line per batch, conflicts are
logged one by one up to a limit and then summed, and skips and repairs (normal
on a chain nobody validates) are summed into at most one INFO line a minute.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable

from consumer.logs import counted
from consumer.metrics import Metrics
from consumer.model import BatchResult, Undecodable
from consumer.service.progress import RunProgress

__all__ = ["CommitObserver"]

log = logging.getLogger(__name__)

_ODD_LOG_INTERVAL_S = 60.0
_CONFLICTS_LOGGED = 10  # per batch; the rest are summed in one line


class CommitObserver:
    def __init__(
        self,
        metrics: Metrics,
        progress: RunProgress,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.progress = progress
        self._clock = clock
        self._odd: Counter[str] = Counter()
        self._odd_logged_at = -math.inf

    def observe(self, result: BatchResult) -> None:
        self.progress.observe(result)
        self.metrics.observe_commit(result)
        self._log_quarantined(result)
        self._log_conflicts(result)
        self._log_odd_plays(result)
        log.debug(
            "committed %d blocks to height %d: %d plays, %d duplicate txs, %.1f ms",
            result.blocks,
            result.height,
            result.plays_written,
            result.duplicates,
            result.seconds * 1000,
        )

    @staticmethod
    def _log_quarantined(result: BatchResult) -> None:
        if not result.quarantined:
            return
        # A whole unreadable block is an incident (the alert rules page for it);
        # a single malformed transaction is data nobody validated.
        level = logging.ERROR if result.quarantined.get(Undecodable.BLOCK) else logging.WARNING
        log.log(
            level,
            "quarantined undecodable data in blocks up to %d: %s (see core_plays.quarantine)",
            result.height,
            ", ".join(counted(n, what.value) for what, n in sorted(result.quarantined.items())),
        )

    @staticmethod
    def _log_conflicts(result: BatchResult) -> None:
        """Each new disagreement between deliveries once (the table keeps them all)."""
        for conflict in result.conflicts[:_CONFLICTS_LOGGED]:
            log.warning("delivery conflict: %s", conflict.describe())
        if len(result.conflicts) > _CONFLICTS_LOGGED:
            log.warning(
                "%d more delivery conflicts up to height %d (see core_plays.conflicts)",
                len(result.conflicts) - _CONFLICTS_LOGGED,
                result.height,
            )

    def _log_odd_plays(self, result: BatchResult) -> None:
        """Skips and repairs at INFO, summed over at most one line a minute."""
        self._odd.update({f"skipped {k}": v for k, v in result.skipped.items()})
        self._odd.update({f"repaired {k}": v for k, v in result.repaired.items()})
        now = self._clock()
        if self._odd and now - self._odd_logged_at >= _ODD_LOG_INTERVAL_S:
            log.info(
                "plays up to height %d: %s",
                result.height,
                ", ".join(f"{k} {v}" for k, v in sorted(self._odd.items())),
            )
            self._odd.clear()
            self._odd_logged_at = now
