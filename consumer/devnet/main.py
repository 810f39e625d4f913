"""`plays-consumer devnet`: serve a simulated chain until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import time

from consumer.config import parse_host_port
from consumer.devnet.chain import ChainSpec, DevChain, Profile
from consumer.devnet.server import DevnetServer, Faults
from consumer.errors import ConfigError

__all__ = ["devnet_from_args", "serve_devnet"]

log = logging.getLogger(__name__)


def devnet_from_args(
    args: argparse.Namespace, host: str = "127.0.0.1", port: int = 0, max_height: int | None = None
) -> DevnetServer:
    # Block times follow the wall clock (the head's block is "now", and later
    # blocks come every interval), so lag reads as it would on a real chain.
    step = args.block_interval_s or 1.0
    spec = ChainSpec(
        seed=args.seed,
        chain_id=args.chain_id,
        profile=Profile(args.profile),
        genesis_time_s=int(time.time() - args.height * step),
        block_time_step_s=step,
    )
    return DevnetServer(
        DevChain(spec),
        height=args.height,
        block_interval_s=args.block_interval_s,
        max_height=max_height,
        host=host,
        port=port,
        faults=Faults(
            stream_unimplemented=args.stream_unimplemented,
            stream_omits_first_tx=args.stream_omits_first_tx,
            get_blocks_resorts_txs=args.get_blocks_resorts_txs,
        ),
    )


def _check_bindable(host: str, port: int, listen: str) -> None:
    """Bind once ourselves: grpc reports a busy port only as a bare RuntimeError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"--listen {listen}: cannot resolve {host!r} ({exc})") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        try:
            sock.bind(address)
        except OSError as exc:
            raise ConfigError(f"--listen {listen}: cannot listen there ({exc.strerror})") from None


async def serve_devnet(args: argparse.Namespace) -> None:
    host, port = parse_host_port(args.listen, "--listen", default_host="127.0.0.1")
    _check_bindable(host, port, args.listen)
    server = devnet_from_args(args, host, port, args.max_height)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except RuntimeError as exc:  # grpc's bind failure (a race with another process)
        raise ConfigError(f"--listen {args.listen}: cannot listen there ({exc})") from None
    try:
        print(
            f"devnet: chain {server.chain.spec.chain_id} at height {server.head}, "
            f"serving core.v1.CoreService on {server.url}",
            flush=True,
        )
        await stop.wait()
    finally:
        await server.stop()
