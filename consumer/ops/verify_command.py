"""The `verify` command's edges: settings in, report out, exit 0 / 1 / 2.

Kept apart from consumer.trust.verify so that the comparison and repair stay free of
terminals, JSON and exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import psycopg

from consumer.config import Settings
from consumer.errors import ConfigError, ConsumerError
from consumer.logs import fatal_line
from consumer.sink.database import command_session
from consumer.sink.written import DEFAULT_OTHER_WRITER
from consumer.source.core import CoreClient
from consumer.trust.verify import VerifyReport, verify_range

__all__ = ["verify_command"]


def verify_command(args: argparse.Namespace, settings: Settings) -> int:
    """0: the table matches the chain; 1: differences remain; 2: the check failed."""
    if settings.from_height is None or settings.to_height is None:
        raise ConfigError("verify needs --from-height and --to-height")
    try:
        report = asyncio.run(_verify(args, settings))
    except ConfigError:
        raise
    except (ConsumerError, psycopg.Error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(fatal_line(f"verify could not finish: {first}", settings.log_format), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.format_text())
    return 0 if report.ok else 1


async def _verify(args: argparse.Namespace, settings: Settings) -> VerifyReport:
    assert settings.from_height is not None and settings.to_height is not None
    client = CoreClient(settings.source)
    sink = settings.sink
    try:
        info = await client.node_info()
        async with command_session(sink) as conn:
            return await verify_range(
                client,
                conn,
                settings.source,
                info.chain_id,
                settings.from_height,
                settings.to_height,
                repair=args.repair,
                pruned_before_days=args.pruned_before,
                max_differences=args.max_differences,
                other_writer=settings.handover_from or DEFAULT_OTHER_WRITER,
                progress=_show_progress if sys.stderr.isatty() else None,
            )
    finally:
        await client.close()
        if sys.stderr.isatty():
            print(file=sys.stderr)


def _show_progress(done: int, total: int, seconds: float) -> None:
    rate = done / seconds if seconds > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    print(
        f"\rverify: {done:,}/{total:,} heights ({100 * done / total:.0f}%), "
        f"{rate:,.0f} heights/s, ETA {eta:,.0f} s   ",
        end="",
        file=sys.stderr,
        flush=True,
    )
