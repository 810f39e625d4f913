"""What one commit tells the operator: every counter from its summary, and rationed logs."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

import pytest
from prometheus_client import CollectorRegistry

from consumer.metrics import Metrics
from consumer.model import (
    BatchResult,
    Conflict,
    ConflictKind,
    RepairReason,
    Rpc,
    SkipReason,
    Undecodable,
)
from consumer.service.commits import CommitObserver
from consumer.service.progress import RunProgress
from tests.conftest import sample


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def observer(clock: Clock | None = None) -> tuple[CommitObserver, Metrics]:
    metrics = Metrics(CollectorRegistry())
    progress = RunProgress(metrics.head_value, end_height=None)
    return CommitObserver(metrics, progress, clock=clock or Clock()), metrics


def conflict(height: int) -> Conflict:
    return Conflict(
        ConflictKind.MOVED, height, 1, "aa", Rpc.STREAM, height, 0, "aa", Rpc.GET_BLOCKS
    )


def result(height: int = 10, **fields: object) -> BatchResult:
    batch = BatchResult(blocks=10, height=height, block_time=datetime(2026, 1, 1))
    for name, value in fields.items():
        setattr(batch, name, value)
    return batch


def test_the_metrics_take_every_field_of_the_commit_summary() -> None:
    watch, metrics = observer()
    watch.observe(
        result(
            plays_written=7,
            duplicates=2,
            tx_types=Counter({"plays": 3}),
            skipped=Counter({SkipReason.TRACK_ID_NOT_INTEGER: 1}),
            repaired=Counter({RepairReason.TIMESTAMP_MISSING: 4}),
            quarantined=Counter({Undecodable.BLOCK: 1}),
            conflicts=[conflict(10)],
            seconds=0.25,
        )
    )
    assert sample(metrics, "blocks_total") == 10
    assert sample(metrics, "processed_height") == 10
    assert sample(metrics, "plays_written_total") == 7
    assert sample(metrics, "duplicate_transactions_total") == 2
    assert sample(metrics, "transactions_total", type="plays") == 3
    assert sample(metrics, "plays_skipped_total", reason="track_id_not_integer") == 1
    assert sample(metrics, "plays_repaired_total", reason="timestamp_missing") == 4
    assert sample(metrics, "quarantined_total", kind="block") == 1
    assert sample(metrics, "source_conflicts_total", kind="moved") == 1
    assert sample(metrics, "batch_commit_seconds_sum") == 0.25


@pytest.mark.parametrize(
    ("what", "level"),
    [(Undecodable.BLOCK, logging.ERROR), (Undecodable.TRANSACTION, logging.WARNING)],
)
def test_a_quarantined_block_is_logged_as_an_error_and_a_transaction_as_a_warning(
    caplog: pytest.LogCaptureFixture, what: Undecodable, level: int
) -> None:
    watch, _ = observer()
    with caplog.at_level(logging.INFO, logger="consumer"):
        watch.observe(result(quarantined=Counter({what: 1})))
    [record] = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert record.levelno == level
    assert f": 1 {what.value} (see core_plays.quarantine)" in record.getMessage()


def test_conflicts_are_logged_one_by_one_up_to_ten_then_summed_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch, _ = observer()
    with caplog.at_level(logging.INFO, logger="consumer"):
        watch.observe(result(height=20, conflicts=[conflict(h) for h in range(1, 14)]))
    lines = [r.getMessage() for r in caplog.records if "conflict" in r.getMessage()]
    assert len(lines) == 11
    assert lines[-1] == "3 more delivery conflicts up to height 20 (see core_plays.conflicts)"


def test_skips_and_repairs_are_summed_into_at_most_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watch, _ = observer(clock)
    skipped = Counter({SkipReason.TRACK_ID_NOT_INTEGER: 1})
    with caplog.at_level(logging.INFO, logger="consumer"):
        watch.observe(result(height=1, skipped=skipped))
        for height in range(2, 6):
            clock.now += 10
            watch.observe(result(height=height, skipped=skipped))
        clock.now += 20  # 60 s after the first line
        watch.observe(result(height=6, skipped=skipped))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plays up to")]
    assert lines == [
        "plays up to height 1: skipped track_id_not_integer 1",
        "plays up to height 6: skipped track_id_not_integer 5",
    ]
