"""An orchestrator per test: real Postgres (`pg_dsn`), the in-process broker, the real gRPC
servers on loopback (Runner and Admin, the latter behind `ADMIN_TOKEN`), the local backend
and the real runner process.

Every test ends by checking that no job left a machine directory or a process behind.
"""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from common.messages import EventKind, Repo, RunRequest
from orchestrator.api import RunSummary
from orchestrator.backends.local import LocalBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.service import Orchestrator
from orchestrator.standalone import running
from orchestrator.updates import StepUpdate
from tests.joblog import stored_log

# The admin token of every test orchestrator (unless a test overrides admin_token).
ADMIN_TOKEN = "test-admin-token-0123456789"


def run_request(workflow: str, source: Path, **overrides: Any) -> RunRequest:
    fields: dict[str, Any] = dict(
        request_id=str(uuid.uuid4()),
        repo=Repo(forge="local", owner="local", name=source.name, clone_url=f"file://{source}"),
        commit_sha="0" * 40, ref="refs/heads/main", event=EventKind.PUSH, branch="main",
        workflow_source=workflow)
    fields.update(overrides)
    return RunRequest(**fields)


def job_processes(machines: Path) -> list[psutil.Process]:
    """Processes working inside a job's machine directory."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.cwd().startswith(str(machines)):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@dataclass
class Harness:
    orchestrator: Orchestrator
    backend: LocalBackend
    source: Path
    machines: Path

    @property
    def api(self):
        return self.orchestrator.api

    async def submit(self, workflow: str, **overrides: Any) -> uuid.UUID:
        return await self.api.submit(run_request(workflow, self.source, **overrides))

    async def run(self, workflow: str, **overrides: Any) -> RunSummary:
        return await self.api.wait(await self.submit(workflow, **overrides))

    async def wait_step(self, watch: Any, state: str, index: int = 0) -> StepUpdate:
        """The next StepUpdate of `watch` reaching `state` for step `index`."""
        async for update in watch:
            if isinstance(update, StepUpdate) and update.index == index and update.state == state:
                return update
        raise AssertionError("watch ended")

    async def logs(self, job_id: uuid.UUID) -> bytes:
        return await stored_log(self.orchestrator, job_id)


Factory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def orchestrator_factory(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Factory]:
    """`await make(**config_overrides, secrets={...})` -> a started Harness."""
    contexts = []
    machines = tmp_path / "machines"
    source = tmp_path / "src"
    source.mkdir()
    (source / "hello.txt").write_text("hello from the source tree\n")

    async def make(*, secrets: dict[str, str] | None = None,
                   backend_class: type[LocalBackend] = LocalBackend, **overrides: Any) -> Harness:
        values: dict[str, Any] = dict(
            host_name=f"test-{uuid.uuid4().hex[:8]}", state_dir=tmp_path / "state",
            database_url=pg_dsn, grpc_listen="127.0.0.1:0", admin_listen="127.0.0.1:0",
            admin_token=ADMIN_TOKEN, capacity={"local": 4},
            allow_local_backend=True, boot_timeout=30, heartbeat_timeout=10, cancel_grace=5,
            timeout_grace=5, blob_store={"path": tmp_path / "blobs"})
        values.update(overrides)
        config = OrchestratorConfig(**values)
        backend = backend_class(machines)
        context = running(config, backend=backend, secrets=secrets)
        orchestrator = await context.__aenter__()
        contexts.append(context)
        return Harness(orchestrator, backend, source, machines)

    yield make
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)
    leftovers = sorted(p.name for p in machines.iterdir()) if machines.exists() else []
    assert leftovers == [], f"machine directories left behind: {leftovers}"
    assert job_processes(machines) == [], "job processes left behind"


@pytest.fixture
async def harness(orchestrator_factory: Factory) -> Harness:
    return await orchestrator_factory()
