"""The soak script's short mode: faults at random, rows exact, memory reported."""

from __future__ import annotations

import re

from tests.conftest import run_script


def test_the_quick_soak_ends_with_exact_rows_and_reports_memory() -> None:
    text = run_script("soak.py", "--quick", "--seed", "3")
    assert "rows_exact=yes" in text
    faults = re.search(r"faults=(\d+)", text)
    assert faults is not None and int(faults.group(1)) > 0
    assert re.search(r"slope_kb_per_10k_blocks=-?\d+\.\d", text)
