"""Where a writing session starts: the rule as a table, no database needed."""

from __future__ import annotations

import pytest

from consumer.errors import ConfigError
from consumer.service.start_rule import is_replay, start_height

# (from_height, checkpoint height, resume_at, replay) -> start (None: needs --from-height)
CASES = [
    ((None, None, None, False), None),  # first run, nothing to start from
    ((1, None, None, False), 1),  # first run of a chain
    ((None, 99, None, False), 100),  # a restart resumes after the checkpoint
    ((100, 99, None, False), 100),  # --from-height right after the checkpoint
    ((50, 99, None, True), 50),  # a replay below the checkpoint
    ((50, 99, 70, True), 70),  # a replay resumes where it itself stopped
    ((None, 120, 101, False), 121),  # an ex-leader resumes from the checkpoint moved by another
    ((1, 120, 101, False), 121),  # the same when the run began with --from-height
    ((None, None, 5, False), 5),  # nothing committed by anyone since: where we stopped
]


@pytest.mark.parametrize(
    ("given", "start"),
    CASES,
    ids=[
        "first-run",
        "new-chain",
        "restart",
        "from-next",
        "replay",
        "replay-resumes",
        "ex-leader",
        "ex-leader-from-height",
        "no-checkpoint-yet",
    ],
)
def test_the_start_height_follows_the_rule(
    given: tuple[int | None, int | None, int | None, bool], start: int | None
) -> None:
    from_height, checkpoint, resume_at, replay = given
    assert (
        start_height(
            stream="live",
            from_height=from_height,
            checkpoint_height=checkpoint,
            resume_at=resume_at,
            replay=replay,
        )
        == start
    )


def test_a_from_height_above_the_checkpoint_is_refused() -> None:
    with pytest.raises(ConfigError, match="--from-height 150 is above"):
        start_height(stream="live", from_height=150, checkpoint_height=99)


@pytest.mark.parametrize(
    ("from_height", "checkpoint", "replay"),
    [(None, 99, False), (1, None, False), (50, 99, True), (99, 99, True), (100, 99, False)],
    ids=["no-flag", "no-checkpoint", "below", "at", "after"],
)
def test_a_replay_is_a_from_height_at_or_below_the_checkpoint(
    from_height: int | None, checkpoint: int | None, replay: bool
) -> None:
    assert is_replay(from_height, checkpoint) is replay
