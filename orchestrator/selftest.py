"""`solstice-orchestrator selftest`: prove a host before it takes jobs.

Runs one two-step job (a log line, an artifact) with no source (nothing to clone: the
guest proves the machine and the runner channel, not its route to a forge) on one machine of a
label through the configured backend and a private orchestrator embedded in this process (its own host name,
database schema, in-process queue and Admin token, the host's `grpc_listen`/`grpc_advertise`
so the guest dials what real jobs dial). Each stage is timed: provisioning the machine
(clone, zone config, install), its boot, the runner's call-in, the job, its teardown, and
nothing left behind (`backend.leftovers`: no clone, no zone, no VNIC). The first stage that
fails is explained, and the command exits 1.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from common.config import load_config
from common.errors import SolsticeError
from common.messages import EventKind, JobState, Repo, RunRequest
from common.observability import setup_observability
from orchestrator.backends.base import VM, RunnerBootstrap, VMBackend, VMSpec
from orchestrator.config import OrchestratorConfig
from orchestrator.executor import host_prefix
from orchestrator.standalone import private_admin, running

T = TypeVar("T")
ARTIFACT = "out/selftest.txt"
LOG_LINE = "solstice-selftest-log-line"
WORKFLOW = f"""
workflow name="selftest" {{
    job id="selftest" runs_on="{{label}}" {{
        step name="log" run="echo {LOG_LINE}; uname -a"
        step name="artifact" run="mkdir -p out && echo selftest-artifact > {ARTIFACT}"
    }}
}}
"""


@dataclass
class Stage:
    name: str
    seconds: float | None = None
    problem: str = ""


class TimedBackend(VMBackend):
    """The host's backend, timing each call the executor makes (provision, start, destroy)."""

    def __init__(self, inner: VMBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.times: dict[str, float] = {}
        self.started_at: float | None = None  # wall clock: compared with the job's start

    async def _timed(self, what: str, work: Awaitable[T]) -> T:
        began = time.monotonic()
        try:
            return await work
        finally:
            self.times[what] = time.monotonic() - began

    async def prepare(self) -> None:
        await self.inner.prepare()

    async def provision(self, spec: VMSpec) -> VM:
        return await self._timed("provision", self.inner.provision(spec))

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        await self._timed("boot", self.inner.start(vm, bootstrap))
        self.started_at = time.time()

    async def stop(self, vm: VM) -> None:
        await self.inner.stop(vm)

    async def wait_exit(self, vm: VM) -> str:
        return await self.inner.wait_exit(vm)

    async def console_log(self, vm: VM) -> str:
        return await self.inner.console_log(vm)

    async def destroy(self, vm: VM) -> None:
        await self._timed("teardown", self.inner.destroy(vm))

    async def destroy_by_name(self, name: str) -> None:
        await self._timed("teardown", self.inner.destroy_by_name(name))

    async def leftovers(self, prefix: str) -> list[str]:
        return await self.inner.leftovers(prefix)

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def diagnose(message: str, config: OrchestratorConfig, grpc_url: str) -> tuple[str, str]:
    """(the failing stage, what to do) from a failed job's message."""
    if "did not call in" in message:
        return "runner call-in", (f"the runner never called in: the guest cannot reach "
                                  f"{grpc_url}; check `grpc_advertise` (an address the guest "
                                  "reaches) and the firewall between them")
    if message.startswith("infrastructure fault"):
        return "provision / boot", f"the backend failed: {message}"
    if "stopped responding" in message or "before reporting a result" in message:
        return "job", f"the runner died in the guest: {message}"
    return "job", f"the job failed: {message}"


async def selftest(config: OrchestratorConfig, backend: VMBackend, label: str,
                   timeout: float, out: Callable[[str], None] = print) -> bool:
    """Run the self-test; print each stage; True when every stage passed."""
    host = f"selftest-{uuid.uuid4().hex[:8]}"
    config = OrchestratorConfig(**{
        **config.model_dump(), "host_name": host, "amqp_url": None, "capacity": {label: 1},
        "max_held": 0, "web_listen": None, "admin_token_file": None, **private_admin()})
    timed = TimedBackend(backend)
    stages: list[Stage] = []
    began = time.monotonic()
    ok = False
    try:
        async with running(config, backend=timed, schema=f"selftest_{uuid.uuid4().hex[:12]}"
                           ) as orchestrator:
            stages.append(Stage("orchestrator start", time.monotonic() - began))
            run_id = await orchestrator.api.submit(RunRequest(
                request_id=str(uuid.uuid4()), commit_sha="", ref="refs/heads/main",
                # No clone URL and no commit: the job has no source to check out.
                repo=Repo(forge="local", owner="local", name="selftest", clone_url=""),
                event=EventKind.MANUAL, branch="main", workflow_source=WORKFLOW.replace(
                    "{label}", label)))
            try:
                async with asyncio.timeout(timeout):
                    summary = await orchestrator.api.wait(run_id)
            except TimeoutError:
                stages.append(Stage("job", problem=f"no result within {timeout:g} s"))
                return False
            job = summary.jobs[0]
            for what in ("provision", "boot"):
                if what in timed.times:
                    stages.append(Stage(what, timed.times[what]))
            if job.started_at is not None and timed.started_at is not None:
                stages.append(Stage("runner call-in",
                                    max(job.started_at.timestamp() - timed.started_at, 0.0)))
            if job.state != JobState.SUCCESS:
                where, why = diagnose(job.message, config, orchestrator.grpc_url)
                stages.append(Stage(where, problem=why))
                return False
            stages.append(Stage("job", job.duration_s))
            stages.append(await _check_outputs(orchestrator, job.job_id, job.attempt))
            if stages[-1].problem:
                return False
            stages.append(Stage("teardown", timed.times.get("teardown")))
            began_check = time.monotonic()
            left = await timed.leftovers(host_prefix(host) + "-")
            stages.append(Stage("nothing left behind", time.monotonic() - began_check,
                                problem=f"left behind: {', '.join(left)}" if left else ""))
            ok = not left
    except SolsticeError as exc:
        stages.append(Stage("orchestrator start", problem=str(exc)))
    finally:
        for stage in stages:
            took = f"{stage.seconds:7.2f} s" if stage.seconds is not None else "       -"
            out(f"{'FAIL' if stage.problem else 'ok  '}  {stage.name:<22} {took}"
                + (f"\n      {stage.problem}" if stage.problem else ""))
        out(f"selftest {'passed' if ok else 'FAILED'} on backend {backend.name}, label {label}")
    return ok


async def _check_outputs(orchestrator: Any, job_id: uuid.UUID, attempt: int) -> Stage:
    began = time.monotonic()
    logs = b"".join(bytes(r["data"]) for r in await orchestrator.db.pool.fetch(
        "SELECT data FROM log_chunks WHERE job_id = $1 ORDER BY seq", job_id))
    if LOG_LINE.encode() not in logs:
        return Stage("log and artifact", problem="the job's log line never arrived")
    data = b"".join([chunk async for chunk in orchestrator.artifacts.read(job_id, attempt,
                                                                          ARTIFACT)])
    if data != b"selftest-artifact\n":
        return Stage("log and artifact", problem=f"the artifact {ARTIFACT} did not arrive whole")
    return Stage("log and artifact", time.monotonic() - began)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solstice-orchestrator selftest",
        description="Provision one machine of a label, run a two-step job on it, tear it "
                    "down, and say which stage failed.")
    parser.add_argument("--config", metavar="PATH", help="TOML file ([orchestrator] table)")
    parser.add_argument("--backend", metavar="NAME", help="bhyve, qemu or local")
    parser.add_argument("--label", metavar="LABEL",
                        help="the runs_on label to test (default: the first in capacity)")
    parser.add_argument("--database-url", metavar="URL",
                        help="PostgreSQL DSN (default: the configured one, else embedded)")
    parser.add_argument("--allow-local-backend", action="store_true", default=None)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds the job may take, boot included (default 900)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from orchestrator.main import make_backend

    try:
        cli = {"backend": args.backend, "database_url": args.database_url,
               "allow_local_backend": args.allow_local_backend}
        config = load_config(OrchestratorConfig, path=args.config, section="orchestrator",
                             cli=cli)
        label = args.label or next(iter(config.capacity))
        backend = make_backend(config, args.config)
    except SolsticeError as exc:
        print(f"solstice-orchestrator selftest: error: {exc}", file=sys.stderr)
        return 2
    setup_observability("solstice-orchestrator", level="warning")
    return 0 if asyncio.run(selftest(config, backend, label, args.timeout)) else 1
