"""Turn one Core block into the play rows it carries; pure, and total over any bytes.

Anything can arrive on the chain (the node does not validate play contents), and a block
must never wedge the consumer, so nothing here raises: each transaction is parsed on its
own, and one that protobuf refuses is quarantined whole with a short diagnosis
(consumer.decode.wire) instead of costing its block. Everything else that is odd becomes
a counted skip or repair, by the per-play rules of consumer.decode.plays.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import replace
from datetime import datetime
from hashlib import sha256

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from consumer._pb.core.v1 import types_pb2
from consumer.decode.plays import Repairs, Skips, decode_plays, utc
from consumer.decode.wire import find_corruption
from consumer.model import (
    WHOLE_BLOCK,
    Block,
    DecodedBlock,
    DecodedTx,
    PlayRow,
    Quarantined,
    RawTx,
)

__all__ = [
    "LARGE_BLOCK_BYTES",
    "LARGE_BLOCK_PART_BYTES",
    "block_parts",
    "decode_block",
    "decode_steps",
    "plays_positions",
    "wire_bytes",
]

# Plays decoded between two yields of decode_steps (~0.25 ms of work).
_STEP_PLAYS = 64


def decode_block(block: Block, first_index: int = 0) -> DecodedBlock:
    """Decode every transaction of `block`; never raises. `first_index`: as in
    decode_steps."""
    steps = decode_steps(block, first_index)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            decoded: DecodedBlock = done.value
            return decoded


# A block with more transaction bytes than this is decoded a part of
# LARGE_BLOCK_PART_BYTES at a time by the service (the writer, the audit), never
# whole: decoded rows take about six times the wire bytes, so a 100 MB block
# held decoded would take most of a pod's memory (README "Memory"). `verify`
# is the exception: it compares every row at a slot, so it decodes blocks whole.
LARGE_BLOCK_BYTES = 4 * 1024 * 1024
LARGE_BLOCK_PART_BYTES = 1024 * 1024


def wire_bytes(block: Block) -> int:
    """The transaction bytes a block carries: what decoding it whole would multiply."""
    return sum(len(tx.data) for tx in block.txs)


def plays_positions(block: Block) -> list[tuple[int, str]]:
    """(position, hash) of each plays transaction, without decoding a play.

    What the continuous audit compares: about a thirtieth of the CPU of a full
    decode on a busy block (a parse, no rows), so re-reading every streamed block
    costs little; only a transaction found missing is then decoded in full.
    """
    found = []
    parse = types_pb2.SignedTransaction.FromString
    for index, raw in enumerate(block.txs):
        try:
            kind = parse(raw.data).WhichOneof("transaction")
        except DecodeError:
            continue
        if kind == "plays":
            found.append((index, raw.hash or _sha256_hex(raw.data)))
    return found


def block_parts(block: Block, part_bytes: int) -> Iterator[tuple[Block, int]]:
    """A block's transactions in consecutive parts of about `part_bytes` of wire
    data each (at least one transaction a part), with each part's first index.

    A block of a hundred megabytes decodes to about six times as much in rows;
    decoded and written a part at a time (in one database transaction), what is
    held at once is the block's bytes and one part's rows, whatever its size.
    """
    start, size = 0, 0
    txs = block.txs
    for index, raw in enumerate(txs):
        size += len(raw.data)
        if size >= part_bytes or index == len(txs) - 1:
            yield replace(block, txs=txs[start : index + 1]), start
            start, size = index + 1, 0
    if not txs:
        yield block, 0


def decode_steps(block: Block, first_index: int = 0) -> Generator[int, None, DecodedBlock]:
    """`decode_block` in small steps: still pure, still total. `first_index` is
    the position of `block`'s first transaction when it is one of block_parts.

    Yields the number of plays decoded so far after every `_STEP_PLAYS` plays of a
    plays transaction and at its end (other transactions are only parsed, and
    yield nothing), and returns the DecodedBlock. A block of thousands of plays
    takes ~8 ms to decode; a caller on an event loop can let other tasks run
    between steps (the pipeline lets the writer send its next statement) instead
    of leaving PostgreSQL waiting for a whole block.
    """
    block_time = utc(block.time_s, block.time_ns)
    if block.error:
        return _unreadable(block)

    txs: list[DecodedTx] = []
    quarantined: list[Quarantined] = []
    tx_types: dict[str, int] = {}
    skipped: Skips = {}
    repaired: Repairs = {}
    parse = types_pb2.SignedTransaction.FromString
    plays = 0
    for tx_index, raw in enumerate(block.txs, start=first_index):
        tx_hash = raw.hash or _sha256_hex(raw.data)
        try:
            signed = parse(raw.data)
        except DecodeError as exc:
            quarantined.append(_quarantine(tx_index, tx_hash, raw, exc))
            tx_types["undecodable"] = tx_types.get("undecodable", 0) + 1
            continue
        kind: str | None = signed.WhichOneof("transaction")
        if kind is None:
            kind = "unknown" if len(UnknownFieldSet(signed)) else "empty"
        tx_types[kind] = tx_types.get(kind, 0) + 1
        if kind == "plays":
            tx = yield from _plays_tx(signed, tx_index, tx_hash, raw, block_time, plays)
            for reason, count in tx.skip_reasons.items():
                skipped[reason] = skipped.get(reason, 0) + count
            for fix, count in tx.repair_reasons.items():
                repaired[fix] = repaired.get(fix, 0) + count
            txs.append(tx)
            plays += len(tx.plays)

    return DecodedBlock(
        height=block.height,
        hash=block.hash,
        chain_id=block.chain_id,
        time=block_time,
        txs=tuple(txs),
        quarantined=tuple(quarantined),
        tx_types=tx_types,
        skipped=skipped,
        via=block.via,
        repaired=repaired,
    )


def _plays_tx(
    signed: types_pb2.SignedTransaction,
    tx_index: int,
    tx_hash: str,
    raw: RawTx,
    block_time: datetime | None,
    plays_before: int,
) -> Generator[int, None, DecodedTx]:
    """One plays transaction, `_STEP_PLAYS` plays a step; yields the block's plays so far."""
    tx_skips: Skips = {}
    tx_repairs: Repairs = {}
    rows: list[PlayRow] = []
    tx_skipped = 0
    tx_plays = signed.plays.plays
    for start in range(0, len(tx_plays), _STEP_PLAYS):
        part = tx_plays if len(tx_plays) <= _STEP_PLAYS else tx_plays[start : start + _STEP_PLAYS]
        tx_skipped += decode_plays(part, block_time, tx_skips, tx_repairs, rows)
        yield plays_before + len(rows)
    return DecodedTx(tx_index, tx_hash, tuple(rows), tx_skipped, tx_skips, raw.data, tx_repairs)


def _unreadable(block: Block) -> DecodedBlock:
    """A block the source could not read: no transactions, its raw bytes quarantined whole."""
    return DecodedBlock(
        height=block.height,
        hash=block.hash,
        chain_id=block.chain_id,
        time=utc(block.time_s, block.time_ns),
        txs=(),
        quarantined=(
            Quarantined(WHOLE_BLOCK, block.hash or _sha256_hex(block.raw), block.raw, block.error),
        ),
        via=block.via,
    )


def _sha256_hex(data: bytes) -> str:
    return sha256(data).hexdigest().upper()


def _quarantine(tx_index: int, tx_hash: str, raw: RawTx, exc: DecodeError) -> Quarantined:
    walked = find_corruption(raw.data, types_pb2.SignedTransaction.DESCRIPTOR)
    if walked is not None:
        return Quarantined(tx_index, tx_hash, raw.data, walked)
    reason = str(exc).rpartition(": ")[2].lower() or "undecodable"
    return Quarantined(tx_index, tx_hash, raw.data, reason)
