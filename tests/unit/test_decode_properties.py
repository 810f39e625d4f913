"""decode_block under arbitrary input: it never raises, and it accounts for everything."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer._pb.core.v1 import types_pb2
from consumer.decode.blocks import decode_block
from consumer.model import Block, DecodedBlock, PlayRow, RawTx, SkipReason

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EPOCH = datetime(1970, 1, 1)
LAST_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999_999)
LAST_NANOSECOND = 253_402_300_800 * 10**9 - 1  # 9999-12-31T23:59:59.999999999 in Unix ns

PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_block(datas: list[bytes], time: tuple[int, int] = (1_760_000_000, 0)) -> Block:
    return Block(
        height=1,
        hash="B",
        chain_id="test",
        time_s=time[0],
        time_ns=time[1],
        txs=tuple(RawTx("", data) for data in datas),
    )


def plays_tx(plays: list[types_pb2.TrackPlay]) -> bytes:
    return types_pb2.SignedTransaction(plays=types_pb2.TrackPlays(plays=plays)).SerializeToString()


# --- strategies --------------------------------------------------------------------------

# Protobuf strings are UTF-8, so no lone surrogates; NUL and non-ASCII digits are welcome.
texts = st.text(st.characters(codec="utf-8"), max_size=20)
ids = st.one_of(
    st.integers(min_value=INT32_MIN - 10, max_value=INT32_MAX + 10).map(str),
    st.integers().map(str),
    st.text("+-0123456789", max_size=14),
    st.text(" +-_0123456789\u0663\uff13\u00b2\x00", max_size=6),
    texts,
)
timestamps = st.one_of(
    st.none(),
    st.tuples(
        st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
        st.integers(min_value=INT32_MIN, max_value=INT32_MAX),
    ),
    st.tuples(
        st.integers(min_value=-3, max_value=253_402_300_802),
        st.integers(min_value=-(10**9), max_value=2 * 10**9),
    ),
    st.just((0, 0)),
)
strings = st.one_of(texts, st.sampled_from(["\x00", "a\x00b", "\x00\x00"]))


@st.composite
def track_plays(draw: st.DrawFn) -> types_pb2.TrackPlay:
    play = types_pb2.TrackPlay(
        user_id=draw(ids),
        track_id=draw(ids),
        signature=draw(strings),
        city=draw(strings),
        region=draw(strings),
        country=draw(strings),
    )
    timestamp = draw(timestamps)
    if timestamp is not None:
        play.timestamp.seconds, play.timestamp.nanos = timestamp
    return play


play_lists = st.lists(track_plays(), max_size=5)
block_times = st.one_of(st.just((0, 0)), timestamps.filter(lambda t: t is not None))


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A valid transaction with a few bytes changed, cut or inserted: bytes near the schema."""
    data = bytearray(plays_tx(draw(play_lists)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        position = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and position < len(data):
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif action == "cut":
            del data[position:]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


tx_bytes = st.one_of(st.binary(max_size=64), corrupted())


# --- an independent statement of the rules -----------------------------------------------


def atoi_int32(text: str) -> int | None:
    """The rule, said another way: the Atoi syntax, then the int32 range."""
    if not re.fullmatch(r"[+-]?[0-9]+", text, flags=re.ASCII):
        return None
    sign = -1 if text.startswith("-") else 1
    magnitude = 0
    for digit in text.lstrip("+-"):
        magnitude = magnitude * 10 + ord(digit) - ord("0")
        if magnitude > 2**31:
            return None
    value = sign * magnitude
    return value if INT32_MIN <= value <= INT32_MAX else None


def play_time(seconds: int, nanos: int) -> datetime | None:
    """Go's time.Unix(seconds, nanos) as naive UTC, if within 1970..9999."""
    total = seconds * 10**9 + nanos
    if (seconds, nanos) == (0, 0) or not 0 <= total <= LAST_NANOSECOND:
        return None
    return EPOCH + timedelta(microseconds=total // 1000)


def expected_rows(plays: list[types_pb2.TrackPlay], block_time: datetime | None) -> list[PlayRow]:
    rows = []
    for play in plays:
        track_id = atoi_int32(play.track_id)
        created_at = play_time(play.timestamp.seconds, play.timestamp.nanos) or block_time
        if track_id is None or created_at is None:
            continue
        rows.append(
            PlayRow(
                user_id=atoi_int32(play.user_id),
                play_item_id=track_id,
                created_at=created_at,
                signature=play.signature.replace("\x00", ""),
                city=play.city.replace("\x00", ""),
                region=play.region.replace("\x00", ""),
                country=play.country.replace("\x00", ""),
            )
        )
    return rows


def assert_accounts_for_every_tx(block: Block, decoded: DecodedBlock) -> None:
    assert sum(decoded.tx_types.values()) == len(block.txs)
    assert decoded.tx_types.get("undecodable", 0) == len(decoded.quarantined)
    assert decoded.tx_types.get("plays", 0) == len(decoded.txs)
    indexes = [tx.tx_index for tx in decoded.txs] + [q.tx_index for q in decoded.quarantined]
    assert len(set(indexes)) == len(indexes)
    assert all(0 <= index < len(block.txs) for index in indexes)


# --- properties --------------------------------------------------------------------------


@PROPERTIES
@given(datas=st.lists(tx_bytes, max_size=5))
def test_arbitrary_tx_bytes_never_raise_and_every_tx_is_accounted_for(datas: list[bytes]) -> None:
    block = make_block(datas)

    decoded = decode_block(block)

    assert_accounts_for_every_tx(block, decoded)
    for quarantined in decoded.quarantined:
        assert quarantined.data == block.txs[quarantined.tx_index].data
        assert quarantined.error


@PROPERTIES
@given(data=tx_bytes)
def test_quarantine_error_locates_the_problem_in_the_bytes(data: bytes) -> None:
    decoded = decode_block(make_block([data]))

    for quarantined in decoded.quarantined:
        # The parser's own words ("wire format was corrupt") mean the diagnosis found nothing.
        assert "corrupt" not in quarantined.error
        assert "bad utf-8" not in quarantined.error


@PROPERTIES
@given(txs=st.lists(play_lists, min_size=1, max_size=3), time=block_times)
def test_well_formed_plays_never_raise_and_every_play_is_written_or_skipped(
    txs: list[list[types_pb2.TrackPlay]], time: tuple[int, int]
) -> None:
    block = make_block([plays_tx(plays) for plays in txs], time)

    decoded = decode_block(block)

    assert_accounts_for_every_tx(block, decoded)
    assert [len(tx.plays) + tx.skipped for tx in decoded.txs] == [len(p) for p in txs]
    assert sum(decoded.skipped.values()) == sum(tx.skipped for tx in decoded.txs)
    for row in (row for tx in decoded.txs for row in tx.plays):
        assert INT32_MIN <= row.play_item_id <= INT32_MAX
        assert row.user_id is None or INT32_MIN <= row.user_id <= INT32_MAX
        assert EPOCH <= row.created_at <= LAST_INSTANT
        assert row.created_at.tzinfo is None
        assert "\x00" not in row.signature + row.city + row.region + row.country


@PROPERTIES
@given(plays=play_lists, time=block_times)
def test_rows_match_an_independent_statement_of_the_mapping(
    plays: list[types_pb2.TrackPlay], time: tuple[int, int]
) -> None:
    decoded = decode_block(make_block([plays_tx(plays)], time))

    (tx,) = decoded.txs
    assert list(tx.plays) == expected_rows(plays, play_time(*time))
    assert decoded.time == play_time(*time)


@PROPERTIES
@given(plays=play_lists)
def test_a_block_without_a_time_skips_exactly_the_plays_that_needed_it(
    plays: list[types_pb2.TrackPlay],
) -> None:
    decoded = decode_block(make_block([plays_tx(plays)], (0, 0)))

    needed = [
        p
        for p in plays
        if atoi_int32(p.track_id) is not None
        and play_time(p.timestamp.seconds, p.timestamp.nanos) is None
    ]
    assert decoded.skipped.get(SkipReason.NO_TIMESTAMP, 0) == len(needed)
