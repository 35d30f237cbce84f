"""Several real `solstice-orchestrator` processes on one machine, sharing the real RabbitMQ
and PostgreSQL: start, kill -9, restart and drain hosts; submit runs the way an integration
does (a confirmed RunRequest on the broker); read the outcome from Postgres."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import psutil

from common.broker.amqp import AmqpBroker
from common.messages import EventKind, JobState, Repo, RunRequest
from orchestrator.db import migrate
from tests.broker.conftest import delete_topology

# Fast failure detection, so a dead host's jobs move within seconds.
FAST = {
    "lease_ttl": "15", "host_heartbeat_interval": "0.5", "host_stale_after": "4",
    "reap_interval": "0.5", "boot_timeout": "60", "heartbeat_timeout": "15",
    "drain_timeout": "30", "log_level": "info",
    # Admin on a free loopback port per host, behind a token (none: the host refuses to start).
    "admin_listen": "127.0.0.1:0", "admin_token": "multihost-admin-token-0123456789",
}
FINAL = {s.value for s in JobState if s.final}


def workflow(jobs: int, seconds: float, marker: Path, *, name: str = "mh") -> str:
    """`jobs` independent jobs; each sleeps, then appends its id to `marker` (ran to the end)."""
    blocks = "\n".join(
        f'    job id="j{n:03d}" runs_on="local" {{\n'
        f'        step name="work" run="sleep {seconds}; echo $SOLSTICE_JOB_ID >> {marker}"\n'
        f'    }}' for n in range(jobs))
    return f'workflow name="{name}" {{\n{blocks}\n}}\n'


@dataclass
class Host:
    name: str
    capacity: str
    state_dir: Path
    log: Path
    settings: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where the current process's lines begin

    @property
    def machines(self) -> Path:
        return self.state_dir / "machines"


@dataclass
class Cluster:
    dsn: str
    amqp_url: str
    prefix: str
    root: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    broker: AmqpBroker | None = None
    db: asyncpg.Pool | None = None
    source: Path | None = None

    async def __aenter__(self) -> Cluster:
        self.broker = AmqpBroker(self.amqp_url, self.prefix, publish_timeout=30)
        await self.broker.connect()
        self.db = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        async with self.db.acquire() as conn:
            await migrate(conn)
        self.source = self.root / "src"
        self.source.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for host in self.hosts.values():
            if host.proc is not None and host.proc.poll() is None:
                host.proc.kill()
                host.proc.wait()
        _kill_processes_under(self.root)
        assert self.broker is not None and self.db is not None
        self.broker.declared_queues.add(f"{self.prefix}.jobs.local")
        await self.broker.close()
        await delete_topology(self.amqp_url, [self.broker])
        await self.db.close()

    # -- hosts -------------------------------------------------------------------------

    def start(self, name: str, capacity: str = "local=2", **settings: str) -> Host:
        """Start (or restart, same name and state directory) an orchestrator process."""
        host = self.hosts.get(name) or Host(name, capacity, self.root / name,
                                            self.root / f"{name}.log", {**FAST, **settings})
        self.hosts[name] = host
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
        env.update({f"SOLSTICE_ORCHESTRATOR__{k.upper()}": v for k, v in host.settings.items()})
        # Multi-host: every host writes artifacts to the one shared store.
        env.setdefault("SOLSTICE_ORCHESTRATOR__BLOB_STORE__PATH", str(self.root / "blobs"))
        with host.log.open("ab") as log:
            host.log_offset = log.tell()
            host.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.main", "--database-url", self.dsn,
                 "--amqp-url", self.amqp_url, "--broker-prefix", self.prefix,
                 "--capacity", host.capacity, "--host-name", name, "--allow-local-backend",
                 "--grpc-listen", "127.0.0.1:0", "--state-dir", str(host.state_dir)],
                env=env, stdout=log, stderr=log, cwd=self.root)
        return host

    async def ready(self, *names: str, timeout: float = 60) -> None:
        """Wait until each host's current process logged `ready` (registered, reaped, consuming)."""
        deadline = time.monotonic() + timeout
        for name in names:
            host = self.hosts[name]
            while b"msg=ready " not in host.log.read_bytes()[host.log_offset:]:
                assert host.proc is not None
                if host.proc.poll() is not None:
                    raise AssertionError(f"{name} exited {host.proc.returncode}:\n{self.tail(name)}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} did not get ready:\n{self.tail(name)}")
                await asyncio.sleep(0.1)

    def kill(self, name: str) -> None:
        """kill -9: no drain, no deregistration; its runners live on as orphans."""
        proc = self.hosts[name].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self, name: str, timeout: float = 60) -> int:
        """SIGTERM (drain) and wait for the exit status."""
        proc = self.hosts[name].proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    def tail(self, name: str, lines: int = 30) -> str:
        text = self.hosts[name].log.read_text(errors="replace").splitlines()
        return "\n".join(line[:300] for line in text[-lines:])

    # -- runs ------------------------------------------------------------------------------

    async def submit(self, source: str) -> str:
        assert self.broker is not None and self.source is not None
        request_id = uuid.uuid4().hex
        await self.broker.publish_run(RunRequest(
            request_id=request_id, workflow_source=source, commit_sha="0" * 40,
            repo=Repo(forge="local", owner="local", name="src", clone_url=f"file://{self.source}"),
            ref="refs/heads/main", event=EventKind.PUSH, branch="main"))
        return request_id

    async def wait_runs(self, request_ids: list[str], timeout: float) -> dict[str, str]:
        """Each run's final state; fails listing the unfinished ones after `timeout`."""
        assert self.db is not None
        deadline = time.monotonic() + timeout
        while True:
            rows = await self.db.fetch("SELECT request_id, state FROM runs WHERE request_id ="
                                       " ANY($1) AND finished_at IS NOT NULL", request_ids)
            if len(rows) == len(request_ids):
                return {r["request_id"]: r["state"] for r in rows}
            if time.monotonic() > deadline:
                jobs = await self.db.fetch("SELECT key, state, attempt, lease_host, message"
                                           " FROM jobs WHERE state <> ALL($1)", list(FINAL))
                unpublished = await self.db.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL")
                raise AssertionError(f"runs unfinished after {timeout}s; {unpublished} outbox rows"
                                     f" unpublished; open jobs: {[dict(j) for j in jobs]}\n"
                                     + "\n".join(f"--- {n}\n{self.tail(n, 15)}" for n in self.hosts))
            await asyncio.sleep(0.2)

    async def jobs(self) -> list[dict[str, Any]]:
        assert self.db is not None
        return [dict(r) for r in await self.db.fetch(
            "SELECT id, key, state, attempt, lease_host, started_at, finished_at, message"
            " FROM jobs ORDER BY key")]

    async def final_events(self) -> Counter[str]:
        """How many final-state JobEvents each job emitted (must be exactly one)."""
        assert self.db is not None
        rows = await self.db.fetch(
            "SELECT payload->>'job_id' AS job_id FROM outbox WHERE kind = 'job_event'"
            " AND payload->>'state' = ANY($1)", list(FINAL))
        return Counter(r["job_id"] for r in rows)

    async def dead_letters(self) -> int:
        connection, channel = await _channel(self.amqp_url)
        async with connection:
            queue = await channel.declare_queue(f"{self.prefix}.dead", passive=True)
            return queue.declaration_result.message_count or 0


async def _channel(url: str) -> tuple[aio_pika.abc.AbstractConnection,
                                       aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(url)
    return connection, await connection.channel()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


def processes_under(root: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and proc.cwd().startswith(str(root) + os.sep):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _kill_processes_under(root: Path) -> None:
    """Runners orphaned by kill -9 whose host never came back (test teardown only)."""
    victims = [p for p in processes_under(root) if "orchestrator.main" not in " ".join(p.cmdline())]
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=5)
