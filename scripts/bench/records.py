"""What one consumer run did, as seen from outside it: commits, CPU and memory."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ConsumerRun", "Sample"]


@dataclass(slots=True)
class Sample:
    """The consumer process at one instant, with the height committed by then."""

    at: float
    height: int
    cpu_s: float
    rss_kb: int


@dataclass(slots=True)
class ConsumerRun:
    """What one `plays-consumer run` did, as seen from outside it."""

    exit_code: int = 0
    cpu_s: float = 0.0  # whole process, from wait4
    maxrss_kb: int = 0  # peak resident set: the last VmHWM sampled
    commits: list[tuple[float, int]] = field(default_factory=list)  # (time, height)
    samples: list[Sample] = field(default_factory=list)
    stderr: str = ""
    listener_reconnects: int = 0  # commit notifications lost to a dropped connection

    def committed_at(self, height: int) -> float | None:
        for at, committed in self.commits:
            if committed >= height:
                return at
        return None

    def cpu_at(self, at: float) -> float:
        """CPU seconds used by `at` (the last sample taken at or before it)."""
        used = 0.0
        for sample in self.samples:
            if sample.at > at:
                break
            used = sample.cpu_s
        return used
