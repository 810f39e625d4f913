"""A deterministic simulated Core chain: the one place that knows how to fake blocks.

Every block is a pure function of (spec, height), so a test can recompute what
the devnet served, a restarted devnet serves the same chain, and two processes
given the same seed agree without talking. Blocks are generated on demand and
cached, so a chain of millions of heights costs nothing until it is read.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from consumer._pb.core.v1 import types_pb2, view_pb2

__all__ = ["ChainSpec", "DevChain", "GeneratedTx", "Profile", "TxKind"]


class Profile(StrEnum):
    """Shapes of chain: what the benchmark and the demo choose between."""

    EMPTY = "empty"  # no transactions at all
    TYPICAL = "typical"  # mostly empty blocks, a few small play txs, some oddities
    BUSY = "busy"  # every block carries thousands of plays


class TxKind(StrEnum):
    PLAYS = "plays"
    NON_PLAY = "non_play"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """What chain to simulate. Equal specs generate byte-identical chains."""

    seed: int = 1
    chain_id: str = "devnet-1"
    profile: Profile = Profile.TYPICAL
    genesis_time_s: int = 1_767_225_600  # 2026-01-01T00:00:00Z
    block_time_step_s: float = 1.0
    # A different salt gives every block another hash: a "restored" or forked node.
    hash_salt: str = ""
    # Fractions for the typical profile.
    empty_block_ratio: float = 0.6
    malformed_tx_ratio: float = 0.03
    non_play_tx_ratio: float = 0.15
    anonymous_ratio: float = 0.2
    odd_play_ratio: float = 0.05
    max_txs_per_block: int = 4
    max_plays_per_tx: int = 8
    busy_txs_per_block: int = 10
    busy_plays_per_tx: int = 200
    # Real transactions instead of generated ones: a file of [uint32 LE length][
    # SignedTransaction] records (../shared/data/take1.pb), laid into blocks of
    # `recorded_per_block` in file order; heights past the file are empty.
    recorded: str = ""
    recorded_per_block: int = 10


@dataclass(frozen=True, slots=True)
class GeneratedTx:
    """A transaction as the chain holds it, with the plays that went into it."""

    kind: TxKind
    hash: str
    data: bytes
    plays: tuple[types_pb2.TrackPlay, ...] = field(default=())


_NON_PLAY_MEMBERS = (
    "validator_registration",
    "sla_rollup",
    "manage_entity",
    "storage_proof",
    "attestation",
    "reward",
    "file_upload",
)
_CITIES = (("Lisbon", "Lisboa", "PT"), ("Lagos", "Lagos", "NG"), ("Austin", "Texas", "US"))


def _tx_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest().upper()


def _read_recorded(path: str) -> tuple[GeneratedTx, ...]:
    """Real transactions from a recording; the hash is a real node's (SHA-256, upper hex)."""
    data = Path(path).read_bytes()
    txs: list[GeneratedTx] = []
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        raw = data[offset + 4 : offset + 4 + length]
        offset += 4 + length
        signed = types_pb2.SignedTransaction.FromString(raw)
        member = signed.WhichOneof("transaction")
        kind = TxKind.PLAYS if member == "plays" else TxKind.NON_PLAY
        plays = tuple(signed.plays.plays) if member == "plays" else ()
        txs.append(GeneratedTx(kind, _tx_hash(raw), raw, plays))
    return tuple(txs)


class DevChain:
    """Generates and caches the blocks of one simulated chain."""

    def __init__(self, spec: ChainSpec, cache_blocks: int = 4096) -> None:
        self.spec = spec
        self._cache: OrderedDict[int, tuple[GeneratedTx, ...]] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._busy_template: bytes | None = None
        self._recorded = _read_recorded(spec.recorded) if spec.recorded else ()

    def block_hash(self, height: int) -> str:
        key = f"{self.spec.chain_id}:{self.spec.seed}:{self.spec.hash_salt}:{height}"
        return hashlib.sha256(key.encode()).hexdigest().upper()

    def block_time(self, height: int) -> tuple[int, int]:
        """The block's timestamp as (seconds, nanos)."""
        total_ns = self.spec.genesis_time_s * 10**9 + round(
            height * self.spec.block_time_step_s * 10**9
        )
        return divmod(total_ns, 10**9)

    def block_time_s(self, height: int) -> int:
        return self.block_time(height)[0]

    def txs(self, height: int) -> tuple[GeneratedTx, ...]:
        """The block's transactions in canonical (on-chain) order."""
        cached = self._cache.get(height)
        if cached is not None:
            self._cache.move_to_end(height)
            return cached
        txs = self._generate(height)
        self._cache[height] = txs
        if len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)
        return txs

    def block_bytes(self, height: int, canon: bool) -> bytes:
        """The serialized core.v1.Block, transactions in chain order; canon=False
        sorts them by hash, as GetBlock(s) did on nodes before v1.9.0."""
        txs = self.txs(height)
        if not canon:
            txs = tuple(sorted(txs, key=lambda t: t.hash))
        seconds, nanos = self.block_time(height)
        block = view_pb2.BlockView(
            height=height,
            hash=self.block_hash(height),
            chain_id=self.spec.chain_id,
            timestamp=Timestamp(seconds=seconds, nanos=nanos),
            transactions=[view_pb2.TransactionView(hash=t.hash, transaction=t.data) for t in txs],
        )
        return block.SerializeToString()

    # --- generation ---------------------------------------------------------

    @property
    def recorded_heights(self) -> int:
        """How many heights the recorded transactions fill (0 without a recording)."""
        per = self.spec.recorded_per_block
        return (len(self._recorded) + per - 1) // per

    def _generate(self, height: int) -> tuple[GeneratedTx, ...]:
        spec = self.spec
        if spec.recorded:
            first = (height - 1) * spec.recorded_per_block
            return self._recorded[first : first + spec.recorded_per_block] if height > 0 else ()
        if spec.profile is Profile.EMPTY:
            return ()
        if spec.profile is Profile.BUSY:
            return self._busy(height)
        rng = random.Random(spec.seed * 1_000_003 + height)
        if rng.random() < spec.empty_block_ratio:
            return ()
        out = []
        for index in range(rng.randint(1, spec.max_txs_per_block)):
            roll = rng.random()
            if roll < spec.malformed_tx_ratio:
                out.append(self._malformed(rng, height, index))
            elif roll < spec.malformed_tx_ratio + spec.non_play_tx_ratio:
                out.append(self._non_play(rng, height, index))
            else:
                out.append(self._plays(rng, height, index))
        return tuple(out)

    def _request_id(self, height: int, index: int) -> str:
        return f"{self.spec.seed}-{height}-{index}"

    def _plays(self, rng: random.Random, height: int, index: int) -> GeneratedTx:
        spec = self.spec
        plays = []
        for _ in range(rng.randint(1, spec.max_plays_per_tx)):
            city, region, country = rng.choice(_CITIES)
            play = types_pb2.TrackPlay(
                user_id=str(rng.randint(1, 500_000)),
                track_id=str(rng.randint(1, 2_000_000)),
                signature=f"0x{rng.getrandbits(128):032x}",
                city=city,
                region=region,
                country=country,
            )
            play.timestamp.seconds = self.block_time_s(height) - rng.randint(0, 30)
            play.timestamp.nanos = rng.randint(0, 999_999_999)
            if rng.random() < spec.anonymous_ratio:
                play.user_id = f"anon-{rng.getrandbits(32):08x}"
            if rng.random() < spec.odd_play_ratio:
                self._make_odd(rng, play)
            plays.append(play)
        signed = types_pb2.SignedTransaction(
            signature=f"0x{rng.getrandbits(256):064x}",
            request_id=self._request_id(height, index),
            plays=types_pb2.TrackPlays(plays=plays),
        )
        data = signed.SerializeToString()
        return GeneratedTx(TxKind.PLAYS, _tx_hash(data), data, tuple(plays))

    @staticmethod
    def _make_odd(rng: random.Random, play: types_pb2.TrackPlay) -> None:
        """Data a node accepts without validating it (WIRE.md: anything can arrive)."""
        oddity = rng.randrange(6)
        if oddity == 0:
            play.track_id = rng.choice(["", "abc", " 12", "1_000", "٣٤", "9999999999"])
        elif oddity == 1:
            play.ClearField("timestamp")
        elif oddity == 2:
            play.timestamp.seconds = -86_400 * 365 * 100  # before 1970
        elif oddity == 3:
            play.city = "Nul\x00City"
        elif oddity == 4:
            play.user_id = "99999999999"  # beyond int32
        else:
            play.signature = ""  # migrated plays carry none

    def _non_play(self, rng: random.Random, height: int, index: int) -> GeneratedTx:
        signed = types_pb2.SignedTransaction(
            signature=f"0x{rng.getrandbits(256):064x}", request_id=self._request_id(height, index)
        )
        getattr(signed, rng.choice(_NON_PLAY_MEMBERS)).SetInParent()
        data = signed.SerializeToString()
        return GeneratedTx(TxKind.NON_PLAY, _tx_hash(data), data)

    def _malformed(self, rng: random.Random, height: int, index: int) -> GeneratedTx:
        if rng.random() < 0.5:
            # Valid framing, invalid UTF-8 inside a string field (request_id, field 2).
            body = f"{height}-{index}".encode() + b"\xff\xfe"
            data = b"\x12" + bytes([len(body)]) + body
        else:
            # A plays field (1000) whose declared length runs past the end.
            data = b"\xc2\x3e\x7f" + rng.randbytes(8)
        return GeneratedTx(TxKind.MALFORMED, _tx_hash(data), data)

    def _busy(self, height: int) -> tuple[GeneratedTx, ...]:
        """Busy blocks reuse one set of plays; appending a distinct request_id
        (field 2; field order is free on the wire) keeps every tx hash unique
        without paying to build thousands of messages per block."""
        spec = self.spec
        if self._busy_template is None:
            rng = random.Random(spec.seed)
            plays = []
            for _ in range(spec.busy_plays_per_tx):
                play = types_pb2.TrackPlay(
                    user_id=str(rng.randint(1, 500_000)),
                    track_id=str(rng.randint(1, 2_000_000)),
                    signature=f"0x{rng.getrandbits(128):032x}",
                    city="Lisbon",
                    region="Lisboa",
                    country="PT",
                )
                play.timestamp.seconds = spec.genesis_time_s
                plays.append(play)
            self._busy_template = types_pb2.SignedTransaction(
                plays=types_pb2.TrackPlays(plays=plays)
            ).SerializeToString()
        out = []
        for index in range(spec.busy_txs_per_block):
            rid = self._request_id(height, index).encode()
            data = self._busy_template + b"\x12" + bytes([len(rid)]) + rid
            out.append(GeneratedTx(TxKind.PLAYS, _tx_hash(data), data))
        return tuple(out)

    def busy_plays(self) -> tuple[types_pb2.TrackPlay, ...]:
        """The plays every busy transaction carries (for tests and the benchmark)."""
        self._busy(1)
        assert self._busy_template is not None
        return tuple(types_pb2.SignedTransaction.FromString(self._busy_template).plays.plays)
