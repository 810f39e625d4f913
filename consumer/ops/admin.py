"""The one-shot commands `migrate`, `quarantine` and `reasons` (`status`: consumer.ops.status)."""

from __future__ import annotations

import logging
from typing import Any

from consumer.config import Settings
from consumer.errors import ConfigError
from consumer.logs import counted
from consumer.sink.database import command_session, connect
from consumer.sink.migrate import explain_database_errors, migrate_database
from consumer.sink.plays import PlaysSink
from consumer.sink.privileges import runtime_grants

__all__ = [
    "format_reasons",
    "migrate_command",
    "quarantine_command",
    "reasons_command",
]

log = logging.getLogger(__name__)


async def migrate_command(settings: Settings, print_grants: str | None = None) -> list[int]:
    sink = settings.sink
    conn = await connect(sink.conninfo, sink.safe_url, sink.connect_timeout_s)
    try:
        if print_grants is not None:
            # The names come from this database (plays' schema, its id sequence).
            with explain_database_errors(sink.safe_url):
                print(await runtime_grants(conn, print_grants))
            return []
        applied = await migrate_database(conn, sink.safe_url)
    finally:
        await conn.close()
    print(f"migrations applied: {applied or 'none (up to date)'}")
    return applied


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
    async with command_session(sink) as conn:
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
            chains = await cur.fetchall()
            if not chains:  # say so: silence reads as a command that did not run
                where = f" for chain {chain_id}" if chain_id else ""
                print(f"nothing to retry: no set-aside transaction is pending{where}")
            failed = 0
            for (chain,) in chains:
                done = await PlaysSink(conn, chain, sink.stream, 0).reapply_set_aside()
                print(
                    f"chain {chain}: wrote "
                    f"{counted(done.transactions, 'set-aside transaction')}, "
                    f"{counted(done.plays_written, 'play')}"
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


# Skips and repairs in one pass over the range's ledger rows (jsonb_each_text of
# NULL is no rows).
_REASONS = """
SELECT s.section, r.key, sum(r.value::bigint) FROM core_plays.tx_ledger l,
       LATERAL (VALUES ('skipped', l.skip_reasons), ('repaired', l.repair_reasons))
           AS s(section, reasons),
       jsonb_each_text(s.reasons) AS r
WHERE l.chain_id = %(chain)s AND l.block_height BETWEEN %(low)s AND %(high)s
  AND (l.skip_reasons IS NOT NULL OR l.repair_reasons IS NOT NULL)
GROUP BY 1, 2
UNION ALL
SELECT 'quarantined',
       CASE WHEN kind = 'refused' AND written_at IS NOT NULL THEN 'refused, since written'
            WHEN kind = 'refused' THEN 'refused, set aside'
            WHEN tx_index = -1 THEN 'undecodable block'
            ELSE 'undecodable transaction' END,
       count(*)
FROM core_plays.quarantine
WHERE chain_id = %(chain)s AND block_height BETWEEN %(low)s AND %(high)s
GROUP BY 2
UNION ALL
SELECT 'written', 'plays', coalesce(sum(play_count), 0) FROM core_plays.tx_ledger
WHERE chain_id = %(chain)s AND block_height BETWEEN %(low)s AND %(high)s
"""


async def reasons_command(
    settings: Settings, chain_id: str | None, low: int, high: int | None
) -> dict[str, Any]:
    """What was not written as it came, and why, over heights low..high (high None:
    to the newest): skips and repairs by reason (kept per transaction in the ledger,
    so replays never count twice) and quarantined transactions by kind."""
    sink = settings.sink
    async with command_session(sink) as conn:
        if chain_id is None:
            cur = await conn.execute(
                "SELECT DISTINCT chain_id FROM core_plays.checkpoint ORDER BY 1"
            )
            chains = [row[0] for row in await cur.fetchall()]
            if len(chains) != 1:
                raise ConfigError(
                    f"the database holds chains {', '.join(chains) or '(none)'}: "
                    "choose one with --chain-id"
                )
            chain_id = chains[0]
        # No end is the largest height; only the query sees it, the report says none.
        end = high if high is not None else 2**62
        cur = await conn.execute(_REASONS, {"chain": chain_id, "low": low, "high": end})
        rows = await cur.fetchall()
    report: dict[str, Any] = {
        "chain_id": chain_id,
        "from_height": low,
        "to_height": high,
        "plays_written": 0,
        "skipped": {},
        "repaired": {},
        "quarantined": {},
    }
    for section, key, total in rows:
        if section == "written":
            report["plays_written"] = int(total)
        else:
            report[section][key] = int(total)
    return report


def format_reasons(report: dict[str, Any]) -> str:
    low, high = report["from_height"], report["to_height"]
    heights = f"heights {low}..{high}" if high is not None else f"every height from {low}"
    lines = [
        f"chain {report['chain_id']} {heights}: {counted(report['plays_written'], 'play')} written"
    ]
    for section in ("skipped", "repaired", "quarantined"):
        counts: dict[str, int] = report[section]
        listed = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        lines.append(f"{section}: {listed}")
    return "\n".join(lines)
