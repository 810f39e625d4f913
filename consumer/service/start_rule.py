"""Where a writing session starts: a pure rule, tested as a table (tests/unit/test_start_rule.py).

The inputs are what the operator asked (--from-height), what the database
says (the checkpoint), and what this process already wrote in an earlier
session (`resume_at`). A replay (--from-height at or below the checkpoint)
resumes where it itself stopped, because the checkpoint does not follow a
replay; any other run resumes from the checkpoint, because while this process
stood by another writer may have moved it on.
"""

from __future__ import annotations

from consumer.errors import ConfigError

__all__ = ["is_replay", "start_height"]


def is_replay(from_height: int | None, checkpoint_height: int | None) -> bool:
    return (
        from_height is not None
        and checkpoint_height is not None
        and (from_height <= checkpoint_height)
    )


def start_height(
    *,
    stream: str,
    from_height: int | None,
    checkpoint_height: int | None,
    resume_at: int | None = None,
    replay: bool = False,
) -> int | None:
    """The first height to write; None when there is nothing to start from."""
    if resume_at is not None:
        if replay or checkpoint_height is None:
            return resume_at
        return checkpoint_height + 1
    if from_height is not None:
        if checkpoint_height is not None and from_height > checkpoint_height + 1:
            raise ConfigError(
                f"--from-height {from_height} is above the '{stream}' checkpoint "
                f"(height {checkpoint_height}): heights {checkpoint_height + 1}.."
                f"{from_height - 1} would never be written. Write them first, or "
                "give a separate range its own --stream"
            )
        return from_height
    if checkpoint_height is not None:
        return checkpoint_height + 1
    return None
