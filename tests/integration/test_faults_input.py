"""Hostile data at full scale: blocks past gRPC's default limit, megabyte strings."""

from __future__ import annotations

import hashlib

import psycopg

from consumer._pb.core.v1 import types_pb2
from consumer.devnet import ChainSpec, DevChain, GeneratedTx, Profile, TxKind
from tests.conftest import DevnetFactory
from tests.consumers import Consumer
from tests.procs import flags, run_once

# 30 transactions of 2,000 plays: about 5 MB a block, past gRPC's 4 MB default.
HUGE = ChainSpec(profile=Profile.BUSY, busy_txs_per_block=30, busy_plays_per_tx=2000)


async def test_blocks_larger_than_grpcs_default_limit_are_written_whole(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(HUGE, height=2)
    assert len(devnet.chain.block_bytes(1, canon=True)) > 4 * 1024 * 1024
    consumer = Consumer(devnet.url, database, from_height=1, to_height=2)
    await consumer.task
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT count(*) FROM plays")
        assert await cur.fetchone() == (2 * 30 * 2000,)


async def test_a_block_over_the_configured_limit_is_a_clear_error_naming_the_flag(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(HUGE, height=2)
    code, _, err = await run_once(
        "run",
        *flags(
            core_url=devnet.url,
            database_url=database,
            from_height=1,
            to_height=2,
            max_message_bytes=1000000,
            metrics_addr="127.0.0.1:0",
        ),
    )
    assert code == 2
    assert "--max-message-bytes" in err
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT count(*) FROM plays")
        assert await cur.fetchone() == (0,)


class _BigStrings(DevChain):
    """Height 1 carries a play whose city is three megabytes (with a NUL inside), and a
    play whose signature is a megabyte: more than the btree index on plays.signature
    can hold."""

    CITY = "Ы" * 1_500_000 + "\x00" + "z" * 10

    def _generate(self, height: int) -> tuple[GeneratedTx, ...]:
        if height != 1:
            return ()
        big_city = types_pb2.TrackPlay(user_id="1", track_id="2", city=self.CITY)
        big_signature = types_pb2.TrackPlay(user_id="1", track_id="3", signature="s" * 10**6)
        out = []
        for play in (big_city, big_signature):
            play.timestamp.seconds = self.block_time_s(height)
            signed = types_pb2.SignedTransaction(plays=types_pb2.TrackPlays(plays=[play]))
            data = signed.SerializeToString()
            tx_hash = hashlib.sha256(data).hexdigest().upper()
            out.append(GeneratedTx(TxKind.PLAYS, tx_hash, data, (play,)))
        return tuple(out)


async def test_strings_of_megabytes_are_written_intact(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=3)
    devnet.chain = _BigStrings(ChainSpec())
    # The signature PostgreSQL can never index is retried for a second, then set aside.
    consumer = Consumer(devnet.url, database, from_height=1, to_height=3, refused_retry_s=1)
    await consumer.task
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT city FROM plays")
        assert await cur.fetchall() == [(_BigStrings.CITY.replace("\x00", ""),)]
    assert consumer.value("plays_repaired_total", reason="nul_removed") == 1


async def test_a_value_postgresql_refuses_is_set_aside_after_retrying_and_the_chain_goes_on(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=3)
    devnet.chain = _BigStrings(ChainSpec())
    refused = devnet.chain.txs(1)[1]
    consumer = Consumer(devnet.url, database, from_height=1, to_height=3, refused_retry_s=1)
    await consumer.task
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute(
            "SELECT block_height, tx_index, tx_hash, error FROM core_plays.quarantine"
        )
        [(height, index, tx_hash, error)] = await cur.fetchall()
        cur = await conn.execute("SELECT height FROM core_plays.checkpoint")
        assert await cur.fetchone() == (3,)
    assert (height, index, tx_hash) == (1, 1, refused.hash)
    assert error.startswith("refused by PostgreSQL: index row")
    assert consumer.value("set_aside_total") == 1
