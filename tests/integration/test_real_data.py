"""The real main-network transactions of ../shared/data/take1.pb, served by the devnet."""

from __future__ import annotations

from pathlib import Path

import psycopg

from consumer.config import SourceSettings
from consumer.devnet import ChainSpec
from consumer.source.core import CoreClient
from consumer.trust.verify import verify_range
from tests.conftest import DevnetFactory, run_consumer

TAKE1 = Path(__file__).resolve().parents[3] / "shared" / "data" / "take1.pb"


async def test_verify_of_a_table_the_service_wrote_alone_from_real_data_finds_no_difference(
    devnet_factory: DevnetFactory, database: str
) -> None:
    assert TAKE1.exists(), f"the real transactions are expected at {TAKE1}"
    devnet = await devnet_factory(ChainSpec(recorded=str(TAKE1)), height=700)
    await run_consumer(devnet.url, database, from_height=1, to_height=700)
    client = CoreClient(SourceSettings(core_url=devnet.url))
    try:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            report = await verify_range(client, conn, SourceSettings(core_url=devnet.url),
                                        "devnet-1", 1, 700)  # fmt: skip
    finally:
        await client.close()
    assert report.counts.total() == 0
    assert report.repeated > 0 and report.ok
