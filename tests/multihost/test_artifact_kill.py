"""An orchestrator process killed (-9) in the middle of an artifact upload: nothing of the file
is visible (no row, no blob under any key; only a temporary file in the store's `tmp/`), and the
job, re-run on the restarted host under its next attempt, stores the file whole."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.multihost.cluster import Cluster

MIB = 1024 * 1024
SIZE_MIB = 384
WORKFLOW = f"""
workflow name="big" {{
    job id="image" runs_on="local" {{
        step name="build" run="mkdir -p out && head -c {SIZE_MIB}M /dev/zero > out/image.iso"
        artifacts "out/*"
    }}
}}
"""


@pytest.fixture
async def cluster(pg_dsn: str, amqp_url: str, broker_prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(pg_dsn, amqp_url, broker_prefix, tmp_path) as running:
        yield running


async def _mid_upload(temp: Path, timeout: float = 60) -> None:
    """Until a temporary blob of more than 8 MiB is being written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.stat().st_size > 8 * MIB for p in temp.glob("*.part")):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no upload seen in the blob store's tmp/")


@pytest.mark.slow
async def test_a_host_killed_mid_upload_publishes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    cluster.start("a", "local=1")
    await cluster.ready("a")
    request = await cluster.submit(WORKFLOW)
    await _mid_upload(blobs / "tmp")
    cluster.kill("a")

    assert [p for p in (blobs / "objects").rglob("*") if p.is_file()] == []
    assert await cluster.db.fetch("SELECT path FROM artifacts") == []
    assert any(blobs.joinpath("tmp").iterdir())  # the half file, out of every listing

    cluster.start("a")  # its start hands the job back; it runs again as attempt 2
    await cluster.ready("a")
    states = await cluster.wait_runs([request], timeout=120)
    assert states == {request: "success"}, cluster.tail("a")
    [row] = await cluster.db.fetch("SELECT attempt, path, size, store_key FROM artifacts")
    assert (row["attempt"], row["path"], row["size"]) == (2, "out/image.iso", SIZE_MIB * MIB)
    assert "/attempt-2/out/image.iso" in row["store_key"]
    # Besides the artifact, only the run's compacted logs.
    logs = blobs / "objects" / row["store_key"].split("/jobs/")[0] / "logs"
    published = [p for p in (blobs / "objects").rglob("*")
                 if p.is_file() and not p.is_relative_to(logs)]
    assert published == [blobs / "objects" / row["store_key"]]
    assert published[0].stat().st_size == SIZE_MIB * MIB
