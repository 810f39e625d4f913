"""`plays-consumer`: argparse -> Settings -> asyncio.run -> exit code.

Errors the operator must act on print one line and exit 2 (a traceback only
with --debug); a clean stop (SIGTERM, SIGINT, --to-height reached) exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from consumer import __version__
from consumer.config import Settings, add_options
from consumer.database import connect
from consumer.errors import ConfigError, ConsumerError
from consumer.http import HttpServer
from consumer.logs import setup_logging
from consumer.metrics import Metrics
from consumer.runner import Runner

if TYPE_CHECKING:
    from consumer.backfill import GapReport

__all__ = ["build_parser", "main"]

log = logging.getLogger("consumer")

_ALL = ("source", "sink", "batch", "http", "")
_LOGGING = ("log-format", "log-level", "debug")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plays-consumer",
        description="Follow the OpenAudio Core chain and write its plays into PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="follow the chain into plays (forever, or to --to-height)")
    add_options(run, _ALL)

    migrate = sub.add_parser("migrate", help="apply schema migrations and exit")
    add_options(migrate, ("database-url", "database-password-file", "connect-timeout-s", *_LOGGING))

    status = sub.add_parser("status", help="checkpoint, node head and lag (exit 1 if lagging)")
    add_options(
        status,
        (
            "core-url",
            "rpc-timeout-s",
            "connect-timeout-s",
            "max-message-bytes",
            "database-url",
            "database-password-file",
            "stream",
            "ready-max-lag-s",
            *_LOGGING,
        ),
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")

    quarantine = sub.add_parser(
        "quarantine",
        help="list quarantined transactions, show one, or retry the set-aside ones "
        "(exit 1 while any stay unwritten)",
    )
    quarantine.add_argument("action", nargs="?", choices=("list", "show", "retry"), default="list")
    quarantine.add_argument("--chain-id", help="default: every chain")
    quarantine.add_argument("--height", type=int, help="with show: the block height")
    quarantine.add_argument("--tx-index", type=int, help="with show: the transaction's index")
    add_options(
        quarantine,
        ("database-url", "database-password-file", "connect-timeout-s", "stream", *_LOGGING),
    )

    devnet = sub.add_parser("devnet", help="serve a simulated Core chain over gRPC")
    _add_devnet_options(devnet)
    devnet.add_argument("--listen", default="127.0.0.1:50051", help="host:port to serve on")
    devnet.add_argument(
        "--max-height", type=int, default=None, help="stop producing blocks at this height"
    )
    add_options(devnet, _LOGGING)

    _add_backfill_commands(sub)
    _add_verify_command(sub)

    demo = sub.add_parser("demo", help="embedded PostgreSQL + devnet + run, with progress")
    _add_devnet_options(demo, height=1000, interval=0.02)
    demo.add_argument("--blocks", type=int, default=2000, help="stop after this many blocks")
    add_options(demo, _LOGGING)
    return parser


def _add_backfill_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    database = ("database-url", "database-password-file", "connect-timeout-s", *_LOGGING)
    plan = sub.add_parser(
        "backfill-plan",
        help="split heights [FROM, TO) into parts to backfill side by side",
        description="Print one `run` flag line per part. --from/--to are half-open, [A, B); "
        "the printed --from-height/--to-height pairs are inclusive, as `run` takes them.",
    )
    plan.add_argument("--from", dest="plan_from", type=int, required=True, metavar="A")
    plan.add_argument(
        "--to",
        dest="plan_to",
        type=int,
        required=True,
        metavar="B",
        help="first height NOT filled, e.g. the live stream's start_height",
    )
    plan.add_argument("--parts", type=int, required=True, metavar="N")
    plan.add_argument(
        "--index",
        type=int,
        metavar="I",
        help="print only part I (0-based, as JOB_COMPLETION_INDEX) as `run` flags",
    )
    plan.add_argument(
        "--resume",
        action="store_true",
        help="with --index: start after that part's checkpoint if it has one (reads the database)",
    )
    plan.add_argument("--json", action="store_true", help="print the parts as JSON")
    add_options(plan, database)

    gaps = sub.add_parser(
        "gaps", help="heights that no checkpoint stream covers (exit 1 if there are any)"
    )
    gaps.add_argument("--chain-id", help="default: the only chain with checkpoints")
    gaps.add_argument(
        "--from-height",
        dest="gaps_from",
        type=int,
        metavar="N",
        help="default: the lowest stream start",
    )
    gaps.add_argument(
        "--to-height",
        dest="gaps_to",
        type=int,
        metavar="M",
        help="inclusive; default: the --stream checkpoint (live), else the highest stream",
    )
    gaps.add_argument(
        "--ledger-quiet-blocks",
        type=int,
        metavar="K",
        help="also fail on K or more heights in a row without a play transaction in the ledger",
    )
    gaps.add_argument("--json", action="store_true", help="print one JSON object")
    add_options(gaps, ("stream", *database))


def _add_verify_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = sub.add_parser(
        "verify",
        help="compare plays with the chain over --from-height..--to-height "
        "(exit 0 match, 1 differences, 2 errors)",
        description="Re-read the heights through GetBlocks and compare each block's hash, "
        "every plays transaction's hash and play count with the ledger, and the rows in plays "
        "at each slot with the rows the block maps to. --repair writes what is missing through "
        "the exactly-once path and never deletes.",
    )
    add_options(
        verify,
        (
            "core-url",
            "rpc-timeout-s",
            "connect-timeout-s",
            "max-message-bytes",
            "poll-concurrency",
            "database-url",
            "database-password-file",
            "from-height",
            "to-height",
            *_LOGGING,
        ),
    )
    verify.add_argument(
        "--repair",
        action="store_true",
        help="write missing transactions (ledger first, never deletes) [default: off]",
    )
    verify.add_argument(
        "--pruned-before",
        type=float,
        default=400.0,
        metavar="DAYS",
        help="rows older than this may have been pruned by the api: reported as "
        "pruned_or_missing, not missing [default: 400]",
    )
    verify.add_argument(
        "--max-differences",
        type=int,
        default=20,
        metavar="N",
        help="how many differences to list [default: 20]",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")


def _add_devnet_options(
    parser: argparse.ArgumentParser, height: int = 100, interval: float = 1.0
) -> None:
    from consumer.devnet import Profile

    parser.add_argument("--seed", type=int, default=1, help="chain seed (same seed, same chain)")
    parser.add_argument("--chain-id", default="devnet-1")
    parser.add_argument("--profile", choices=[p.value for p in Profile], default="typical")
    parser.add_argument("--height", type=int, default=height, help="blocks that exist at start")
    parser.add_argument(
        "--block-interval-s",
        type=float,
        default=interval,
        help="a new block every this many seconds (0: none)",
    )
    parser.add_argument(
        "--stream-unimplemented",
        action="store_true",
        help="answer StreamBlocks with UNIMPLEMENTED, like an older node",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get("CORE_PLAYS_DEBUG") == "1"
    try:
        return _dispatch(args)
    except ConsumerError as exc:
        if debug:
            log.exception("fatal")
        print(f"plays-consumer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command in ("devnet", "demo"):
        setup_logging(args.log_format or "text", args.log_level or "info")
        if command == "devnet":
            from consumer.devnet.main import serve_devnet

            asyncio.run(serve_devnet(args))
            return 0
        from consumer.demo import run_demo

        return asyncio.run(run_demo(args))
    if command == "backfill-plan" and not args.resume:
        return _backfill_plan(args, None)  # pure arithmetic: no settings, no database
    settings = Settings.from_args(args, os.environ)
    setup_logging(settings.log_format, settings.log_level)
    if command == "backfill-plan":
        return _backfill_plan(args, settings)
    if command == "gaps":
        from consumer.backfill import format_gaps

        found = asyncio.run(_gaps(args, settings))
        print(format_gaps(found, as_json=args.json))
        return 0 if found.ok else 1
    if command == "migrate":
        from consumer.admin import migrate_command

        asyncio.run(migrate_command(settings))
        return 0
    if command == "verify":
        from consumer.verify_command import verify_command

        return verify_command(args, settings)
    if command == "quarantine":
        from consumer.admin import quarantine_command

        return asyncio.run(
            quarantine_command(settings, args.action, args.chain_id, args.height, args.tx_index)
        )
    if command == "status":
        from consumer.admin import status_command

        report, ok = asyncio.run(status_command(settings))
        _print_status(report, as_json=args.json)
        return 0 if ok else 1
    asyncio.run(run_command(settings))
    return 0


def _backfill_plan(args: argparse.Namespace, settings: Settings | None) -> int:
    from consumer.backfill import format_plan, plan_parts, resume_height

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
    if settings is not None:
        sink = settings.sink

        async def resume() -> int:
            conn = await connect(sink.conninfo, sink.safe_url, sink.connect_timeout_s)
            async with conn:
                return await resume_height(conn, part)

        start = asyncio.run(resume())
    print(" ".join(part.run_args(start)))
    return 0


async def _gaps(args: argparse.Namespace, settings: Settings) -> GapReport:
    from consumer.backfill import find_gaps

    sink = settings.sink
    conn = await connect(sink.conninfo, sink.safe_url, sink.connect_timeout_s)
    async with conn:
        return await find_gaps(
            conn, args.chain_id, args.gaps_from, args.gaps_to, sink.stream, args.ledger_quiet_blocks
        )


async def run_command(settings: Settings, registry: CollectorRegistry | None = None) -> None:
    """The service: metrics endpoint plus the runner, until done or signalled."""
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    log.info("starting core-plays-consumer %s: %s", __version__, _effective(settings))
    runner = Runner(settings, metrics, stop)
    host, port = settings.http.host_port
    server = HttpServer(host, port, registry, runner.readiness)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(f"--metrics-addr {settings.http.metrics_addr}: {exc.strerror}") from None
    try:
        await runner.run()
    finally:
        await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped cleanly")


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("%s received: finishing the open batch, then stopping", sig.name)
    stop.set()


def _effective(settings: Settings) -> str:
    """The configuration in one line, without secrets (SinkSettings' repr redacts)."""
    return (
        f"core_url={settings.source.core_url} mode={settings.source.mode} "
        f"sink={settings.sink!r} from_height={settings.from_height} "
        f"to_height={settings.to_height} batch={settings.batch} "
        f"metrics_addr={settings.http.metrics_addr}"
    )


def _print_status(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, default=_json_default, indent=2))
        return
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or UTC).isoformat()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
