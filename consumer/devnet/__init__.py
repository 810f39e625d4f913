"""The simulated Core chain used by tests, the demo and the benchmark."""

from consumer.devnet.chain import ChainSpec, DevChain, GeneratedTx, Profile, TxKind
from consumer.devnet.server import MAX_GETBLOCKS_HEIGHTS, DevnetServer, Faults

__all__ = [
    "MAX_GETBLOCKS_HEIGHTS",
    "ChainSpec",
    "DevChain",
    "DevnetServer",
    "Faults",
    "GeneratedTx",
    "Profile",
    "TxKind",
]
