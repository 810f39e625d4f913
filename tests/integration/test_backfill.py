"""Parallel backfill: the plan, the Job's own command and `gaps`, on a real devnet and PostgreSQL.

Parts run as their own checkpoint streams beside the live stream; whatever the split,
and however the parts overlap each other or the live stream, the plays table must end
exactly as one clean run would leave it (tests/reference.py says what that is).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from consumer.devnet import DevChain, DevnetServer, TxKind
from consumer.errors import ConfigError
from consumer.ops.backfill import HeightRange, Part, find_gaps, plan_parts, uncovered
from tests.conftest import DevnetFactory, run_consumer
from tests.procs import clean_env, run_once
from tests.reference import expected_rows, plays_rows

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "deploy" / "k8s" / "backfill" / "job.yaml"

Row = tuple[Any, ...]


# ------------------------------------------------------------------------------ the plan


@pytest.mark.parametrize(
    ("start", "stop", "parts", "expected"),
    [
        (1, 101, 4, [(1, 25), (26, 50), (51, 75), (76, 100)]),
        (1, 11, 3, [(1, 4), (5, 7), (8, 10)]),
        (10, 13, 3, [(10, 10), (11, 11), (12, 12)]),
        (5, 6, 1, [(5, 5)]),
        (7, 1_000_007, 3, [(7, 333_340), (333_341, 666_673), (666_674, 1_000_006)]),
    ],
    ids=["even", "remainder-first", "one-height-each", "single", "large"],
)
def test_plan_splits_the_half_open_range_into_inclusive_parts(
    start: int, stop: int, parts: int, expected: list[tuple[int, int]]
) -> None:
    plan = plan_parts(start, stop, parts)
    assert [(p.heights.first, p.heights.last) for p in plan] == expected
    assert [p.index for p in plan] == list(range(parts))


@given(
    start=st.integers(1, 10**9),
    size=st.integers(1, 10**6),
    parts=st.integers(1, 500),
)
def test_plan_covers_every_height_once_in_parts_that_differ_by_at_most_one(
    start: int, size: int, parts: int
) -> None:
    parts = min(parts, size)
    plan = plan_parts(start, start + size, parts)
    assert plan[0].heights.first == start
    assert plan[-1].heights.last == start + size - 1
    for before, after in itertools.pairwise(plan):
        assert after.heights.first == before.heights.last + 1
    sizes = [p.heights.size for p in plan]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("start", "stop", "parts", "flag"),
    [
        (0, 10, 1, "--from"),
        (10, 10, 1, "--to"),
        (10, 5, 1, "--to"),
        (1, 3, 3, "--parts"),
        (1, 10, 0, "--parts"),
    ],
    ids=["from-zero", "empty", "backwards", "more-parts-than-heights", "no-parts"],
)
def test_plan_refuses_a_range_it_cannot_split_naming_the_flag(
    start: int, stop: int, parts: int, flag: str
) -> None:
    with pytest.raises(ConfigError, match=flag):
        plan_parts(start, stop, parts)


def test_a_parts_stream_is_named_after_its_range() -> None:
    part = Part(2, HeightRange(51, 75))
    flags = ["--from-height", "51", "--to-height", "75", "--stream", "backfill-51-75"]
    assert part.run_args() == flags


# ------------------------------------------------------------------------- coverage maths


@pytest.mark.parametrize(
    ("covered", "span", "gaps"),
    [
        ([(1, 100)], (1, 100), []),
        ([(1, 40), (41, 100)], (1, 100), []),
        ([(1, 60), (30, 100)], (1, 100), []),
        ([(1, 40), (61, 100)], (1, 100), [(41, 60)]),
        ([(11, 100)], (1, 100), [(1, 10)]),
        ([(1, 90)], (1, 100), [(91, 100)]),
        ([(1, 10), (20, 30), (40, 50)], (1, 60), [(11, 19), (31, 39), (51, 60)]),
        ([(200, 300), (1, 5)], (1, 100), [(6, 100)]),
        ([], (5, 9), [(5, 9)]),
        ([(1, 10), (1, 10)], (1, 10), []),
    ],
    ids=[
        "whole",
        "adjacent",
        "overlapping",
        "hole",
        "hole-at-start",
        "hole-at-end",
        "several-holes",
        "outside-span-ignored",
        "nothing-covered",
        "duplicate",
    ],
)
def test_uncovered_finds_the_heights_no_range_covers(
    covered: list[tuple[int, int]], span: tuple[int, int], gaps: list[tuple[int, int]]
) -> None:
    found = uncovered([HeightRange(*r) for r in covered], HeightRange(*span))
    assert found == [HeightRange(*g) for g in gaps]


# ---------------------------------------------------------------------------- the command


async def test_backfill_plan_prints_one_inclusive_run_line_per_part() -> None:
    code, out, err = await run_once("backfill-plan", "--from", "1", "--to", "101", "--parts", "4")
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.startswith("#") and "inclusive" in header and "[1, 101)" in header
    assert lines == [
        "--from-height 1 --to-height 25 --stream backfill-1-25",
        "--from-height 26 --to-height 50 --stream backfill-26-50",
        "--from-height 51 --to-height 75 --stream backfill-51-75",
        "--from-height 76 --to-height 100 --stream backfill-76-100",
    ]


async def test_backfill_plan_index_prints_only_that_parts_run_flags() -> None:
    args = ("backfill-plan", "--from", "1", "--to", "101", "--parts", "4", "--index", "2")
    code, out, err = await run_once(*args)
    assert code == 0, err
    assert out == "--from-height 51 --to-height 75 --stream backfill-51-75\n"


async def test_backfill_plan_json_lists_every_part() -> None:
    code, out, err = await run_once(
        "backfill-plan", "--from", "1", "--to", "11", "--parts", "3", "--json"
    )
    assert code == 0, err
    assert json.loads(out) == [
        {"index": 0, "from_height": 1, "to_height": 4, "stream": "backfill-1-4"},
        {"index": 1, "from_height": 5, "to_height": 7, "stream": "backfill-5-7"},
        {"index": 2, "from_height": 8, "to_height": 10, "stream": "backfill-8-10"},
    ]


async def test_backfill_plan_with_an_index_past_the_parts_exits_2() -> None:
    code, out, err = await run_once(
        "backfill-plan", "--from", "1", "--to", "11", "--parts", "3", "--index", "3"
    )
    assert (code, out) == (2, "")
    assert "--index must be 0..2" in err


# ------------------------------------------------------------------------------ resuming


async def test_resume_continues_a_part_after_its_checkpoint(
    devnet: DevnetServer, database: str
) -> None:
    part = plan_parts(1, 151, 3)[1]  # 51..100
    await run_consumer(devnet.url, database, from_height=51, to_height=70, stream=part.stream)
    code, out, err = await run_once(
        *("backfill-plan", "--from", "1", "--to", "151", "--parts", "3", "--index", "1"),
        *("--resume", "--database-url", database),
    )
    assert code == 0, err
    assert out.split() == part.run_args(71)


async def test_resume_of_a_finished_part_replays_only_its_last_height(
    devnet: DevnetServer, database: str
) -> None:
    part = plan_parts(1, 151, 3)[1]
    await run_consumer(devnet.url, database, from_height=51, to_height=100, stream=part.stream)
    code, out, err = await run_once(
        *("backfill-plan", "--from", "1", "--to", "151", "--parts", "3", "--index", "1"),
        *("--resume", "--database-url", database),
    )
    assert code == 0, err
    assert out.split() == part.run_args(100)


async def test_resume_of_a_part_never_started_begins_at_its_first_height(database: str) -> None:
    code, out, err = await run_once(
        *("backfill-plan", "--from", "1", "--to", "151", "--parts", "3", "--index", "2"),
        *("--resume", "--database-url", database),
    )
    assert code == 0, err
    assert out.split() == plan_parts(1, 151, 3)[2].run_args()


# ----------------------------------------------------------------------- parallel backfill


def _job_command() -> list[str]:
    job = yaml.safe_load(JOB.read_text())
    command: list[str] = job["spec"]["template"]["spec"]["containers"][0]["command"]
    return command


async def _run_job_pod(index: int, parts: int, stop: int, core_url: str, database: str) -> None:
    """One Indexed Job pod, as Kubernetes would start it: the manifest's own command."""
    env = clean_env()
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        JOB_COMPLETION_INDEX=str(index),
        BACKFILL_FROM="1",
        BACKFILL_TO=str(stop),
        BACKFILL_PARTS=str(parts),
        CORE_PLAYS_CORE_URL=core_url,
        CORE_PLAYS_DATABASE_URL=database,
        CORE_PLAYS_METRICS_ADDR="127.0.0.1:0",
    )
    proc = await asyncio.create_subprocess_exec(
        *_job_command(), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode == 0, f"part {index}: {out.decode()}{err.decode()}"


async def _plays(database: str) -> Counter[Row]:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        return await plays_rows(conn)


async def test_job_pods_on_disjoint_parts_beside_the_live_stream_write_one_clean_run(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=300, block_interval_s=0.02)
    await asyncio.gather(
        *(_run_job_pod(i, 3, 301, devnet.url, database) for i in range(3)),
        run_consumer(devnet.url, database, from_height=301, to_height=400),
    )
    assert await _plays(database) == expected_rows(devnet.chain, 1, 400)


async def test_overlapping_parts_beside_the_live_stream_write_each_play_once(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=300, block_interval_s=0.02)
    url = devnet.url
    await asyncio.gather(
        run_consumer(url, database, from_height=1, to_height=150, stream="backfill-1-150"),
        run_consumer(url, database, from_height=100, to_height=250, stream="backfill-100-250"),
        run_consumer(url, database, from_height=200, to_height=330, stream="backfill-200-330"),
        run_consumer(url, database, from_height=1, to_height=300, stream="backfill-1-300"),
        run_consumer(url, database, from_height=280, to_height=400),
    )
    assert await _plays(database) == expected_rows(devnet.chain, 1, 400)


# ---------------------------------------------------------------------------------- gaps


async def _backfill_all_but(
    devnet: DevnetServer, database: str, parts: list[Part], left_out: set[int]
) -> None:
    last = parts[-1].heights.last
    await asyncio.gather(
        *(
            run_consumer(
                devnet.url,
                database,
                from_height=p.heights.first,
                to_height=p.heights.last,
                stream=p.stream,
            )
            for p in parts
            if p.index not in left_out
        ),
        run_consumer(devnet.url, database, from_height=last + 1, to_height=last + 50),
    )


async def test_gaps_reports_none_after_every_part_and_the_live_stream_ran(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=250)
    await _backfill_all_but(devnet, database, plan_parts(1, 201, 4), left_out=set())
    code, out, err = await run_once("gaps", "--database-url", database, "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["span"] == {"first": 1, "last": 250}
    assert report["gaps"] == []


async def test_gaps_reports_the_range_of_a_part_left_out_and_exits_1(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=250)
    parts = plan_parts(1, 201, 4)
    await _backfill_all_but(devnet, database, parts, left_out={1})
    code, out, err = await run_once("gaps", "--database-url", database)
    assert code == 1, err
    assert f"gap {parts[1].heights} ({parts[1].heights.size} heights)" in out.splitlines()


async def test_gaps_up_to_a_height_past_the_live_checkpoint_reports_the_tail(
    devnet: DevnetServer, database: str
) -> None:
    await run_consumer(devnet.url, database, from_height=1, to_height=80)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        report = await find_gaps(conn, last=120)
    assert report.gaps == [HeightRange(81, 120)]


def _longest_run_without_play_txs(chain: DevChain, first: int, last: int) -> int:
    longest = run = 0
    for height in range(first, last + 1):
        has_play = any(tx.kind is TxKind.PLAYS for tx in chain.txs(height))
        run = 0 if has_play else run + 1
        longest = max(longest, run)
    return longest


async def test_gaps_with_the_ledger_finds_heights_a_jumped_stream_only_claims(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=300)
    await run_consumer(devnet.url, database, from_height=1, to_height=100)
    # A checkpoint that claims heights it never wrote (run refuses a --from-height
    # above its checkpoint, but a hand edit or an older version could do this).
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "UPDATE core_plays.checkpoint SET height = 200, block_hash = %s",
            (devnet.chain.block_hash(200),),
        )
    # Without the audit: it would re-read heights 101..200 (above its saved audited
    # height) and write them, which is what this test needs to leave undone.
    await run_consumer(devnet.url, database, to_height=300, no_audit=True)
    quiet_blocks = _longest_run_without_play_txs(devnet.chain, 1, 300) + 1
    async with await psycopg.AsyncConnection.connect(database) as conn:
        report = await find_gaps(conn, quiet_blocks=quiet_blocks)
    assert report.gaps == []
    assert report.quiet is not None
    assert any(r.first <= 101 and r.last >= 200 for r in report.quiet), report.quiet
    assert not report.ok


async def _insert_checkpoints(database: str, *rows: tuple[str, str, int, int]) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        for chain, stream, start, height in rows:
            await conn.execute(
                "INSERT INTO core_plays.checkpoint (chain_id, stream, start_height, height, "
                "block_hash) VALUES (%s, %s, %s, %s, 'x')",
                (chain, stream, start, height),
            )


async def test_gaps_counts_a_stream_rewound_below_its_start_as_covering_nothing(
    database: str,
) -> None:
    await _insert_checkpoints(
        database, ("devnet-1", "live", 1, 100), ("devnet-1", "backfill-101-200", 150, 120)
    )
    async with await psycopg.AsyncConnection.connect(database) as conn:
        report = await find_gaps(conn, last=200)
    assert report.gaps == [HeightRange(101, 200)]


async def test_gaps_asks_for_a_chain_id_when_several_chains_have_checkpoints(
    database: str,
) -> None:
    await _insert_checkpoints(database, ("chain-a", "live", 1, 10), ("chain-b", "live", 1, 10))
    code, out, err = await run_once("gaps", "--database-url", database)
    assert (code, out) == (2, "")
    assert "--chain-id" in err and "chain-a, chain-b" in err
