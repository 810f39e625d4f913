"""Every subcommand's parser: one `_add_<command>` function each, and the option sets they share.

A command's flags are declared here and its work in consumer.ops.handlers, so the
command line can be read whole, as `--help` shows it, without reading what runs.
"""

from __future__ import annotations

import argparse
from typing import Any

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
    top_level_settings,
)
from consumer.ops import handlers
from consumer.ops.parsing import Parser

__all__ = ["build_parser"]

# Option sets by what a command touches. Adding an option to a settings class
# adds it to every command that takes that whole class (`run` takes them all).
LOGGING = ("log-format", "log-level", "debug")
DATABASE = ("database-url", "database-password-file", "connect-timeout-s", *LOGGING)
RUN = flags_of(SourceSettings, SinkSettings, BatchSettings, HttpSettings, Settings)
NODE = ("core-url", "core-ca-file", "rpc-timeout-s", "max-message-bytes")
STATUS = (*NODE, "stream", "ready-max-lag-s", *DATABASE)

_VERSION = f"%(prog)s {__version__}"


def build_parser(log_format: LogFormat = LogFormat.TEXT) -> argparse.ArgumentParser:
    """The whole command line: one `_add_<command>` function per subcommand.

    A new subcommand: `p = sub.add_parser(NAME, help=...)`, `add_options(p, DATABASE)`
    (or any flag names) for the settings it reads, its own arguments, and
    `p.set_defaults(handler=handlers.fn)` where `fn(args, settings) -> exit code`. A command
    that needs no node or database adds `read_settings=top_level_settings`.
    """
    parser = Parser(
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
    _add_backfill_plan(sub)
    _add_gaps(sub)
    _add_verify_command(sub)
    _add_demo(sub)
    for each in (parser, *sub.choices.values()):
        each.log_format = log_format
    return parser


def _add_run(sub: argparse._SubParsersAction[Any]) -> None:
    run = sub.add_parser("run", help="follow the chain into plays (forever, or to --to-height)")
    run.add_argument("--version", action="version", version=_VERSION)
    add_options(run, RUN)
    run.set_defaults(handler=handlers.run)


def _add_migrate(sub: argparse._SubParsersAction[Any]) -> None:
    migrate = sub.add_parser("migrate", help="apply schema migrations and exit")
    add_options(migrate, DATABASE)
    migrate.add_argument(
        "--print-grants",
        metavar="ROLE",
        help="print the GRANT statements a least-privilege ROLE needs for run and the "
        "runbook's commands (status, gaps, verify, quarantine retry), after migrating, and "
        "change nothing [default: off, migrate]",
    )
    migrate.set_defaults(handler=handlers.migrate)


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
    status.set_defaults(handler=handlers.status)


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
    quarantine.set_defaults(handler=handlers.quarantine)


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
    reasons.set_defaults(handler=handlers.reasons)


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
    devnet.set_defaults(handler=handlers.devnet, read_settings=top_level_settings)


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
    demo.set_defaults(handler=handlers.demo, read_settings=top_level_settings)


def _add_backfill_plan(sub: argparse._SubParsersAction[Any]) -> None:
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
    plan.set_defaults(handler=handlers.backfill_plan, read_settings=handlers.plan_settings)


def _add_gaps(sub: argparse._SubParsersAction[Any]) -> None:
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
    gaps.set_defaults(handler=handlers.gaps)


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
    verify.set_defaults(handler=handlers.verify)


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
