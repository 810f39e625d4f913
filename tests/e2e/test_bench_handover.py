"""scripts/bench_handover.py keeps working: a small run prints every figure (none is judged)."""

from __future__ import annotations

import re

from tests.conftest import run_script


def test_a_small_run_prints_catch_up_adoption_and_verify_rates() -> None:
    report = run_script("bench_handover.py", "--blocks", "20", timeout_s=300)
    assert re.search(r"^catch-up: +[\d.]+ s +[\d,]+ plays/s$", report, re.M), report
    assert re.search(r"^adoption: +[\d.]+ s +[\d,]+ plays/s +\([\d.]+ of catch-up", report, re.M)
    verify = re.search(r"^verify of the legacy rows: .*\(foreign (\d+), differences (\d+)\)$",
                       report, re.M)  # fmt: skip
    assert verify and verify.groups() == ("200", "0"), report
