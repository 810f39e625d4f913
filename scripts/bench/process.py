"""The consumer as its own process: `python -m consumer run`, watched from outside."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.listener import CommitListener
from bench.records import ConsumerRun, Sample

__all__ = ["run_consumer"]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_EVERY_S = 0.02
_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_sample(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds, RSS KB, peak RSS KB) of a live process, None once it is gone.

    The peak is the kernel's VmHWM for the process's own address space. (wait4's
    ru_maxrss would not do: it carries over the high-water mark of the address
    space the child was forked from, this benchmark's with its pre-built chain.)
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    memory = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            memory[key] = int(value.split()[0])
    if "VmRSS" not in memory:  # a zombie: the address space is gone already
        return None
    return cpu_s, memory["VmRSS"], memory.get("VmHWM", memory["VmRSS"])


async def run_consumer(core_url: str, db_url: str, *args: str) -> ConsumerRun:
    """Run `python -m consumer run` to completion, watching its commits, CPU and RSS."""
    run = ConsumerRun()
    listener = CommitListener(db_url, run)
    await listener.connect()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORE_PLAYS_")}
        argv = [
            sys.executable, "-m", "consumer", "run",
            "--core-url", core_url, "--database-url", db_url,
            "--metrics-addr", "127.0.0.1:0", "--log-level", "warning", *args,
        ]  # fmt: skip
        with tempfile.TemporaryFile() as err:
            proc = await asyncio.to_thread(
                subprocess.Popen, argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err
            )
            # wait4: this child's own exit status and total CPU time.
            waiter = asyncio.ensure_future(asyncio.to_thread(os.wait4, proc.pid, 0))

            async def sample() -> None:
                while True:
                    got = _proc_sample(proc.pid)
                    if got is not None:
                        cpu_s, rss_kb, run.maxrss_kb = got
                        run.samples.append(Sample(time.time(), listener.height, cpu_s, rss_kb))
                    await asyncio.sleep(SAMPLE_EVERY_S)

            tasks = [asyncio.ensure_future(listener.listen()), asyncio.ensure_future(sample())]
            try:
                _, status, usage = await waiter
            finally:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks)
            proc.returncode = os.waitstatus_to_exitcode(status)
            # Notifications that arrived while the process was exiting.
            await listener.listen(quiet_s=0.2)
            err.seek(0)
            run.stderr = err.read().decode(errors="replace")
    finally:
        await listener.close()
    run.exit_code = proc.returncode
    run.cpu_s = usage.ru_utime + usage.ru_stime
    if run.exit_code != 0:
        raise RuntimeError(f"consumer exited {run.exit_code}:\n{run.stderr[-4000:]}")
    return run
