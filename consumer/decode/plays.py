"""The rows of a plays transaction: the per-play rules for ids, timestamps and NUL bytes.

Ids follow the reference bridge (Go's ``strconv.Atoi`` then ``int32``) and not Python's
``int()``, which would also take spaces, underscores and non-ASCII digits: rows written
here must match the rows the api would have written. This loop sits on the hot path of
a catch-up (hundreds of thousands of plays a second), so it is written flat: hot names
bound to locals, the common case (short ASCII digit ids, an in-range timestamp) tested
first, and the rare cases handed to the helpers below it.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime, timedelta
from typing import TypeAlias

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from consumer._pb.core.v1 import types_pb2
from consumer.model import PlayRow, RepairReason, SkipReason

__all__ = ["Repairs", "Skips", "TrackPlays", "decode_plays", "utc"]

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_NANOS_PER_SECOND = 1_000_000_000
_EPOCH = datetime(1970, 1, 1)
# 9999-12-31T23:59:59 in Unix seconds: with nanos normalised into 0..999,999,999 any
# seconds value up to this one lands at or before 9999-12-31T23:59:59.999999.
_MAX_SECONDS = int((datetime(9999, 12, 31, 23, 59, 59) - _EPOCH).total_seconds())
# Go's strconv.Atoi syntax. fullmatch (not `$`) so that a trailing newline is refused too.
_INT_SYNTAX = re.compile(r"[+-]?[0-9]+")

TrackPlays: TypeAlias = (
    RepeatedCompositeFieldContainer[types_pb2.TrackPlay] | list[types_pb2.TrackPlay]
)
Skips: TypeAlias = dict[SkipReason, int]
Repairs: TypeAlias = dict[RepairReason, int]


class _NotInt32(enum.Enum):
    NOT_INTEGER = enum.auto()
    OUT_OF_RANGE = enum.auto()


def decode_plays(
    plays: TrackPlays,
    block_time: datetime | None,
    skipped: Skips,
    repaired: Repairs,
    rows: list[PlayRow],
) -> int:
    """Append the rows of (part of) a plays transaction; return how many were skipped.

    A play skipped for its track id is not also counted as repaired: the track id is
    checked first, then the timestamp."""
    # Locals: each global or attribute lookup saved here is saved once per play.
    epoch, timedelta_, max_seconds = _EPOCH, timedelta, _MAX_SECONDS
    nanos_per_second = _NANOS_PER_SECOND
    odd_track_id, odd_time, odd_user_id = _odd_track_id, _odd_time, _odd_user_id
    # tuple.__new__ is what PlayRow(...) ends in, minus the keyword-argument handling:
    # about half the cost of building a row.
    new_row, play_row, append = tuple.__new__, PlayRow, rows.append
    skip_count = 0

    for play in plays:
        track_id = play.track_id
        if track_id.isascii() and track_id.isdigit() and len(track_id) < 10:
            play_item_id: int | None = int(track_id)
        else:
            play_item_id = odd_track_id(track_id, skipped)
            if play_item_id is None:
                skip_count += 1
                continue

        timestamp = play.timestamp  # an absent timestamp reads as (0, 0)
        seconds = timestamp.seconds
        nanos = timestamp.nanos
        if 0 < seconds <= max_seconds and 0 <= nanos < nanos_per_second:
            created_at: datetime | None = epoch + timedelta_(0, seconds, nanos // 1000)
        else:
            created_at = odd_time(seconds, nanos, block_time, skipped, repaired)
            if created_at is None:
                skip_count += 1
                continue

        raw_user_id = play.user_id
        if raw_user_id.isascii() and raw_user_id.isdigit() and len(raw_user_id) < 10:
            user_id: int | None = int(raw_user_id)
        else:
            user_id = odd_user_id(raw_user_id, repaired)

        signature = play.signature
        city = play.city
        region = play.region
        country = play.country
        if "\0" in signature or "\0" in city or "\0" in region or "\0" in country:
            signature, city, region, country = _without_nul(
                (signature, city, region, country), repaired
            )

        append(
            new_row(play_row, (user_id, play_item_id, created_at, signature, city, region, country))
        )
    return skip_count


def _odd_track_id(track_id: str, skipped: Skips) -> int | None:
    """A track id off the common path: its value, or None (counted) if the play is skipped."""
    parsed = _parse_int32(track_id)
    if isinstance(parsed, int):
        return parsed
    skip = (
        SkipReason.TRACK_ID_NOT_INTEGER
        if parsed is _NotInt32.NOT_INTEGER
        else SkipReason.TRACK_ID_OUT_OF_RANGE
    )
    skipped[skip] = skipped.get(skip, 0) + 1
    return None


def _odd_time(
    seconds: int, nanos: int, block_time: datetime | None, skipped: Skips, repaired: Repairs
) -> datetime | None:
    """A timestamp off the common path: its own time, else the block's (a repair), else
    None (a skip, counted)."""
    own_time = utc(seconds, nanos)
    if own_time is not None:
        return own_time
    if block_time is None:
        skip = SkipReason.NO_TIMESTAMP
        skipped[skip] = skipped.get(skip, 0) + 1
        return None
    repair = (
        RepairReason.TIMESTAMP_MISSING
        if seconds == 0 and nanos == 0
        else RepairReason.TIMESTAMP_OUT_OF_RANGE
    )
    repaired[repair] = repaired.get(repair, 0) + 1
    return block_time


def _odd_user_id(raw_user_id: str, repaired: Repairs) -> int | None:
    """A user id off the common path; not an integer is an anonymous listen (None), not counted."""
    parsed = _parse_int32(raw_user_id)
    if isinstance(parsed, int):
        return parsed
    if parsed is _NotInt32.OUT_OF_RANGE:
        repair = RepairReason.USER_ID_OUT_OF_RANGE
        repaired[repair] = repaired.get(repair, 0) + 1
    return None


def _without_nul(texts: tuple[str, str, str, str], repaired: Repairs) -> tuple[str, str, str, str]:
    """PostgreSQL text cannot hold NUL: removed from every text field, counted once a play."""
    signature, city, region, country = texts
    repair = RepairReason.NUL_REMOVED
    repaired[repair] = repaired.get(repair, 0) + 1
    return (
        signature.replace("\0", ""),
        city.replace("\0", ""),
        region.replace("\0", ""),
        country.replace("\0", ""),
    )


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


def utc(seconds: int, nanos: int) -> datetime | None:
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
