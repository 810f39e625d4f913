"""scripts/bench_memory.py runs and prints its figures (no timing or size asserts)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_memory.py"


async def test_the_quick_memory_bench_prints_a_row_per_block_size() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--quick",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=110)
    assert proc.returncode == 0, err.decode()
    rows = [
        line for line in out.decode().splitlines() if line.startswith("| ") and "MB" not in line
    ]
    assert len(rows) == 2
    assert all(float(row.split("|")[3]) > 0 for row in rows)
