"""The one-shot commands: `migrate`, `status` and `quarantine`."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from consumer.config import Settings
from consumer.database import connect
from consumer.errors import ConfigError, ConsumerError
from consumer.lease import find_holder, lock_key
from consumer.migrate import prepare_database
from consumer.sink import PlaysSink
from consumer.source import CoreClient

__all__ = ["migrate_command", "quarantine_command", "status_command"]

log = logging.getLogger(__name__)


async def migrate_command(settings: Settings) -> list[int]:
    sink = settings.sink
    conn = await connect(sink.conninfo, sink.safe_url, sink.connect_timeout_s)
    try:
        applied = await prepare_database(conn, sink.safe_url)
    finally:
        await conn.close()
    print(f"migrations applied: {applied or 'none (up to date)'}")
    return applied


async def status_command(settings: Settings) -> tuple[dict[str, Any], bool]:
    """A report for people and scripts; ok is False when lag is over --ready-max-lag-s."""
    report: dict[str, Any] = {"core_url": settings.source.core_url, "stream": settings.sink.stream}
    client = CoreClient(settings.source)
    try:
        info = await client.node_info()
        report["chain_id"] = info.chain_id
        report["node_head"] = info.head
    except ConsumerError as exc:
        report["node_error"] = str(exc)
        info = None
    finally:
        await client.close()
    sink = settings.sink
    conn = await connect(sink.conninfo, sink.safe_url, sink.connect_timeout_s)
    try:
        chain_filter = info.chain_id if info else None
        cur = await conn.execute(
            """SELECT chain_id, start_height, height, block_hash, block_time, updated_at
               FROM core_plays.checkpoint WHERE stream = %s AND (%s::text IS NULL OR chain_id = %s)
               ORDER BY updated_at DESC LIMIT 1""",
            (sink.stream, chain_filter, chain_filter),
        )
        row = await cur.fetchone()
        ok = False
        if row is None:
            report["checkpoint"] = None
        else:
            chain_id, start, height, block_hash, block_time, updated_at = row
            report["chain_id"] = chain_id
            report["checkpoint"] = {
                "height": height,
                "block_hash": block_hash,
                "block_time": block_time,
                "start_height": start,
            }
            report["last_commit"] = updated_at
            now = datetime.now(UTC).replace(tzinfo=None)
            lag_s = (now - block_time).total_seconds() if block_time else None
            report["lag_seconds"] = None if lag_s is None else round(lag_s, 3)
            if info is not None:
                report["lag_blocks"] = max(0, info.head - height)
            holder = await find_holder(conn, lock_key(chain_id, sink.stream))
            report["leader"] = (
                {"pid": holder.pid, "application": holder.application, "client": holder.client}
                if holder
                else None
            )
            cur = await conn.execute(
                """SELECT count(*), coalesce(sum(play_count), 0), coalesce(sum(skipped_count), 0)
                   FROM core_plays.tx_ledger WHERE chain_id = %s""",
                (chain_id,),
            )
            txs, plays, skipped = await cur.fetchone() or (0, 0, 0)
            cur = await conn.execute(
                "SELECT count(*) FROM core_plays.quarantine WHERE chain_id = %s", (chain_id,)
            )
            (quarantined,) = await cur.fetchone() or (0,)
            cur = await conn.execute(
                """SELECT r.key, sum(r.value::bigint) FROM core_plays.tx_ledger,
                          jsonb_each_text(skip_reasons) AS r
                   WHERE chain_id = %s AND skip_reasons IS NOT NULL GROUP BY 1 ORDER BY 1""",
                (chain_id,),
            )
            by_reason = {key: int(total) for key, total in await cur.fetchall()}
            report["ledger"] = {
                "play_transactions": txs,
                "plays_written": plays,
                "plays_skipped": skipped,
                "plays_skipped_by_reason": by_reason,
                "quarantined": quarantined,
            }
            ok = lag_s is not None and lag_s <= settings.http.ready_max_lag_s
        report["ok"] = ok
    finally:
        await conn.close()
    return report, ok


_LIST_QUARANTINE = """
SELECT chain_id, block_height, tx_index, kind, tx_hash, octet_length(data),
       CASE WHEN kind <> 'refused' THEN 'kept' WHEN written_at IS NULL THEN 'PENDING'
            ELSE 'written ' || to_char(written_at, 'YYYY-MM-DD HH24:MI:SS') END,
       error
FROM core_plays.quarantine WHERE (%s::text IS NULL OR chain_id = %s)
ORDER BY chain_id, block_height, tx_index
"""
_SHOW_QUARANTINE = """
SELECT chain_id, block_height, tx_index, kind, tx_hash, data, error, quarantined_at, written_at
FROM core_plays.quarantine
WHERE (%s::text IS NULL OR chain_id = %s) AND block_height = %s AND tx_index = %s
"""
_PENDING_CHAINS = """
SELECT DISTINCT chain_id FROM core_plays.quarantine
WHERE kind = 'refused' AND written_at IS NULL AND (%s::text IS NULL OR chain_id = %s)
ORDER BY 1
"""


async def quarantine_command(
    settings: Settings,
    action: str,
    chain_id: str | None = None,
    height: int | None = None,
    tx_index: int | None = None,
) -> int:
    """List, show or re-apply quarantined transactions; exit 1 while any stay unwritten.

    Undecodable bytes are kept for inspection only ('kept'). Transactions that
    PostgreSQL refused ('refused') were set aside with their decoded rows;
    `retry` writes them through the ledger, so a play already written is never
    written twice, and leaves the checkpoint where it is.
    """
    sink = settings.sink
    conn = await connect(sink.conninfo, sink.safe_url, sink.connect_timeout_s)
    async with conn:
        if action == "show":
            if height is None or tx_index is None:
                raise ConfigError("quarantine show needs --height and --tx-index")
            cur = await conn.execute(_SHOW_QUARANTINE, (chain_id, chain_id, height, tx_index))
            row = await cur.fetchone()
            if row is None:
                raise ConfigError(f"nothing quarantined at height {height}, tx_index {tx_index}")
            names = ("chain_id", "height", "tx_index", "kind", "tx_hash", "data", "error")
            for name, value in zip(names, row, strict=False):
                print(f"{name}: {value.hex() if isinstance(value, bytes) else value}")
            print(f"quarantined_at: {row[7]}\nwritten_at: {row[8] or '-'}")
            return 0
        if action == "retry":
            cur = await conn.execute(_PENDING_CHAINS, (chain_id, chain_id))
            failed = 0
            for (chain,) in await cur.fetchall():
                done = await PlaysSink(conn, chain, sink.stream, 0).reapply_set_aside()
                print(
                    f"chain {chain}: wrote {done.transactions} set-aside transaction(s), "
                    f"{done.plays_written} play(s)"
                )
                for (h, i), error in sorted(done.failed.items()):
                    print(f"  still refused: height {h} tx_index {i}: {error}")
                failed += len(done.failed)
            return 1 if failed else 0
        cur = await conn.execute(_LIST_QUARANTINE, (chain_id, chain_id))
        rows = await cur.fetchall()
        print("chain_id\theight\ttx_index\tkind\ttx_hash\tbytes\tstatus\terror")
        for row in rows:
            print("\t".join(str(v) for v in row))
        pending = sum(1 for row in rows if row[6] == "PENDING")
        print(f"{len(rows)} quarantined, {pending} set aside and not yet written")
        return 1 if pending else 0
