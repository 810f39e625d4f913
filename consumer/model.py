"""The values that flow source -> decode -> sink.

Everything here is immutable so that a block can sit in a queue, be retried or
be written twice without anyone changing it underneath. `PlayRow` is a
NamedTuple rather than a dataclass because one is built per play on the hot
path: a tuple is several times cheaper to create, and it is exactly the row
shape the sink sends to PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

__all__ = [
    "MAX_GETBLOCKS_HEIGHTS",
    "REPEAT_REACH",
    "WHOLE_BLOCK",
    "BatchResult",
    "Block",
    "Checkpoint",
    "Conflict",
    "ConflictKind",
    "DecodedBlock",
    "DecodedTx",
    "DifferenceKind",
    "LedgerOrigin",
    "PlayRow",
    "QuarantineKind",
    "Quarantined",
    "RawTx",
    "ReconnectTarget",
    "RepairReason",
    "Rpc",
    "SkipReason",
    "Undecodable",
]

# A wire fact: a node refuses a GetBlocks call for more heights than this (config checks
# --poll-window against it, the devnet enforces it).
MAX_GETBLOCKS_HEIGHTS = 500
# How far apart the chain carries the same transaction twice (relay resubmissions,
# byte for byte): within a block or a few blocks on the real chain (take1.pb: at most
# 38 transactions apart). Comparisons look this many heights past their window so
# that a repeat at the window's edge is seen as one.
REPEAT_REACH = 64


class Rpc(StrEnum):
    """The node call that delivered a block. Deliveries can disagree (a node that
    re-sorts GetBlocks, a stream that drops a transaction), so every ledger row
    and every conflict says which call it came from."""

    STREAM = "StreamBlocks"
    GET_BLOCKS = "GetBlocks"
    GET_BLOCK = "GetBlock"
    UNKNOWN = ""


class ConflictKind(StrEnum):
    """How a delivery disagrees with the ledger about a transaction's place; the
    values are core_plays.conflicts.kind and `source_conflicts_total{kind}`."""

    MOVED = "moved"  # a written transaction, at another position of its block
    OTHER_HEIGHT = "other_height"  # a written transaction, again at another height
    POSITION_TAKEN = "position_taken"  # another transaction, at a written one's position


class DifferenceKind(StrEnum):
    """What `verify` and the audit find between the chain and what was written; the
    values are `audit_mismatches_total{kind}` and verify's JSON keys (consumer.trust.compare)."""

    MISSING = "missing"
    EXTRA = "extra"
    PLAY_COUNT = "play_count"
    BLOCK_HASH = "block_hash"
    QUARANTINED = "quarantined"
    MISSING_ROWS = "missing_rows"
    EXTRA_ROWS = "extra_rows"
    PRUNED_OR_MISSING = "pruned_or_missing"
    # Not in the ledger, only some of its rows there: partly written by another writer.
    AMBIGUOUS = "ambiguous"
    # Rows another writer wrote again for a transaction the chain carries twice.
    REPEATED_ROWS = "repeated_rows"


class LedgerOrigin(StrEnum):
    """Who wrote a ledger row's plays (core_plays.tx_ledger.origin)."""

    WRITTEN = "written"  # this service
    ADOPTED = "adopted"  # another writer, recognised by the handover


class SkipReason(StrEnum):
    """Why a play was not written. The values are the `reason` label values."""

    TRACK_ID_NOT_INTEGER = "track_id_not_integer"
    TRACK_ID_OUT_OF_RANGE = "track_id_out_of_range"
    # No usable timestamp on the play and none on its block either.
    NO_TIMESTAMP = "no_timestamp"


class RepairReason(StrEnum):
    """Why a play was written with a substituted value (the listen is kept)."""

    USER_ID_OUT_OF_RANGE = "user_id_out_of_range"
    TIMESTAMP_MISSING = "timestamp_missing"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    NUL_REMOVED = "nul_removed"


@dataclass(frozen=True, slots=True)
class RawTx:
    """One transaction as the node sent it: its hash and its SignedTransaction bytes."""

    hash: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Block:
    """A finalized block whose envelope was read but whose transactions were not.

    `error` is set (and `raw` holds the bytes) when the envelope itself could
    not be parsed; such a block is quarantined whole and the chain moves on.
    The timestamp is kept as the wire's seconds and nanos so that decode alone
    applies the conversion rules.
    """

    height: int
    hash: str
    chain_id: str
    time_s: int
    time_ns: int
    txs: tuple[RawTx, ...]
    raw: bytes = b""
    error: str = ""
    via: Rpc = Rpc.UNKNOWN

    @classmethod
    def unreadable(cls, height: int, raw: bytes, error: str, via: Rpc = Rpc.UNKNOWN) -> Block:
        """A block whose envelope could not be read: quarantined whole, by height."""
        return cls(height, "", "", 0, 0, (), raw=raw, error=error, via=via)


class PlayRow(NamedTuple):
    """One row for `plays`; `slot` is the block height, added by the sink."""

    user_id: int | None
    play_item_id: int
    created_at: datetime
    signature: str
    city: str
    region: str
    country: str


@dataclass(frozen=True, slots=True)
class DecodedTx:
    """A play transaction: the ledger row it becomes and the plays it carries."""

    tx_index: int
    tx_hash: str
    plays: tuple[PlayRow, ...]
    skipped: int
    # The same skips by reason, kept per transaction so that the ledger can
    # total them without a replay counting anything twice.
    skip_reasons: Mapping[SkipReason, int] = field(default_factory=dict)
    # The SignedTransaction bytes as the node sent them (the same object, not a
    # copy): a transaction PostgreSQL refuses is set aside with them.
    data: bytes = b""
    # Plays written with a substituted value, by reason, kept per transaction for
    # the same reason as skip_reasons (`plays-consumer reasons` totals both).
    repair_reasons: Mapping[RepairReason, int] = field(default_factory=dict)


class ReconnectTarget(StrEnum):
    """What the service reconnected to; the values are `reconnects_total{target}`."""

    NODE = "node"
    DATABASE = "database"


class QuarantineKind(StrEnum):
    """Why a transaction is in core_plays.quarantine (its `kind` column)."""

    UNDECODABLE = "undecodable"  # bytes that can never decode: kept for inspection
    REFUSED = "refused"  # decoded, but PostgreSQL refused it: set aside to re-apply


class Undecodable(StrEnum):
    """What could not be decoded; the values are `quarantined_total{kind}`. A
    whole block is an incident (the alert rules page for it); a single
    malformed transaction is data nobody validated."""

    TRANSACTION = "transaction"
    BLOCK = "block"


# The tx_index of a quarantined whole block (core_plays.quarantine.tx_index).
WHOLE_BLOCK = -1


@dataclass(frozen=True, slots=True)
class Quarantined:
    """Bytes that could not be decoded, kept for inspection and replay.

    `tx_index` is WHOLE_BLOCK when the block envelope itself was unreadable.
    """

    tx_index: int
    tx_hash: str
    data: bytes
    error: str


@dataclass(frozen=True, slots=True)
class DecodedBlock:
    """Everything decode learned from one block; all the sink needs to write it."""

    height: int
    hash: str
    chain_id: str
    time: datetime | None
    txs: tuple[DecodedTx, ...]
    quarantined: tuple[Quarantined, ...] = ()
    tx_types: Mapping[str, int] = field(default_factory=dict)
    skipped: Mapping[SkipReason, int] = field(default_factory=dict)
    repaired: Mapping[RepairReason, int] = field(default_factory=dict)
    via: Rpc = Rpc.UNKNOWN

    @property
    def play_count(self) -> int:
        return sum(len(tx.plays) for tx in self.txs)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a (chain, stream) has been written, committed with its rows."""

    chain_id: str
    stream: str
    start_height: int
    height: int
    block_hash: str
    block_time: datetime | None
    updated_at: datetime


class Conflict(NamedTuple):
    """Two deliveries that disagree about a transaction (see core_plays.conflicts)."""

    kind: ConflictKind
    height: int
    tx_index: int
    tx_hash: str
    rpc: str
    other_height: int
    other_index: int
    other_hash: str
    other_rpc: str

    def describe(self) -> str:
        return (
            f"{self.kind}: {self.rpc} delivered tx {self.tx_hash} at height {self.height} "
            f"position {self.tx_index}, where {self.other_rpc or 'an earlier delivery'} had "
            f"tx {self.other_hash} at height {self.other_height} position {self.other_index}"
        )


@dataclass(slots=True)
class BatchResult:
    """What one committed batch did: the one summary of a commit that the
    metrics, the logs, the run's progress and the audit each take whole."""

    blocks: int = 0
    height: int = 0
    block_time: datetime | None = None
    plays_written: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    tx_types: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[Undecodable] = field(default_factory=Counter)
    conflicts: list[Conflict] = field(default_factory=list)  # new ones only
    # Transactions PostgreSQL refused and that were set aside for `quarantine retry`.
    set_aside: int = 0
    # The handover: another writer's transactions recorded as adopted (not written
    # again), their plays, and transactions it wrote only in part (not written).
    adopted: int = 0
    adopted_plays: int = 0
    ambiguous: int = 0

    def merge(self, other: BatchResult) -> None:
        """Fold a later batch's result into this one (used when a batch is split)."""
        self.blocks += other.blocks
        self.height = other.height
        self.block_time = other.block_time
        self.plays_written += other.plays_written
        self.duplicates += other.duplicates
        self.set_aside += other.set_aside
        self.adopted += other.adopted
        self.adopted_plays += other.adopted_plays
        self.ambiguous += other.ambiguous
        for mine, theirs in (
            (self.tx_types, other.tx_types),
            (self.skipped, other.skipped),
            (self.repaired, other.repaired),
        ):
            mine.update(theirs)
        self.quarantined.update(other.quarantined)
        self.conflicts.extend(other.conflicts)
