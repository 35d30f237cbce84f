"""Webhook ingestion rate of `solstice-forge-integration` against bare confirmed publishes.

Starts the integration through its real entry point (a subprocess, on the real PostgreSQL and
RabbitMQ), with the fake Forgejo API serving the workflow file from memory in this process,
then, in each of `--rounds` rounds, posts `--webhooks` signed Forgejo push webhooks (each its
own delivery id and commit) over `--concurrency` keep-alive connections, while a consumer in
this process takes the run requests off the runs queue, and once they all arrived, makes as
many bare confirmed publishes. Rounds alternate the two so that both meet the machine in the
same state (it is shared, and RabbitMQ slows as its disk fills). It prints, for each round and
in detail for the median round:
- accepted (2xx) webhooks/s and the latency of the 2xx answers (p50/p99);
- the time from each 2xx to its run request reaching the runs queue (p50/p99; a run request
  is consumable once RabbitMQ took it, which it confirms to the publisher at the same time).
  Negative when the integration publishes before it answers;
- in the same run, the rate of bare aio-pika confirmed publishes (persistent, durable queue,
  same concurrency) of a message the size of the RunRequest, and the ratio accepted/bare
  (goal >= 0.5);
- the CPU time per webhook of the integration (in all, and while the webhooks were posted:
  the web edge and what of the worker ran meanwhile) and of this process (load generator, fake
  forge and run consumer), since all share one machine.
Run: .venv/bin/python bench/ingest.py [--webhooks 2000] [--rounds 5] [--concurrency 32]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fake forge lives in tests/, not in an installed package

from common.forge.signature import sign  # noqa: E402
from common.messages import EventKind, Repo, RunRequest, encode  # noqa: E402
from common.supervise import wait_event  # noqa: E402
from tests.fakes.forgejo_api import FakeForgejo  # noqa: E402
from tests.fixtures import FIXTURES  # noqa: E402

FIXTURE = FIXTURES / "forgejo" / "HookPush.json"
SECRET = "bench-secret"
GOAL = 0.5
WORKFLOW = """workflow name="ci" {
    on "push" branches="main" "release/*"
    job id="build" runs_on="illumos" timeout="30m" {
        step name="configure" run="./configure"
        step name="build" run="gmake -j4"
        step name="test" run="gmake check"
    }
    job id="lint" runs_on="illumos" { step name="lint" run="gmake lint" }
}
"""


RUNS_TIMEOUT = 120.0  # seconds to wait for the last run request after the last 2xx


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def create_database(admin_dsn: str) -> str:
    name = f"solstice_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def start_integration(forge: FakeForgejo, dsn: str, amqp_url: str, prefix: str,
                      port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    env.update({
        "SOLSTICE_FORGE_INTEGRATION__LISTEN_PORT": str(port),
        "SOLSTICE_FORGE_INTEGRATION__DATABASE_URL": dsn,
        "SOLSTICE_FORGE_INTEGRATION__AMQP_URL": amqp_url,
        "SOLSTICE_FORGE_INTEGRATION__BROKER_PREFIX": prefix,
        "SOLSTICE_FORGE_INTEGRATION__WEBHOOK_SECRET": SECRET,
        "SOLSTICE_FORGE_INTEGRATION__LOG_LEVEL": "warning",
        "SOLSTICE_FORGE_INTEGRATION__SITES__FORGEJO__URL": forge.url,
        "SOLSTICE_FORGE_INTEGRATION__SITES__FORGEJO__TOKEN": forge.token,
    })
    return subprocess.Popen([sys.executable, "-m", "forge_integration.main"], env=env, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


async def wait_healthy(client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the integration exited with status {proc.returncode}")
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the integration did not become healthy within 30 s")


def push_bodies(payload: dict, shas: list[str]) -> list[tuple[str, bytes]]:
    """One push body per commit: each webhook names a commit of its own, so every one makes
    the integration fetch that commit's workflow from the forge (and its run request can be
    told apart by its commit)."""
    return [(sha, json.dumps({**payload, "after": sha}).encode()) for sha in shas]


def percentiles(values: list[float]) -> str:
    """`p50 X ms, p99 Y ms` of `values` in seconds."""
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms"


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough to post webhooks.

    The load generator shares this machine with the integration; httpx spends more CPU per
    request than the integration's whole handling of a webhook, so it would measure itself.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> int:
        """Send one request; return the response's status once its body was read."""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
                           f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line, *lines = (await self._reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines
                      if line.lower().startswith(b"content-length:"))
        await self._reader.readexactly(length)
        return int(status_line.split()[1])

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


class Posted:
    """What the webhooks got: per commit, when its 2xx arrived and how long it took."""

    def __init__(self) -> None:
        self.answered: dict[str, float] = {}  # commit -> perf_counter() at its 2xx
        self.latencies: list[float] = []
        self.failures: dict[int, int] = {}
        self.seconds = 0.0


async def post_webhooks(port: int, bodies: list[tuple[str, bytes]], concurrency: int) -> Posted:
    """Post each signed push, `concurrency` at a time."""
    pending = iter(bodies)
    posted = Posted()
    connections = [await Connection.open(port) for _ in range(concurrency)]

    async def worker(connection: Connection) -> None:
        for sha, body in pending:
            sent = time.perf_counter()
            status = await connection.post("/webhooks/forgejo", {
                "Content-Type": "application/json", "X-Forgejo-Event": "push",
                "X-Forgejo-Delivery": str(uuid.uuid4()),
                "X-Forgejo-Signature": sign(SECRET, body)}, body)
            if 200 <= status < 300:
                posted.answered[sha] = answered = time.perf_counter()
                posted.latencies.append(answered - sent)
            else:
                posted.failures[status] = posted.failures.get(status, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    posted.seconds = time.perf_counter() - start
    for connection in connections:
        await connection.close()
    if posted.failures:
        print(f"  not accepted: {posted.failures}")
    return posted


class RunWatcher:
    """Takes the run requests off the integration's runs queue, noting when each arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}  # commit -> perf_counter() on arrival
        self._changed = asyncio.Event()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self, amqp_url: str, prefix: str) -> None:
        self._connection = await aio_pika.connect_robust(amqp_url)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=256)
        queue = await channel.declare_queue(f"{prefix}.runs", passive=True)
        await queue.consume(self._received, no_ack=True)

    async def _received(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.arrived[json.loads(message.body)["commit_sha"]] = time.perf_counter()
        self._changed.set()

    async def wait_for(self, commits: set[str], timeout: float) -> set[str]:
        """Wait until every commit's run request arrived (or `timeout`); the missing ones."""
        deadline = time.monotonic() + timeout
        while commits - self.arrived.keys() and time.monotonic() < deadline:
            self._changed.clear()
            await wait_event(self._changed, 1.0)
        return commits - self.arrived.keys()

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()


async def bare_publishes(amqp_url: str, queue_name: str, size: int, count: int,
                         concurrency: int) -> float:
    """Seconds for `count` confirmed persistent publishes of `size` bytes, `concurrency` in flight."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(queue_name, durable=True)
        body = b"x" * size
        pending = iter(range(count))

        async def worker() -> None:
            for _ in pending:
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                     content_type="application/json"),
                    routing_key=queue_name)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        await queue.delete(if_unused=False, if_empty=False)
    return elapsed


async def delete_topology(amqp_url: str, prefix: str) -> None:
    """Delete the integration's queues and exchanges."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in (f"{prefix}.runs", f"{prefix}.dead", f"{prefix}.events.forge-integration"):
            await channel.queue_delete(name)
        for name in (f"{prefix}.events", f"{prefix}.logs", f"{prefix}.dlx"):
            await channel.exchange_delete(name)


@dataclass
class Round:
    """One round's figures: the webhooks, then as many bare publishes right after them."""

    posted: Posted
    queued: list[float]  # seconds from each 2xx to its run request on the queue
    missing: int
    service_ms: float
    harness_ms: float
    bare_rate: float
    answering_cpu: float  # the integration's CPU seconds while the webhooks were posted

    @property
    def webhook_rate(self) -> float:
        return len(self.posted.answered) / self.posted.seconds

    @property
    def ratio(self) -> float:
        return self.webhook_rate / self.bare_rate


async def one_round(port: int, bodies: list[tuple[str, bytes]], concurrency: int,
                    proc: subprocess.Popen[bytes], watcher: RunWatcher, amqp_url: str,
                    bare_queue: str, size: int) -> Round:
    service, harness = psutil.Process(proc.pid), psutil.Process()
    before = cpu_seconds(service), cpu_seconds(harness)
    posted = await post_webhooks(port, bodies, concurrency)
    answering = cpu_seconds(service) - before[0]
    missing = await watcher.wait_for(set(posted.answered), RUNS_TIMEOUT)
    accepted = max(len(posted.answered), 1)
    service_ms = (cpu_seconds(service) - before[0]) * 1000 / accepted
    harness_ms = (cpu_seconds(harness) - before[1]) * 1000 / accepted
    queued = [watcher.arrived[sha] - answered for sha, answered in posted.answered.items()
              if sha in watcher.arrived]
    # The integration is idle again (every run request arrived): the baseline gets the
    # machine as the webhooks had it.
    bare_seconds = await bare_publishes(amqp_url, bare_queue, size, len(bodies), concurrency)
    return Round(posted, queued, len(missing), service_ms, harness_ms,
                 len(bodies) / bare_seconds, answering)


def report(rounds: list[Round], webhooks: int, concurrency: int, size: int) -> None:
    for number, r in enumerate(rounds, start=1):
        print(f"round {number}: {len(r.posted.answered)}/{webhooks} accepted (2xx) in "
              f"{r.posted.seconds:.2f} s: {r.webhook_rate:.0f} webhooks/s; bare "
              f"{r.bare_rate:.0f} msg/s; ratio {r.ratio:.2f}x")
    middle = sorted(rounds, key=lambda r: r.ratio)[len(rounds) // 2]
    print(f"median round (concurrency {concurrency}):")
    print(f"  webhooks: {middle.webhook_rate:.0f} accepted/s")
    print(f"  2xx latency: {percentiles(middle.posted.latencies)}")
    print(f"  2xx -> run request queued: {percentiles(middle.queued)} ({len(middle.queued)} run "
          f"requests; {middle.missing} missing after {RUNS_TIMEOUT:.0f} s; negative: queued "
          "before the answer)")
    print(f"  CPU per webhook: integration {middle.service_ms:.1f} ms; load generator + fake "
          f"forge + run consumer {middle.harness_ms:.1f} ms")
    print(f"  while the webhooks were posted, the integration used "
          f"{middle.answering_cpu * 1000 / max(len(middle.posted.answered), 1):.2f} ms CPU per "
          f"webhook, {middle.answering_cpu / middle.posted.seconds:.0%} of one core")
    print(f"  bare aio-pika confirmed publishes of {size} bytes: {middle.bare_rate:.0f} msg/s")
    print(f"ratio accepted/bare (median of {len(rounds)} rounds): {middle.ratio:.2f}x "
          f"(goal >= {GOAL}x) {'OK' if middle.ratio >= GOAL else 'BELOW GOAL'}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--webhooks", type=int, default=2000, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pg", default=os.environ.get(
        "SOLSTICE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--amqp", default=os.environ.get(
        "SOLSTICE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args()

    payload = json.loads(FIXTURE.read_text())
    repository = payload["repository"]
    warmup = min(100, args.webhooks)
    shas = [f"{n:040x}" for n in range(1, warmup + args.rounds * args.webhooks + 1)]
    prefix = f"solstice-bench-{uuid.uuid4().hex[:8]}"
    database = await create_database(args.pg)
    dsn = args.pg.rsplit("/", 1)[0] + f"/{database}"
    port = free_port()
    proc = None
    watcher = RunWatcher()
    rounds: list[Round] = []
    try:
        async with FakeForgejo() as forge, httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            forge.add_repo(repository["owner"]["login"], repository["name"],
                           repo_id=repository["id"],
                           files={(sha, ".solstice/workflow.kdl"): WORKFLOW for sha in shas})
            message = RunRequest(
                request_id=str(uuid.uuid4()), commit_sha=payload["after"], ref=payload["ref"],
                event=EventKind.PUSH, branch="main", workflow_source=WORKFLOW, priority=6,
                repo=Repo(forge="forgejo", owner=repository["owner"]["login"],
                          name=repository["name"], clone_url=repository["clone_url"],
                          api_url=f"{forge.url}/api/v1"))
            size = len(encode(message))
            proc = start_integration(forge, dsn, args.amqp, prefix, port)
            await wait_healthy(client, proc)
            await watcher.start(args.amqp, prefix)
            bodies = push_bodies(payload, shas)
            await post_webhooks(port, bodies[:warmup], args.concurrency)
            await watcher.wait_for(set(shas[:warmup]), RUNS_TIMEOUT)
            for number in range(args.rounds):
                first = warmup + number * args.webhooks
                rounds.append(await one_round(
                    port, bodies[first:first + args.webhooks], args.concurrency, proc, watcher,
                    args.amqp, f"{prefix}.bare", size))
                print(f"  round {number + 1}/{args.rounds} done", flush=True)
    finally:
        await watcher.close()
        if proc is not None:
            stop(proc)
        await delete_topology(args.amqp, prefix)
        await drop_database(args.pg, database)
    report(rounds, args.webhooks, args.concurrency, size)


if __name__ == "__main__":
    asyncio.run(main())
