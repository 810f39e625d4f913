"""Parallel backfill: how to split a range across processes, and what is still missing after.

A backfill is N bounded `run`s, each with its own checkpoint stream and so its own
writer lock, side by side with the live stream; the ledger makes any overlap
harmless. Two things are computed outside those runs:

- the plan: which heights each part fills. Pure arithmetic on (range, parts,
  index), so every pod of a Kubernetes Indexed Job derives its own part from
  JOB_COMPLETION_INDEX with no coordinator and no shared state.
- the coverage: which heights no stream has committed. Every checkpoint row
  promises that its stream committed each height from `start_height` to
  `height`; the union of those promises, held against the span that should be
  covered, leaves the gaps. The ledger can cross-check a promise (a stream whose
  `--from-height` jumped past its own checkpoint covers less than its row says).

Ranges here are inclusive, as `run --from-height/--to-height` takes them. Only the
plan's input is half-open, [start, stop), because "everything below the height
where the live stream started" is the common request and needs no off-by-one.
A part's stream is named after its range (`backfill-FIRST-LAST`): a checkpoint row
keeps the start height of its first run, so a name reused for another range
would claim heights it never wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from consumer.errors import ConfigError, SchemaMismatch

__all__ = [
    "GapReport",
    "HeightRange",
    "Part",
    "find_gaps",
    "format_gaps",
    "format_plan",
    "plan_parts",
    "resume_height",
    "uncovered",
]

_STREAMS = """
SELECT stream, start_height, height FROM core_plays.checkpoint
WHERE chain_id = %s ORDER BY start_height, stream
"""

# Runs of heights without a single ledger row, between two fences just outside the span.
_QUIET = """
WITH heights AS (
    SELECT %(first)s::bigint - 1 AS h
    UNION ALL
    SELECT DISTINCT block_height FROM core_plays.tx_ledger
    WHERE chain_id = %(chain)s AND block_height BETWEEN %(first)s AND %(last)s
    UNION ALL
    SELECT %(last)s::bigint + 1
), runs AS (
    SELECT lag(h) OVER (ORDER BY h) + 1 AS first, h - 1 AS last FROM heights
)
SELECT first, last FROM runs WHERE last - first + 1 >= %(blocks)s ORDER BY first
"""


@dataclass(frozen=True, slots=True, order=True)
class HeightRange:
    """Heights `first` to `last`, both included."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"empty range {self.first}..{self.last}")

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}..{self.last}"


@dataclass(frozen=True, slots=True)
class Part:
    """One of a plan's parts: the heights one process fills, under its own stream."""

    index: int
    heights: HeightRange

    @property
    def stream(self) -> str:
        return f"backfill-{self.heights.first}-{self.heights.last}"

    def run_args(self, from_height: int | None = None) -> list[str]:
        """The `plays-consumer run` flags for this part (from_height: resume later in it)."""
        start = self.heights.first if from_height is None else from_height
        return [
            "--from-height",
            str(start),
            "--to-height",
            str(self.heights.last),
            "--stream",
            self.stream,
        ]


def plan_parts(start: int, stop: int, parts: int) -> list[Part]:
    """Split the half-open [start, stop) into `parts` contiguous parts of near-equal size.

    Sizes differ by at most one, the larger parts first, so the plan is the same
    wherever it is computed. Equal heights are not equal work when blocks grow fuller
    over time: more parts than pods (the Job's parallelism) evens that out.
    """
    if start < 1:
        raise ConfigError(f"--from must be at least 1, got {start}")
    if stop <= start:
        raise ConfigError(f"--to {stop} must be above --from {start} (the range is [from, to))")
    heights = stop - start
    if not 1 <= parts <= heights:
        raise ConfigError(
            f"--parts must be 1..{heights} (the heights in [{start}, {stop})), got {parts}"
        )
    size, extra = divmod(heights, parts)
    plan: list[Part] = []
    first = start
    for index in range(parts):
        last = first + size + (1 if index < extra else 0) - 1
        plan.append(Part(index, HeightRange(first, last)))
        first = last + 1
    return plan


def uncovered(covered: Iterable[HeightRange], span: HeightRange) -> list[HeightRange]:
    """The heights of `span` in none of the `covered` ranges (which may overlap)."""
    gaps: list[HeightRange] = []
    next_needed = span.first
    for heights in sorted(covered):
        if heights.last < next_needed:
            continue
        if heights.first > span.last:
            break
        if heights.first > next_needed:
            gaps.append(HeightRange(next_needed, heights.first - 1))
        next_needed = heights.last + 1
        if next_needed > span.last:
            return gaps
    if next_needed <= span.last:
        gaps.append(HeightRange(next_needed, span.last))
    return gaps


@dataclass(frozen=True, slots=True)
class GapReport:
    """What `gaps` found for one chain; `ok` when nothing is missing."""

    chain_id: str
    span: HeightRange
    streams: dict[str, HeightRange]
    gaps: list[HeightRange]
    # None: the ledger was not consulted.
    quiet: list[HeightRange] | None = None

    @property
    def ok(self) -> bool:
        return not self.gaps and not self.quiet

    def as_dict(self) -> dict[str, Any]:
        def pair(r: HeightRange) -> dict[str, int]:
            return {"first": r.first, "last": r.last}

        return {
            "chain_id": self.chain_id,
            "span": pair(self.span),
            "streams": {name: pair(r) for name, r in self.streams.items()},
            "gaps": [pair(r) for r in self.gaps],
            "ledger_quiet": None if self.quiet is None else [pair(r) for r in self.quiet],
            "ok": self.ok,
        }


async def find_gaps(
    conn: psycopg.AsyncConnection[TupleRow],
    chain_id: str | None = None,
    first: int | None = None,
    last: int | None = None,
    live_stream: str = "live",
    quiet_blocks: int | None = None,
) -> GapReport:
    """Heights from `first` (default: the lowest stream start) to `last` (default: the live
    checkpoint, else the highest stream) that no checkpoint stream of the chain covers.

    With `quiet_blocks`, also the runs of at least that many heights without any play
    transaction in the ledger: on a chain where that never happens, such a run is
    heights a stream's checkpoint claims but its rows do not show.
    """
    if quiet_blocks is not None and quiet_blocks < 1:
        raise ConfigError(f"--ledger-quiet-blocks must be at least 1, got {quiet_blocks}")
    try:
        chain = chain_id or await _only_chain(conn)
        cur = await conn.execute(_STREAMS, (chain,))
        rows = await cur.fetchall()
        if not rows:
            raise ConfigError(f"no checkpoint for chain {chain}: nothing was written for it yet")
        # A row rewound below its own start (--rewind-checkpoint) promises nothing.
        streams = {
            name: HeightRange(start, height) for name, start, height in rows if height >= start
        }
        if first is None:
            first = min(start for _, start, _ in rows)
        if last is None:
            live = [height for name, _, height in rows if name == live_stream]
            last = live[0] if live else max(height for _, _, height in rows)
        if last < first:
            raise ConfigError(f"nothing to check: heights {first}..{last} are empty")
        span = HeightRange(first, last)
        quiet = None
        if quiet_blocks is not None:
            cur = await conn.execute(
                _QUIET, {"chain": chain, "first": first, "last": last, "blocks": quiet_blocks}
            )
            quiet = [HeightRange(a, b) for a, b in await cur.fetchall()]
    except psycopg.errors.UndefinedTable:
        raise SchemaMismatch(
            "this database has no core_plays schema: run `plays-consumer migrate` first"
        ) from None
    return GapReport(chain, span, streams, uncovered(streams.values(), span), quiet)


async def _only_chain(conn: psycopg.AsyncConnection[TupleRow]) -> str:
    cur = await conn.execute("SELECT DISTINCT chain_id FROM core_plays.checkpoint ORDER BY 1")
    chains = [row[0] for row in await cur.fetchall()]
    if not chains:
        raise ConfigError("no checkpoint in this database: nothing was written yet")
    if len(chains) > 1:
        raise ConfigError(f"pass --chain-id: checkpoints exist for chains {', '.join(chains)}")
    return str(chains[0])


async def resume_height(conn: psycopg.AsyncConnection[TupleRow], part: Part) -> int:
    """Where a restarted part goes on: after its checkpoint, never outside its range.

    A finished part restarts at its last height, so the run still has a range to do
    and exits 0 at once (that block is already in the ledger). With rows for several
    chains, the lowest wins: replaying is harmless, skipping is not.
    """
    cur = await conn.execute(
        "SELECT min(height) FROM core_plays.checkpoint WHERE stream = %s", (part.stream,)
    )
    row = await cur.fetchone()
    if row is None or row[0] is None or row[0] < part.heights.first:
        return part.heights.first
    return min(int(row[0]) + 1, part.heights.last)


def format_plan(plan: list[Part], as_json: bool) -> str:
    """The plan for people (one `run` line per part) or scripts (JSON)."""
    if as_json:
        return json.dumps(
            [
                {
                    "index": p.index,
                    "from_height": p.heights.first,
                    "to_height": p.heights.last,
                    "stream": p.stream,
                }
                for p in plan
            ],
            indent=2,
        )
    span = HeightRange(plan[0].heights.first, plan[-1].heights.last)
    lines = [
        f"# {len(plan)} parts of heights [{span.first}, {span.last + 1}); "
        "--from-height and --to-height are inclusive"
    ]
    lines += [" ".join(p.run_args()) for p in plan]
    return "\n".join(lines)


def format_gaps(report: GapReport, as_json: bool) -> str:
    if as_json:
        return json.dumps(report.as_dict(), indent=2)
    width = max((len(name) for name in report.streams), default=0)
    lines = [f"chain {report.chain_id}, heights {report.span}:"]
    lines += [f"  stream {name:<{width}}  {r}" for name, r in report.streams.items()]
    lines += [f"gap {r} ({r.size} heights)" for r in report.gaps] or ["no gaps"]
    if report.quiet is not None:
        lines += [
            f"no play transaction in the ledger at {r} ({r.size} heights)" for r in report.quiet
        ]
    return "\n".join(lines)
