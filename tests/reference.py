"""What the plays table must hold for a devnet chain, computed without consumer.decode.blocks.

A deliberately plain second reading of DESIGN §3, so that the end-to-end tests
compare the service against an independent statement of the rules rather than
against itself.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import psycopg

from consumer._pb.core.v1 import types_pb2
from consumer.devnet import DevChain, DevnetServer, TxKind

Row = tuple[Any, ...]
_ID = re.compile(r"[+-]?[0-9]+")
_EPOCH = datetime(1970, 1, 1)


def _int32(text: str) -> int | None:
    if _ID.fullmatch(text) is None or len(text) > 20:
        return None
    value = int(text)
    return value if -(2**31) <= value <= 2**31 - 1 else None


def _time(seconds: int, nanos: int) -> datetime | None:
    total = seconds * 1_000_000_000 + nanos
    whole, frac = divmod(total, 1_000_000_000)
    try:
        when = _EPOCH + timedelta(seconds=whole, microseconds=frac // 1000)
    except OverflowError:
        return None
    return when if when >= _EPOCH else None


def tx_rows(chain: DevChain, height: int) -> list[tuple[str, list[Row]]]:
    """Each plays transaction of a height, in block order, with its rows as
    (user_id, play_item_id, created_at, signature, city, region, country): the
    field mapping, without the slot a writer puts them at."""
    block_time = _time(*chain.block_time(height))
    found: list[tuple[str, list[Row]]] = []
    for tx in chain.txs(height):
        if tx.kind is not TxKind.PLAYS:
            continue
        plays = tx.plays or tuple(types_pb2.SignedTransaction.FromString(tx.data).plays.plays)
        rows: list[Row] = []
        for play in plays:
            track = _int32(play.track_id)
            if track is None:
                continue
            created = None
            if play.HasField("timestamp") and (play.timestamp.seconds or play.timestamp.nanos):
                created = _time(play.timestamp.seconds, play.timestamp.nanos)
            rows.append(
                (
                    _int32(play.user_id),
                    track,
                    created or block_time,
                    play.signature.replace("\x00", ""),
                    play.city.replace("\x00", ""),
                    play.region.replace("\x00", ""),
                    play.country.replace("\x00", ""),
                )
            )
        found.append((tx.hash, rows))
    return found


def expected_rows(chain: DevChain, first: int, last: int) -> Counter[Row]:
    """(user_id, play_item_id, created_at, slot, signature, city, region, country) rows.

    A transaction the chain carries twice (the same hash: real relay resubmissions)
    is one set of plays, at the height it first appears."""
    rows: Counter[Row] = Counter()
    once: set[str] = set()
    for height in range(first, last + 1):
        for tx_hash, tx in tx_rows(chain, height):
            if tx_hash in once:
                continue
            once.add(tx_hash)
            for user, track, created, signature, city, region, country in tx:
                rows[(user, track, created, height, signature, city, region, country)] += 1
    return rows


def play_tx_hashes(chain: DevChain, first: int, last: int) -> set[str]:
    return {
        tx.hash for h in range(first, last + 1) for tx in chain.txs(h) if tx.kind is TxKind.PLAYS
    }


def first_play_tx_hashes(chain: DevChain, first: int, last: int) -> set[str]:
    """The plays transactions that stand first in their block: what a stream that
    drops each block's first transaction (Faults.stream_omits_first_tx) loses."""
    return {
        txs[0].hash
        for h in range(first, last + 1)
        if (txs := chain.txs(h)) and txs[0].kind is TxKind.PLAYS
    }


def malformed_tx_hashes(chain: DevChain, first: int, last: int) -> set[str]:
    return {
        tx.hash
        for h in range(first, last + 1)
        for tx in chain.txs(h)
        if tx.kind is TxKind.MALFORMED
    }


async def plays_rows(conn: Any) -> Counter[Row]:
    cur = await conn.execute(
        "SELECT user_id, play_item_id, created_at, slot, signature, city, region, country "
        "FROM plays"
    )
    return Counter(tuple(r) for r in await cur.fetchall())


async def assert_aggregates_exact(database: str) -> None:
    """aggregate_plays and the monthly aggregate equal the plays actually present."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("""
            SELECT count(*) FROM (
              SELECT play_item_id, count(*) AS n FROM plays GROUP BY 1
            ) p FULL JOIN aggregate_plays a USING (play_item_id)
            WHERE p.n IS DISTINCT FROM a.count""")
        assert await cur.fetchone() == (0,)
        cur = await conn.execute("""
            SELECT count(*) FROM (
              SELECT play_item_id, date_trunc('month', created_at)::date AS m,
                     coalesce(country, '') AS country, count(*) AS n FROM plays GROUP BY 1, 2, 3
            ) p FULL JOIN aggregate_monthly_plays a
              ON a.play_item_id = p.play_item_id AND a."timestamp" = p.m AND a.country = p.country
            WHERE p.n IS DISTINCT FROM a.count""")
        assert await cur.fetchone() == (0,)


async def new_plays(database: str) -> Counter[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        rows = await plays_rows(conn)
    return Counter(
        {r: n for r, n in rows.items() if r[4] is None or not str(r[4]).startswith("legacy-")}
    )


async def assert_rows_exact(database: str, devnet: DevnetServer, last: int) -> None:
    """The plays table holds exactly the plays of blocks 1..last: none lost, none twice."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert await plays_rows(conn) == expected_rows(devnet.chain, 1, last)
