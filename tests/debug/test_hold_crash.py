"""A held machine does not outlive its orchestrator's crash: kill -9 the real process while it
holds a failed job's machine, restart it under the same name, and nothing is left."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.multihost.cluster import Cluster

HELD = """
workflow name="crash" hold_on_failure="10m" {
    job id="build" runs_on="local" { step name="break" run="exit 1"; }
}
"""


@pytest.fixture
async def cluster(pg_dsn: str, amqp_url: str, broker_prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(pg_dsn, amqp_url, broker_prefix, tmp_path) as running:
        yield running


async def fail_and_hold(cluster: Cluster) -> None:
    """Run the `HELD` job on host `holder` until it failed and its machine is held."""
    request = await cluster.submit(HELD)
    assert (await cluster.wait_runs([request], timeout=60))[request] == "failure"
    assert cluster.db is not None
    deadline = time.monotonic() + 20
    while await cluster.db.fetchval("SELECT held_until FROM jobs WHERE state = 'failure'"
                                    " AND held_host = 'holder'") is None:
        assert time.monotonic() < deadline, cluster.tail("holder")
        await asyncio.sleep(0.1)


async def test_crash_while_holding_leaves_nothing_after_restart(cluster: Cluster) -> None:
    host = cluster.start("holder")
    await cluster.ready("holder")
    await fail_and_hold(cluster)
    assert [p.name for p in host.machines.iterdir()], "the machine is held"

    cluster.kill("holder")
    assert [p.name for p in host.machines.iterdir()], "a crash destroys nothing by itself"
    cluster.start("holder")
    await cluster.ready("holder")
    assert list(host.machines.iterdir()) == [], cluster.tail("holder")
    assert await cluster.db.fetchval("SELECT count(*) FROM jobs WHERE held_host IS NOT NULL") == 0
    assert cluster.stop("holder") == 0


async def test_drain_destroys_held_machines_at_once(cluster: Cluster) -> None:
    host = cluster.start("holder", drain_timeout="300")
    await cluster.ready("holder")
    await fail_and_hold(cluster)
    began = time.monotonic()
    assert cluster.stop("holder", timeout=60) == 0
    assert time.monotonic() - began < 30  # the hold does not wait out drain_timeout
    assert list(host.machines.iterdir()) == []
    assert await cluster.db.fetchval("SELECT count(*) FROM jobs WHERE held_host IS NOT NULL") == 0
