"""Whole jobs through the real orchestrator on the bhyve backend, over the fake illumos tools.

Real Postgres, the real gRPC server on loopback, the real runner: `zoneadm boot` of the fake
starts `solstice-runner` from the cloud-init user-data the backend wrote, the runner checks out
a real git repository and runs the steps. Every test ends with the fake host empty (no zone,
VNIC, clone, zonepath or guest process), whatever happened to the job.
"""
from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.messages import EventKind, JobState, Repo, RunRequest
from orchestrator.api import RunSummary
from orchestrator.backends.base import VM, BackendError
from orchestrator.backends.bhyve import BhyveBackend, BhyveSettings, LabelImage
from orchestrator.config import OrchestratorConfig
from orchestrator.executor import host_prefix
from orchestrator.service import Orchestrator
from orchestrator.standalone import private_admin, running
from orchestrator.updates import StepUpdate
from tests.fakes.illumos.fixtures import CLONE_PARENT, IMAGE, LINK, FakeIllumos
from tests.joblog import stored_log

pytestmark = pytest.mark.slow


def git_repository(path: Path) -> str:
    """A repository with one commit on main; returns the commit id."""
    path.mkdir()
    (path / "hello.txt").write_text("hello from the repository\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "hello.txt"],
                 ["git", "commit", "-q", "-m", "first"]):
        subprocess.run(argv, cwd=path, env=env, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True,
                          capture_output=True, text=True).stdout.strip()


class CrashingBhyve(BhyveBackend):
    """An orchestrator that dies before it can tear anything down."""

    async def destroy(self, vm: VM) -> None:
        raise BackendError("the orchestrator crashed")

    async def destroy_by_name(self, name: str) -> None:
        raise BackendError("the orchestrator crashed")


@dataclass
class Harness:
    orchestrator: Orchestrator
    backend: BhyveBackend
    fake: FakeIllumos
    repo: Path
    commit: str

    def request(self, workflow: str) -> RunRequest:
        return RunRequest(
            request_id=str(uuid.uuid4()),
            repo=Repo(forge="forgejo", owner="o", name="r", clone_url=f"file://{self.repo}"),
            commit_sha=self.commit, ref="refs/heads/main", event=EventKind.PUSH, branch="main",
            workflow_source=workflow)

    async def run(self, workflow: str) -> RunSummary:
        return await self.orchestrator.api.wait(await self.orchestrator.api.submit(self.request(workflow)))

    async def logs(self, job_id: uuid.UUID) -> bytes:
        return await stored_log(self.orchestrator, job_id)


Factory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def bhyve_factory(pg_dsn: str, tmp_path: Path, fake_illumos: FakeIllumos) -> AsyncIterator[Factory]:
    """`await make(backend_class=..., host_name=...)` -> a started orchestrator on bhyve."""
    repo = tmp_path / "repo"
    commit = git_repository(repo)
    settings = BhyveSettings(
        clone_parent=CLONE_PARENT, zone_root=str(fake_illumos.zone_root), link=LINK,
        work_dir=str(tmp_path / "bhyve"), zfs="command", watch_interval_seconds=0.5,
        labels={"omnios": LabelImage(dataset=IMAGE, vcpus=2, ram_mb=2048, disk_gb=20)})
    contexts: list[AbstractAsyncContextManager[Orchestrator]] = []
    default_host = f"bt-{uuid.uuid4().hex[:8]}"

    async def make(*, backend_class: type[BhyveBackend] = BhyveBackend,
                   host_name: str = default_host, **overrides: Any) -> Harness:
        values: dict[str, Any] = dict(
            host_name=host_name, state_dir=tmp_path / "state", database_url=pg_dsn,
            grpc_listen="127.0.0.1:0", backend="bhyve", capacity={"omnios": 2},
            boot_timeout=60, heartbeat_timeout=10, cancel_grace=5, timeout_grace=5,
            **private_admin())
        values.update(overrides)
        backend = backend_class(settings)
        context = running(OrchestratorConfig(**values), backend=backend)
        orchestrator = await context.__aenter__()
        contexts.append(context)
        return Harness(orchestrator, backend, fake_illumos, repo, commit)

    async def stop(context: AbstractAsyncContextManager[Orchestrator]) -> None:
        contexts.remove(context)
        await context.__aexit__(None, None, None)

    make.stop_first = lambda: stop(contexts[0])  # type: ignore[attr-defined]
    yield make
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)
    fake_illumos.assert_empty()


async def test_job_succeeds_and_leaves_nothing(bhyve_factory: Factory) -> None:
    harness = await bhyve_factory()
    summary = await harness.run('''
workflow {
    job id="build" runs_on="omnios" {
        step name="greet" run="echo hello; cat hello.txt"
        step name="second" run="echo second >&2"
    }
}''')
    assert summary.state == "success", summary
    [job] = summary.jobs
    assert [s.state for s in job.steps] == ["success", "success"]
    logs = await harness.logs(job.job_id)
    assert b"hello\nhello from the repository\n" in logs
    assert b"second\n" in logs
    harness.fake.assert_empty()
    # The golden snapshot taken for the first job stays for the next ones.
    assert f"{IMAGE}@golden" in harness.fake.state()["datasets"]


async def test_failing_step_fails_the_job_and_leaves_nothing(bhyve_factory: Factory) -> None:
    harness = await bhyve_factory()
    summary = await harness.run('''
workflow {
    job id="j" runs_on="omnios" {
        step name="bad" run="echo about to fail; exit 3"
        step name="never" run="echo never"
    }
}''')
    [job] = summary.jobs
    assert job.state == JobState.FAILURE
    assert [(s.state, s.exit_code) for s in job.steps] == [("failure", 3), ("skipped", None)]
    harness.fake.assert_empty()


async def test_boot_failure_is_a_job_error_and_leaves_nothing(bhyve_factory: Factory) -> None:
    harness = await bhyve_factory()
    harness.fake.update(boot="vm_create failed: Cannot allocate memory")
    summary = await harness.run('''
workflow {
    job id="j" runs_on="omnios" { step name="s" run="echo never"; }
}''')
    [job] = summary.jobs
    assert job.state == JobState.ERROR
    assert "zoneadm -z" in job.message and "boot" in job.message
    assert "Cannot allocate memory" in job.message
    harness.fake.assert_empty()


async def test_unknown_label_is_a_job_error(bhyve_factory: Factory) -> None:
    harness = await bhyve_factory(capacity={"omnios": 1, "solaris": 1})
    summary = await harness.run('''
workflow {
    job id="j" runs_on="solaris" { step name="s" run="true"; }
}''')
    [job] = summary.jobs
    assert job.state == JobState.ERROR
    assert "no bhyve image is configured for runs_on label 'solaris'" in job.message
    harness.fake.assert_empty()


async def test_guest_crash_mid_step_is_an_error_and_leaves_nothing(bhyve_factory: Factory) -> None:
    harness = await bhyve_factory(heartbeat_timeout=4)
    with harness.orchestrator.api.watch() as watch:
        run_id = await harness.orchestrator.api.submit(harness.request('''
workflow {
    job id="j" runs_on="omnios" { step name="long" run="sleep 60"; }
}'''))
        async for update in watch:
            if isinstance(update, StepUpdate) and update.state == "running":
                break
    [zone] = harness.fake.state()["zones"].values()
    os.killpg(zone["runner_pid"], signal.SIGKILL)  # the guest's runner dies
    summary = await harness.orchestrator.api.wait(run_id)
    [job] = summary.jobs
    assert job.state == JobState.ERROR
    assert "stopped responding" in job.message
    harness.fake.assert_empty()


async def test_zone_halting_by_itself_is_an_error_with_console(bhyve_factory: Factory) -> None:
    harness = await bhyve_factory()
    with harness.orchestrator.api.watch() as watch:
        run_id = await harness.orchestrator.api.submit(harness.request('''
workflow {
    job id="j" runs_on="omnios" { step name="long" run="sleep 60"; }
}'''))
        async for update in watch:
            if isinstance(update, StepUpdate) and update.state == "running":
                break
    [name] = harness.fake.state()["zones"]
    assert harness.fake.run("zoneadm", "-z", name, "halt").returncode == 0  # guest powered off
    summary = await harness.orchestrator.api.wait(run_id)
    [job] = summary.jobs
    assert job.state == JobState.ERROR
    assert f"zone {name} is installed" in job.message
    assert "booting" in job.message  # the console tail
    harness.fake.assert_empty()


async def test_crash_mid_job_then_the_reaper_cleans_up(bhyve_factory: Factory) -> None:
    host = f"bt-{uuid.uuid4().hex[:8]}"
    first = await bhyve_factory(backend_class=CrashingBhyve, host_name=host)
    with first.orchestrator.api.watch() as watch:
        run_id = await first.orchestrator.api.submit(first.request('''
workflow {
    job id="j" runs_on="omnios" { step name="long" run="sleep 60"; }
}'''))
        async for update in watch:
            if isinstance(update, StepUpdate) and update.state == "running":
                break
    # The host goes down mid-job and cannot tear anything down: the zone stays running.
    await bhyve_factory.stop_first()  # type: ignore[attr-defined]
    leaked = first.fake.leaked()
    assert len(leaked["zones"]) == 1 and leaked["zones"][0].startswith(host_prefix(host) + "-")
    assert leaked["guests"] and leaked["datasets"] and leaked["vnics"]
    # The host comes back: its reaper recognises its own leftovers by prefix and removes them.
    second = await bhyve_factory(host_name=host)
    second.fake.assert_empty()
    summary = await second.orchestrator.api.wait(run_id)
    [job] = summary.jobs
    assert job.state == JobState.ERROR
    assert "stopped while the job was running" in job.message
