"""scripts/code_shape.py --check holds the package to its limits: modules of at most 400
lines, functions of at most 60, flat declaration lists and generated code aside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "code_shape.py"


def _check(root: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(SCRIPT), "--check"]
    if root is not None:
        argv += ["--root", str(root)]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def _function(name: str, body: list[str]) -> str:
    return "\n".join([f"def {name}() -> None:", *(f"    {line}" for line in body)]) + "\n"


def test_the_package_is_within_the_limits() -> None:
    done = _check()
    assert (done.returncode, done.stderr) == (0, "")


def test_a_function_over_sixty_lines_fails_naming_it_and_its_length(tmp_path: Path) -> None:
    body = [f"x{i} = {i}" for i in range(59)] + ["if x0:", "    pass"]
    (tmp_path / "long.py").write_text(_function("walk", body))
    done = _check(tmp_path)
    assert done.returncode == 1
    assert f"{tmp_path / 'long.py'}:walk: 62 lines" in done.stderr


def test_a_module_over_four_hundred_lines_fails_naming_it(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text("".join(f"X{i} = {i}\n" for i in range(401)))
    done = _check(tmp_path)
    assert done.returncode == 1
    assert f"{tmp_path / 'big.py'}: 401 lines" in done.stderr


def test_a_flat_declaration_list_of_any_length_passes(tmp_path: Path) -> None:
    helper = ["def gauge(name: str) -> str:", "    return name.upper()"]
    body = [*helper, *(f"a{i} = gauge('m{i}')" for i in range(80))]
    (tmp_path / "declared.py").write_text(_function("declare", body))
    assert _check(tmp_path).returncode == 0


def test_one_loop_makes_a_long_declaration_list_a_function_again(tmp_path: Path) -> None:
    body = [*(f"a{i} = {i}" for i in range(80)), "for _ in range(2):", "    pass"]
    (tmp_path / "declared.py").write_text(_function("declare", body))
    done = _check(tmp_path)
    assert done.returncode == 1
    assert ":declare: 83 lines" in done.stderr


def test_generated_code_is_exempt(tmp_path: Path) -> None:
    (tmp_path / "_pb").mkdir()
    (tmp_path / "_pb" / "types_pb2.py").write_text("".join(f"X{i} = {i}\n" for i in range(500)))
    assert _check(tmp_path).returncode == 0
