"""The committed generated code is what the .proto files generate, and it speaks WIRE.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from consumer._pb.core.v1 import types_pb2, view_pb2

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    gen = _generator()
    written = gen.generate(tmp_path)  # type: ignore[attr-defined]
    committed = ROOT / "consumer" / "_pb"
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in written}
    current = {
        p.relative_to(committed): p.read_bytes()
        for p in committed.rglob("*.py*")
        if p.relative_to(committed) != Path("__init__.py")
    }
    assert sorted(map(str, current)) == sorted(map(str, fresh)), (
        "files differ: run scripts/gen_proto.py"
    )
    stale = [str(name) for name, data in fresh.items() if current[name] != data]
    assert not stale, f"stale generated code, run scripts/gen_proto.py: {stale}"


def test_view_of_a_block_reads_the_same_bytes_as_the_full_message() -> None:
    signed = types_pb2.SignedTransaction(
        plays=types_pb2.TrackPlays(plays=[types_pb2.TrackPlay(user_id="1", track_id="2")])
    )
    block = types_pb2.Block(
        height=7,
        hash="AB",
        chain_id="c",
        transactions=[types_pb2.Transaction(hash="T", transaction=signed)],
    )
    view = view_pb2.BlockView.FromString(block.SerializeToString())
    assert (view.height, view.hash, view.chain_id) == (7, "AB", "c")
    assert view.transactions[0].transaction == signed.SerializeToString()


def test_get_blocks_view_keeps_each_block_as_bytes() -> None:
    reply = types_pb2.GetBlocksResponse(current_height=9)
    reply.blocks[3].CopyFrom(types_pb2.Block(height=3, hash="H"))
    view = view_pb2.GetBlocksResponseView.FromString(reply.SerializeToString())
    assert view.current_height == 9
    assert types_pb2.Block.FromString(view.blocks[3]).hash == "H"


def test_field_numbers_follow_the_wire_document() -> None:
    numbers = {f.name: f.number for f in types_pb2.SignedTransaction.DESCRIPTOR.fields}
    assert numbers["plays"] == 1000
    assert numbers["mediorum_operation"] == 1012
    play = {f.name: f.number for f in types_pb2.TrackPlay.DESCRIPTOR.fields}
    assert play == {
        "user_id": 1,
        "track_id": 2,
        "timestamp": 3,
        "signature": 4,
        "city": 5,
        "region": 6,
        "country": 7,
    }
    status = {f.name: f.number for f in types_pb2.GetStatusResponse.DESCRIPTOR.fields}
    assert status["chain_info"] == 4
