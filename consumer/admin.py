"""The one-shot commands: `migrate` and `status`."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from consumer.config import Settings
from consumer.errors import ConsumerError
from consumer.lease import lock_key
from consumer.migrate import prepare_database
from consumer.runner import connect_database
from consumer.source import CoreClient

__all__ = ["migrate_command", "status_command"]

log = logging.getLogger(__name__)

_LEADER = """
SELECT pid, application_name, client_addr::text FROM pg_locks JOIN pg_stat_activity USING (pid)
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0)
"""


async def migrate_command(settings: Settings) -> list[int]:
    sink = settings.sink
    conn = await connect_database(sink.conninfo, sink.safe_url, sink.connect_timeout_s)
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
    conn = await connect_database(sink.conninfo, sink.safe_url, sink.connect_timeout_s)
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
            cur = await conn.execute(_LEADER, (lock_key(chain_id, sink.stream),))
            holder = await cur.fetchone()
            report["leader"] = (
                {"pid": holder[0], "application": holder[1], "client": holder[2]}
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
