"""The whole error tree. Foreign errors are translated once, at the boundary.

The runner waits out exactly two of these (`SourceUnavailable`,
`SinkUnavailable`) and retries `SinkRefused` for a bounded time; anything else
stops the process with one line and `exit_code`, so a bug crashes loudly
instead of looping. Which database error becomes which is `consumer.sink.database`'s
job (by SQLSTATE).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ChainMismatch",
    "CheckpointMissing",
    "ConfigError",
    "ConsumerError",
    "SchemaMismatch",
    "SinkRefused",
    "SinkUnavailable",
    "SourceFailed",
    "SourceUnavailable",
    "Stopped",
]


class ConsumerError(Exception):
    exit_code: ClassVar[int] = 1


class SourceUnavailable(ConsumerError):
    """The node is down, not ready, too slow, or the stream ended."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class SourceFailed(ConsumerError):
    """The node refused a request in a way waiting will not fix (a bug or a misconfiguration)."""


class SinkUnavailable(ConsumerError):
    """The database cannot take the batch now (gone, read-only, short of resources,
    cancelling us); the batch was rolled back and the session is started again."""


class SinkRefused(ConsumerError):
    """PostgreSQL refused the batch's rows (bad value, someone's trigger raising);
    rolled back. Retried for --refused-retry-s, then the refused transactions are
    set aside in the quarantine."""


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


class Stopped(Exception):
    """Stop was requested while waiting: unwind without writing. Not a ConsumerError:
    it is how a clean shutdown leaves a wait, never an error to report."""
