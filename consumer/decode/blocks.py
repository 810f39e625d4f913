"""Turn one Core block into the play rows it carries; pure, and total over any bytes.

Why it looks the way it does:

- Anything can arrive on the chain (the node does not validate play contents), and a block
  must never wedge the consumer, so nothing here raises: each transaction is parsed on its
  own, and one that protobuf refuses is quarantined whole with a short diagnosis instead of
  costing its block. Everything else that is odd becomes a counted skip or repair.
- Ids follow the reference bridge (Go's ``strconv.Atoi`` then ``int32``) and not Python's
  ``int()``, which would also take spaces, underscores and non-ASCII digits: rows written
  here must match the rows the api would have written.
- Decode sits on the hot path of a catch-up (hundreds of thousands of plays a second), so
  the per-play loop is written flat: hot names bound to locals, the common case (short ASCII
  digit ids, an in-range timestamp) tested first, and the rare cases handed to helpers.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Generator, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from hashlib import sha256
from typing import TypeAlias

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from consumer._pb.core.v1 import types_pb2
from consumer.model import (
    WHOLE_BLOCK,
    Block,
    DecodedBlock,
    DecodedTx,
    PlayRow,
    Quarantined,
    RawTx,
    RepairReason,
    SkipReason,
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

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_NANOS_PER_SECOND = 1_000_000_000
_EPOCH = datetime(1970, 1, 1)
# 9999-12-31T23:59:59 in Unix seconds: with nanos normalised into 0..999,999,999 any
# seconds value up to this one lands at or before 9999-12-31T23:59:59.999999.
_MAX_SECONDS = int((datetime(9999, 12, 31, 23, 59, 59) - _EPOCH).total_seconds())
# Go's strconv.Atoi syntax. fullmatch (not `$`) so that a trailing newline is refused too.
_INT_SYNTAX = re.compile(r"[+-]?[0-9]+")

_TrackPlayList: TypeAlias = RepeatedCompositeFieldContainer[types_pb2.TrackPlay]
# Plays decoded between two yields of decode_steps (~0.25 ms of work).
_STEP_PLAYS = 64
_Counts: TypeAlias = dict[SkipReason, int]
_Repairs: TypeAlias = dict[RepairReason, int]


class _NotInt32(enum.Enum):
    NOT_INTEGER = enum.auto()
    OUT_OF_RANGE = enum.auto()


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
    block_time = _utc(block.time_s, block.time_ns)
    if block.error:
        return DecodedBlock(
            height=block.height,
            hash=block.hash,
            chain_id=block.chain_id,
            time=block_time,
            txs=(),
            quarantined=(
                Quarantined(
                    WHOLE_BLOCK, block.hash or _sha256_hex(block.raw), block.raw, block.error
                ),
            ),
            via=block.via,
        )

    txs: list[DecodedTx] = []
    quarantined: list[Quarantined] = []
    tx_types: dict[str, int] = {}
    skipped: _Counts = {}
    repaired: _Repairs = {}
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
            tx_skips: _Counts = {}
            tx_repairs: _Repairs = {}
            rows: list[PlayRow] = []
            tx_skipped = 0
            tx_plays = signed.plays.plays
            for start in range(0, len(tx_plays), _STEP_PLAYS):
                part = (
                    tx_plays
                    if len(tx_plays) <= _STEP_PLAYS
                    else tx_plays[start : start + _STEP_PLAYS]
                )
                tx_skipped += _decode_plays(part, block_time, tx_skips, tx_repairs, rows)
                yield plays + len(rows)
            for reason, count in tx_skips.items():
                skipped[reason] = skipped.get(reason, 0) + count
            for fix, count in tx_repairs.items():
                repaired[fix] = repaired.get(fix, 0) + count
            txs.append(
                DecodedTx(
                    tx_index, tx_hash, tuple(rows), tx_skipped, tx_skips, raw.data, tx_repairs
                )
            )
            plays += len(rows)

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


def _decode_plays(
    plays: _TrackPlayList | list[types_pb2.TrackPlay],
    block_time: datetime | None,
    skipped: _Counts,
    repaired: _Repairs,
    rows: list[PlayRow],
) -> int:
    """Append the rows of (part of) a plays transaction; return how many were skipped.

    Skips are added to the transaction's counts, repairs to the block's. A play
    skipped for its track id is not also counted as repaired; the track id is
    checked first, then the timestamp.
    """
    # Locals: each global or attribute lookup saved here is saved once per play.
    epoch = _EPOCH
    timedelta_ = timedelta
    max_seconds = _MAX_SECONDS
    nanos_per_second = _NANOS_PER_SECOND
    parse_int32 = _parse_int32
    not_integer = _NotInt32.NOT_INTEGER
    out_of_range = _NotInt32.OUT_OF_RANGE
    # tuple.__new__ is what PlayRow(...) ends in, minus the keyword-argument handling:
    # about half the cost of building a row.
    new_row = tuple.__new__
    play_row = PlayRow
    append = rows.append
    skip_count = 0

    for play in plays:
        track_id = play.track_id
        if track_id.isascii() and track_id.isdigit() and len(track_id) < 10:
            play_item_id = int(track_id)
        else:
            parsed = parse_int32(track_id)
            if not isinstance(parsed, int):
                skip = (
                    SkipReason.TRACK_ID_NOT_INTEGER
                    if parsed is not_integer
                    else SkipReason.TRACK_ID_OUT_OF_RANGE
                )
                skipped[skip] = skipped.get(skip, 0) + 1
                skip_count += 1
                continue
            play_item_id = parsed

        timestamp = play.timestamp  # an absent timestamp reads as (0, 0)
        seconds = timestamp.seconds
        nanos = timestamp.nanos
        if 0 < seconds <= max_seconds and 0 <= nanos < nanos_per_second:
            created_at = epoch + timedelta_(0, seconds, nanos // 1000)
        else:
            own_time = _utc(seconds, nanos)
            if own_time is not None:
                created_at = own_time
            elif block_time is None:
                skip = SkipReason.NO_TIMESTAMP
                skipped[skip] = skipped.get(skip, 0) + 1
                skip_count += 1
                continue
            else:
                created_at = block_time
                repair = (
                    RepairReason.TIMESTAMP_MISSING
                    if seconds == 0 and nanos == 0
                    else RepairReason.TIMESTAMP_OUT_OF_RANGE
                )
                repaired[repair] = repaired.get(repair, 0) + 1

        raw_user_id = play.user_id
        user_id: int | None
        if raw_user_id.isascii() and raw_user_id.isdigit() and len(raw_user_id) < 10:
            user_id = int(raw_user_id)
        else:
            parsed = parse_int32(raw_user_id)
            if isinstance(parsed, int):
                user_id = parsed
            else:
                # Not an integer is an anonymous listen: normal, not counted.
                user_id = None
                if parsed is out_of_range:
                    repair = RepairReason.USER_ID_OUT_OF_RANGE
                    repaired[repair] = repaired.get(repair, 0) + 1

        signature = play.signature
        city = play.city
        region = play.region
        country = play.country
        if "\0" in signature or "\0" in city or "\0" in region or "\0" in country:
            signature = signature.replace("\0", "")
            city = city.replace("\0", "")
            region = region.replace("\0", "")
            country = country.replace("\0", "")
            repair = RepairReason.NUL_REMOVED
            repaired[repair] = repaired.get(repair, 0) + 1

        append(
            new_row(play_row, (user_id, play_item_id, created_at, signature, city, region, country))
        )
    return skip_count


def _parse_int32(text: str) -> int | _NotInt32:
    """`text` as Go's strconv.Atoi reads it, if the result fits in an int32."""
    if _INT_SYNTAX.fullmatch(text) is None:
        return _NotInt32.NOT_INTEGER
    negative = text[0] == "-"
    # Leading zeros are allowed and can be any number of them: drop them before the length
    # check, so that int() only ever sees a short string (it refuses over 4,300 digits).
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 10:
        return _NotInt32.OUT_OF_RANGE
    value = int(digits) if digits else 0
    if negative:
        value = -value
    if value < _INT32_MIN or value > _INT32_MAX:
        return _NotInt32.OUT_OF_RANGE
    return value


def _utc(seconds: int, nanos: int) -> datetime | None:
    """A protobuf/Go (seconds, nanos) as naive UTC; None if all zero or outside 1970..9999.

    Nanos outside 0..999,999,999 carry into the seconds as Go's time.Unix does (floor
    division, so negative nanos borrow); the sub-microsecond part is truncated.
    """
    if seconds == 0 and nanos == 0:
        return None
    if not 0 <= nanos < _NANOS_PER_SECOND:
        seconds += nanos // _NANOS_PER_SECOND
        nanos %= _NANOS_PER_SECOND
    if seconds < 0 or seconds > _MAX_SECONDS:
        return None
    return _EPOCH + timedelta(0, seconds, nanos // 1000)


def _sha256_hex(data: bytes) -> str:
    return sha256(data).hexdigest().upper()


def _quarantine(tx_index: int, tx_hash: str, raw: RawTx, exc: DecodeError) -> Quarantined:
    # upb says only "Wire format was corrupt" or "String field had bad UTF-8"; walking the
    # bytes again (on this rare path only) says where, which is what a reader of the
    # quarantine table needs.
    walked = _find_corruption(raw.data, 0, len(raw.data), types_pb2.SignedTransaction.DESCRIPTOR)
    if isinstance(walked, str):
        return Quarantined(tx_index, tx_hash, raw.data, walked)
    reason = str(exc).rpartition(": ")[2].lower() or "undecodable"
    return Quarantined(tx_index, tx_hash, raw.data, reason)


# --- Diagnosis of bytes that protobuf refused -------------------------------------------
# A small protobuf wire-format walker that follows the schema (so that it knows which
# length-delimited fields are strings that must be UTF-8 and which are messages to descend
# into) and reports the first problem it finds. It is only a diagnosis: when it finds
# nothing, the parser's own words are used. Fuzzed against upb, the two agree on which
# inputs are broken, including its limits (32-bit tags, 10-byte varints, nesting depth).

_MAX_DEPTH = 100  # upb's default recursion limit
_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_BYTES = 2
_WIRE_GROUP_START = 3
_WIRE_GROUP_END = 4
_WIRE_FIXED32 = 5


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """(value, position after it), or None if truncated or longer than 10 bytes."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    return None


def _find_corruption(
    data: bytes,
    pos: int,
    end: int,
    message: Descriptor | None,
    *,
    path: str = "",
    group: int = 0,
    depth: int = 0,
) -> str | int:
    """The first problem in data[pos:end] read as `message` (None: all fields unknown).

    Without a problem, the position where the walk ended: `end`, or just after the end tag
    of `group` when reading the contents of a group.
    """
    if depth > _MAX_DEPTH:
        return f"nesting deeper than {_MAX_DEPTH} at byte {pos}"
    fields = message.fields_by_number if message is not None else {}
    seen: dict[int, int] = {}
    while pos < end:
        start = pos
        key = _read_varint(data, pos, end)
        if key is None or key[1] - start > 5:  # a tag is a 32-bit varint
            return f"truncated or overlong tag at byte {start}"
        tag, pos = key
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or number >= 2**29:
            return f"invalid field number {number} at byte {start}"
        field = fields.get(number)
        name = _field_path(path, field, number, seen)
        if wire_type == _WIRE_VARINT:
            value = _read_varint(data, pos, end)
            if value is None:
                return f"truncated or overlong varint in {name} at byte {start}"
            pos = value[1]
        elif wire_type in (_WIRE_FIXED64, _WIRE_FIXED32):
            pos += 8 if wire_type == _WIRE_FIXED64 else 4
            if pos > end:
                return f"truncated {name} at byte {start}"
        elif wire_type == _WIRE_BYTES:
            length = _read_varint(data, pos, end)
            if length is None:
                return f"truncated or overlong length of {name} at byte {start}"
            size, pos = length
            if size > end - pos:
                return f"truncated {name} at byte {start}: needs {size} bytes, {end - pos} left"
            problem = _check_field(data, pos, pos + size, field, name=name, depth=depth)
            if problem is not None:
                return problem
            pos += size
        elif wire_type == _WIRE_GROUP_START:
            walked = _find_corruption(
                data, pos, end, None, path=name, group=number, depth=depth + 1
            )
            if isinstance(walked, str):
                return walked
            pos = walked
        elif wire_type == _WIRE_GROUP_END:
            if number == group:
                return pos
            return f"unmatched end-group tag for {name} at byte {start}"
        else:
            return f"invalid wire type {wire_type} in {name} at byte {start}"
    if group:
        return f"unterminated group {path}"
    return pos


def _field_path(path: str, field: FieldDescriptor | None, number: int, seen: dict[int, int]) -> str:
    if field is None:
        return f"{path}.{number}" if path else f"field {number}"
    name = f"{path}.{field.name}" if path else field.name
    if field.is_repeated:
        index = seen.get(number, 0)
        seen[number] = index + 1
        name = f"{name}[{index}]"
    return name


def _check_field(
    data: bytes, pos: int, end: int, field: FieldDescriptor | None, *, name: str, depth: int
) -> str | None:
    """The first problem in the payload of a length-delimited field."""
    if field is None:
        return None  # unknown: opaque bytes
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            data[pos:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"invalid UTF-8 in {name} at byte {pos + exc.start}"
        return None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        walked = _find_corruption(data, pos, end, field.message_type, path=name, depth=depth + 1)
        return walked if isinstance(walked, str) else None
    return None
