"""The privileges `run` and the runbook's commands need, as GRANTs to print and as a check.

Least privilege: only `migrate` needs DDL rights. A runtime role with the grants of
`runtime_grants` (DML on what it writes, TEMPORARY for its staging tables) runs
every command of the Deployment's pod; one without them is refused at start,
listing every missing grant, instead of failing its first batch. The list below is
the one place that says what the service does with each object and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from consumer.errors import ConfigError, SchemaMismatch

__all__ = ["check_runtime_privileges", "runtime_grants"]


# What `run` does with each object, and why it needs the privilege.
_RUNTIME_PRIVILEGES: tuple[tuple[str, str, str, str], ...] = (
    ("database", "", "CONNECT", "to connect"),
    ("database", "", "TEMPORARY", "binary COPY goes through per-session temp staging tables"),
    ("schema", "core_plays", "USAGE", "the service's own tables live there"),
    ("table", "core_plays.migrations", "SELECT", "`run` checks the schema version at start"),
    ("table", "core_plays.tx_ledger", "SELECT", "RETURNING the new ledger rows; status, gaps"),
    ("table", "core_plays.tx_ledger", "INSERT", "one ledger row per play transaction"),
    ("table", "core_plays.checkpoint", "SELECT", "reading progress, ON CONFLICT DO UPDATE"),
    ("table", "core_plays.checkpoint", "INSERT", "the first checkpoint of a stream"),
    ("table", "core_plays.checkpoint", "UPDATE", "moving the checkpoint with every batch"),
    ("table", "core_plays.quarantine", "SELECT", "RETURNING what was quarantined; status"),
    ("table", "core_plays.quarantine", "INSERT", "undecodable transactions and blocks"),
    ("table", "core_plays.quarantine", "UPDATE", "`quarantine retry` marks what it wrote"),
    ("table", "core_plays.conflicts", "SELECT", "RETURNING the new disagreements; verify"),
    ("table", "core_plays.conflicts", "INSERT", "disagreements between two deliveries"),
    ("table", "core_plays.handover", "SELECT", "where the handover stands (--handover-from)"),
    ("table", "core_plays.handover", "INSERT", "the handover's progress and takeover"),
    ("table", "core_plays.handover", "UPDATE", "the handover's progress and takeover"),
    ("plays_schema", "", "USAGE", "plays lives there"),
    ("table", "plays", "SELECT", "`verify` and the audit compare the rows with the chain"),
    ("table", "plays", "INSERT", "the rows this service exists to write"),
    ("other_writer", "", "SELECT", "recognising the other writer's rows; --handover-from"),
    ("sequence", "", "USAGE", "nextval() for plays.id"),
)

_PLAYS_OBJECTS = """
SELECT n.nspname, c.relname, pg_get_serial_sequence(c.oid::regclass::text, 'id'),
       current_database(), current_user,
       EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
       to_regclass('core_indexed_blocks')::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('plays')
"""


@dataclass(frozen=True, slots=True)
class _Objects:
    plays_schema: str
    plays: str
    sequence: str | None
    database: str
    user: str
    has_triggers: bool
    other_writer: str | None  # the legacy writers' progress table, where it exists


async def _objects(conn: psycopg.AsyncConnection[TupleRow]) -> _Objects:
    cur = await conn.execute(_PLAYS_OBJECTS)
    row = await cur.fetchone()
    if row is None:
        raise SchemaMismatch("table plays does not exist (run `plays-consumer migrate`)")
    return _Objects(*row)


def _privilege_rows(objects: _Objects) -> list[tuple[str, str, str, str]]:
    """(kind, qualified name, privilege, why) with this database's real names."""
    plays = f"{objects.plays_schema}.{objects.plays}"
    names = {
        "database": ("database", objects.database),
        "plays_schema": ("schema", objects.plays_schema),
        "sequence": ("sequence", objects.sequence),
        "other_writer": ("table", objects.other_writer),
    }
    rows = []
    for kind, name, privilege, why in _RUNTIME_PRIVILEGES:
        real_kind, real_name = names.get(kind, (kind, plays if name == "plays" else name))
        if real_name is not None:  # an id without a sequence needs nothing
            rows.append((real_kind, real_name, privilege, why))
    return rows


_GRANT_ON = {
    "database": sql.SQL("DATABASE "),
    "schema": sql.SQL("SCHEMA "),
    "table": sql.SQL(""),
    "sequence": sql.SQL("SEQUENCE "),
}


def _qualified(name: str) -> sql.Composable:
    return sql.Identifier(*name.split(".", 1))


async def runtime_grants(conn: psycopg.AsyncConnection[TupleRow], role: str) -> str:
    """The exact GRANT statements for a role that owns nothing and runs every command
    the runbook runs in the Deployment's pod (`run`, `status`, `gaps`, `verify`,
    `quarantine retry`), each with why; run them as the owner after `migrate`."""
    objects = await _objects(conn)
    grouped: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for kind, name, privilege, why in _privilege_rows(objects):
        grouped.setdefault((kind, name), []).append((privilege, why))
    lines = [
        f"-- least privilege for `plays-consumer run` and the runbook's commands as {role}; "
        "apply as the owner"
    ]
    for (kind, name), privileges in grouped.items():
        lines += [f"-- {privilege}: {why}" for privilege, why in privileges]
        target = sql.Identifier(name) if kind in ("database", "schema") else _qualified(name)
        on = _GRANT_ON[kind]
        statement = sql.SQL("GRANT {} ON {}{} TO {};").format(
            sql.SQL(", ").join(sql.SQL(p) for p, _ in privileges),
            on,
            target,
            sql.Identifier(role),
        )
        lines.append(statement.as_string(conn))
    if objects.has_triggers:
        lines.append(
            "-- plays has triggers (on_play): unless they are SECURITY DEFINER, the role also "
            "needs the privileges they use (e.g. on aggregate_plays)"
        )
    return "\n".join(lines)


# CASE evaluates only the branch taken, so each row asks its own kind of object.
_MISSING_PRIVILEGES = """
SELECT k, n, p FROM unnest(%s::text[], %s::text[], %s::text[]) AS x(k, n, p)
WHERE NOT CASE k
    WHEN 'database' THEN has_database_privilege(n, p)
    WHEN 'schema' THEN has_schema_privilege(n, p)
    WHEN 'sequence' THEN has_sequence_privilege(n, p)
    ELSE has_table_privilege(n, p)
END
"""


async def check_runtime_privileges(conn: psycopg.AsyncConnection[TupleRow], safe_url: str) -> None:
    """Refuse to start, listing every missing grant, rather than fail mid-batch."""
    objects = await _objects(conn)
    rows = _privilege_rows(objects)
    cur = await conn.execute(
        _MISSING_PRIVILEGES,
        ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
    )
    missing = [f"{privilege} on {kind} {name}" for kind, name, privilege in await cur.fetchall()]
    if missing:
        raise ConfigError(
            f"database user {objects.user} at {safe_url} lacks {', '.join(missing)}: as the "
            f"owner, apply what `plays-consumer migrate --print-grants {objects.user}` prints"
        )
