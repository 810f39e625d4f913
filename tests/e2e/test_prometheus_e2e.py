"""A real Prometheus scrapes a running consumer; the names the dashboard and alerts use are live."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from consumer.devnet import ChainSpec
from tests.conftest import DevnetFactory, eventually
from tests.procs import ConsumerProcess, flags, free_port, start_consumer

ROOT = Path(__file__).resolve().parents[2]
USED_IN = [
    ROOT / "deploy" / "grafana" / "core-plays-consumer.json",
    ROOT / "deploy" / "prometheus" / "alerts.yaml",
]
METRIC = re.compile(r"\bcore_plays_[a-z0-9_]*[a-z0-9]\b")


@pytest_asyncio.fixture
async def running_consumer(
    devnet_factory: DevnetFactory, database: str
) -> AsyncIterator[ConsumerProcess]:
    # Block times follow the wall clock, so lag reads as on a live chain.
    spec = ChainSpec(genesis_time_s=int(time.time()) - 20, block_time_step_s=0.2)
    devnet = await devnet_factory(spec, height=100, block_interval_s=0.2)
    consumer = await start_consumer(
        *flags(core_url=devnet.url, database_url=database, from_height=1, head_refresh_s="0.5")
    )
    try:
        yield consumer
    finally:
        consumer.signal(signal.SIGTERM)
        await consumer.wait()


@pytest_asyncio.fixture
async def prometheus(running_consumer: ConsumerProcess, tmp_path: Path) -> AsyncIterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "prometheus is not on PATH: run the suite with scripts/test.sh, which extracts it "
            "from Debian's prometheus package (or apt-get install prometheus)"
        )
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: core-plays-consumer\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{running_consumer.metrics_port}']}}]\n"
    )
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await proc.wait()


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return json.loads(reply.read())
    except OSError:
        return None


async def query(base: str, promql: str) -> float | None:
    url = f"{base}/api/v1/query?query={urllib.parse.quote(promql)}"
    reply = await asyncio.to_thread(_get_json, url)
    if not reply or reply.get("status") != "success" or not reply["data"]["result"]:
        return None
    return float(reply["data"]["result"][0]["value"][1])


async def test_prometheus_reads_processed_height_and_lag_from_the_consumer(
    prometheus: str,
) -> None:
    # The filter only answers once a scrape has carried a height of 100 or more.
    await eventually(
        lambda: query(prometheus, "core_plays_processed_height >= 100"),
        timeout_s=60,
        interval_s=0.5,
    )
    lag = await eventually(
        lambda: query(prometheus, "core_plays_lag_seconds"), timeout_s=30, interval_s=0.5
    )
    assert lag < 60  # blocks follow the clock; lag is clamped at 0, so only the top can fail
    assert await query(prometheus, 'up{job="core-plays-consumer"}') == 1


async def test_every_metric_the_dashboard_and_alerts_use_is_in_a_live_scrape(
    running_consumer: ConsumerProcess,
) -> None:
    await eventually(lambda: _scraped(running_consumer), timeout_s=30)
    status, body = await running_consumer.get("/metrics")
    assert status == 200
    # Families from the TYPE lines (a labelled counter with no event yet has no
    # sample but is exported), plus every sample name (_bucket, _sum, _count).
    live = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}
    live |= {
        line.split("{")[0].split(" ")[0]
        for line in body.splitlines()
        if line.startswith("core_plays_")
    }
    used = {name for path in USED_IN for name in METRIC.findall(path.read_text())}
    assert used and used <= live


async def _scraped(consumer: ConsumerProcess) -> bool:
    value = await consumer.sample("core_plays_processed_height")
    return value is not None and value >= 1
