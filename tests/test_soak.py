"""The soak script's short mode: faults at random, rows exact, memory reported."""

from __future__ import annotations

import re
from asyncio import create_subprocess_exec, subprocess
from pathlib import Path

from tests.procs import PYTHON

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


async def test_the_quick_soak_ends_with_exact_rows_and_reports_memory() -> None:
    proc = await create_subprocess_exec(
        PYTHON, str(SOAK), "--quick", "--seed", "3", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "rows_exact=yes" in text
    faults = re.search(r"faults=(\d+)", text)
    assert faults is not None and int(faults.group(1)) > 0
    assert re.search(r"slope_kb_per_10k_blocks=-?\d+\.\d", text)
