"""`python scripts/bench`: the benchmark's command line (see the package's docstring)."""

import asyncio
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent
# Run as a directory, this package's own folder is sys.path[0], where its modules
# would shadow the standard library's; import it as a package from scripts/ instead.
sys.path[0:1] = [str(SCRIPTS), str(SCRIPTS.parent)]

from bench.cli import main  # noqa: E402

sys.exit(asyncio.run(main()))
