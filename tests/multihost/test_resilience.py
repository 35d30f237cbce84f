"""Failures under load, with real orchestrator processes: repeated kill -9, a RabbitMQ restart,
PostgreSQL dropping every connection, and a job outliving RabbitMQ's consumer_timeout.
Each run must complete with exactly one final status per job."""
from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from tests.multihost.cluster import Cluster, processes_under, workflow


@pytest.fixture
async def cluster(pg_dsn: str, amqp_url: str, broker_prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(pg_dsn, amqp_url, broker_prefix, tmp_path) as running:
        yield running


async def _all_done_once(cluster: Cluster, requests: list[str], timeout: float) -> list[dict]:
    states = await cluster.wait_runs(requests, timeout=timeout)
    assert set(states.values()) == {"success"}, states
    jobs = await cluster.jobs()
    finals = await cluster.final_events()
    assert len(finals) == len(jobs) and set(finals.values()) == {1}, \
        "exactly one final status per job"
    return jobs


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.slow
async def test_twenty_kills(cluster: Cluster, tmp_path: Path) -> None:
    """kill -9 a host holding a running job, restart it at once; 20 times while runs go on."""
    names = ["k1", "k2", "k3"]
    for name in names:
        cluster.start(name, "local=2", max_retries="100")
    await cluster.ready(*names)
    marker = tmp_path / "ran.txt"
    requests = [await cluster.submit(workflow(20, 1.5, marker, name=f"r{n}")) for n in range(3)]
    kills = 0
    rng = random.Random(4)
    started = time.monotonic()
    while kills < 20:
        busy = sorted({j["lease_host"] for j in await cluster.jobs() if j["state"] == "running"})
        if not busy:
            if len(await cluster.db.fetch("SELECT 1 FROM runs WHERE finished_at IS NULL")) == 0:
                requests.append(await cluster.submit(workflow(12, 1.5, marker, name=f"r{kills}")))
            await asyncio.sleep(0.2)
            continue
        victim = rng.choice(busy)
        cluster.kill(victim)
        kills += 1
        # Restarted at once, not awaited: its start hands back what it held and reaps.
        cluster.start(victim)
        await asyncio.sleep(rng.uniform(0.5, 1.5))
    await cluster.ready(*names)
    jobs = await _all_done_once(cluster, requests, timeout=240)
    await asyncio.sleep(1.5)  # a reaper pass after the last job
    leftovers = [p for name in names for p in cluster.hosts[name].machines.glob("*")]
    requeued = sum(j["attempt"] - 1 for j in jobs)
    print(f"\nkill loop: {kills} kills in {time.monotonic() - started:.0f}s, {len(requests)} runs,"
          f" {len(jobs)} jobs, all success, {requeued} re-queued attempts,"
          f" max attempt {max(j['attempt'] for j in jobs)}, {len(leftovers)} leftover machines")
    assert leftovers == [] and processes_under(tmp_path / "k1" / "machines") == []


@pytest.mark.slow
async def test_rabbitmq_restart_under_load(cluster: Cluster, tmp_path: Path) -> None:
    for name in ("m1", "m2"):
        cluster.start(name, "local=3")
    await cluster.ready("m1", "m2")
    marker = tmp_path / "ran.txt"
    requests = [await cluster.submit(workflow(12, 1, marker, name=f"r{n}")) for n in range(2)]
    await asyncio.sleep(2)
    try:
        await asyncio.to_thread(_rabbitmqctl, "stop_app")
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(_rabbitmqctl, "start_app")
        await asyncio.to_thread(_rabbitmqctl, "await_startup")
    requests.append(await cluster.submit(workflow(4, 0.5, marker, name="after")))
    jobs = await _all_done_once(cluster, requests, timeout=180)
    assert len(jobs) == 28
    assert all(cluster.hosts[n].proc.poll() is None for n in ("m1", "m2"))


@pytest.mark.slow
async def test_postgres_drops_every_connection_under_load(cluster: Cluster, tmp_path: Path) -> None:
    """What a PostgreSQL restart does to the orchestrators: every connection to their database
    is terminated (the server itself is shared with other tests, so it stays up)."""
    for name in ("q1", "q2"):
        cluster.start(name, "local=3")
    await cluster.ready("q1", "q2")
    marker = tmp_path / "ran.txt"
    requests = [await cluster.submit(workflow(12, 1, marker, name=f"r{n}")) for n in range(2)]
    database = cluster.dsn.rsplit("/", 1)[1]
    for _ in range(2):
        await asyncio.sleep(2)
        dropped = await cluster.db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()", database)
        assert dropped > 0
    jobs = await _all_done_once(cluster, requests, timeout=180)
    assert len(jobs) == 24
    assert all(cluster.hosts[n].proc.poll() is None for n in ("q1", "q2"))


def _rabbit_env(key: str) -> str:
    """The running broker's setting `key` (an Erlang term), or "undefined"."""
    out = subprocess.run(["rabbitmqctl", "eval", f"application:get_env(rabbit, {key})."],
                         check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    return out[len("{ok,"):-1] if out.startswith("{ok,") else "undefined"


def _set_rabbit_env(key: str, value: str) -> None:
    if value == "undefined":
        _rabbitmqctl("eval", f"application:unset_env(rabbit, {key}).")
    else:
        _rabbitmqctl("eval", f"application:set_env(rabbit, {key}, {value}).")


@pytest.mark.slow
async def test_job_longer_than_consumer_timeout_completes_once(
        cluster: Cluster, tmp_path: Path) -> None:
    """Against a 5 s consumer_timeout, a job runs until RabbitMQ has shown it enforces the
    timeout: a control consumer, started once the job has run 6 s, holds a delivery until its
    channel is closed. Channels check their deliveries every `channel_tick_interval` (60 s by
    default, 1 s here for channels opened from now on, the hosts' included). By then the job
    had run well past the timeout, and it must still complete once, on its first attempt."""
    settings = {"consumer_timeout": "5000", "channel_tick_interval": "1000"}
    previous = {key: await asyncio.to_thread(_rabbit_env, key) for key in settings}
    for key, value in settings.items():
        await asyncio.to_thread(_set_rabbit_env, key, value)
    go, marker = tmp_path / "go", tmp_path / "ran.txt"
    try:
        cluster.start("long", "local=1")
        await cluster.ready("long")
        request = await cluster.submit(
            'workflow name="long" {\n    job id="j000" runs_on="local" {\n'
            f'        step name="work" run="until [ -e {go} ]; do sleep 0.2; done;'
            f' echo $SOLSTICE_JOB_ID >> {marker}"\n    }}\n}}\n')
        async with asyncio.timeout(60):
            while not any(j["state"] == "running" for j in await cluster.jobs()):
                await asyncio.sleep(0.2)
        await asyncio.sleep(6)
        control_closed = asyncio.Event()
        connection = await aio_pika.connect(cluster.amqp_url)
        channel = await connection.channel()
        channel.close_callbacks.add(lambda *_: control_closed.set())
        control = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"held"), routing_key=control.name)
        await control.consume(lambda message: asyncio.sleep(0), no_ack=False)
        async with asyncio.timeout(30):
            await control_closed.wait()  # else RabbitMQ did not enforce the consumer timeout
        await asyncio.sleep(2)  # a few more ticks of the hosts' channels
        go.touch()
        jobs = await _all_done_once(cluster, [request], timeout=60)
        assert jobs[0]["attempt"] == 1
        assert marker.read_text().count("\n") == 1
        await connection.close()
    finally:
        for key, value in previous.items():
            await asyncio.to_thread(_set_rabbit_env, key, value)
