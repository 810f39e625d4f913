"""`plays-consumer`: argparse -> Settings -> asyncio.run -> exit code.

Errors the operator must act on print one line and exit 2 (a traceback only
with --debug); a clean stop (SIGTERM, SIGINT, --to-height reached) exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from consumer import __version__
from consumer.config import (
    BatchSettings,
    HttpSettings,
    LogFormat,
    Settings,
    SinkSettings,
    SourceSettings,
    add_options,
    flags_of,
    parse_bool,
    port_notes,
    top_level_settings,
)
from consumer.errors import ConfigError, ConsumerError
from consumer.logs import fatal_line, interrupted_line, setup_logging

# Nothing that imports grpc may be imported at module level: main() must set
# GRPC_VERBOSITY first, or grpc's C core prints a line per failed TLS handshake.
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace, Settings], int]
T = TypeVar("T")

log = logging.getLogger("consumer")

# Option sets by what a command touches. Adding an option to a settings class
# adds it to every command that takes that whole class (`run` takes them all).
LOGGING = ("log-format", "log-level", "debug")
DATABASE = ("database-url", "database-password-file", "connect-timeout-s", *LOGGING)
RUN = flags_of(SourceSettings, SinkSettings, BatchSettings, HttpSettings, Settings)
NODE = ("core-url", "core-ca-file", "rpc-timeout-s", "max-message-bytes")
STATUS = (*NODE, "stream", "ready-max-lag-s", *DATABASE)


class _HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default (or says it is required)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is None or action.default is False:
            return f"{text} (default: off)" if action.nargs == 0 else text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """No abbreviations (`--from` is not `--from-height`), and "did you mean" for typos."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.log_format = LogFormat.TEXT

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is None or value in action.choices:
            return
        choices = [str(c) for c in action.choices]
        raise argparse.ArgumentError(
            action,
            f"invalid choice {value!r}{_suggest(str(value), choices)}; "
            f"choose from {', '.join(choices)}",
        )

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            owner = self._subparser(parsed) or self
            known = list(owner._option_string_actions)
            words = [
                f"{word}{_suggest(word.split('=', 1)[0], known)}" if word.startswith("-") else word
                for word in extras
            ]
            owner.error(f"unrecognized arguments: {' '.join(words)}")
        return parsed

    def _subparser(self, parsed: argparse.Namespace) -> _Parser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                found = action.choices.get(getattr(parsed, action.dest, None) or "")
                return found if isinstance(found, _Parser) else None
        return None

    def error(self, message: str) -> NoReturn:
        if self.log_format is LogFormat.JSON:
            sys.stderr.write(fatal_line(f"{self.prog}: {message}", self.log_format) + "\n")
            sys.exit(2)
        super().error(message)


def _suggest(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


_VERSION = f"%(prog)s {__version__}"


def build_parser(log_format: LogFormat = LogFormat.TEXT) -> argparse.ArgumentParser:
    """The whole command line: one `_add_<command>` function per subcommand.

    A new subcommand: `p = sub.add_parser(NAME, help=...)`, `add_options(p, DATABASE)`
    (or any flag names) for the settings it reads, its own arguments, and
    `p.set_defaults(handler=fn)` where `fn(args, settings) -> exit code`. A command
    that needs no node or database adds `read_settings=top_level_settings`.
    """
    parser = _Parser(
        prog="plays-consumer",
        description="Follow the OpenAudio Core chain and write its plays into PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=_VERSION)
    parser.set_defaults(read_settings=Settings.from_args)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_migrate(sub)
    _add_status(sub)
    _add_quarantine(sub)
    _add_reasons(sub)
    _add_devnet(sub)
    _add_backfill_commands(sub)
    _add_verify_command(sub)
    _add_demo(sub)
    for each in (parser, *sub.choices.values()):
        each.log_format = log_format
    return parser


def _add_run(sub: argparse._SubParsersAction[Any]) -> None:
    run = sub.add_parser("run", help="follow the chain into plays (forever, or to --to-height)")
    run.add_argument("--version", action="version", version=_VERSION)
    add_options(run, RUN)
    run.set_defaults(handler=_run)


def _add_migrate(sub: argparse._SubParsersAction[Any]) -> None:
    migrate = sub.add_parser("migrate", help="apply schema migrations and exit")
    add_options(migrate, DATABASE)
    migrate.add_argument(
        "--print-grants",
        metavar="ROLE",
        help="print the GRANT statements a least-privilege ROLE needs for run, status and "
        "gaps (after migrating), and change nothing [default: off, migrate]",
    )
    migrate.set_defaults(handler=_migrate)


def _add_status(sub: argparse._SubParsersAction[Any]) -> None:
    status = sub.add_parser(
        "status",
        help="checkpoint, node head, lag and why not ok "
        "(exit 0 ok, 1 not ok, 2 operator error, 3 node unreachable)",
    )
    add_options(status, STATUS)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument(
        "--chain-id", help="default: the node's chain, else the only chain with checkpoints"
    )
    status.set_defaults(handler=_status)


def _add_quarantine(sub: argparse._SubParsersAction[Any]) -> None:
    quarantine = sub.add_parser(
        "quarantine",
        help="list quarantined transactions, show one, or retry the set-aside ones "
        "(exit 1 while any stay unwritten)",
    )
    quarantine.add_argument("action", nargs="?", choices=("list", "show", "retry"), default="list")
    quarantine.add_argument("--chain-id", help="default: every chain")
    quarantine.add_argument(
        "--height", type=int, help="with show: the block height [default: none, required]"
    )
    quarantine.add_argument(
        "--tx-index",
        type=int,
        help="with show: the transaction's index (-1: a whole block) [default: none, required]",
    )
    add_options(quarantine, (*DATABASE, "stream"))
    quarantine.set_defaults(handler=_quarantine)


def _add_reasons(sub: argparse._SubParsersAction[Any]) -> None:
    reasons = sub.add_parser(
        "reasons",
        help="plays skipped and repaired by reason, and quarantined by kind, over a height range",
    )
    reasons.add_argument(
        "--chain-id", help="the chain to report [default: the only chain with checkpoints]"
    )
    reasons.add_argument("--json", action="store_true", help="print one JSON object")
    add_options(reasons, (*DATABASE, "from-height", "to-height"))
    reasons.set_defaults(handler=_reasons)


def _add_devnet(sub: argparse._SubParsersAction[Any]) -> None:
    devnet = sub.add_parser("devnet", help="serve a simulated Core chain over gRPC")
    _add_devnet_options(devnet)
    devnet.add_argument("--listen", default="127.0.0.1:50051", help="host:port to serve on")
    devnet.add_argument(
        "--max-height",
        type=int,
        default=None,
        help="stop producing blocks at this height (default: never stop)",
    )
    add_options(devnet, LOGGING)
    devnet.set_defaults(handler=_devnet, read_settings=top_level_settings)


def _add_demo(sub: argparse._SubParsersAction[Any]) -> None:
    demo = sub.add_parser("demo", help="embedded PostgreSQL + devnet + run, with progress")
    _add_devnet_options(demo, height=1000, interval=0.02)
    demo.add_argument("--blocks", type=int, default=2000, help="stop after this many blocks")
    demo.add_argument(
        "--verbose",
        action="store_true",
        help="show the embedded PostgreSQL's and the service's own info logs",
    )
    demo.add_argument(
        "--keep-database",
        action="store_true",
        help="leave the embedded PostgreSQL running at the end and print its connection string",
    )
    add_options(demo, LOGGING)
    demo.set_defaults(handler=_demo, read_settings=top_level_settings)


def _add_backfill_commands(sub: argparse._SubParsersAction[Any]) -> None:
    plan = sub.add_parser(
        "backfill-plan",
        help="split heights [FROM, TO) into parts to backfill side by side",
        description="Print one `run` flag line per part. --from/--to are half-open, [A, B); "
        "the printed --from-height/--to-height pairs are inclusive, as `run` takes them.",
    )
    plan.add_argument(
        "--from",
        dest="plan_from",
        type=int,
        required=True,
        metavar="A",
        help="first height to fill",
    )
    plan.add_argument(
        "--to",
        dest="plan_to",
        type=int,
        required=True,
        metavar="B",
        help="first height NOT filled, e.g. the live stream's start_height",
    )
    plan.add_argument("--parts", type=int, required=True, metavar="N", help="how many parts")
    plan.add_argument(
        "--index",
        type=int,
        metavar="I",
        help="print only part I (0-based, as JOB_COMPLETION_INDEX) as `run` flags "
        "(default: print every part)",
    )
    plan.add_argument(
        "--resume",
        action="store_true",
        help="with --index: start after that part's checkpoint if it has one (reads the database)",
    )
    plan.add_argument("--json", action="store_true", help="print the parts as JSON")
    add_options(plan, DATABASE)
    plan.set_defaults(handler=_backfill_plan, read_settings=_plan_settings)

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
        help="also fail on K or more heights in a row without a play transaction in the "
        "ledger (default: no such check)",
    )
    gaps.add_argument("--json", action="store_true", help="print one JSON object")
    add_options(gaps, ("stream", *DATABASE))
    gaps.set_defaults(handler=_gaps)


def _add_verify_command(sub: argparse._SubParsersAction[Any]) -> None:
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
        (*NODE, "poll-concurrency", "from-height", "to-height", *DATABASE),
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
    verify.set_defaults(handler=_verify)


def _add_devnet_options(
    parser: argparse.ArgumentParser, height: int = 100, interval: float = 1.0
) -> None:
    from consumer.devnet.chain import Profile

    parser.add_argument("--seed", type=int, default=1, help="chain seed (same seed, same chain)")
    parser.add_argument("--chain-id", default="devnet-1", help="the chain id the node reports")
    parser.add_argument(
        "--profile",
        choices=[p.value for p in Profile],
        default="typical",
        help="how many plays the blocks carry",
    )
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
    parser.add_argument(
        "--stream-omits-first-tx",
        action="store_true",
        help="StreamBlocks sends every block without its first transaction, as a published "
        "node version does (GetBlock/GetBlocks stay complete)",
    )
    parser.add_argument(
        "--get-blocks-resorts-txs",
        action="store_true",
        help="GetBlock/GetBlocks sort each block's transactions by hash, as nodes before "
        "v1.9.0 did (StreamBlocks keeps chain order)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    log_format, debug = _early_logging(argv, os.environ)
    # Before anything imports grpc (see the imports above): its C core writes its own
    # lines to stderr (one per failed TLS handshake). Errors reach us as exceptions, so
    # none in JSON (every line must be JSON), errors only in text, all with --debug.
    if not debug:
        quiet = "NONE" if log_format is LogFormat.JSON else "ERROR"
        os.environ.setdefault("GRPC_VERBOSITY", quiet)  # an operator's own value wins
    args = build_parser(log_format).parse_args(argv)
    try:
        return _dispatch(args)
    except ConsumerError as exc:
        _fatal(str(exc), log_format, debug)
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(interrupted_line(log_format) + "\n")
        return 130
    except Exception as exc:  # a bug: still one line; --debug shows where
        hint = "" if debug else " (--debug shows where)"
        _fatal(f"internal error: {type(exc).__name__}: {exc}{hint}", log_format, debug)
        return 1


def _early_logging(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[LogFormat, bool]:
    """The log format and --debug before parsing, so even a parse error is reported in them."""
    text = environ.get("CORE_PLAYS_LOG_FORMAT", "")
    for i, word in enumerate(argv):
        if word == "--log-format" and i + 1 < len(argv):
            text = argv[i + 1]
        elif word.startswith("--log-format="):
            text = word.split("=", 1)[1]
    try:
        debug = "--debug" in argv or parse_bool(environ.get("CORE_PLAYS_DEBUG", "false"))
    except ValueError:
        debug = False  # reported when the settings are read
    fmt = LogFormat.JSON if text.strip().lower() == "json" else LogFormat.TEXT
    return fmt, debug


def _fatal(message: str, log_format: LogFormat, debug: bool) -> None:
    trace = traceback.format_exc() if debug else None
    if trace is not None and log_format is LogFormat.TEXT:
        sys.stderr.write(trace)
        trace = None
    sys.stderr.write(fatal_line(message, log_format, trace) + "\n")


def _dispatch(args: argparse.Namespace) -> int:
    """Settings as the command reads them, logging, then the command's handler."""
    settings: Settings = args.read_settings(args, os.environ)
    setup_logging(settings.log_format, settings.log_level)
    for note in port_notes(settings, os.environ, core=hasattr(args, "core_url")):
        log.info("%s", note)
    handler: Handler = args.handler
    return handler(args, settings)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    asyncio.run(run_command(settings))
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.admin import migrate_command

    asyncio.run(migrate_command(settings, args.print_grants))
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.admin import status_command

    report, code = asyncio.run(status_command(settings, args.chain_id))
    _print_status(report, as_json=args.json)
    return code


def _quarantine(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.admin import quarantine_command

    return asyncio.run(
        quarantine_command(settings, args.action, args.chain_id, args.height, args.tx_index)
    )


def _reasons(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.admin import format_reasons, reasons_command

    low = settings.from_height or 1
    report = asyncio.run(reasons_command(settings, args.chain_id, low, settings.to_height))
    print(json.dumps(report, indent=2) if args.json else format_reasons(report))
    return 0


def _devnet(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.devnet.main import serve_devnet

    asyncio.run(serve_devnet(args))
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.demo import run_demo

    return asyncio.run(run_demo(args))


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.ops.verify_command import verify_command

    return verify_command(args, settings)


def _gaps(args: argparse.Namespace, settings: Settings) -> int:
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


def _plan_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """A plan is arithmetic; only --resume reads the database."""
    if args.resume:
        return Settings.from_args(args, environ)
    return top_level_settings(args, environ)


def _backfill_plan(args: argparse.Namespace, settings: Settings) -> int:
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


async def run_command(settings: Settings, registry: CollectorRegistry | None = None) -> None:
    """The service: metrics endpoint plus the runner, until done or signalled."""
    from prometheus_client import CollectorRegistry

    from consumer.metrics import Metrics
    from consumer.service.http import HttpServer
    from consumer.service.runner import Runner

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
    """The configuration in one line, as values an operator reads (no Python reprs) and
    without secrets (safe_url has no password)."""
    sink, batch = settings.sink, settings.batch
    return (
        f"core_url={settings.source.core_url} mode={settings.source.source_mode.value} "
        f"database=[{sink.safe_url}] stream={sink.stream} "
        f"from_height={settings.from_height or 'checkpoint'} "
        f"to_height={settings.to_height or 'none (follow the chain)'} "
        f"batch={batch.max_blocks} blocks/{batch.max_plays} plays "
        f"metrics_addr={settings.http.metrics_addr}"
    )


def _print_status(report: dict[str, Any], as_json: bool) -> None:
    from consumer.ops.admin import format_status

    if as_json:
        print(json.dumps(report, default=_json_default, indent=2))
        return
    print(format_status(report))


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or UTC).isoformat()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
