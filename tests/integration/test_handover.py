"""Taking over from the writer this service replaces, on the real transactions of take1.pb.

A legacy writer of each shape (tests/legacy.py, from DESIGN §4b) writes the
first part of the real main-network chain, losing some transactions; then the
service recognises its rows by content and place, writes exactly what it lost,
and never writes one of its plays a second time: by `verify --repair` (the
manual cutover), by running beside it (`run --handover-from`), and after it
stops or starts again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from consumer.devnet import ChainSpec, DevChain, DevnetServer
from consumer.model import REPEAT_REACH, DifferenceKind
from consumer.trust.verify import VerifyReport
from tests.conftest import DevnetFactory, TwoRoles, eventually, run_consumer
from tests.consumers import Consumer, query
from tests.consumers import verify_heights as verify_any
from tests.legacy import LegacyWriter, Shape
from tests.procs import run_once
from tests.reference import tx_rows

TAKE1 = Path(__file__).resolve().parents[3] / "shared" / "data" / "take1.pb"
HEIGHTS = 700  # take1.pb at 10 transactions a block
SHAPES = [pytest.param(Shape.PYTHON, id="python"), pytest.param(Shape.GO, id="go")]


async def verify_heights(
    core_url: str, database: str, chain_id: str, first: int, last: int, repair: bool = False
) -> VerifyReport:
    """verify with a pruning horizon behind take1's plays (March 2025): none of them is
    old enough to have been pruned, so a play not there is missing."""
    return await verify_any(
        core_url, database, chain_id, first, last, repair=repair, pruned_before_days=36_500
    )


def every_nth(n: int) -> Any:
    """Lose one plays transaction in n, picked by its place (height, position): the
    same transaction carried twice can be lost once and written once."""

    def loses(height: int, position: int, tx_hash: str) -> bool:
        return int(hashlib.sha256(f"{height}:{position}".encode()).hexdigest(), 16) % n == 0

    return loses


async def real_chain(devnet_factory: DevnetFactory, **kwargs: Any) -> DevnetServer:
    assert TAKE1.exists(), f"the real transactions are expected at {TAKE1}"
    return await devnet_factory(ChainSpec(recorded=str(TAKE1)), **kwargs)


async def lossy_legacy(
    devnet_factory: DevnetFactory,
    database: str,
    shape: Shape,
    through: int,
    height: int = HEIGHTS,
) -> tuple[DevnetServer, LegacyWriter]:
    """The real chain, and a legacy writer of `shape` that wrote 1..through of it and lost
    one plays transaction in forty."""
    devnet = await real_chain(devnet_factory, height=height)
    legacy = LegacyWriter(devnet.chain, database, shape, loses=every_nth(40))
    await legacy.write_through(through)
    return devnet, legacy


async def content(database: str) -> Counter[tuple[Any, ...]]:
    """The plays rows by content, whatever slot a writer put them at."""
    rows = await query(
        database,
        "SELECT user_id, play_item_id, created_at, coalesce(signature, ''), coalesce(city, ''),"
        " coalesce(region, ''), coalesce(country, '') FROM plays",
    )
    return Counter(rows)


def chain_plays(chain: DevChain, last: int, written: Counter[str] | None = None) -> Counter[Any]:
    """What `plays` must hold for heights 1..last: each transaction once, or as many
    times as the legacy writer wrote it (`written`: hash -> copies; it doubles the
    chain's repeats, which the service reports and never deletes)."""
    rows: Counter[tuple[Any, ...]] = Counter()
    once: set[str] = set()
    for height in range(1, last + 1):
        for tx_hash, tx in tx_rows(chain, height):
            if tx_hash in once:
                continue
            once.add(tx_hash)
            copies = max(1, (written or Counter())[tx_hash])
            for row in tx:
                rows[row] += copies
    return rows


def doubled_rows(chain: DevChain, last: int, copies: Counter[str]) -> int:
    """The rows the legacy writer wrote more than once for a transaction the chain
    carries twice (it deduplicates nothing)."""
    doubled = 0
    once: set[str] = set()
    for height in range(1, last + 1):
        for tx_hash, rows in tx_rows(chain, height):
            if tx_hash not in once:
                once.add(tx_hash)
                doubled += max(0, copies[tx_hash] - 1) * len(rows)
    return doubled


def assert_only_its_doubles(
    report: VerifyReport, chain: DevChain, last: int, copies: Counter[str]
) -> None:
    """The only differences left are the rows the legacy writer wrote twice for a
    transaction the chain carries twice (reported; the service never deletes)."""
    doubled = doubled_rows(chain, last, copies)
    expected = {DifferenceKind.REPEATED_ROWS: doubled} if doubled else {}
    assert dict(report.counts) == expected, report.format_text()


def legacy_copies(chain: DevChain, last: int, legacy: LegacyWriter) -> Counter[str]:
    """How many times the legacy writer wrote each transaction of heights 1..last."""
    copies: Counter[str] = Counter()
    for height in range(1, last + 1):
        for position, (tx_hash, _) in enumerate(tx_rows(chain, height)):
            if not legacy.loses(height, position, tx_hash):
                copies[tx_hash] += 1
    return copies


def lost_everywhere(chain: DevChain, last: int, legacy: LegacyWriter) -> set[str]:
    """The transactions of 1..last none of whose copies the legacy writer wrote."""
    written = legacy_copies(chain, last, legacy)
    return {h for height in range(1, last + 1) for h, _ in tx_rows(chain, height)} - set(written)


async def assert_every_play_once(
    devnet: DevnetServer, database: str, legacy: LegacyWriter, wrote_to: int, last: int
) -> None:
    """`plays` holds each transaction of 1..last once, or as often as the legacy writer
    (which wrote 1..wrote_to) wrote it, and verify finds nothing else."""
    copies = legacy_copies(devnet.chain, wrote_to, legacy)
    assert await content(database) == chain_plays(devnet.chain, last, copies)
    final = await verify_heights(devnet.url, database, "devnet-1", 1, last)
    assert_only_its_doubles(final, devnet.chain, last, copies)


@pytest.mark.parametrize("shape", SHAPES)
async def test_verify_after_a_legacy_writer_lost_transactions_reports_exactly_those_missing(
    devnet_factory: DevnetFactory, database: str, shape: Shape
) -> None:
    devnet = await real_chain(devnet_factory, height=HEIGHTS)
    legacy = LegacyWriter(devnet.chain, database, shape, loses=every_nth(40))
    await legacy.write_through(420)  # 60% of the chain
    report = await verify_heights(devnet.url, database, "devnet-1", 1, 420)
    lost = lost_everywhere(devnet.chain, 420, legacy)
    assert report.counts[DifferenceKind.MISSING] == len(lost) > 0
    assert {d.tx_hash for d in report.first if d.kind is DifferenceKind.MISSING} <= lost
    assert report.counts[DifferenceKind.AMBIGUOUS] == 0
    assert report.foreign == report.transactions - report.repeated - len(lost)


@pytest.mark.parametrize("shape", SHAPES)
async def test_verify_repair_after_a_legacy_writer_writes_only_what_it_lost(
    devnet_factory: DevnetFactory, database: str, shape: Shape
) -> None:
    devnet, legacy = await lossy_legacy(devnet_factory, database, shape, 420)
    lost = lost_everywhere(devnet.chain, 420, legacy)
    repaired = await verify_heights(devnet.url, database, "devnet-1", 1, 420, repair=True)
    assert repaired.repaired_transactions == len(lost) > 0
    written = await query(database, "SELECT tx_hash FROM core_plays.tx_ledger")
    assert {h for (h,) in written} == lost
    copies = legacy_copies(devnet.chain, 420, legacy)
    assert await content(database) == chain_plays(devnet.chain, 420, copies)


@pytest.mark.parametrize("shape", SHAPES)
async def test_after_the_repair_only_the_legacy_writers_doubled_repeats_remain(
    devnet_factory: DevnetFactory, database: str, shape: Shape
) -> None:
    devnet, legacy = await lossy_legacy(devnet_factory, database, shape, 420)
    await verify_heights(devnet.url, database, "devnet-1", 1, 420, repair=True)
    again = await verify_heights(devnet.url, database, "devnet-1", 1, 420, repair=True)
    assert again.repaired_transactions == 0
    assert_only_its_doubles(again, devnet.chain, 420, legacy_copies(devnet.chain, 420, legacy))
    assert again.repeated > 0


@pytest.mark.parametrize("shape", SHAPES)
async def test_the_manual_cutover_at_the_legacy_writers_height_leaves_every_play_once(
    devnet_factory: DevnetFactory, database: str, shape: Shape
) -> None:
    devnet, legacy = await lossy_legacy(devnet_factory, database, shape, 420)
    await verify_heights(devnet.url, database, "devnet-1", 1, 420, repair=True)
    await run_consumer(devnet.url, database, from_height=421, to_height=HEIGHTS)
    await assert_every_play_once(devnet, database, legacy, 420, HEIGHTS)


async def test_a_transaction_the_legacy_writer_wrote_in_part_is_ambiguous_and_never_written(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await real_chain(devnet_factory, height=HEIGHTS)
    legacy = LegacyWriter(devnet.chain, database, Shape.PYTHON)
    await legacy.write_through(100)
    height, tx_hash, rows = next(
        (h, tx, rows) for h in range(1, 101) for tx, rows in tx_rows(devnet.chain, h)
        if len(rows) >= 4 and len(set(rows)) == len(rows)
    )  # fmt: skip
    _, track, created, signature, *_ = rows[0]
    await query(
        database,
        "DELETE FROM plays WHERE play_item_id = %s AND created_at = %s AND signature = %s",
        track,
        created,
        signature,
    )
    before = await content(database)
    report = await verify_heights(devnet.url, database, "devnet-1", 1, 100, repair=True)
    ambiguous = [d for d in report.first if d.kind is DifferenceKind.AMBIGUOUS]
    assert [(d.height, d.tx_hash) for d in ambiguous] == [(height, tx_hash)]
    assert report.repaired_transactions == 0 and not report.ok
    assert await content(database) == before
    recorded = await query(database, "SELECT kind, tx_hash FROM core_plays.conflicts")
    assert ("ambiguous", tx_hash) in recorded


async def test_a_first_run_over_heights_another_writer_wrote_refuses_naming_handover_from(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await real_chain(devnet_factory, height=HEIGHTS)
    await LegacyWriter(devnet.chain, database, Shape.GO).write_through(50)
    code, _, err = await run_once(
        "run", "--core-url", devnet.url, "--database-url", database, "--from-height", "1",
        "--to-height", "60", "--metrics-addr", "127.0.0.1:0",
    )  # fmt: skip
    assert code == 2, err
    assert "--handover-from core_indexed_blocks" in err
    assert await query(database, "SELECT count(*) FROM core_plays.tx_ledger") == [(0,)]


async def test_a_first_run_past_the_other_writers_height_is_not_refused(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await real_chain(devnet_factory, height=HEIGHTS)
    await LegacyWriter(devnet.chain, database, Shape.GO).write_through(50)
    await run_consumer(devnet.url, database, from_height=51, to_height=60)
    rows = await query(database, "SELECT count(*) FROM plays WHERE slot BETWEEN 51 AND 60")
    assert rows[0][0] > 0


# --- run --handover-from ----------------------------------------------------------------


async def ours(database: str) -> set[str]:
    """The transactions the service wrote itself (not adopted)."""
    rows = await query(
        database, "SELECT tx_hash FROM core_plays.tx_ledger WHERE origin = 'written'"
    )
    return {tx_hash for (tx_hash,) in rows}


async def finish_beside(
    devnet: DevnetServer, legacy: LegacyWriter, consumer: Consumer, last: int
) -> None:
    await consumer.reach(last, timeout_s=120)
    await consumer.finish()
    assert consumer.value("handover_other_height") == await legacy.height()


@pytest.mark.parametrize("shape", SHAPES)
async def test_beside_a_legacy_writer_the_service_adopts_its_plays_and_writes_what_it_lost(
    devnet_factory: DevnetFactory, database: str, shape: Shape
) -> None:
    devnet, legacy = await lossy_legacy(
        devnet_factory, database, shape, HEIGHTS + REPEAT_REACH, height=HEIGHTS + REPEAT_REACH
    )
    consumer = Consumer(devnet.url, database, from_height=1, handover_from="core_indexed_blocks")
    await finish_beside(devnet, legacy, consumer, HEIGHTS)
    copies = legacy_copies(devnet.chain, HEIGHTS, legacy)
    assert await content(database) == chain_plays(devnet.chain, HEIGHTS, copies)
    adopted = await query(
        database, "SELECT count(*), sum(cardinality(play_ids)) FROM core_plays.tx_ledger"
        " WHERE origin = 'adopted'"
    )  # fmt: skip
    assert consumer.value("handover_adopted_transactions_total") == adopted[0][0] > 4000
    assert consumer.value("handover_adopted_plays_total") == adopted[0][1]
    assert consumer.value("ambiguous_transactions_total") == 0
    assert await ours(database) == lost_everywhere(devnet.chain, HEIGHTS, legacy)
    final = await verify_heights(devnet.url, database, "devnet-1", 1, HEIGHTS)
    assert_only_its_doubles(final, devnet.chain, HEIGHTS, copies)


def first_copies_of_repeats(chain: DevChain, last: int) -> set[tuple[int, int]]:
    """(height, position) of each transaction the chain carries again at a later height."""
    first: dict[str, tuple[int, int]] = {}
    picked = set()
    for height in range(1, last + 1):
        for position, (tx_hash, _) in enumerate(tx_rows(chain, height)):
            if tx_hash in first and first[tx_hash][0] != height:
                picked.add(first[tx_hash])
            first.setdefault(tx_hash, (height, position))
    return picked


def loses_first_copies(chain: DevChain, last: int) -> Any:
    picked = first_copies_of_repeats(chain, last)
    assert len(picked) > 10  # take1.pb: 17 such pairs in 700 heights
    return lambda height, position, tx_hash: (height, position) in picked


async def test_beside_a_writer_that_lost_a_first_copy_and_wrote_its_repeat_nothing_is_doubled(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await real_chain(devnet_factory, height=HEIGHTS + REPEAT_REACH)
    loses = loses_first_copies(devnet.chain, HEIGHTS)
    legacy = LegacyWriter(devnet.chain, database, Shape.PYTHON, loses=loses)
    await legacy.write_through(HEIGHTS + REPEAT_REACH)
    consumer = Consumer(
        devnet.url, database, from_height=1, handover_from="core_indexed_blocks", max_blocks=1
    )  # one block a batch: every repeat across heights straddles two batches
    await finish_beside(devnet, legacy, consumer, HEIGHTS)
    assert await ours(database) == set()
    await assert_every_play_once(devnet, database, legacy, HEIGHTS, HEIGHTS)


async def test_verify_repair_across_a_chunk_edge_never_writes_a_first_copy_whose_repeat_is_there(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await real_chain(devnet_factory, height=HEIGHTS)
    loses = loses_first_copies(devnet.chain, HEIGHTS)
    legacy = LegacyWriter(devnet.chain, database, Shape.GO, loses=loses)
    await legacy.write_through(HEIGHTS)
    (edge,) = [h for h, _ in first_copies_of_repeats(devnet.chain, HEIGHTS) if h == 508]
    repaired = await verify_heights(devnet.url, database, "devnet-1", edge - 499, HEIGHTS, True)
    assert repaired.repaired_transactions == 0, repaired.format_text()
    assert await query(database, "SELECT count(*) FROM core_plays.tx_ledger") == [(0,)]


async def test_the_service_never_writes_above_the_other_writers_height_while_it_lives(
    devnet_factory: DevnetFactory, database: str
) -> None:
    """It trails REPEAT_REACH heights behind, so as to see a repeat's second copy."""
    devnet = await real_chain(devnet_factory, height=HEIGHTS)
    legacy = LegacyWriter(devnet.chain, database, Shape.PYTHON)
    await legacy.write_through(300)
    consumer = Consumer(devnet.url, database, from_height=1, handover_from="core_indexed_blocks")
    await consumer.reach(300 - REPEAT_REACH, timeout_s=60)
    await asyncio.sleep(1.5)  # the gate polls W every second: give it two looks
    assert consumer.value("processed_height") == 300 - REPEAT_REACH
    assert consumer.value("handover_state") == 1
    stop = asyncio.Event()
    follow = asyncio.create_task(legacy.follow(lambda: devnet.head, 450, stop))
    await consumer.reach(450 - REPEAT_REACH, timeout_s=60)
    await follow
    await asyncio.sleep(1.5)
    assert consumer.value("processed_height") == 450 - REPEAT_REACH
    await consumer.finish()


async def test_when_the_other_writer_goes_quiet_the_service_takes_over_and_goes_on_alone(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet, legacy = await lossy_legacy(devnet_factory, database, Shape.PYTHON, 333)
    consumer = Consumer(
        devnet.url, database, from_height=1, handover_from="core_indexed_blocks",
        handover_quiet_s=1.0,
    )  # fmt: skip
    await consumer.reach(HEIGHTS, timeout_s=60)
    assert consumer.value("handover_state") == 2
    await consumer.finish()
    record = await query(database, "SELECT taken_over_height FROM core_plays.handover")
    assert record == [(333,)]
    copies = legacy_copies(devnet.chain, 333, legacy)
    assert await content(database) == chain_plays(devnet.chain, HEIGHTS, copies)


async def test_a_restart_after_the_takeover_does_not_wait_for_the_other_writer_again(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await real_chain(devnet_factory, height=HEIGHTS)
    await LegacyWriter(devnet.chain, database, Shape.GO).write_through(200)
    settings: dict[str, Any] = {"handover_from": "core_indexed_blocks"}
    await run_consumer(devnet.url, database, from_height=1, to_height=400,
                       handover_quiet_s=0.5, **settings)  # fmt: skip
    consumer = Consumer(devnet.url, database, **settings)  # no quiet time: it would trail
    await consumer.reach(HEIGHTS, timeout_s=60)
    assert consumer.value("handover_state") == 2
    await consumer.finish()


async def test_the_other_writer_writing_again_after_the_takeover_is_counted_and_pages(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await real_chain(devnet_factory, height=HEIGHTS, block_interval_s=0.05)
    legacy = LegacyWriter(devnet.chain, database, Shape.PYTHON)
    await legacy.write_through(HEIGHTS)
    consumer = Consumer(
        devnet.url, database, from_height=1, handover_from="core_indexed_blocks",
        handover_quiet_s=0.5,
    )  # fmt: skip
    await eventually(lambda: consumer.value("handover_state") == 2, timeout_s=60)
    stop = asyncio.Event()
    follow = asyncio.create_task(legacy.follow(lambda: devnet.head, 10**9, stop))
    try:
        await eventually(
            lambda: consumer.value("handover_other_writer_resumed_total") >= 1, timeout_s=30
        )
        assert consumer.value("handover_other_writer_active") == 1
    finally:
        stop.set()
        await follow
        await consumer.finish()
    resumed = await query(database, "SELECT resumed_height FROM core_plays.handover")
    assert resumed[0][0] > HEIGHTS


async def test_the_runtime_role_with_the_printed_grants_runs_the_handover(
    devnet_factory: DevnetFactory, two_roles: TwoRoles
) -> None:
    devnet = await real_chain(devnet_factory, height=HEIGHTS)
    code, _, err = await run_once("migrate", "--database-url", two_roles.owner_url)
    assert code == 0, err
    legacy = LegacyWriter(devnet.chain, two_roles.owner_url, Shape.PYTHON)
    await legacy.write_through(200)
    code, grants, err = await run_once(
        "migrate", "--database-url", two_roles.owner_url, "--print-grants", two_roles.runtime
    )
    assert code == 0, err
    assert "core_indexed_blocks" in grants
    await query(two_roles.owner_url, grants)
    code, _, err = await run_once(
        "run", "--core-url", devnet.url, "--database-url", two_roles.runtime_url,
        "--from-height", "1", "--to-height", "100", "--handover-from", "core_indexed_blocks",
        "--metrics-addr", "127.0.0.1:0",
    )  # fmt: skip
    assert code == 0, err
    adopted = await query(
        two_roles.owner_url, "SELECT count(*) FROM core_plays.tx_ledger WHERE origin = 'adopted'"
    )
    assert adopted[0][0] > 0


async def test_the_guides_fallback_commands_as_written_leave_every_play_once(
    devnet_factory: DevnetFactory, database: str
) -> None:
    """README, Cutover from another indexer, "Fallback: stop at L", through the CLI."""
    devnet, legacy = await lossy_legacy(devnet_factory, database, Shape.PYTHON, 420)
    [(last,)] = await query(
        database, "SELECT max(height) FROM core_indexed_blocks WHERE chain_id = 'devnet-1'"
    )
    at = ("--core-url", devnet.url, "--database-url", database)
    code, out, err = await run_once(
        "verify", *at, "--repair", "--from-height", "1", "--to-height", str(last),
        "--pruned-before", "36500",
    )  # fmt: skip
    assert code == 1, err  # the legacy writer's own doubles remain, reported
    assert f"{len(lost_everywhere(devnet.chain, last, legacy))} missing transactions" in out
    code, _, err = await run_once(
        "run", *at, "--from-height", str(last + 1), "--to-height", str(HEIGHTS),
        "--metrics-addr", "127.0.0.1:0",
    )  # fmt: skip
    assert code == 0, err
    await assert_every_play_once(devnet, database, legacy, last, HEIGHTS)


async def test_without_pruned_before_the_guides_repair_leaves_old_lost_plays_reported(
    devnet_factory: DevnetFactory, database: str
) -> None:
    """take1's plays are from March 2025, past the default 400 days: the guide says so."""
    devnet, legacy = await lossy_legacy(devnet_factory, database, Shape.GO, 100)
    code, out, err = await run_once(
        "verify", "--core-url", devnet.url, "--database-url", database, "--repair",
        "--from-height", "1", "--to-height", "100", "--json",
    )  # fmt: skip
    report = json.loads(out)
    lost = lost_everywhere(devnet.chain, 100, legacy)
    assert report["repaired"]["transactions"] == 0, err
    differences = {kind: n for kind, n in report["differences"].items() if n}
    assert differences == {
        "pruned_or_missing": sum(
            len(rows) for h in range(1, 101) for tx, rows in tx_rows(devnet.chain, h) if tx in lost
        ),
        "repeated_rows": doubled_rows(devnet.chain, 100, legacy_copies(devnet.chain, 100, legacy)),
    }
    assert code == 1  # the legacy writer's doubles; pruning alone would not fail the check


async def test_status_shows_the_handover_and_what_was_adopted(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet, _ = await lossy_legacy(devnet_factory, database, Shape.GO, 333)
    await run_consumer(devnet.url, database, from_height=1, to_height=400,
                       handover_from="core_indexed_blocks", handover_quiet_s=0.5)  # fmt: skip
    code, out, err = await run_once(
        "status", "--core-url", devnet.url, "--database-url", database, "--json"
    )
    assert code in (0, 1), err  # not ok: nothing follows the tip in this test
    report = json.loads(out)
    assert report["handover"] == {
        "from": "core_indexed_blocks",
        "state": "taken over, writing alone",
        "other_writer_height": 333,
        "adopted_through": report["handover"]["adopted_through"],
        "taken_over_at_height": 333,
        "other_writer_resumed_to": None,
    }
    rows = await query(
        database, "SELECT origin, count(*), sum(play_count) FROM core_plays.tx_ledger GROUP BY 1"
    )
    by_origin = {origin: (count, plays) for origin, count, plays in rows}
    ledger = report["ledger"]
    assert (ledger["adopted_transactions"], ledger["adopted_plays"]) == by_origin["adopted"]
    assert ledger["plays_written"] == by_origin["written"][1] > 0
    _, text, _ = await run_once("status", "--core-url", devnet.url, "--database-url", database)
    assert "handover:\n  from: core_indexed_blocks\n  state: taken over, writing alone" in text


async def test_a_writer_whose_plays_are_switched_off_while_its_progress_moves_loses_nothing(
    devnet_factory: DevnetFactory, database: str
) -> None:
    """The Go ETL's plays hook off, the ETL still indexing: W moves, no plays come."""
    devnet = await real_chain(devnet_factory, height=HEIGHTS + REPEAT_REACH)
    legacy = LegacyWriter(devnet.chain, database, Shape.GO,
                          loses=lambda height, position, tx_hash: height > 300)  # fmt: skip
    await legacy.write_through(HEIGHTS + REPEAT_REACH)
    consumer = Consumer(devnet.url, database, from_height=1, handover_from="core_indexed_blocks")
    await finish_beside(devnet, legacy, consumer, HEIGHTS)
    await assert_every_play_once(devnet, database, legacy, HEIGHTS, HEIGHTS)
