"""The code stays as the guide asks: ruff clean, ruff formatted, and strictly typed.

Run as tests so that CI enforces them on every change, with the tools pinned in
pyproject.toml so that the verdict depends on the code alone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHECKED = ["consumer", "tests", "scripts"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_finds_nothing() -> None:
    done = run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_code_is_ruff_formatted() -> None:
    done = run(str(BIN / "ruff"), "format", "--check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_finds_nothing() -> None:
    done = run(sys.executable, "-m", "mypy", *CHECKED)
    assert done.returncode == 0, done.stdout + done.stderr
