"""TLS to a node: a certificate from a private CA made for the run, served on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio

from consumer.config import SourceSettings
from consumer.devnet import ChainSpec, DevChain, DevnetServer
from consumer.errors import ConfigError
from consumer.source.core import CoreClient


@dataclass(frozen=True)
class PrivateCa:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCa:
    """A CA of our own and a certificate it signed for 127.0.0.1 (openssl on the command line)."""
    folder = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=core-plays test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-out", "node.pem", "-extfile", "san.ext",
    )  # fmt: skip
    return PrivateCa(folder / "ca.pem", folder / "node.pem", folder / "node.key")


@pytest_asyncio.fixture
async def tls_node(private_ca: PrivateCa) -> AsyncIterator[str]:
    """The devnet's CoreService behind TLS on loopback; yields its https:// URL."""
    devnet = DevnetServer(DevChain(ChainSpec()), height=20)
    server = aio.server()
    server.add_generic_rpc_handlers((devnet._handlers(),))
    credentials = grpc.ssl_server_credentials(
        [(private_ca.key.read_bytes(), private_ca.cert.read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    yield f"https://127.0.0.1:{port}"
    await server.stop(0)


async def test_a_node_behind_a_private_ca_is_reached_with_core_ca_file(
    tls_node: str, private_ca: PrivateCa
) -> None:
    client = CoreClient(SourceSettings(core_url=tls_node, core_ca_file=str(private_ca.ca)))
    try:
        info = await client.node_info()
    finally:
        await client.close()
    assert (info.chain_id, info.head) == (ChainSpec().chain_id, 20)


async def test_a_node_behind_a_private_ca_without_the_ca_file_says_to_give_it(
    tls_node: str,
) -> None:
    client = CoreClient(SourceSettings(core_url=tls_node))
    try:
        with pytest.raises(ConfigError) as caught:
            await client.node_info()
    finally:
        await client.close()
    assert "--core-ca-file" in str(caught.value)
