"""The tree is the architecture: which package may import which (README "How it works").

Data flows one way, source -> decode -> sink, with the service wiring them, trust
checking them and the leaves (model, errors, backoff, metrics, logs, config, options,
addresses) under everything. Every import in `consumer/`, at the top of a module or inside a
function, is held to the table below, so a forbidden one fails here with its place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "consumer"

LEAVES = frozenset(
    {"model", "errors", "backoff", "metrics", "logs", "config", "options", "addresses"}
)
# What each part of the tree may import from `consumer` (itself is always allowed).
ALLOWED: dict[str, frozenset[str]] = {
    "leaf": LEAVES,
    "_pb": frozenset(),
    "decode": frozenset({"model", "_pb"}),
    # The source reports through the observer it is given (source/observer.py), so that
    # a re-reader counts nothing of the service's: it never imports metrics.
    "source": (LEAVES - {"metrics"}) | {"_pb"},
    "sink": LEAVES,
    "trust": LEAVES | {"decode", "source", "sink"},
    "service": LEAVES | {"decode", "source", "sink", "trust"},
    "devnet": LEAVES | {"_pb"},
    "ops": LEAVES | {"decode", "source", "sink", "trust", "service", "devnet"},
    "main": frozenset({"ops"}),
    "package": frozenset(),
}


def _part(module: Path) -> str:
    """The part of the tree a file of consumer/ belongs to."""
    relative = module.relative_to(PACKAGE)
    if len(relative.parts) > 1:
        return relative.parts[0]
    name = relative.stem
    if name == "__main__":
        return "main"
    if name == "__init__":
        return "package"
    assert name in LEAVES, f"consumer/{relative} is at the top but is not a leaf: move it"
    return "leaf"


def _imported(target: str) -> str | None:
    """The part of the tree `consumer.X.Y` names, or None for a foreign module."""
    parts = target.split(".")
    if parts[0] != "consumer":
        return None
    if len(parts) == 1:
        return "package"
    return "leaf" if parts[1] in LEAVES else parts[1]


def _leaf_name(target: str) -> str:
    return target.split(".")[1]


def _imports(module: Path) -> list[tuple[int, str]]:
    tree = ast.parse(module.read_text(), str(module))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "consumer":  # from consumer import x: x is a module or a name
                found.extend((node.lineno, f"consumer.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, node.module))
    return found


def _violations(module: Path) -> list[str]:
    part = _part(module)
    allowed = ALLOWED[part]
    bad = []
    for line, target in _imports(module):
        other = _imported(target)
        if other is None or other == part or target == "consumer.__version__":
            continue  # foreign, its own part, or the version string of consumer/__init__.py
        name = _leaf_name(target) if other == "leaf" else other
        if name not in allowed:
            bad.append(f"consumer/{module.relative_to(PACKAGE)}:{line} imports {target}")
    return bad


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_pb" not in p.parts)


@pytest.mark.parametrize("module", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_import_follows_the_package_rules(module: Path) -> None:
    assert _violations(module) == []


def test_a_forbidden_import_is_named_with_its_place(tmp_path: Path) -> None:
    # The rule itself can fail: decode reaching the sink is reported, with the line.
    fake = PACKAGE / "decode" / "blocks.py"
    source = fake.read_text() + "\nfrom consumer.sink.plays import PlaysSink\n"
    copy = tmp_path / "blocks.py"
    copy.write_text(source)
    lines = source.count("\n")
    found = [t for n, t in _imports(copy) if n == lines]
    assert found == ["consumer.sink.plays"]
    assert "sink" not in ALLOWED["decode"]


def test_nothing_but_the_entry_point_imports_ops() -> None:
    importers = [
        f"{module.relative_to(PACKAGE)}"
        for module in _modules()
        if _part(module) not in {"ops", "main"}
        and any(_imported(target) == "ops" for _, target in _imports(module))
    ]
    assert importers == []


def test_the_source_never_imports_metrics() -> None:
    importers = [
        f"{module.relative_to(PACKAGE)}"
        for module in _modules()
        if _part(module) == "source"
        and any(t.startswith("consumer.metrics") for _, t in _imports(module))
    ]
    assert importers == []


def test_source_and_sink_never_import_each_other() -> None:
    for module in _modules():
        part = _part(module)
        if part in {"source", "sink"}:
            other = "sink" if part == "source" else "source"
            assert all(_imported(t) != other for _, t in _imports(module)), module


def _readme_tree() -> dict[str, set[str]]:
    """The README's tree block: each folder of consumer/ with the modules it lists."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme.split("### The tree is the architecture", 1)[1].split("```", 2)[1]
    folders: dict[str, set[str]] = {}
    current = ""
    for line in block.splitlines()[1:]:
        words = line.split()
        if not words:
            continue
        if line.startswith("  ") and not line.startswith("   ") and words[0].endswith("/"):
            current = words[0].rstrip("/")
            folders[current] = set()
        elif line.startswith("  ") and not line.startswith("   "):
            current = ""
            folders.setdefault("", set()).update(w for w in words if w.endswith(".py"))
        elif line.startswith("    "):
            folders[current].update(w for w in words if w.endswith(".py"))
    return folders


def test_the_readme_tree_lists_every_module_and_no_other() -> None:
    listed = _readme_tree()
    actual: dict[str, set[str]] = {}
    for module in _modules():
        relative = module.relative_to(PACKAGE)
        if relative.name in {"__init__.py", "__main__.py"}:
            continue
        folder = relative.parts[0] if len(relative.parts) > 1 else ""
        actual.setdefault(folder, set()).add(relative.name)
    actual["_pb"] = set()  # listed as a folder, its files are generated
    assert listed == actual
