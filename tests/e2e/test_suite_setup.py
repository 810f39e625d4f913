"""The suite on a machine without PostgreSQL: it runs, and restarts, one of its own.

The detection is pointed at a port where nothing answers, in a pytest subprocess,
so the PostgreSQL this run uses is never touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)  # initdb and a nested pytest on a loaded 2-core machine
def test_without_a_postgresql_the_suite_runs_and_restarts_an_embedded_one_and_removes_it() -> None:
    nothing = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/integration/test_migrate.py::test_migrating_twice_applies_nothing_the_second_time",
            "tests/integration/test_faults_db.py::test_a_real_server_restart_is_survived",
        ],
        cwd=ROOT,
        env={**os.environ, "CORE_PLAYS_TEST_DATABASE_URL": nothing},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 passed" in result.stdout, output  # the restart test ran, it was not skipped
    used = re.search(r"running an embedded one at \S+ \(data in (\S+), removed", output)
    assert used, output
    assert not Path(used[1]).exists()
