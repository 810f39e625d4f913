"""`plays-consumer reasons`: skips, repairs and quarantines over a height range, from the ledger."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from consumer.metrics import Metrics
from consumer.model import RepairReason, SkipReason
from tests.conftest import DevnetFactory, run_consumer
from tests.procs import flags, run_once


def counted(
    metrics: Metrics, name: str, reasons: type[SkipReason] | type[RepairReason]
) -> dict[str, int]:
    found = {}
    for reason in reasons:
        value = metrics.registry.get_sample_value(f"core_plays_{name}", {"reason": reason.value})
        if value:
            found[reason.value] = int(value)
    return found


async def reasons(devnet_url: str, database: str, low: int, high: int) -> dict[str, object]:
    code, out, err = await run_once(
        "reasons", *flags(database_url=database, from_height=low, to_height=high), "--json"
    )
    assert code == 0, err
    report: dict[str, object] = json.loads(out)
    return report


async def test_a_range_reports_what_its_run_skipped_and_repaired_by_reason(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=300)
    await run_consumer(devnet.url, database, from_height=1, to_height=120)
    second = Metrics(CollectorRegistry())
    await run_consumer(devnet.url, database, second, to_height=300)
    report = await reasons(devnet.url, database, 121, 300)
    assert report["skipped"] == counted(second, "plays_skipped_total", SkipReason)
    assert report["repaired"] == counted(second, "plays_repaired_total", RepairReason)
    assert report["skipped"] and report["repaired"]  # the typical chain has both
    assert report["plays_written"] == second.registry.get_sample_value(
        "core_plays_plays_written_total"
    )


async def test_a_replay_counts_nothing_twice(devnet_factory: DevnetFactory, database: str) -> None:
    devnet = await devnet_factory(height=200)
    await run_consumer(devnet.url, database, from_height=1, to_height=200)
    before = await reasons(devnet.url, database, 1, 200)
    await run_consumer(devnet.url, database, from_height=1, to_height=200)
    assert await reasons(devnet.url, database, 1, 200) == before


async def test_undecodable_transactions_are_listed_by_kind(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=200)
    metrics = Metrics(CollectorRegistry())
    await run_consumer(devnet.url, database, metrics, from_height=1, to_height=200)
    report = await reasons(devnet.url, database, 1, 200)
    quarantined = metrics.registry.get_sample_value(
        "core_plays_quarantined_total", {"kind": "transaction"}
    )
    assert quarantined
    assert report["quarantined"] == {"undecodable transaction": quarantined}
