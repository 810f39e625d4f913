"""Lines per module and the longest functions of the package, for a review of its shape.

    python scripts/code_shape.py [--top 15] [--root consumer]

Lines are physical lines of each file; a function's length runs from its `def`
(decorators excluded) to its last line, nested functions counted in their parent
too. Generated code (consumer/_pb) and the devnet are left out unless named.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(root: Path) -> list[Path]:
    """Every module below root but generated code and the devnet, unless root is inside them."""
    left_out = {"_pb", "devnet"}
    return sorted(p for p in root.rglob("*.py") if not left_out & set(p.relative_to(root).parts))


def functions(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert child.end_lineno is not None
                name = f"{prefix}{child.name}"
                found.append((child.end_lineno - child.lineno + 1, name))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="consumer", help="package folder (default consumer)")
    parser.add_argument("--top", type=int, default=15, help="how many modules and functions")
    args = parser.parse_args()
    root = ROOT / args.root
    paths = modules(root)
    sizes = sorted(((len(p.read_text().splitlines()), p) for p in paths), reverse=True)
    print(f"{len(paths)} modules, {sum(n for n, _ in sizes)} lines; largest:")
    for n, path in sizes[: args.top]:
        print(f"  {n:5d}  {path.relative_to(ROOT)}")
    longest = sorted(
        ((n, f"{p.relative_to(ROOT)}:{name}") for p in paths for n, name in functions(p)),
        reverse=True,
    )
    print("longest functions:")
    for n, name in longest[: args.top]:
        print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
