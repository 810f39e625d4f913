"""The whole error tree. Foreign errors are translated once, at the boundary.

`retryable` tells the runner whether waiting and trying again can help; it
retries nothing else, so a bug crashes loudly instead of looping.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ChainMismatch",
    "CheckpointMissing",
    "ConfigError",
    "ConsumerError",
    "LeaseLost",
    "SchemaMismatch",
    "SinkUnavailable",
    "SourceFailed",
    "SourceUnavailable",
]


class ConsumerError(Exception):
    retryable: ClassVar[bool] = False
    exit_code: ClassVar[int] = 1


class SourceUnavailable(ConsumerError):
    """The node is down, not ready, too slow, or the stream ended."""

    retryable = True

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class SourceFailed(ConsumerError):
    """The node refused a request in a way waiting will not fix (a bug or a misconfiguration)."""


class SinkUnavailable(ConsumerError):
    """The database connection failed; the batch was rolled back."""

    retryable = True


class LeaseLost(ConsumerError):
    """The session holding the writer lock is gone: stop writing, compete again."""

    retryable = True


class ConfigError(ConsumerError):
    """Something the operator must fix: a flag, a URL, a password, a privilege."""

    exit_code = 2


class ChainMismatch(ConsumerError):
    """The node is on another chain, or disagrees with the checkpoint's block hash."""

    exit_code = 2


class CheckpointMissing(ConsumerError):
    """No checkpoint for this chain id and no --from-height to start from."""

    exit_code = 2


class SchemaMismatch(ConsumerError):
    """The database's plays table lacks what the service writes."""

    exit_code = 2
