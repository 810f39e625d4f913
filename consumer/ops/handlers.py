"""What each subcommand does once its settings are read: `fn(args, settings) -> exit code`.

The parsers (consumer.ops.commands) name these; the work itself lives in the
command modules and the service, imported here only when the command runs,
because nothing that imports grpc may load before main() quiets its C core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from consumer.config import Settings, SinkSettings, top_level_settings
from consumer.errors import ConfigError

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow

__all__ = [
    "Handler",
    "backfill_plan",
    "demo",
    "devnet",
    "gaps",
    "migrate",
    "plan_settings",
    "quarantine",
    "reasons",
    "run",
    "status",
    "verify",
]

Handler = Callable[[argparse.Namespace, Settings], int]
T = TypeVar("T")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.service.serve import serve

    asyncio.run(serve(settings))
    return 0


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.admin import migrate_command

    asyncio.run(migrate_command(settings, args.print_grants))
    return 0


def status(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.status import status_command

    report, code = asyncio.run(status_command(settings, args.chain_id))
    _print_status(report, as_json=args.json)
    return code


def quarantine(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.admin import quarantine_command

    return asyncio.run(
        quarantine_command(settings, args.action, args.chain_id, args.height, args.tx_index)
    )


def reasons(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.admin import format_reasons, reasons_command

    low = settings.from_height or 1
    report = asyncio.run(reasons_command(settings, args.chain_id, low, settings.to_height))
    print(json.dumps(report, indent=2) if args.json else format_reasons(report))
    return 0


def devnet(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.devnet.main import serve_devnet

    asyncio.run(serve_devnet(args))
    return 0


def demo(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.demo import run_demo

    return asyncio.run(run_demo(args))


def verify(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.verify_command import verify_command

    return verify_command(args, settings)


def gaps(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.backfill import find_gaps, format_gaps

    found = _on_database(
        settings.sink,
        lambda conn: find_gaps(
            conn,
            args.chain_id,
            args.gaps_from,
            args.gaps_to,
            settings.sink.stream,
            args.ledger_quiet_blocks,
        ),
    )
    print(format_gaps(found, as_json=args.json))
    return 0 if found.ok else 1


def plan_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """A plan is arithmetic; only --resume reads the database."""
    if args.resume:
        return Settings.from_args(args, environ)
    return top_level_settings(args, environ)


def backfill_plan(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.backfill import format_plan, plan_parts, resume_height

    plan = plan_parts(args.plan_from, args.plan_to, args.parts)
    if args.index is None:
        if args.resume:
            raise ConfigError("--resume needs --index")
        print(format_plan(plan, as_json=args.json))
        return 0
    if not 0 <= args.index < len(plan):
        raise ConfigError(f"--index must be 0..{len(plan) - 1}, got {args.index}")
    part = plan[args.index]
    start = None
    if args.resume:
        start = _on_database(settings.sink, lambda conn: resume_height(conn, part))
    print(" ".join(part.run_args(start)))
    return 0


def _on_database(
    sink: SinkSettings, work: Callable[[AsyncConnection[TupleRow]], Awaitable[T]]
) -> T:
    """Run one query function on its own connection, database errors explained for the operator."""
    from consumer.sink.database import command_session

    async def on_connection() -> T:
        async with command_session(sink) as conn:
            return await work(conn)

    return asyncio.run(on_connection())


def _print_status(report: dict[str, Any], as_json: bool) -> None:
    from consumer.ops.status import format_status

    if as_json:
        print(json.dumps(report, default=_json_default, indent=2))
        return
    print(format_status(report))


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or UTC).isoformat()
    return str(value)
