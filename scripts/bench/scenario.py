"""What one profile's run is (Scenario), what it measured (Figures), and the chain it
serves (ServedChain)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from consumer.devnet import ChainSpec, DevChain, Profile

__all__ = ["DEFAULT_BLOCKS", "Figures", "Scenario", "ServedChain"]

DEFAULT_BLOCKS = {Profile.EMPTY: 50_000, Profile.TYPICAL: 20_000, Profile.BUSY: 500}


@dataclass(frozen=True, slots=True)
class Scenario:
    """One profile's run: how many blocks, how busy, how long at the tip."""

    profile: Profile
    blocks: int
    busy_txs: int
    busy_plays: int
    tip_blocks: int
    tip_interval_s: float
    ceiling_blocks: int
    ceiling_batch_plays: int
    seed: int = 1

    def spec(self) -> ChainSpec:
        return ChainSpec(
            seed=self.seed,
            profile=self.profile,
            busy_txs_per_block=self.busy_txs,
            busy_plays_per_tx=self.busy_plays,
        )

    def describe(self) -> str:
        if self.profile is Profile.BUSY:
            per = self.busy_txs * self.busy_plays
            return f"{self.blocks:,} busy blocks of {per:,} plays ({self.busy_txs} txs)"
        return f"{self.blocks:,} {self.profile.value} blocks"


@dataclass(slots=True)
class Figures:
    """One row of the report table."""

    scenario: Scenario
    plays: int = 0
    seconds: float = math.nan
    cpu_s: float = math.nan
    maxrss_kb: int = 0
    rss_slope_mb: float = math.nan
    rss_samples: int = 0
    rss_marks: str = ""
    bench_cpu_s: float = math.nan  # this process (the devnet serving) during the catch-up
    listener_reconnects: int = 0  # commit times after one are upper bounds
    ceiling_plays_per_s: float = math.nan
    ceiling_rows: int = 0
    tip_p50_ms: float = math.nan
    tip_p99_ms: float = math.nan
    tip_max_ms: float = math.nan
    tip_samples: int = 0
    floor_p50_ms: float = math.nan  # PostgreSQL alone, one tip block per transaction
    floor_p99_ms: float = math.nan

    @property
    def blocks_per_s(self) -> float:
        return self.scenario.blocks / self.seconds

    @property
    def plays_per_s(self) -> float:
        return self.plays / self.seconds

    @property
    def ratio(self) -> float:
        return self.plays_per_s / self.ceiling_plays_per_s if self.plays else math.nan


class ServedChain(DevChain):
    """A DevChain whose blocks are generated and serialized before the clock starts.

    The devnet's Python block generator costs up to 70 us a block (typical
    profile): served live, it would take a share of the same two cores the
    consumer and PostgreSQL are measured on. A real node serves stored bytes;
    so does this, up to a memory budget (past it, blocks are made on demand).
    """

    def __init__(self, spec: ChainSpec, last: int, budget_bytes: int = 1 << 30) -> None:
        super().__init__(spec)
        self._served: dict[tuple[int, bool], bytes] = {}
        size = 0
        for height in range(1, last + 1):
            for canon in (False, True):
                data = super().block_bytes(height, canon)
                size += len(data)
                if size > budget_bytes:
                    self._served.clear()
                    return
                self._served[height, canon] = data

    def block_bytes(self, height: int, canon: bool) -> bytes:
        data = self._served.get((height, canon))
        return data if data is not None else super().block_bytes(height, canon)
