"""Horizontal scale: 1, 2 and 4 `solstice-orchestrator` processes on this machine sharing
RabbitMQ and PostgreSQL, local backend, capacity 4 each, one-step jobs of 0.5 s.

For each host count: a fresh database and broker prefix, the hosts started and registered,
then one run of `--waves` x (4 x hosts) jobs submitted as a RunRequest (as an integration
would) and timed from publish to the run's end. Prints jobs/s, the ratio to one host (goal:
4 hosts >= 3.5x), the ideal (slots / 0.5 s), CPU seconds per job spent by the orchestrator
processes themselves and by their runners, and how busy the whole machine was: when it is
near 100 % of its cores, the machine, not the orchestrator, is the limit.

Run: .venv/bin/python bench/scale.py [--hosts 1,2,4] [--waves 6] [--seconds 0.5]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg
import psutil

from common.broker.amqp import AmqpBroker
from common.messages import EventKind, Repo, RunRequest
from orchestrator.standalone import private_admin

CAPACITY = 4
GOAL_RATIO = 3.5


@dataclass
class Phase:
    hosts: int
    jobs: int
    seconds: float
    orchestrator_cpu: float
    runner_cpu: float
    machine_busy: float  # fraction of all cores busy during the phase

    @property
    def machine_cpu(self) -> float:
        """CPU seconds the whole machine spent per job (RabbitMQ, PostgreSQL, everything)."""
        return self.machine_busy * (os.cpu_count() or 1) * self.seconds / self.jobs

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def workflow(jobs: int, seconds: float) -> str:
    blocks = "\n".join(f'  job id="j{n:04d}" runs_on="local" {{ step name="w" run="sleep {seconds}"; }}'
                       for n in range(jobs))
    return f'workflow name="scale" {{\n{blocks}\n}}\n'


def cpu_of(processes: list[psutil.Process]) -> tuple[float, float]:
    """(orchestrators' own CPU seconds, their descendants' incl. reaped runners)."""
    own = runners = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            own += times.user + times.system
            runners += times.children_user + times.children_system
            for child in proc.children(recursive=True):
                t = child.cpu_times()
                runners += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            continue
    return own, runners


async def phase(args: argparse.Namespace, hosts: int, root: Path) -> Phase:
    name = f"solstice_scale_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = args.admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    prefix = f"scale-{uuid.uuid4().hex[:8]}"
    source = root / "src"
    source.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    env["SOLSTICE_ORCHESTRATOR__LOG_LEVEL"] = "warning"
    # Each host's Admin service on a free loopback port, behind a token nobody needs here.
    env.update({f"SOLSTICE_ORCHESTRATOR__{k.upper()}": v for k, v in private_admin().items()})
    procs: list[subprocess.Popen[bytes]] = []
    broker = AmqpBroker(args.amqp_url, prefix)
    try:
        for n in range(hosts):
            state = root / f"{name}-h{n}"
            log = (root / f"{name}-h{n}.log").open("wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "orchestrator.main", "--database-url", dsn,
                 "--amqp-url", args.amqp_url, "--broker-prefix", prefix,
                 "--capacity", f"local={CAPACITY}", "--host-name", f"scale-{n}",
                 "--allow-local-backend", "--grpc-listen", "127.0.0.1:0",
                 "--state-dir", str(state)], env=env, stdout=log, stderr=log))
        db = await asyncpg.connect(dsn)
        for _ in range(600):
            if all(p.poll() is None for p in procs) and await _registered(db) == hosts:
                break
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"an orchestrator exited; see {root}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # consumers subscribed, launchers warm
        watched = [psutil.Process(p.pid) for p in procs]
        jobs = args.waves * CAPACITY * hosts
        await broker.connect()
        cpu_before, machine_before = cpu_of(watched), psutil.cpu_times()
        started = time.monotonic()
        request_id = uuid.uuid4().hex
        await broker.publish_run(RunRequest(
            request_id=request_id, workflow_source=workflow(jobs, args.seconds),
            repo=Repo(forge="local", owner="bench", name="src", clone_url=f"file://{source}"),
            commit_sha="0" * 40, ref="refs/heads/main", event=EventKind.PUSH, branch="main"))
        while True:
            state = await db.fetchval("SELECT state FROM runs WHERE request_id = $1"
                                      " AND finished_at IS NOT NULL", request_id)
            if state is not None:
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu_after, machine_after = cpu_of(watched), psutil.cpu_times()
        if state != "success":
            raise SystemExit(f"the bench run ended {state}; see {root}")
        await db.close()
        busy = _busy(machine_before, machine_after)
        return Phase(hosts, jobs, elapsed, (cpu_after[0] - cpu_before[0]) / jobs,
                     (cpu_after[1] - cpu_before[1]) / jobs, busy)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        await broker.close()
        await _drop_topology(args.amqp_url, prefix)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _registered(db: asyncpg.Connection) -> int:
    try:
        return await db.fetchval("SELECT count(*) FROM hosts WHERE state = 'running'")
    except asyncpg.UndefinedTableError:
        return 0


def _busy(before: psutil._common.scputimes, after: psutil._common.scputimes) -> float:
    idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
    total = sum(after) - sum(before)
    return 1 - idle / total if total > 0 else 0.0


async def _drop_topology(url: str, prefix: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for queue in ("runs", "dead", "jobs.local"):
            await channel.queue_delete(f"{prefix}.{queue}")
        for exchange in ("events", "logs", "dlx"):
            await channel.exchange_delete(f"{prefix}.{exchange}")


async def bench(args: argparse.Namespace, root: Path) -> None:
    phases = [await phase(args, hosts, root) for hosts in args.hosts]
    base = phases[0].rate
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"scale bench: local backend, {args.seconds} s jobs, capacity {CAPACITY} per host, "
          f"{args.waves} waves; {os.cpu_count()} CPUs, load average now {load}")
    print(f"{'hosts':>5} {'jobs':>5} {'seconds':>8} {'jobs/s':>7} {'ideal':>6} {'ratio':>6} "
          f"{'orch CPU/job':>13} {'runner CPU/job':>15} {'machine CPU/job':>16} {'busy':>5}")
    for p in phases:
        ideal = p.hosts * CAPACITY / args.seconds
        print(f"{p.hosts:>5} {p.jobs:>5} {p.seconds:>8.2f} {p.rate:>7.2f} {ideal:>6.1f} "
              f"{p.rate / base:>5.2f}x {p.orchestrator_cpu * 1000:>10.1f} ms "
              f"{p.runner_cpu * 1000:>12.1f} ms {p.machine_cpu * 1000:>13.1f} ms "
              f"{p.machine_busy:>5.0%}")
    last = phases[-1]
    ratio = last.rate / base
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    print(f"{last.hosts} hosts vs 1: {ratio:.2f}x (goal >= {GOAL_RATIO}x: {verdict})")
    if last.machine_busy >= 0.85:
        ceiling = (os.cpu_count() or 1) / last.machine_cpu
        print(f"the machine itself is the limit: {last.machine_busy:.0%} of its "
              f"{os.cpu_count()} cores were busy with {last.hosts} hosts; at "
              f"{last.machine_cpu * 1000:.0f} ms of machine CPU per job (orchestrator, runner, "
              f"RabbitMQ, PostgreSQL) these cores top out near {ceiling:.1f} jobs/s whatever the "
              "host count; hosts on their own machines add their slots instead")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--waves", type=int, default=6, help="jobs per slot in each phase")
    parser.add_argument("--seconds", type=float, default=0.5, help="each job's sleep")
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="solstice-scale-"))
    try:
        asyncio.run(bench(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
