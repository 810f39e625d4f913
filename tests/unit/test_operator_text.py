"""What operators read is words and numbers, never a Python repr (issue 19, point 11).

Each test renders one line or report the way the service or a command prints it,
and holds it to the shape an operator expects: counts with the right plural, no
`None`, no `{...}`, no dataclass reprs, no sentinel heights.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.backoff import Waiting
from consumer.config import BatchSettings, Settings, SinkSettings
from consumer.logs import counted
from consumer.metrics import Metrics
from consumer.model import BatchResult, Undecodable
from consumer.ops.admin import format_reasons
from consumer.ops.status import format_status
from consumer.service.commits import CommitObserver
from consumer.service.progress import RunProgress
from consumer.service.serve import _effective

REPRS = ("None", "{", "}", "Settings(", "'", "4611686018427387904")


@pytest.mark.parametrize(
    ("n", "expected"), [(0, "0 plays"), (1, "1 play"), (2, "2 plays")], ids=["0", "1", "2"]
)
def test_a_count_takes_the_singular_only_for_one(n: int, expected: str) -> None:
    assert counted(n, "play") == expected


def test_the_start_up_line_names_settings_as_values_not_dataclass_reprs() -> None:
    settings = Settings(
        sink=SinkSettings(database_url="postgresql://consumer@db/plays", password="s3cret"),
        batch=BatchSettings(max_blocks=100, max_plays=500),
    )
    line = _effective(settings)
    assert "database=[user=consumer dbname=plays host=db] stream=live" in line
    assert "batch=100 blocks/500 plays" in line
    assert "s3cret" not in line
    assert not any(r in line for r in REPRS)


def _status_report(client: str | None) -> dict[str, Any]:
    return {
        "ok": True,
        "problems": [],
        "core_url": "127.0.0.1:50051",
        "checkpoint": {"height": 40, "block_hash": "ab", "block_time": datetime(2026, 1, 1)},
        "leader": {"pid": 4242, "application": "core-plays-consumer", "client": client},
        "ledger": {
            "plays_written": 7,
            "plays_skipped_by_reason": {"no_timestamp": 1, "track_id_not_integer": 2},
            "quarantined": 0,
        },
    }


def test_status_names_the_leader_as_a_postgresql_backend_pid_and_an_unknown_client() -> None:
    """As the runtime role, PostgreSQL hides other roles' client addresses."""
    text = format_status(_status_report(client=None))
    assert "leader: PostgreSQL backend pid 4242 (core-plays-consumer, client unknown)" in text
    assert "None" not in text


def test_status_prints_skips_by_reason_as_a_list_not_a_dict() -> None:
    text = format_status(_status_report(client="10.0.0.7"))
    assert "  plays_skipped_by_reason: no_timestamp 1, track_id_not_integer 2" in text
    assert not any(r in text for r in ("{", "}"))


def test_status_without_a_leader_or_checkpoint_says_none() -> None:
    report = {"ok": False, "problems": ["no checkpoint"], "checkpoint": None, "leader": None}
    text = format_status(report)
    assert "checkpoint: none" in text and "leader: none" in text


def _reasons(to_height: int | None, written: int) -> dict[str, Any]:
    return {
        "chain_id": "devnet-1",
        "from_height": 1,
        "to_height": to_height,
        "plays_written": written,
        "skipped": {},
        "repaired": {},
        "quarantined": {},
    }


def test_reasons_without_a_range_says_every_height_not_a_sentinel() -> None:
    first = format_reasons(_reasons(None, 41)).splitlines()[0]
    assert first == "chain devnet-1 every height from 1: 41 plays written"


def test_reasons_over_a_range_counts_one_play_in_the_singular() -> None:
    first = format_reasons(_reasons(9, 1)).splitlines()[0]
    assert first == "chain devnet-1 heights 1..9: 1 play written"


def test_a_quarantine_line_counts_what_it_set_aside_in_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(CollectorRegistry())
    watch = CommitObserver(metrics, RunProgress(metrics.head_value, end_height=None))
    batch = BatchResult(blocks=1, height=10, block_time=datetime(2026, 1, 1))
    batch.quarantined = Counter({Undecodable.TRANSACTION: 2, Undecodable.BLOCK: 1})
    caplog.set_level(logging.WARNING)
    watch.observe(batch)
    [record] = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert "blocks up to 10: 1 block, 2 transactions (" in record.getMessage()


def test_the_run_summary_counts_a_single_block_and_play_in_the_singular() -> None:
    metrics = Metrics(CollectorRegistry())
    progress = RunProgress(metrics.head_value, end_height=None)
    batch = BatchResult(blocks=1, height=5, block_time=datetime(2026, 1, 1))
    batch.plays_written, batch.tx_types = 1, Counter({"plays": 1})
    progress.observe(batch)
    line = progress.summary.line()
    assert "(1 block)" in line and "1 transaction," in line and "1 play written" in line


def test_a_wait_that_ends_in_giving_up_says_so_not_no_longer_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    waiting = Waiting()
    caplog.set_level(logging.INFO, logger="consumer.backoff")
    waiting.begin("PostgreSQL to accept the batch: trigger raised")
    waiting.end(gave_up="after 300 s, set aside 1 transaction it still refuses")
    last = caplog.records[-1]
    assert last.levelno == logging.WARNING
    assert last.getMessage().startswith("gave up waiting for PostgreSQL to accept the batch")
    assert "no longer waiting" not in last.getMessage()
    assert waiting.what is None


def test_a_wait_that_ends_because_it_went_through_says_no_longer_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    waiting = Waiting()
    caplog.set_level(logging.INFO, logger="consumer.backoff")
    waiting.begin("the database: connection refused")
    waiting.end()
    assert caplog.records[-1].getMessage() == (
        "no longer waiting for the database: connection refused"
    )
