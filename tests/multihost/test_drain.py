"""`ciadm drain` on orchestrator processes over real RabbitMQ + PostgreSQL: the drained host
finishes the job it runs, takes no new one (`ciadm queue` flags the label nobody serves), and
another host runs it; no signal is sent to any process."""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.multihost.cluster import FAST, Cluster, workflow


@pytest.fixture
async def cluster(pg_dsn: str, amqp_url: str, broker_prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(pg_dsn, amqp_url, broker_prefix, tmp_path) as running:
        yield running


async def ciadm(cluster: Cluster, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI against `host`'s Admin listener (read from its start line)."""
    log = cluster.hosts[host].log.read_text(errors="replace")
    address = re.findall(r"msg=\"orchestrator started\".* admin=(\S+)", log)[-1]
    cmd = [sys.executable, "-m", "ciadm.main", "--orchestrator", address,
           "--token", FAST["admin_token"], *args]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode or 0, out.decode(), err.decode())


async def wait_for(condition, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.2)


async def test_drained_host_finishes_its_job_and_takes_no_new_one(cluster: Cluster,
                                                                    tmp_path: Path) -> None:
    cluster.start("d1", "local=2")
    await cluster.ready("d1")
    marker = tmp_path / "ran.txt"
    first = await cluster.submit(workflow(1, 4, marker, name="long"))

    async def running_on_d1() -> bool:
        return any(j["state"] == "running" and j["lease_host"] == "d1"
                   for j in await cluster.jobs())

    await wait_for(running_on_d1)
    drained = await ciadm(cluster, "d1", "drain", "d1")
    assert drained.returncode == 0, drained.stderr
    await asyncio.sleep(1.5)  # its heartbeat (every 0.5 s) read the flag back
    second = await cluster.submit(workflow(1, 0, marker, name="later"))
    assert (await cluster.wait_runs([first], 60)) == {first: "success"}
    jobs = {j["id"]: j for j in await cluster.jobs()}
    waiting = [j for j in jobs.values() if j["state"] == "queued"]
    assert len(waiting) == 1, jobs
    queue = json.loads((await ciadm(cluster, "d1", "--json", "queue")).stdout)
    assert [(q["label"], q["depth"], q["hosts"]) for q in queue] == [("local", 1, [])]

    cluster.start("d2", "local=2")
    await cluster.ready("d2")
    assert (await cluster.wait_runs([second], 60)) == {second: "success"}
    # The long job ran on d1, the later one on d2.
    assert sorted(j["lease_host"] for j in await cluster.jobs()) == ["d1", "d2"]
    listed = json.loads((await ciadm(cluster, "d2", "hosts", "--json")).stdout)
    assert {h["name"]: h["drained"] for h in listed} == {"d1": True, "d2": False}
    assert cluster.hosts["d1"].proc is not None and cluster.hosts["d1"].proc.poll() is None
