"""The gRPC client of one Core node: the channel, the calls, and the errors translated.

The only place that turns a `grpc.aio.AioRpcError` into one of ours (httpx's
boundary): retryable codes become SourceUnavailable with the code, a call the
node does not serve is `Unimplemented`, a reply over --max-message-bytes is
`TooLarge`, and a failed TLS handshake is a ConfigError saying what to fix.
Block envelopes are read here through the view messages
(proto/core/v1/view.proto), so an unreadable one becomes a Block carrying its
error instead of an exception. CoreSource (consumer.source.core) drives it.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from consumer._pb.core.v1 import types_pb2, view_pb2
from consumer.config import SourceSettings, parse_core_url
from consumer.errors import ConfigError, SourceFailed, SourceUnavailable
from consumer.model import Block, RawTx, Rpc

__all__ = [
    "CoreClient",
    "NodeInfo",
    "TooLarge",
    "Unimplemented",
    "delivered",
    "parse_block",
    "reconnect_options",
    "tls_failure",
]

_SERVICE = "/core.v1.CoreService/"
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass(frozen=True, slots=True)
class NodeInfo:
    chain_id: str
    head: int


class Unimplemented(SourceFailed):
    """The node does not serve a call. StreamBlocks: an older node, to be polled
    instead; any other call is a SourceFailed like any refusal waiting cannot fix."""

    def __init__(self, message: str, call: str) -> None:
        super().__init__(message)
        self.call = call


class TooLarge(ConfigError):
    """A reply over --max-message-bytes. For one block it is the operator's to fix;
    for a GetBlocks window of several, a smaller window is (see WindowSizer.too_large)."""


def tls_failure(detail: str) -> str | None:
    """What to fix when a TLS handshake failed, or None if the error is not one.

    Retrying a handshake cannot help: the port speaks plaintext, or the node's
    certificate is not trusted. The operator is told which at once.
    """
    lowered = detail.lower()
    if "handshake failed" not in lowered:
        return None
    if "wrong_version_number" in lowered or "packet_length_too_long" in lowered:
        return "TLS handshake failed: the port speaks plaintext; use http://host:port"
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return (
            "TLS handshake failed: the node's certificate is not trusted; give its CA in "
            "--core-ca-file"
        )
    return "TLS handshake failed: check the scheme (http vs https) and --core-ca-file"


def parse_block(raw: bytes, expected_height: int, via: Rpc = Rpc.UNKNOWN) -> Block:
    """Read a block's envelope; an unreadable one becomes a Block carrying the error."""
    return _read_block(raw, expected_height, via)[0]


def _read_block(raw: bytes, expected_height: int, via: Rpc) -> tuple[Block, tuple[str, ...]]:
    """The block and the chain ids its transactions name (empty where unset)."""
    try:
        view = view_pb2.BlockView.FromString(raw)
    except DecodeError as exc:
        return Block.unreadable(expected_height, raw, f"block envelope: {exc}", via), ()
    ts = view.timestamp
    txs = tuple(RawTx(tx.hash, tx.transaction) for tx in view.transactions)
    chains = tuple({tx.chain_id for tx in view.transactions if tx.chain_id})
    block = Block(view.height, view.hash, view.chain_id, ts.seconds, ts.nanos, txs, via=via)
    return block, chains


def delivered(raw: bytes, height: int, via: Rpc) -> tuple[Block, tuple[str, ...]]:
    """A block delivered for `height`. An envelope that parses but names no height
    (empty bytes read as height 0) can never be a block: set aside, as garbage is."""
    block, chains = _read_block(raw, height, via)
    if not block.error and block.height <= 0:
        return Block.unreadable(height, raw, f"envelope says height {block.height}", via), ()
    return block, chains


# gRPC's jitter adds up to 20 % to each reconnect delay; the cap leaves room for it.
_GRPC_JITTER = 0.2
# A connection attempt to a host that drops packets waits at least this long.
_MIN_CONNECT_S = 1.0


def reconnect_options(retry_cap_s: float) -> list[tuple[str, int]]:
    """Channel options that hold gRPC's own reconnect backoff to --retry-cap-s.

    Without them the channel keeps its defaults (1 s growing by 1.6 to 120 s) under
    our retries: after an outage of a minute or two, every call fails at once with
    UNAVAILABLE while the channel sleeps out its backoff, so the service stayed away
    up to two minutes from a node that was back. With the delay capped (jitter
    included) the channel tries the node at least once a cap, as our retries do.
    The connect attempt's own deadline (min_reconnect_backoff) is kept short too,
    so that one attempt to an unanswering address cannot outlast the cap.
    """
    cap_ms = max(100, int(retry_cap_s * 1000 / (1 + _GRPC_JITTER)))  # no hot loop
    return [
        ("grpc.initial_reconnect_backoff_ms", min(cap_ms, 1000)),
        ("grpc.max_reconnect_backoff_ms", cap_ms),
        ("grpc.min_reconnect_backoff_ms", max(cap_ms, int(_MIN_CONNECT_S * 1000))),
    ]


class CoreClient:
    """One channel to one node: every unary call has a deadline, every error is ours."""

    def __init__(self, settings: SourceSettings) -> None:
        self.settings = settings
        self.url = settings.core_url
        target, tls = parse_core_url(settings.core_url)
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.enable_retries", 0),
            *reconnect_options(settings.retry_cap_s),
        ]
        if tls:
            ca = settings.core_ca_file
            try:
                roots = pathlib.Path(ca).read_bytes() if ca is not None else None
            except OSError as exc:
                raise ConfigError(f"--core-ca-file {ca}: {exc.strerror}") from None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = aio.secure_channel(target, credentials, options)
        else:
            self._channel = aio.insecure_channel(target, options)
        ser = _serialize
        ch = self._channel
        self._node_info = ch.unary_unary(
            _SERVICE + "GetNodeInfo", ser, types_pb2.GetNodeInfoResponse.FromString
        )
        self._status = ch.unary_unary(
            _SERVICE + "GetStatus", ser, types_pb2.GetStatusResponse.FromString
        )
        self._get_block = ch.unary_unary(
            _SERVICE + "GetBlock", ser, view_pb2.GetBlockResponseView.FromString
        )
        self._get_blocks = ch.unary_unary(_SERVICE + "GetBlocks", ser, _identity)
        self._stream = ch.unary_stream(_SERVICE + "StreamBlocks", ser, _identity)

    async def close(self) -> None:
        await self._channel.close(None)

    def _error(self, exc: aio.AioRpcError, call: str) -> Exception:
        code = exc.code()
        detail = exc.details() or ""
        where = f"{call} on {self.url}"
        tls_hint = tls_failure(detail)
        if tls_hint is not None:
            return ConfigError(f"{where}: {tls_hint}")
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return Unimplemented(f"{where}: UNIMPLEMENTED {detail}".rstrip(), call)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in detail:
            return TooLarge(
                f"{where}: a reply exceeds the receive limit ({detail}); "
                "raise --max-message-bytes (CORE_PLAYS_MAX_MESSAGE_BYTES)"
            )
        message = f"{where}: {code.name} {detail}".rstrip()
        if code in _RETRYABLE:
            return SourceUnavailable(message, code.name)
        return SourceFailed(message)

    async def _unary(self, call: str, fn: Any, request: Any) -> Any:
        try:
            return await fn(request, timeout=self.settings.rpc_timeout_s)
        except aio.AioRpcError as exc:
            raise self._error(exc, call) from exc

    async def node_info(self) -> NodeInfo:
        reply = await self._unary("GetNodeInfo", self._node_info, types_pb2.GetNodeInfoRequest())
        return NodeInfo(reply.chainid, reply.current_height)

    async def head(self) -> int:
        """The node's current height; GetStatus first, GetNodeInfo on nodes without it."""
        try:
            reply = await self._unary("GetStatus", self._status, types_pb2.GetStatusRequest())
            return int(reply.chain_info.current_height)
        except Unimplemented:
            return (await self.node_info()).head

    async def block(self, height: int) -> Block | None:
        """One block, None if not produced yet."""
        raw = await self.block_raw(height)
        return None if raw is None else parse_block(raw, height, Rpc.GET_BLOCK)

    async def block_raw(self, height: int) -> bytes | None:
        """One block's bytes, None if not produced yet (a node answers height -1)."""
        reply = await self._unary(
            f"GetBlock({height})", self._get_block, types_pb2.GetBlockRequest(height=height)
        )
        block = parse_block(reply.block, height, Rpc.GET_BLOCK)
        if block.error == "" and block.height == -1:
            return None
        return bytes(reply.block)

    async def blocks_raw(self, heights: list[int]) -> tuple[dict[int, bytes], int]:
        """Raw block bytes by height (absent heights are not produced yet) and the head."""
        raw = await self._unary(
            f"GetBlocks({heights[0]}..{heights[-1]})",
            self._get_blocks,
            types_pb2.GetBlocksRequest(height=heights),
        )
        try:
            reply = view_pb2.GetBlocksResponseView.FromString(raw)
        except DecodeError as exc:
            raise SourceUnavailable(
                f"GetBlocks on {self.url}: unreadable reply: {exc}", "MALFORMED_REPLY"
            ) from exc
        return dict(reply.blocks), reply.current_height

    async def stream_raw(self, start: int) -> AsyncGenerator[bytes, None]:
        """Raw block bytes from StreamBlocks(canon=true, start_height=start)."""
        call = self._stream(types_pb2.StreamBlocksRequest(canon=True, start_height=start))
        try:
            async for message in call:
                block = view_pb2.StreamBlocksResponseView.FromString(message).block
                # Not held while the block is used: a big block is not kept twice.
                del message
                yield block
                del block
        except aio.AioRpcError as exc:
            raise self._error(exc, f"StreamBlocks({start})") from exc
        except DecodeError as exc:
            raise SourceUnavailable(
                f"StreamBlocks on {self.url}: unreadable message: {exc}", "MALFORMED_REPLY"
            ) from exc
        finally:
            call.cancel()


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]


def _identity(raw: bytes) -> bytes:
    return raw
