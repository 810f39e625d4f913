"""`plays-consumer status`: where the service stands, for people and scripts.

A report (a dict: the JSON output as it is) and its text form, the reasons it is
not ok, and the exit code; read from the checkpoint, the ledger, the lease, the
handover record and the node.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from consumer.config import Settings
from consumer.errors import ConfigError, ConsumerError
from consumer.model import LedgerOrigin
from consumer.sink.database import command_session
from consumer.sink.lease import Holder, find_holder, lock_key
from consumer.sink.migrate import schema_version
from consumer.sink.written import handovers
from consumer.source.core import CoreClient, NodeInfo

__all__ = [
    "STATUS_NODE_UNREACHABLE",
    "STATUS_NOT_OK",
    "STATUS_OK",
    "format_status",
    "status_command",
]


# `status` exit codes (documented in the README): 0 ok; 1 not ok (lag over the limit,
# no checkpoint yet, several chains and no way to choose); 2 an operator error
# (database unreachable, missing privilege, never migrated: ConfigError); 3 the node
# cannot be reached (the database part is still reported).
STATUS_OK, STATUS_NOT_OK, STATUS_NODE_UNREACHABLE = 0, 1, 3

_CHAINS = """
SELECT chain_id, stream, start_height, height, updated_at FROM core_plays.checkpoint
ORDER BY chain_id, stream
"""


async def status_command(
    settings: Settings, chain_id: str | None = None
) -> tuple[dict[str, Any], int]:
    """A report for people and scripts, the reasons it is not ok, and the exit code."""
    report: dict[str, Any] = {"ok": False, "problems": []}
    problems: list[str] = report["problems"]
    report.update(core_url=settings.source.core_url, stream=settings.sink.stream)
    client = CoreClient(settings.source)
    try:
        info = await client.node_info()
        report["node_chain_id"] = info.chain_id
        report["node_head"] = info.head
    except ConsumerError as exc:
        report["node_error"] = str(exc)
        problems.append(f"node unreachable at {settings.source.core_url}: {exc}")
        info = None
    finally:
        await client.close()
    sink = settings.sink
    async with command_session(sink) as conn:
        if await schema_version(conn) is None:
            raise ConfigError(
                f"the database at {sink.safe_url} was never migrated (no core_plays "
                "schema): run `plays-consumer migrate` as its owner"
            )
        await _report_database(conn, settings, report, chain_id, info)
    if info is not None and chain_id is not None and info.chain_id != chain_id:
        problems.append(f"the node is on chain {info.chain_id}, not {chain_id}")
    report["ok"] = not problems
    if info is None:
        return report, STATUS_NODE_UNREACHABLE
    return report, STATUS_OK if report["ok"] else STATUS_NOT_OK


async def _report_database(
    conn: psycopg.AsyncConnection[TupleRow],
    settings: Settings,
    report: dict[str, Any],
    chain_id: str | None,
    info: NodeInfo | None,
) -> None:
    problems: list[str] = report["problems"]
    stream = settings.sink.stream
    chains = await _chains(conn)
    if len(chains) > 1:
        report["chains"] = chains
    chosen = chain_id or (info.chain_id if info else None)
    if chosen is None:
        if len(chains) > 1:
            problems.append(f"checkpoints for chains {', '.join(chains)}: pass --chain-id")
            return
        chosen = next(iter(chains), None)
    report["chain_id"] = chosen
    row = None
    if chosen is not None:
        cur = await conn.execute(
            """SELECT start_height, height, block_hash, block_time, updated_at
               FROM core_plays.checkpoint WHERE chain_id = %s AND stream = %s""",
            (chosen, stream),
        )
        row = await cur.fetchone()
    if chosen is None or row is None:
        report["checkpoint"] = None
        problems.append(
            f"no checkpoint for chain {chosen or '(none yet)'} stream '{stream}': "
            "the first run needs --from-height"
        )
        return
    _report_checkpoint(report, row, info if info and info.chain_id == chosen else None, settings)
    holder = await find_holder(conn, lock_key(chosen, stream))
    report["leader"] = (
        {"pid": holder.pid, "application": holder.application, "client": holder.client}
        if holder
        else None
    )
    report["ledger"] = await _ledger(conn, chosen)
    for source, record in (await handovers(conn, chosen)).items():
        report["handover"] = {
            "from": source,
            "state": "taken over, writing alone" if record.taken_over_height else "trailing",
            "other_writer_height": record.other_height,
            "adopted_through": record.adopted_through,
            "taken_over_at_height": record.taken_over_height,
            "other_writer_resumed_to": record.resumed_height,
        }


async def _chains(conn: psycopg.AsyncConnection[TupleRow]) -> dict[str, list[dict[str, Any]]]:
    cur = await conn.execute(_CHAINS)
    chains: dict[str, list[dict[str, Any]]] = {}
    for chain, name, start, height, updated_at in await cur.fetchall():
        chains.setdefault(chain, []).append(
            {"stream": name, "start_height": start, "height": height, "updated_at": updated_at}
        )
    return chains


def _report_checkpoint(
    report: dict[str, Any], row: TupleRow, info: NodeInfo | None, settings: Settings
) -> None:
    """The checkpoint and its lag; `info` only when the node is on the checkpoint's chain."""
    problems: list[str] = report["problems"]
    start, height, block_hash, block_time, updated_at = row
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
    limit = settings.http.ready_max_lag_s
    if lag_s is None:
        problems.append("the checkpoint has no block time: lag unknown")
    elif lag_s > limit:
        behind = f", {report['lag_blocks']} blocks" if "lag_blocks" in report else ""
        problems.append(
            f"lag {lag_s:.1f} s{behind} is over --ready-max-lag-s {limit:g} s "
            f"by {lag_s - limit:.1f} s"
        )


async def _ledger(conn: psycopg.AsyncConnection[TupleRow], chain_id: str) -> dict[str, Any]:
    cur = await conn.execute(
        """SELECT count(*), coalesce(sum(play_count) FILTER (WHERE origin <> %s), 0),
                  coalesce(sum(skipped_count), 0), count(*) FILTER (WHERE origin = %s),
                  coalesce(sum(play_count) FILTER (WHERE origin = %s), 0)
           FROM core_plays.tx_ledger WHERE chain_id = %s""",
        (LedgerOrigin.ADOPTED, LedgerOrigin.ADOPTED, LedgerOrigin.ADOPTED, chain_id),
    )
    txs, plays, skipped, adopted, adopted_plays = await cur.fetchone() or (0, 0, 0, 0, 0)
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
    return {
        "play_transactions": txs,
        "plays_written": plays,  # by this service; another writer's are adopted_plays
        "adopted_transactions": adopted,
        "adopted_plays": adopted_plays,
        "plays_skipped": skipped,
        "plays_skipped_by_reason": by_reason,
        "quarantined": quarantined,
    }


def format_status(report: dict[str, Any]) -> str:
    """For people: the verdict and its reasons first, then the details."""
    if report["ok"]:
        lines = ["status: ok"]
    else:
        lines = ["status: NOT OK"] + [f"  - {p}" for p in report["problems"]]
    for key, value in report.items():
        if key in ("ok", "problems"):
            continue
        if key == "chains":
            lines.append("chains:")
            lines += [
                f"  {chain} stream {s['stream']}: heights {s['start_height']}..{s['height']}"
                for chain, streams in value.items()
                for s in streams
            ]
        elif key == "leader" and value is not None:
            holder = Holder(value["pid"], value["application"], value["client"])
            lines.append(f"leader: {holder}")
        elif isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_text(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {_text(value)}")
    return "\n".join(lines)


def _text(value: object) -> str:
    """A value as an operator reads it: `none`, `a 1, b 2`, never a Python repr."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "none"
    return str(value)
