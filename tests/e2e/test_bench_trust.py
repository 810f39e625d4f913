"""scripts/bench_trust.py keeps working: its quick mode runs end to end and prints every figure.

No figure is compared with a target here (the machine running the tests is not
the one the targets are for); the benchmark itself is where speed is judged.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import psycopg
import pytest

from tests.conftest import ADMIN_URL, SCRIPTS, eventually, run_script

SCRIPT = SCRIPTS / "bench_trust.py"
NUMBER = r"-?[\d,]+(?:\.\d+)?"


@pytest.fixture(scope="module")
def quick_report() -> str:
    return run_script(SCRIPT.name, "--quick", timeout_s=400)


def line(report: str, prefix: str) -> str:
    found = [text for text in report.splitlines() if text.startswith(prefix)]
    assert len(found) == 1, f"no single line starting {prefix!r} in:\n{report}"
    return found[0]


def figures_after(text: str, *labels: str) -> list[str]:
    """The number after each label, in order; a missing or non-numeric one fails."""
    values = []
    for label in labels:
        match = re.search(re.escape(label) + r" (" + NUMBER + r")", text)
        assert match, f"{label!r} has no number in {text!r}"
        values.append(match.group(1))
    return values


@pytest.mark.parametrize("profile", ["empty", "typical"])
def test_quick_mode_prints_run_and_verify_rates_and_their_ratio(
    quick_report: str, profile: str
) -> None:
    text = line(quick_report, f"verify {profile}:")
    figures_after(text, "run", "to its exit", "verify", "verify/run")
    figures_after(text, "CPU s per 1k blocks run", "verify")


@pytest.mark.parametrize("profile", ["typical", "busy"])
def test_quick_mode_prints_the_audits_cpu_at_the_tip(quick_report: str, profile: str) -> None:
    text = line(quick_report, f"tip {profile}")
    _, without = figures_after(text, "with the audit", "without")
    if text.endswith("audit adds n/a%"):  # no base for a ratio: nothing measured without it
        assert float(without) == 0, text  # a quick window can be under a clock tick
    else:
        figures_after(text, "audit adds")


def test_quick_mode_prints_catch_up_with_and_without_the_audit(quick_report: str) -> None:
    text = line(quick_report, "catch-up typical:")
    figures_after(text, "with the audit", "without", "ratio")
    assert len(re.findall(r"ratio " + NUMBER, text)) == 2  # to the last commit and to the exit
    figures_after(text, "CPU s per 1k blocks with the audit", "without")


def test_quick_mode_names_the_command_and_the_load(quick_report: str) -> None:
    assert re.search(r"^command: scripts/bench_trust\.py --quick", quick_report, re.MULTILINE)
    assert re.search(r"^load average: before [\d.]+ [\d.]+ [\d.]+, after", quick_report, re.M)


def databases_of(pid: int) -> list[str]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"bench\\_trust\\_{pid}\\_%",),
        ).fetchall()
    return [str(row[0]) for row in rows]


async def test_an_interrupted_run_drops_its_databases() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--database-url",
        ADMIN_URL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: bool(databases_of(proc.pid)), timeout_s=60)
        proc.send_signal(signal.SIGINT)
        # Interrupted, not finished: a quick run that ends by itself exits 0.
        assert await asyncio.wait_for(proc.wait(), 60) != 0
        assert databases_of(proc.pid) == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
