"""The test run's databases on the real PostgreSQL: one migrated template, a copy per test.

Copies are made one test ahead and dropped behind, on threads of their own, because
both are slow on a shared server and neither is what a test shows: PostgreSQL 15
forces a checkpoint for every DROP DATABASE (flushing the dirty pages of every
database on the server, seconds while other runs write), and copying a template
is WAL-logged page by page. Drops made at once share one checkpoint.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg

__all__ = ["TestDatabases"]

Connect = Callable[[], psycopg.Connection[Any]]


def _on_the_server(admin: Connect, statement: str) -> None:
    """Run one statement, waiting out a server restart: the restart tests restart the
    server while copies and drops run behind on their threads."""
    for attempt in range(60):
        try:
            with admin() as conn:
                conn.execute(statement)
            return
        except psycopg.OperationalError:
            if attempt == 59:
                raise
            time.sleep(0.5)


def _create(admin: Connect, prefix: str, template: str | None) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    source = "" if template is None else f' TEMPLATE "{template}"'
    _on_the_server(admin, f'CREATE DATABASE "{name}"{source}')
    return name


def _drop(admin: Connect, name: str) -> None:
    _on_the_server(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TestDatabases:
    """Fresh databases for tests, each copied from a template one test ahead of need,
    and dropped behind."""

    __test__ = False  # a helper, not a test class for pytest to collect

    def __init__(self, admin: Connect, prefix: str, template: str) -> None:
        self._admin = admin  # conftest's: the server may be an embedded one
        self._prefix = prefix
        self.template = template  # the migrated one
        self._copying = ThreadPoolExecutor(max_workers=1, thread_name_prefix="copy-db")
        self._dropping = ThreadPoolExecutor(max_workers=4, thread_name_prefix="drop-db")
        self._ready: dict[str | None, deque[Future[str]]] = {}
        self._drops: list[Future[None]] = []

    def take(self, template: str | None) -> str:
        """A new copy of `template` (None: an empty database); the next is started at once."""
        ready = self._ready.setdefault(template, deque())
        if not ready:
            ready.append(self._copying.submit(_create, self._admin, self._prefix, template))
        made = ready.popleft()
        ready.append(self._copying.submit(_create, self._admin, self._prefix, template))
        return made.result()

    def copy(self) -> str:
        """A new copy of the migrated template."""
        return self.take(self.template)

    def empty(self) -> str:
        """A new database with no schema at all."""
        return self.take(None)

    def drop(self, name: str) -> None:
        self._drops.append(self._dropping.submit(_drop, self._admin, name))

    def close(self) -> None:
        """Drop the copies made ahead, wait for every drop, and raise any error."""
        for ready in self._ready.values():
            for made in ready:
                self.drop(made.result())
        self._ready.clear()
        for dropping in self._drops:
            dropping.result()
        self._copying.shutdown()
        self._dropping.shutdown()
