"""What a run did, told to the operator: progress while catching up, one line at the end.

Metrics answer "how is it going" for Prometheus; these lines answer it for the
person watching a terminal or a pod's log. A catch-up logs where it is, how
fast and how long is left every few seconds, and once when it reaches the tip;
a run that ends logs one summary line, and a replay that wrote nothing says so
in that line rather than leaving the operator to compare counters.

Fed by consumer.service.commits with each committed batch's result; it
never decides anything.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from consumer.logs import counted
from consumer.model import BatchResult

__all__ = ["RunProgress", "RunSummary", "format_duration"]

log = logging.getLogger("consumer.service.progress")

# A catch-up is announced only when this far behind: a block or two is normal at the tip.
_BEHIND_BLOCKS = 2


def format_duration(seconds: float) -> str:
    """3 s, 4m05s, 2h03m: short, and never in scientific notation."""
    if math.isnan(seconds) or math.isinf(seconds):
        return "unknown"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass(slots=True)
class RunSummary:
    """Totals over every batch a run committed."""

    first_height: int | None = None
    last_height: int | None = None
    blocks: int = 0
    transactions: int = 0
    plays_written: int = 0
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def line(self) -> str:
        if self.blocks == 0:
            return f"run finished: no blocks committed in {format_duration(self.elapsed_s)}"
        rate = self.blocks / self.elapsed_s if self.elapsed_s > 0 else math.inf
        plays_rate = self.plays_written / self.elapsed_s if self.elapsed_s > 0 else math.inf
        parts = [
            f"run finished: heights {self.first_height}..{self.last_height} "
            f"({counted(self.blocks, 'block')})",
            counted(self.transactions, "transaction"),
            f"{counted(self.plays_written, 'play')} written",
            counted(self.duplicates, "duplicate play transaction"),
            f"skipped {_reasons(self.skipped)}",
            f"repaired {_reasons(self.repaired)}",
            f"quarantined {_reasons(self.quarantined)}",
            f"in {format_duration(self.elapsed_s)} ({rate:.0f} blocks/s, {plays_rate:.0f} plays/s)",
        ]
        line = ", ".join(parts)
        if self.plays_written == 0:
            if self.duplicates:
                line += (
                    "; nothing new was written: every play transaction was already in the "
                    "ledger (a replay)"
                )
            else:
                line += "; nothing was written: these heights hold no plays"
        return line


def _reasons(counts: Counter[str]) -> str:
    if not counts:
        return "none"
    return "(" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"


class RunProgress:
    """Observes committed batches; logs catch-up progress and the end-of-run summary."""

    def __init__(
        self,
        head: Callable[[], float],
        end_height: int | None = None,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._head = head
        self._end = end_height
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._catching_up = False
        self._last_at = self._started
        self._last_height: int | None = None
        self.summary = RunSummary()

    def observe(self, result: BatchResult) -> str | None:
        """Count the batch; return (and log) a progress line when one is due."""
        summary = self.summary
        if summary.first_height is None:
            summary.first_height = result.height - result.blocks + 1
            self._last_height = summary.first_height - 1
        summary.last_height = result.height
        summary.blocks += result.blocks
        summary.transactions += sum(result.tx_types.values())
        summary.plays_written += result.plays_written
        summary.duplicates += result.duplicates
        summary.skipped.update(result.skipped)
        summary.repaired.update(result.repaired)
        summary.quarantined.update(result.quarantined)
        return self._progress(result.height)

    def _target(self) -> float:
        head = self._head()
        return head if self._end is None or math.isnan(head) else min(head, self._end)

    def _progress(self, height: int) -> str | None:
        target = self._target()
        if math.isnan(target):
            return None
        behind = target - height
        now = self._clock()
        if self._catching_up and behind < _BEHIND_BLOCKS:
            self._catching_up = False
            if self._end is not None and self._end <= target:
                return None  # the end of a bounded run: the summary line follows
            return self._log(
                f"reached the tip at height {height} "
                f"({format_duration(now - self._started)} since start)"
            )
        if behind < _BEHIND_BLOCKS or now - self._last_at < self._interval_s:
            if behind >= _BEHIND_BLOCKS and not self._catching_up:
                self._catching_up = True
            return None
        self._catching_up = True
        assert self._last_height is not None
        rate = (height - self._last_height) / (now - self._last_at)
        self._last_at, self._last_height = now, height
        eta = behind / rate if rate > 0 else math.inf
        goal = "--to-height" if self._end is not None and self._end <= target else "head"
        return self._log(
            f"catching up: height {height}, {goal} {target:.0f} ({behind:.0f} blocks behind), "
            f"{rate:.0f} blocks/s, ETA {format_duration(eta)}"
        )

    @staticmethod
    def _log(line: str) -> str:
        log.info("%s", line)
        return line

    def finish(self) -> RunSummary:
        """Log the one summary line of the run and return its totals."""
        self.summary.elapsed_s = self._clock() - self._started
        log.info("%s", self.summary.line())
        return self.summary
