"""scripts/bench_memory.py runs and prints its figures (no timing or size asserts)."""

from __future__ import annotations

from tests.conftest import run_script


def test_the_quick_memory_bench_prints_a_row_per_block_size() -> None:
    out = run_script("bench_memory.py", "--quick", timeout_s=110)
    rows = [line for line in out.splitlines() if line.startswith("| ") and "MB" not in line]
    assert len(rows) == 2
    assert all(float(row.split("|")[3]) > 0 for row in rows)
