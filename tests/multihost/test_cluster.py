"""Two and three orchestrator processes on real RabbitMQ + PostgreSQL: jobs spread by capacity
and run once; a host killed with -9 mid-job loses nothing; poison messages are dead-lettered
while the hosts keep working; SIGTERM drains."""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from tests.multihost.cluster import Cluster, max_overlap, processes_under, workflow


@pytest.fixture
async def cluster(pg_dsn: str, amqp_url: str, broker_prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(pg_dsn, amqp_url, broker_prefix, tmp_path) as running:
        yield running


async def test_three_hosts_share_jobs_by_capacity_and_run_each_once(
        cluster: Cluster, tmp_path: Path) -> None:
    capacities = {"h1": 1, "h2": 2, "h3": 3}
    for name, slots in capacities.items():
        cluster.start(name, f"local={slots}")
    await cluster.ready(*capacities)
    marker = tmp_path / "ran.txt"
    request = await cluster.submit(workflow(18, 1.0, marker))
    assert await cluster.wait_runs([request], timeout=120) == {request: "success"}

    jobs = await cluster.jobs()
    assert all(j["state"] == "success" and j["attempt"] == 1 for j in jobs), \
        [(j["key"], j["state"], j["attempt"], j["lease_host"], j["message"]) for j in jobs
         if j["attempt"] != 1 or j["state"] != "success"]
    ran = Counter(marker.read_text().split())
    assert len(ran) == 18 and set(ran.values()) == {1}, "every job ran exactly once"
    assert set((await cluster.final_events()).values()) == {1}
    per_host = Counter(j["lease_host"] for j in jobs)
    for name, slots in capacities.items():
        spans = [(j["started_at"].timestamp(), j["finished_at"].timestamp())
                 for j in jobs if j["lease_host"] == name]
        assert spans and max_overlap(spans) <= slots, (name, per_host)
    assert per_host["h3"] > per_host["h1"], per_host
    print(f"jobs per host (capacity 1/2/3): {dict(sorted(per_host.items()))}")


async def _running_host(cluster: Cluster) -> tuple[str, dict]:
    for _ in range(300):
        running = [j for j in await cluster.jobs() if j["state"] == "running"]
        if running:
            return running[0]["lease_host"], running[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no job started running")


async def test_kill_9_mid_job_reruns_elsewhere_and_reaps_on_restart(
        cluster: Cluster, tmp_path: Path) -> None:
    for name in ("a", "b"):
        cluster.start(name, "local=1")
    await cluster.ready("a", "b")
    request = await cluster.submit(workflow(1, 4, tmp_path / "ran.txt"))
    victim, job = await _running_host(cluster)
    survivor = "b" if victim == "a" else "a"
    cluster.kill(victim)
    leftover = cluster.hosts[victim].machines / f"solstice-{victim}-{job['id'].hex[:12]}-1"
    assert leftover.is_dir(), "the dead host's machine is left behind"

    assert await cluster.wait_runs([request], timeout=60) == {request: "success"}
    [done] = await cluster.jobs()
    assert (done["lease_host"], done["attempt"]) == (survivor, 2)
    assert list((await cluster.final_events()).values()) == [1]

    cluster.start(victim)
    await cluster.ready(victim)
    assert not leftover.exists(), "the restarted host's reaper destroyed its leftover"
    assert not [p for p in processes_under(cluster.hosts[victim].machines)], \
        "the orphaned runner was killed with its machine"


async def test_poison_messages_go_to_the_dead_letter_queue(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start("p", "local=2")
    await cluster.ready("p")
    connection = await aio_pika.connect(cluster.amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue, body in [(f"{cluster.prefix}.runs", b"{not json"),
                            (f"{cluster.prefix}.runs", b'{"schema_version": 7, "type": "run_request"}'),
                            (f"{cluster.prefix}.jobs.local", b'{"type": "job_request"}')]:
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)
    request = await cluster.submit(workflow(2, 0.2, tmp_path / "ran.txt"))
    assert await cluster.wait_runs([request], timeout=60) == {request: "success"}
    for _ in range(50):
        if await cluster.dead_letters() == 3:
            break
        await asyncio.sleep(0.1)
    assert await cluster.dead_letters() == 3
    log = cluster.hosts["p"].log.read_text()
    assert log.count("message dead-lettered") == 3, "each poison message is logged once"
    assert cluster.hosts["p"].proc.poll() is None


async def test_sigterm_drains_then_hands_back_what_does_not_finish(
        cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    # A job that fits in the drain timeout finishes on the draining host.
    cluster.start("patient", "local=1", drain_timeout="30")
    await cluster.ready("patient")
    first = await cluster.submit(workflow(1, 2, marker, name="fits"))
    await _running_host(cluster)
    assert cluster.stop("patient") == 0
    assert await cluster.wait_runs([first], timeout=5) == {first: "success"}

    # One that does not is handed back after the drain timeout and completes elsewhere.
    cluster.start("hasty", "local=1", drain_timeout="1")
    await cluster.ready("hasty")
    second = await cluster.submit(workflow(1, 12, marker, name="long"))
    for _ in range(300):
        if any(j["state"] == "running" and j["lease_host"] == "hasty" for j in await cluster.jobs()):
            break
        await asyncio.sleep(0.05)
    cluster.start("heir", "local=1")
    await cluster.ready("heir")
    assert cluster.stop("hasty") == 0
    assert await cluster.wait_runs([second], timeout=60) == {second: "success"}
    jobs = {j["lease_host"]: j for j in await cluster.jobs()}
    assert jobs["patient"]["attempt"] == 1 and jobs["heir"]["attempt"] == 2
    assert "hasty shut down" in (await cluster.db.fetchval(
        "SELECT payload->>'description' FROM outbox WHERE kind = 'job_event'"
        " AND payload->>'state' = 'queued' ORDER BY id DESC LIMIT 1"))
    states = dict(await cluster.db.fetch("SELECT name, state FROM hosts"))
    assert states["patient"] == states["hasty"] == "stopped"
    assert set((await cluster.final_events()).values()) == {1}
