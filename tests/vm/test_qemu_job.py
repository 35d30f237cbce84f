"""A real job in a real VM: the orchestrator on the qemu backend boots the Debian golden image
under software emulation (or KVM where it runs guests), the runner inside calls back over
gRPC through the guest's only forwarded address, checks out a repository served by
`git daemon` (the one extra destination the test allows the guest), runs two steps, streams
its logs and reports. Afterwards no QEMU is left and the overlay is gone. Then the same with
QEMU killed mid-step: the job ends `error` with QEMU's exit, and again nothing is left.

Real Postgres, real gRPC on loopback, real QEMU; slow (about a minute of emulated boot).
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from common.messages import EventKind, JobState, Repo, RunRequest
from orchestrator.backends.qemu import GuestForward, QemuBackend, QemuLabel, QemuSettings
from orchestrator.config import OrchestratorConfig
from orchestrator.service import Orchestrator
from orchestrator.standalone import private_admin, running
from orchestrator.updates import StepUpdate
from tests.joblog import stored_log

# The first run builds the golden image too (a few minutes, more on a busy host).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

GIT_GUEST_ADDRESS = "10.0.2.101"
GIT_GUEST_PORT = 9418


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git_repository(path: Path) -> str:
    """A repository with one commit on main; returns the commit id."""
    path.mkdir(parents=True)
    (path / "hello.txt").write_text("hello from the repository\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "hello.txt"],
                 ["git", "commit", "-q", "-m", "first"]):
        subprocess.run(argv, cwd=path, env=env, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """`git daemon` on a loopback port serving `repo`; yields (port, commit)."""
    base = tmp_path / "git"
    commit = git_repository(base / "repo")
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
         "--listen=127.0.0.1", f"--port={port}", "--enable=upload-pack", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            daemon.poll()
            assert daemon.returncode is None, "git daemon did not start"
            subprocess.run(["sleep", "0.05"])
        yield port, commit
    finally:
        daemon.terminate()
        daemon.wait(10)


@pytest.fixture
async def orchestrator(pg_dsn: str, tmp_path: Path, linux_image: QemuLabel,
                       git_server: tuple[int, str]) -> AsyncIterator[tuple[Orchestrator, QemuBackend]]:
    port, _ = git_server
    settings = QemuSettings(
        state_dir=tmp_path / "vms", labels={"linux": linux_image},
        forwards=[GuestForward(guest_address=GIT_GUEST_ADDRESS, guest_port=GIT_GUEST_PORT,
                               host="127.0.0.1", port=port)])
    backend = QemuBackend(settings)
    config = OrchestratorConfig(
        host_name=f"vm-{uuid.uuid4().hex[:8]}", state_dir=tmp_path / "state", database_url=pg_dsn,
        grpc_listen="127.0.0.1:0", backend="qemu", capacity={"linux": 1},
        # Emulated boots are slow, more so on a busy host.
        boot_timeout=420, heartbeat_timeout=90, lease_ttl=120, **private_admin())
    async with running(config, backend=backend) as orchestrator:
        yield orchestrator, backend


def qemu_processes(state_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(state_dir) in arg for arg in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def push_of(commit: str, workflow: str) -> RunRequest:
    """A push of `commit` in the repository the git daemon serves to the guest."""
    return RunRequest(
        request_id=str(uuid.uuid4()),
        repo=Repo(forge="forgejo", owner="o", name="r",
                  clone_url=f"git://{GIT_GUEST_ADDRESS}:{GIT_GUEST_PORT}/repo"),
        commit_sha=commit, ref="refs/heads/main", event=EventKind.PUSH, branch="main",
        workflow_source=workflow)


async def test_two_step_job_in_a_real_vm(orchestrator: tuple[Orchestrator, QemuBackend],
                                         git_server: tuple[int, str]) -> None:
    orch, backend = orchestrator
    _, commit = git_server
    request = push_of(commit, '''
workflow {
    job id="vm" runs_on="linux" timeout="10m" {
        resources vcpus=2 ram="1G" disk="4G"
        step name="where" run="echo \\"hello from $(uname -s) $(cat /etc/debian_version)\\"; cat hello.txt"
        step name="python" run="python3 -c 'import sys; print(\\"python\\", sys.version_info[0])' >&2; command -v python3; test -n \\"$CI\\""
    }
}''')  # noqa: E501 (a KDL step line)
    summary = await asyncio.wait_for(orch.api.wait(await orch.api.submit(request)), 840)
    [job] = summary.jobs
    assert job.state == JobState.SUCCESS, job.message
    assert [(s.name, s.state, s.exit_code) for s in job.steps] == [
        ("where", "success", 0), ("python", "success", 0)]
    logs = await stored_log(orch, job.job_id)
    assert b"hello from Linux 12." in logs
    assert b"hello from the repository\n" in logs
    assert b"python 3\n" in logs
    assert b"/usr/bin/python3\n" in logs  # the system's, not the runner's own venv
    # Nothing of the job survives it: no QEMU (nor relay), no overlay, no seed.
    state_dir = backend.state_dir
    assert qemu_processes(state_dir) == []
    git_port, _ = git_server
    relays = [p for p in psutil.process_iter(["cmdline"])
              if f"TCP:127.0.0.1:{git_port}" in " ".join(p.info["cmdline"] or [])]
    assert relays == []
    assert list(state_dir.iterdir()) == []
    assert await backend.leftovers("") == []


async def test_qemu_killed_mid_step_is_an_error_and_leaves_nothing(
        orchestrator: tuple[Orchestrator, QemuBackend], git_server: tuple[int, str]) -> None:
    orch, backend = orchestrator
    _, commit = git_server
    request = push_of(commit, '''
workflow {
    job id="vm" runs_on="linux" {
        resources vcpus=1 ram="1G" disk="4G"
        step name="long" run="echo started; sleep 600"
    }
}''')
    with orch.api.watch() as watch:
        run_id = await orch.api.submit(request)
        async with asyncio.timeout(600):
            async for update in watch:
                if isinstance(update, StepUpdate) and update.state == "running":
                    break
    [qemu] = [p for p in qemu_processes(backend.state_dir) if "-kernel" in p.cmdline()]
    qemu.kill()  # the host loses the machine mid-step
    summary = await asyncio.wait_for(orch.api.wait(run_id), 120)
    [job] = summary.jobs
    assert job.state == JobState.ERROR
    assert "QEMU exited with status -9" in job.message, job.message
    assert "before reporting a result" in job.message
    assert qemu_processes(backend.state_dir) == []
    assert list(backend.state_dir.iterdir()) == []
