"""Supervision of every long-lived task, seen from outside: real `solstice-orchestrator` and
integration processes on the real PostgreSQL and RabbitMQ.

Each task kind is made to fail by an injected exception (`tests.faults`) once the service is
ready; the process must log the traceback once, shut down and exit 1 (so systemd / SMF
restart it), where it used to keep running with that part dead and look healthy. `/readyz`
answers 503 while the database is unreachable (a TCP proxy the test cuts), and 200 again once
it is back, without a restart."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from common.broker.amqp import AmqpBroker
from common.messages import EventKind, Repo, RunRequest
from common.supervise import NotReady, Supervisor, TaskFailed
from tests.broker.conftest import delete_topology
from tests.multihost.cluster import FAST
from tests.tcp_proxy import TcpProxy
from tests.test_integration_entry_points import _forge_env, _github_env

# The orchestrator's supervised tasks (as named in its log) and the method each one runs.
ORCHESTRATOR_TASKS = {
    "worker-idle": "orchestrator.executor:LabelWorker._loop",
    "outbox-relay": "orchestrator.outbox:OutboxRelay.run",
    "outbox-listen": "orchestrator.db.listen:Listener.run",
    "host-heartbeat": "orchestrator.hosts:HostRegistry.run",
    "reaper": "orchestrator.reaper:Reaper.run",
    "http-server": "common.http:_QuietServer.serve",
}
JOB_TASK = "orchestrator.executor:Executor._run"
OUTBOX_WORKER = "common.forge.outbox:OutboxWorker.run"
INBOX_WORKER = "common.forge.inbox:InboxWorker.run_once"
EXIT_TIMEOUT = 30
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Service:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    trigger: Path
    url: str = ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, pattern: str = r"msg=ready ", timeout: float = 60) -> re.Match[str]:
        async with asyncio.timeout(timeout):
            while not (found := re.search(pattern, self.text())):
                assert self.proc.returncode is None, f"{self.name} exited:\n{self.text()[-3000:]}"
                await asyncio.sleep(0.1)
        return found

    async def exit_status(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            async with asyncio.timeout(timeout):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"{self.name} still running {timeout}s after the fault:\n"
                                 f"{self.text()[-3000:]}") from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def spawn(name: str, tmp_path: Path, target: str | None, entry: str, args: list[str],
                env: dict[str, str]) -> Service:
    """`entry`'s main with `target` failing on the trigger file (no fault without `target`)."""
    log, trigger = tmp_path / f"{name}.log", tmp_path / f"{name}.trigger"
    command = (["-m", "tests.faults", str(trigger), target, entry] if target
               else ["-m", entry])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, *command, *args,
                                                    env=clean | env, stdout=out, stderr=out)
    return Service(name, proc, log, trigger)


async def orchestrator(name: str, tmp_path: Path, target: str | None, *, dsn: str, amqp_url: str,
                       prefix: str, capacity: str = "idle=1") -> Service:
    port = free_port()
    env = {f"SOLSTICE_ORCHESTRATOR__{k.upper()}": v for k, v in FAST.items()}
    env["SOLSTICE_ORCHESTRATOR__BLOB_STORE__PATH"] = str(tmp_path / "blobs")
    service = await spawn(name, tmp_path, target, "orchestrator.main", [
        "--database-url", dsn, "--amqp-url", amqp_url, "--broker-prefix", prefix,
        "--capacity", capacity, "--host-name", name, "--allow-local-backend",
        "--grpc-listen", "127.0.0.1:0", "--web-listen", f"127.0.0.1:{port}",
        "--state-dir", str(tmp_path / name)], env)
    service.url = f"http://127.0.0.1:{port}"
    return service


async def readiness(url: str) -> tuple[int, dict]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.get("/readyz")
        return response.status_code, response.json()


def assert_failed_once(service: Service, task: str, status: int) -> None:
    text = service.text()
    assert status == 1, f"{service.name} exited {status}:\n{text[-3000:]}"
    assert f"task={task}" in text and "injected fault in" in text, text[-3000:]
    assert text.count(TRACEBACK) == 1, f"the traceback is logged once:\n{text[-5000:]}"


async def test_supervisor_tells_expected_ends_from_failures(caplog) -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def done() -> None:
        return None

    async def broken() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("a bug")

    async with Supervisor() as supervisor:
        supervisor.spawn("job", done(), finite=True)
        supervisor.spawn("cancelled", forever()).cancel()
        await asyncio.sleep(0.05)
        assert supervisor.failure is None
        await supervisor.ready()
        supervisor.spawn("loop", broken())
        with pytest.raises(TaskFailed, match="task loop failed: ValueError: a bug") as failed:
            await asyncio.wait_for(supervisor.wait(), 5)
        assert isinstance(failed.value.__cause__, ValueError)
        with pytest.raises(NotReady, match="task loop failed"):
            await supervisor.ready()
    assert [r.exc_info is not None for r in caplog.records if r.name == "common.supervise"] == [True]

    async with Supervisor() as supervisor:
        supervisor.spawn("returns", done())
        with pytest.raises(TaskFailed, match="task returns ended while the service was running"):
            await asyncio.wait_for(supervisor.wait(), 5)

    async with Supervisor() as supervisor:
        server = supervisor.spawn("server", forever())
        supervisor.stop()  # a signal: ends from now on are the shutdown's
        await asyncio.wait_for(supervisor.wait(), 5)
        server.cancel()
        supervisor.spawn("ends", done())
        await asyncio.sleep(0.01)
        assert supervisor.failure is None


async def test_orchestrator_exits_when_any_of_its_tasks_fails(
        pg_dsn: str, amqp_url: str, broker_prefix: str, tmp_path: Path) -> None:
    common = dict(dsn=pg_dsn, amqp_url=amqp_url, prefix=broker_prefix)
    services = {task: await orchestrator(task, tmp_path, target, **common)
                for task, target in ORCHESTRATOR_TASKS.items()}
    # A job's task: it fails as soon as a job starts (its trigger is there from the start).
    job = await orchestrator("job", tmp_path, JOB_TASK, capacity="local=1", **common)
    job.trigger.touch()
    broker = AmqpBroker(amqp_url, broker_prefix)
    await broker.connect()
    try:
        for service in [*services.values(), job]:
            await service.ready()
        for service in services.values():
            status, body = await readiness(service.url)
            assert status == 200, body
            assert body["checks"] == {"database": "ok", "broker": "ok", "listen": "ok",
                                      "tasks": "ok"}
            service.trigger.touch()
        await broker.publish_run(RunRequest(
            request_id=uuid.uuid4().hex, commit_sha="0" * 40, ref="refs/heads/main",
            repo=Repo(forge="local", owner="local", name="src", clone_url=f"file://{tmp_path}"),
            event=EventKind.PUSH, branch="main",
            workflow_source='workflow name="w" {\n job id="build" runs_on="local" {\n'
                            '  step name="s" run="true"\n }\n}\n'))
        statuses = await asyncio.gather(*(s.exit_status() for s in [*services.values(), job]))
        for (task, service), status in zip(services.items(), statuses, strict=False):
            assert_failed_once(service, task, status)
        assert_failed_once(job, "job-build", statuses[-1])
        # Each shut down in order: deregistered, so no other host waits for it to go stale.
        conn = await asyncpg.connect(pg_dsn)
        try:
            states = dict(await conn.fetch("SELECT name, state FROM hosts"))
        finally:
            await conn.close()
        assert states == {name: "stopped" for name in [*services, "job"]}
    finally:
        for service in [*services.values(), job]:
            if service.proc.returncode is None:
                service.proc.kill()
                await service.proc.wait()
        broker.declared_queues |= {f"{broker_prefix}.jobs.local", f"{broker_prefix}.jobs.idle"}
        await broker.close()
        await delete_topology(amqp_url, [broker])


@pytest.mark.parametrize(("module", "setup", "task", "target"), [
    ("forge_integration", _forge_env, "forge-status-outbox", OUTBOX_WORKER),
    ("forge_integration", _forge_env, "http-server", "common.http:_QuietServer.serve"),
    ("github_integration", _github_env, "github-outbox", OUTBOX_WORKER),
    ("forge_integration", _forge_env, "forge-inbox", INBOX_WORKER),
    ("github_integration", _github_env, "github-inbox", INBOX_WORKER),
    ("forge_integration", _forge_env, "forge-inbox-listener", "common.forge.inbox:InboxWorker.listen"),
])
async def test_integration_exits_when_a_task_fails(
        module: str, setup, task: str, target: str, pg_dsn: str, amqp_url: str,
        broker_prefix: str, tmp_path: Path) -> None:
    args, env = setup(tmp_path)
    env[f"SOLSTICE_{module.upper()}__BROKER_PREFIX"] = broker_prefix
    service = await spawn(module, tmp_path, target, f"{module}.main",
                          [*args, "--listen-port", "0", "--database-url", pg_dsn,
                           "--amqp-url", amqp_url], env)
    try:
        url = (await service.ready(r"msg=ready url=(\S+)")).group(1)
        status, body = await readiness(url)
        assert (status, body["checks"]) == (200, {"database": "ok", "broker": "ok",
                                                  "tasks": "ok"}), body
        service.trigger.touch()
        assert_failed_once(service, task, await service.exit_status())
    finally:
        if service.proc.returncode is None:
            service.proc.kill()
            await service.proc.wait()


async def test_orchestrator_readyz_follows_the_database(
        pg_dsn: str, amqp_url: str, broker_prefix: str, tmp_path: Path) -> None:
    """Unreachable database: 503 naming it, while /healthz stays 200 and the process lives;
    reachable again: 200, the LISTEN connection reopened, no restart needed."""
    host, _, rest = pg_dsn.removeprefix("postgresql://").partition("@")[2].partition(":")
    proxy = TcpProxy(host, int(rest.split("/")[0]))
    await proxy.start()
    proxied = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", pg_dsn)
    service = await orchestrator("ready", tmp_path, None, dsn=proxied, amqp_url=amqp_url,
                                 prefix=broker_prefix)
    try:
        await service.ready()
        assert (await readiness(service.url))[0] == 200
        await proxy.stop()
        status, body = await readiness(service.url)
        assert status == 503 and body["status"] == "not ready", body
        assert body["checks"]["database"] != "ok" and body["checks"]["broker"] == "ok", body
        async with httpx.AsyncClient(base_url=service.url) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
        await proxy.start()
        async with asyncio.timeout(20):
            while (answer := await readiness(service.url))[0] != 200:
                await asyncio.sleep(0.2)
        assert answer[1]["checks"]["listen"] == "ok"
        assert "LISTEN connection reopened" in service.text()
        service.proc.send_signal(signal.SIGTERM)
        assert await service.exit_status() == 0, service.text()[-3000:]
    finally:
        if service.proc.returncode is None:
            service.proc.kill()
            await service.proc.wait()
        if proxy.port and proxy._server is not None:
            await proxy.stop()
