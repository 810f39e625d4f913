"""Regenerate the committed protobuf and gRPC modules from proto/.

The generated code is committed (so that installing the service needs no
protoc) and `tests/e2e/test_proto.py` runs this same function into a temporary
folder to prove that the committed copy still matches the .proto files.
Usage: python scripts/gen_proto.py [OUT_DIR]   (default: consumer/_pb)
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "consumer" / "_pb"
PACKAGE = "consumer._pb"

_IMPORT = re.compile(r"^(from|import) core\.v1", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules below out_dir and return their paths."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        bindir = Path(sys.executable).parent  # mypy-protobuf's plugins live beside python
        argv = [
            "protoc",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(argv) != 0:
            raise SystemExit(f"protoc failed: {' '.join(argv)}")
        written = []
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            text = _IMPORT.sub(lambda m: f"{m.group(1)} {PACKAGE}.core.v1", src.read_text())
            dest.write_text(text)
            written.append(dest)
    for folder in {p.parent for p in written} | {out_dir / "core"}:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text("")
            written.append(init)
    return written


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    if out == DEFAULT_OUT and (out / "core").exists():
        shutil.rmtree(out / "core")
    for path in generate(out):
        print(path.relative_to(out))


if __name__ == "__main__":
    main()
