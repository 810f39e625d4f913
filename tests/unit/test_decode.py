"""decode_block: the field mapping of DESIGN.md section 3, one behaviour per test."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import datetime
from hashlib import sha256

import pytest

from consumer._pb.core.v1 import types_pb2
from consumer.decode.blocks import block_parts, decode_block, decode_steps, plays_positions
from consumer.devnet import ChainSpec, DevChain, Profile
from consumer.model import (
    Block,
    DecodedBlock,
    DecodedTx,
    PlayRow,
    Quarantined,
    RawTx,
    RepairReason,
    SkipReason,
)
from consumer.source.core import parse_block

EPOCH = datetime(1970, 1, 1)
BLOCK_TIME = datetime(2025, 10, 9, 8, 53, 20)
BLOCK_TIME_S = 1_760_000_000
PLAY_TIME = datetime(2025, 10, 9, 8, 50, 0, 123456)
PLAY_TIME_S = 1_759_999_800
PLAY_TIME_NS = 123_456_789
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59
NON_PLAY_TYPES = [
    field.name
    for field in types_pb2.SignedTransaction.DESCRIPTOR.oneofs_by_name["transaction"].fields
    if field.name != "plays"
]


# --- building blocks ---------------------------------------------------------------------


def make_play(
    *,
    user_id: str = "7",
    track_id: str = "42",
    timestamp: tuple[int, int] | None = (PLAY_TIME_S, PLAY_TIME_NS),
    signature: str = "sig",
    city: str = "Berlin",
    region: str = "BE",
    country: str = "DE",
) -> types_pb2.TrackPlay:
    play = types_pb2.TrackPlay(
        user_id=user_id,
        track_id=track_id,
        signature=signature,
        city=city,
        region=region,
        country=country,
    )
    if timestamp is not None:
        play.timestamp.seconds, play.timestamp.nanos = timestamp
    return play


def plays_tx(*plays: types_pb2.TrackPlay) -> bytes:
    signed = types_pb2.SignedTransaction(plays=types_pb2.TrackPlays(plays=plays))
    return signed.SerializeToString()


def make_block(
    *datas: bytes,
    time: tuple[int, int] = (BLOCK_TIME_S, 0),
    hashes: tuple[str, ...] | None = None,
) -> Block:
    tx_hashes = hashes if hashes is not None else tuple(f"HASH{i}" for i in range(len(datas)))
    return Block(
        height=1234,
        hash="BLOCKHASH",
        chain_id="audius-mainnet-beta",
        time_s=time[0],
        time_ns=time[1],
        txs=tuple(RawTx(h, d) for h, d in zip(tx_hashes, datas, strict=True)),
    )


def decode_play(
    play: types_pb2.TrackPlay, *, block_time: tuple[int, int] = (BLOCK_TIME_S, 0)
) -> DecodedBlock:
    return decode_block(make_block(plays_tx(play), time=block_time))


def only_row(decoded: DecodedBlock) -> PlayRow:
    (tx,) = decoded.txs
    (row,) = tx.plays
    return row


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def sha256_upper(data: bytes) -> str:
    return sha256(data).hexdigest().upper()


# --- ids ---------------------------------------------------------------------------------

VALID_IDS = [
    ("42", 42),
    ("0", 0),
    ("+5", 5),
    ("-7", -7),
    ("-0", 0),
    ("+0", 0),
    ("007", 7),
    ("2147483647", 2147483647),
    ("-2147483648", -2147483648),
    ("+2147483647", 2147483647),
    ("0000000000000000002147483647", 2147483647),
    ("-0000000000000000002147483648", -2147483648),
    ("999999999", 999999999),
    ("1000000000", 1000000000),
]
VALID_ID_NAMES = [
    "plain",
    "zero",
    "leading-plus",
    "negative",
    "minus-zero",
    "plus-zero",
    "leading-zeros",
    "int32-max",
    "int32-min",
    "int32-max-with-plus",
    "int32-max-with-many-leading-zeros",
    "int32-min-with-many-leading-zeros",
    "nine-digits",
    "ten-digits",
]

NOT_INTEGER_IDS = [
    ("", "empty"),
    ("+", "only-plus"),
    ("-", "only-minus"),
    ("+-1", "plus-minus"),
    ("-+1", "minus-plus"),
    ("--1", "double-minus"),
    ("++1", "double-plus"),
    (" 1", "leading-space"),
    ("1 ", "trailing-space"),
    ("1 2", "inner-space"),
    ("\t1", "leading-tab"),
    ("1\n", "trailing-newline"),
    ("1_000", "underscore"),
    ("\u0663", "arabic-indic-digit"),
    ("1\u0663", "ascii-then-arabic-indic-digit"),
    ("\uff13", "fullwidth-digit"),
    ("\u00b2", "superscript-two"),
    ("1\x00", "trailing-nul"),
    ("\x001", "leading-nul"),
    ("1.0", "decimal-point"),
    ("1e3", "exponent"),
    ("0x10", "hex"),
    ("abc", "letters"),
    ("anon:9f2c", "anonymous-listener-tag"),
]

OUT_OF_RANGE_IDS = [
    ("2147483648", "int32-max-plus-one"),
    ("-2147483649", "int32-min-minus-one"),
    ("+2147483648", "int32-max-plus-one-with-plus"),
    ("4294967296", "two-to-the-32"),
    ("99999999999", "eleven-digits"),
    ("9" * 30, "thirty-digits"),
    ("1" * 100_000, "hundred-thousand-digits"),
    ("-" + "9" * 5_000, "negative-five-thousand-digits"),
    ("0" * 5_000 + "2147483648", "int32-max-plus-one-after-five-thousand-zeros"),
]


@pytest.mark.parametrize(("track_id", "expected"), VALID_IDS, ids=VALID_ID_NAMES)
def test_track_id_in_go_atoi_syntax_and_int32_becomes_play_item_id(
    track_id: str, expected: int
) -> None:
    assert only_row(decode_play(make_play(track_id=track_id))).play_item_id == expected


def test_zero_padded_track_id_within_int32_is_accepted() -> None:
    decoded = decode_play(make_play(track_id="0" * 5_000 + "42"))

    assert only_row(decoded).play_item_id == 42


@pytest.mark.parametrize(
    "track_id", [i for i, _ in NOT_INTEGER_IDS], ids=[n for _, n in NOT_INTEGER_IDS]
)
def test_track_id_that_is_not_an_integer_skips_the_play(track_id: str) -> None:
    decoded = decode_play(make_play(track_id=track_id))

    assert [(tx.tx_index, tx.tx_hash, tx.plays, tx.skipped) for tx in decoded.txs] == [
        (0, "HASH0", (), 1)
    ]
    assert decoded.txs[0].skip_reasons == decoded.skipped
    assert decoded.skipped == {SkipReason.TRACK_ID_NOT_INTEGER: 1}


@pytest.mark.parametrize(
    "track_id", [i for i, _ in OUT_OF_RANGE_IDS], ids=[n for _, n in OUT_OF_RANGE_IDS]
)
def test_track_id_outside_int32_skips_the_play(track_id: str) -> None:
    decoded = decode_play(make_play(track_id=track_id))

    assert [(tx.tx_index, tx.tx_hash, tx.plays, tx.skipped) for tx in decoded.txs] == [
        (0, "HASH0", (), 1)
    ]
    assert decoded.txs[0].skip_reasons == decoded.skipped
    assert decoded.skipped == {SkipReason.TRACK_ID_OUT_OF_RANGE: 1}


@pytest.mark.parametrize(("user_id", "expected"), VALID_IDS, ids=VALID_ID_NAMES)
def test_user_id_in_go_atoi_syntax_and_int32_becomes_user_id(user_id: str, expected: int) -> None:
    decoded = decode_play(make_play(user_id=user_id))

    assert only_row(decoded).user_id == expected
    assert decoded.repaired == {}


@pytest.mark.parametrize(
    "user_id", [i for i, _ in NOT_INTEGER_IDS], ids=[n for _, n in NOT_INTEGER_IDS]
)
def test_user_id_that_is_not_an_integer_is_an_anonymous_listen_and_not_counted(
    user_id: str,
) -> None:
    decoded = decode_play(make_play(user_id=user_id))

    assert only_row(decoded).user_id is None
    assert decoded.skipped == {}
    assert decoded.repaired == {}


@pytest.mark.parametrize(
    "user_id", [i for i, _ in OUT_OF_RANGE_IDS], ids=[n for _, n in OUT_OF_RANGE_IDS]
)
def test_user_id_outside_int32_is_written_as_null_and_counted(user_id: str) -> None:
    decoded = decode_play(make_play(user_id=user_id))

    assert only_row(decoded).user_id is None
    assert decoded.repaired == {RepairReason.USER_ID_OUT_OF_RANGE: 1}


# --- timestamps --------------------------------------------------------------------------

VALID_TIMESTAMPS = [
    ((PLAY_TIME_S, PLAY_TIME_NS), PLAY_TIME, "ordinary"),
    ((PLAY_TIME_S, 999), PLAY_TIME.replace(microsecond=0), "sub-microsecond-truncated"),
    ((PLAY_TIME_S, 999_999_999), PLAY_TIME.replace(microsecond=999_999), "last-nanosecond"),
    ((0, 1_000), datetime(1970, 1, 1, 0, 0, 0, 1), "zero-seconds-with-nanos"),
    ((100, -1), datetime(1970, 1, 1, 0, 1, 39, 999_999), "negative-nanos-borrow-a-second"),
    ((100, -1_500_000_000), datetime(1970, 1, 1, 0, 1, 38, 500_000), "negative-nanos-borrow-two"),
    ((100, 1_000_000_000), datetime(1970, 1, 1, 0, 1, 41), "nanos-of-exactly-one-second"),
    ((100, -1_794_967_296), datetime(1970, 1, 1, 0, 1, 38, 205_032), "large-negative-nanos"),
    ((100, 2_147_483_647), datetime(1970, 1, 1, 0, 1, 42, 147_483), "int32-max-nanos-carry"),
    ((1, -1_000_000_000), EPOCH, "borrowing-down-to-the-epoch"),
    ((MAX_SECONDS, 999_999_999), datetime(9999, 12, 31, 23, 59, 59, 999_999), "last-instant"),
    ((MAX_SECONDS + 1, -1), datetime(9999, 12, 31, 23, 59, 59, 999_999), "borrow-into-range"),
]

OUT_OF_RANGE_TIMESTAMPS = [
    ((-1, 0), "one-second-before-1970"),
    ((0, -1), "one-nanosecond-before-1970"),
    ((-86_400 * 365, 500), "a-year-before-1970"),
    ((MAX_SECONDS + 1, 0), "first-second-of-year-10000"),
    ((MAX_SECONDS, 1_000_000_000), "nanos-carry-into-year-10000"),
    ((2**63 - 1, 2**31 - 1), "int64-max-seconds"),
    ((-(2**63), -(2**31)), "int64-min-seconds"),
]


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [(ts, dt) for ts, dt, _ in VALID_TIMESTAMPS],
    ids=[name for _, _, name in VALID_TIMESTAMPS],
)
def test_play_timestamp_becomes_created_at_in_naive_utc(
    timestamp: tuple[int, int], expected: datetime
) -> None:
    decoded = decode_play(make_play(timestamp=timestamp))

    assert only_row(decoded).created_at == expected
    assert decoded.repaired == {}


@pytest.mark.parametrize("timestamp", [None, (0, 0)], ids=["absent", "all-zero"])
def test_missing_play_timestamp_is_replaced_by_the_block_time_and_counted(
    timestamp: tuple[int, int] | None,
) -> None:
    decoded = decode_play(make_play(timestamp=timestamp))

    assert only_row(decoded).created_at == BLOCK_TIME
    assert decoded.repaired == {RepairReason.TIMESTAMP_MISSING: 1}


@pytest.mark.parametrize(
    "timestamp",
    [ts for ts, _ in OUT_OF_RANGE_TIMESTAMPS],
    ids=[name for _, name in OUT_OF_RANGE_TIMESTAMPS],
)
def test_play_timestamp_outside_1970_to_9999_is_replaced_by_the_block_time_and_counted(
    timestamp: tuple[int, int],
) -> None:
    decoded = decode_play(make_play(timestamp=timestamp))

    assert only_row(decoded).created_at == BLOCK_TIME
    assert decoded.repaired == {RepairReason.TIMESTAMP_OUT_OF_RANGE: 1}


@pytest.mark.parametrize(
    "timestamp", [None, (0, 0), (-1, 0)], ids=["absent", "all-zero", "before-1970"]
)
def test_play_needing_the_block_time_in_a_block_without_one_is_skipped(
    timestamp: tuple[int, int] | None,
) -> None:
    decoded = decode_play(make_play(timestamp=timestamp), block_time=(0, 0))

    assert [(tx.tx_index, tx.tx_hash, tx.plays, tx.skipped) for tx in decoded.txs] == [
        (0, "HASH0", (), 1)
    ]
    assert decoded.txs[0].skip_reasons == decoded.skipped
    assert decoded.skipped == {SkipReason.NO_TIMESTAMP: 1}
    assert decoded.repaired == {}


def test_play_with_its_own_timestamp_is_kept_in_a_block_without_a_time() -> None:
    decoded = decode_play(make_play(), block_time=(0, 0))

    assert only_row(decoded).created_at == PLAY_TIME


BLOCK_TIMES = [
    ((BLOCK_TIME_S, 0), BLOCK_TIME, "ordinary"),
    ((BLOCK_TIME_S, 987_654_321), BLOCK_TIME.replace(microsecond=987_654), "sub-microsecond"),
    ((BLOCK_TIME_S, -1), datetime(2025, 10, 9, 8, 53, 19, 999_999), "negative-nanos"),
    ((BLOCK_TIME_S, 3_000_000_000), datetime(2025, 10, 9, 8, 53, 23), "nanos-over-a-second"),
    ((0, 0), None, "all-zero"),
    ((-5, 0), None, "before-1970"),
    ((MAX_SECONDS + 1, 0), None, "after-9999"),
]


@pytest.mark.parametrize(
    ("time", "expected"),
    [(t, dt) for t, dt, _ in BLOCK_TIMES],
    ids=[name for _, _, name in BLOCK_TIMES],
)
def test_block_time_is_naive_utc_or_none_when_unusable(
    time: tuple[int, int], expected: datetime | None
) -> None:
    assert decode_block(make_block(time=time)).time == expected


# --- strings -----------------------------------------------------------------------------


def test_play_strings_are_copied() -> None:
    row = only_row(decode_play(make_play(signature="0xabc", city="Zürich", country="CH")))

    assert (row.signature, row.city, row.region, row.country) == ("0xabc", "Zürich", "BE", "CH")


def test_absent_strings_are_empty_not_none() -> None:
    play = types_pb2.TrackPlay(user_id="1", track_id="2")
    play.timestamp.seconds = PLAY_TIME_S

    row = only_row(decode_play(play))

    assert (row.signature, row.city, row.region, row.country) == ("", "", "", "")


@pytest.mark.parametrize("field", ["signature", "city", "region", "country"])
def test_nul_characters_are_removed_from_strings_and_counted(field: str) -> None:
    play = make_play()
    setattr(play, field, "\x00a\x00b\x00")

    decoded = decode_play(play)

    assert getattr(only_row(decoded), field) == "ab"
    assert decoded.repaired == {RepairReason.NUL_REMOVED: 1}


def test_nul_removal_is_counted_once_per_play_however_many_fields_had_one() -> None:
    play = make_play(signature="s\x00", city="c\x00", region="r\x00", country="\x00")

    decoded = decode_play(play)

    row = only_row(decoded)
    assert (row.signature, row.city, row.region, row.country) == ("s", "c", "r", "")
    assert decoded.repaired == {RepairReason.NUL_REMOVED: 1}


def test_repairs_are_counted_for_each_reason_a_play_needed() -> None:
    play = make_play(user_id="2147483648", timestamp=None, city="\x00")

    decoded = decode_play(play)

    assert decoded.repaired == {
        RepairReason.USER_ID_OUT_OF_RANGE: 1,
        RepairReason.TIMESTAMP_MISSING: 1,
        RepairReason.NUL_REMOVED: 1,
    }


def test_skipped_play_is_not_also_counted_as_repaired() -> None:
    play = make_play(track_id="x", user_id="2147483648", timestamp=None, city="\x00")

    decoded = decode_play(play)

    assert decoded.skipped == {SkipReason.TRACK_ID_NOT_INTEGER: 1}
    assert decoded.repaired == {}


# --- transactions ------------------------------------------------------------------------


def test_plays_transaction_becomes_rows_in_message_order() -> None:
    data = plays_tx(make_play(track_id="3"), make_play(track_id="1"), make_play(track_id="2"))

    (tx,) = decode_block(make_block(data)).txs

    assert [row.play_item_id for row in tx.plays] == [3, 1, 2]


def test_play_row_carries_every_mapped_value() -> None:
    row = only_row(decode_play(make_play()))

    assert row == PlayRow(
        user_id=7,
        play_item_id=42,
        created_at=PLAY_TIME,
        signature="sig",
        city="Berlin",
        region="BE",
        country="DE",
    )


def test_plays_transaction_whose_plays_are_all_skipped_still_yields_a_ledger_entry() -> None:
    data = plays_tx(make_play(track_id="a"), make_play(track_id="99999999999"))

    decoded = decode_block(make_block(data))

    assert [(tx.tx_index, tx.tx_hash, tx.plays, tx.skipped) for tx in decoded.txs] == [
        (0, "HASH0", (), 2)
    ]
    assert decoded.txs[0].skip_reasons == decoded.skipped
    assert decoded.skipped == {
        SkipReason.TRACK_ID_NOT_INTEGER: 1,
        SkipReason.TRACK_ID_OUT_OF_RANGE: 1,
    }


def test_plays_transaction_with_no_plays_yields_an_empty_ledger_entry() -> None:
    block = make_block(plays_tx())
    decoded = decode_block(block)

    assert decoded.txs == (DecodedTx(0, "HASH0", (), 0, data=block.txs[0].data),)
    assert decoded.tx_types == {"plays": 1}


def test_skip_and_repair_counts_add_up_over_the_block() -> None:
    first = plays_tx(make_play(track_id="x"), make_play(timestamp=None))
    second = plays_tx(make_play(track_id="y"), make_play(timestamp=None), make_play())

    decoded = decode_block(make_block(first, second))

    assert [tx.skipped for tx in decoded.txs] == [1, 1]
    assert decoded.skipped == {SkipReason.TRACK_ID_NOT_INTEGER: 2}
    assert decoded.repaired == {RepairReason.TIMESTAMP_MISSING: 2}
    assert decoded.play_count == 3


@pytest.mark.parametrize("kind", NON_PLAY_TYPES)
def test_every_known_non_play_transaction_is_counted_by_type_and_yields_no_rows(
    kind: str,
) -> None:
    signed = types_pb2.SignedTransaction(signature="sig")
    getattr(signed, kind).SetInParent()

    decoded = decode_block(make_block(signed.SerializeToString()))

    assert decoded.txs == ()
    assert decoded.quarantined == ()
    assert decoded.tx_types == {kind: 1}


def test_known_non_play_transaction_with_contents_is_counted_by_type() -> None:
    data = length_delimited(1002, length_delimited(1, b"validator") + b"\x10\x05")

    decoded = decode_block(make_block(data))

    assert decoded.tx_types == {"sla_rollup": 1}


def test_transaction_of_a_newer_schema_member_is_counted_as_unknown_not_an_error() -> None:
    data = types_pb2.SignedTransaction(signature="sig").SerializeToString()
    data += length_delimited(1999, b"\x0a\x03new")

    decoded = decode_block(make_block(data))

    assert decoded.tx_types == {"unknown": 1}
    assert decoded.txs == ()
    assert decoded.quarantined == ()


@pytest.mark.parametrize(
    "signed",
    [types_pb2.SignedTransaction(), types_pb2.SignedTransaction(signature="s", request_id="r")],
    ids=["no-fields", "signature-only"],
)
def test_transaction_with_no_member_and_nothing_unknown_is_counted_as_empty(
    signed: types_pb2.SignedTransaction,
) -> None:
    decoded = decode_block(make_block(signed.SerializeToString()))

    assert decoded.tx_types == {"empty": 1}
    assert decoded.txs == ()


def test_unknown_fields_inside_a_play_are_ignored() -> None:
    play = make_play().SerializeToString() + length_delimited(99, b"future")
    data = length_delimited(1000, length_delimited(1, play))

    row = only_row(decode_block(make_block(data)))

    assert row.play_item_id == 42


def test_empty_tx_hash_is_the_upper_case_hex_sha256_of_the_tx_bytes() -> None:
    data = plays_tx(make_play())

    decoded = decode_block(make_block(data, hashes=("",)))

    assert decoded.txs[0].tx_hash == sha256_upper(data)


def test_tx_hash_sent_by_the_node_is_kept_as_sent() -> None:
    decoded = decode_block(make_block(plays_tx(make_play()), hashes=("abc123",)))

    assert decoded.txs[0].tx_hash == "abc123"


def test_block_identity_is_copied() -> None:
    decoded = decode_block(make_block())

    assert (decoded.height, decoded.hash, decoded.chain_id) == (
        1234,
        "BLOCKHASH",
        "audius-mainnet-beta",
    )


def test_empty_block_decodes_to_nothing() -> None:
    decoded = decode_block(make_block())

    assert decoded == DecodedBlock(
        height=1234,
        hash="BLOCKHASH",
        chain_id="audius-mainnet-beta",
        time=BLOCK_TIME,
        txs=(),
    )


# --- quarantine --------------------------------------------------------------------------

GOOD_PLAYS = plays_tx(make_play(), make_play(track_id="43"))
INVALID_UTF8_CITY = length_delimited(
    1000, length_delimited(1, length_delimited(2, b"42") + length_delimited(5, b"Z\xfcrich"))
)
UNDECODABLE = [
    (b"not a protobuf message", "invalid wire type 6", "garbage-text"),
    (b"\xff\xff\xff\xff", "truncated or overlong tag", "garbage-high-bytes"),
    (GOOD_PLAYS[: len(GOOD_PLAYS) // 2], "truncated", "truncated"),
    (b"\x0f\x01", "invalid wire type 7", "invalid-wire-type"),
    (b"\x00\x01", "invalid field number 0", "field-number-zero"),
    (INVALID_UTF8_CITY, "invalid UTF-8 in plays.plays[0].city", "invalid-utf8-in-city"),
    (length_delimited(1, b"\xc3("), "invalid UTF-8 in signature", "invalid-utf8-in-signature"),
    (b"\x0c", "end-group", "unmatched-end-group"),
    (b"\x0b" * 101 + b"\x0c" * 101, "nesting deeper", "groups-nested-too-deep"),
]


@pytest.mark.parametrize(
    ("data", "error_says"),
    [(data, says) for data, says, _ in UNDECODABLE],
    ids=[name for _, _, name in UNDECODABLE],
)
def test_undecodable_transaction_is_quarantined_with_a_specific_error(
    data: bytes, error_says: str
) -> None:
    decoded = decode_block(make_block(data))

    (quarantined,) = decoded.quarantined
    assert (quarantined.tx_index, quarantined.tx_hash, quarantined.data) == (0, "HASH0", data)
    assert error_says in quarantined.error
    assert decoded.tx_types == {"undecodable": 1}
    assert decoded.txs == ()


def test_undecodable_transaction_without_a_hash_is_quarantined_under_its_sha256() -> None:
    decoded = decode_block(make_block(b"\xff\xff", hashes=("",)))

    assert decoded.quarantined[0].tx_hash == sha256_upper(b"\xff\xff")


def test_one_bad_transaction_does_not_cost_the_rest_of_the_block() -> None:
    sla_rollup = types_pb2.SignedTransaction(sla_rollup=types_pb2.SlaRollup())
    datas = (
        GOOD_PLAYS,
        b"\xff\xff\xff",
        sla_rollup.SerializeToString(),
        plays_tx(make_play(track_id="44")),
        GOOD_PLAYS[:-1],
    )

    decoded = decode_block(make_block(*datas))

    assert [(tx.tx_index, tx.tx_hash) for tx in decoded.txs] == [(0, "HASH0"), (3, "HASH3")]
    assert [row.play_item_id for tx in decoded.txs for row in tx.plays] == [42, 43, 44]
    assert [(q.tx_index, q.tx_hash) for q in decoded.quarantined] == [(1, "HASH1"), (4, "HASH4")]
    assert decoded.tx_types == {"plays": 2, "undecodable": 2, "sla_rollup": 1}


def test_a_transaction_with_one_broken_play_is_quarantined_whole() -> None:
    broken_play = length_delimited(1, length_delimited(4, b"\xff"))
    data = GOOD_PLAYS + length_delimited(1000, broken_play)

    decoded = decode_block(make_block(data))

    assert decoded.txs == ()
    assert [q.data for q in decoded.quarantined] == [data]


def test_block_with_an_unreadable_envelope_is_quarantined_whole() -> None:
    block = replace(make_block(GOOD_PLAYS), raw=b"\x0a\xff", error="truncated block envelope")

    decoded = decode_block(block)

    assert decoded.txs == ()
    assert decoded.tx_types == {}
    assert decoded.quarantined == (
        Quarantined(-1, "BLOCKHASH", b"\x0a\xff", "truncated block envelope"),
    )
    assert (decoded.height, decoded.chain_id) == (1234, "audius-mainnet-beta")


def test_unreadable_envelope_without_a_hash_is_quarantined_under_its_sha256() -> None:
    block = replace(make_block(), hash="", raw=b"\x0a\xff", error="bad envelope")

    decoded = decode_block(block)

    assert decoded.quarantined[0].tx_hash == sha256_upper(b"\x0a\xff")


def test_skip_reasons_are_kept_per_transaction() -> None:
    first = plays_tx(make_play(track_id="abc"), make_play(track_id="1"))
    second = plays_tx(make_play(track_id="99999999999"))
    decoded = decode_block(make_block(first, second))
    assert [dict(tx.skip_reasons) for tx in decoded.txs] == [
        {SkipReason.TRACK_ID_NOT_INTEGER: 1},
        {SkipReason.TRACK_ID_OUT_OF_RANGE: 1},
    ]


# --- decode_steps: the same decode in slices --------------------------------------------


def run_steps(block: Block) -> tuple[list[int], DecodedBlock]:
    steps = decode_steps(block)
    counts: list[int] = []
    while True:
        try:
            counts.append(next(steps))
        except StopIteration as done:
            decoded: DecodedBlock = done.value
            return counts, decoded


@pytest.mark.parametrize("profile", ["typical", "busy"])
def test_decoding_in_steps_gives_the_block_decoding_whole_gives(profile: str) -> None:
    chain = DevChain(ChainSpec(profile=Profile(profile), busy_plays_per_tx=150))
    for height in range(1, 40):
        block = parse_block(chain.block_bytes(height, canon=True), height)
        assert run_steps(block)[1] == decode_block(block)


def test_a_big_transaction_is_decoded_in_several_steps_counting_its_plays() -> None:
    counts, decoded = run_steps(make_block(plays_tx(*[make_play() for _ in range(200)])))
    assert len(counts) > 1
    assert counts == sorted(counts) and counts[-1] == decoded.play_count == 200


# --- block_parts: one block decoded a part at a time ------------------------------------


@pytest.mark.parametrize("part_bytes", [1, 2_000, 10**9])
def test_a_block_decoded_in_parts_has_the_transactions_and_counts_of_the_whole(
    part_bytes: int,
) -> None:
    chain = DevChain(ChainSpec(profile=Profile.TYPICAL, max_txs_per_block=8))
    for height in range(1, 80):
        block = parse_block(chain.block_bytes(height, canon=True), height)
        whole = decode_block(block)
        parts = [decode_block(part, first) for part, first in block_parts(block, part_bytes)]
        assert tuple(tx for p in parts for tx in p.txs) == whole.txs
        assert tuple(q for p in parts for q in p.quarantined) == whole.quarantined
        assert sum((Counter(p.tx_types) for p in parts), Counter()) == Counter(whole.tx_types)
        assert sum((Counter(p.repaired) for p in parts), Counter()) == Counter(whole.repaired)
        assert sum((Counter(p.skipped) for p in parts), Counter()) == Counter(whole.skipped)


def test_parts_hold_at_least_one_transaction_and_about_part_bytes_each() -> None:
    chain = DevChain(ChainSpec(profile=Profile.BUSY, busy_txs_per_block=10, busy_plays_per_tx=50))
    block = parse_block(chain.block_bytes(1, canon=True), 1)
    tx_bytes = len(block.txs[0].data)
    parts = list(block_parts(block, part_bytes=3 * tx_bytes))
    assert [len(part.txs) for part, _ in parts] == [3, 3, 3, 1]
    assert [first for _, first in parts] == [0, 3, 6, 9]


def test_repairs_are_kept_per_transaction_and_add_up_to_the_block() -> None:
    first = plays_tx(make_play(timestamp=None), make_play(timestamp=None))
    second = plays_tx(make_play(user_id="99999999999"))
    decoded = decode_block(make_block(first, second))
    assert [dict(tx.repair_reasons) for tx in decoded.txs] == [
        {RepairReason.TIMESTAMP_MISSING: 2},
        {RepairReason.USER_ID_OUT_OF_RANGE: 1},
    ]
    assert dict(decoded.repaired) == {
        RepairReason.TIMESTAMP_MISSING: 2,
        RepairReason.USER_ID_OUT_OF_RANGE: 1,
    }


def test_plays_positions_are_the_decoded_plays_transactions_without_decoding_plays() -> None:
    chain = DevChain(ChainSpec(profile=Profile.TYPICAL, max_txs_per_block=8))
    for height in range(1, 80):
        block = parse_block(chain.block_bytes(height, canon=True), height)
        decoded = decode_block(block)
        assert plays_positions(block) == [(tx.tx_index, tx.tx_hash) for tx in decoded.txs]
