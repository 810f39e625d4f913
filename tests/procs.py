"""The consumer as a real subprocess: started, scraped over HTTP, signalled, killed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

PYTHON = sys.executable


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any CORE_PLAYS_* setting, plus `extra`: a
    child configured by the test alone, whatever the developer's shell exports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORE_PLAYS_")}
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ConsumerProcess:
    proc: asyncio.subprocess.Process
    metrics_port: int
    stderr: list[str] = field(default_factory=list)
    stdout: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def _drain(self) -> None:
        assert self.proc.stderr is not None and self.proc.stdout is not None

        async def read(stream: asyncio.StreamReader, lines: list[str]) -> None:
            async for line in stream:
                lines.append(line.decode(errors="replace"))

        await asyncio.gather(
            read(self.proc.stderr, self.stderr), read(self.proc.stdout, self.stdout)
        )

    async def get(self, path: str) -> tuple[int, str]:
        """One HTTP GET against the process's metrics port; (0, '') if it is not up."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.metrics_port)
        except OSError:
            return 0, ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.decode().partition("\r\n\r\n")
        status = int(head.split()[1]) if head else 0
        return status, body

    async def sample(self, name: str) -> float | None:
        status, body = await self.get("/metrics")
        if status != 200:
            return None
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 30) -> int:
        async with asyncio.timeout(timeout_s):
            code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return code

    def text(self) -> str:
        return "".join(self.stderr)


async def start_consumer(
    *args: str, env: dict[str, str] | None = None, command: str = "run"
) -> ConsumerProcess:
    port = free_port()
    full_env = clean_env(env)
    argv = [PYTHON, "-m", "consumer", command]
    if command == "run":
        argv += ["--metrics-addr", f"127.0.0.1:{port}"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        *args,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    consumer = ConsumerProcess(proc, port)
    consumer._reader = asyncio.create_task(consumer._drain())
    return consumer


def flags(**values: object) -> list[str]:
    """Command-line flags from keywords, in order: `flags(from_height=1, debug=True)`
    is `["--from-height", "1", "--debug"]`."""
    argv: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


async def run_once(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
) -> tuple[int, str, str]:
    """Run one plays-consumer command to completion: (exit code, stdout, stderr)."""
    full_env = clean_env(env)
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "consumer",
        *args,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout_s):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
