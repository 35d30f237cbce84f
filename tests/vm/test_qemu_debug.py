"""Debugging on the qemu backend, in real VMs: a failed job's machine held and reached with
`ciadm exec` over its runner's channel, then released with nothing left; and
`solstice-orchestrator selftest --backend qemu` as an operator runs it.

Real Postgres, real gRPC on loopback, real QEMU; one emulated boot per test (or KVM where it
runs guests). Both jobs have no source: the guest needs no route to a repository.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from common.messages import EventKind, JobState, Repo, RunRequest
from orchestrator.backends.qemu import QemuBackend, QemuLabel, QemuSettings
from orchestrator.config import OrchestratorConfig
from orchestrator.standalone import running
from tests.ciadm.test_admin import ciadm_at
from tests.orchestrator.conftest import ADMIN_TOKEN
from tests.vm.test_qemu_job import qemu_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

FAILING = """
workflow name="debug" {
    job id="vm" runs_on="linux" timeout="10m" hold_on_failure="10m" {
        resources vcpus=2 ram="1G" disk="4G"
        step name="break" run="echo the-evidence > evidence.txt; exit 1"
    }
}
"""


def no_source_run(workflow: str) -> RunRequest:
    """A run whose jobs check nothing out (no clone URL, no commit)."""
    return RunRequest(request_id=str(uuid.uuid4()), commit_sha="", ref="refs/heads/main",
                      repo=Repo(forge="local", owner="local", name="debug", clone_url=""),
                      event=EventKind.MANUAL, branch="main", workflow_source=workflow)


async def test_held_vm_exec_reads_the_failed_steps_file_then_release_leaves_nothing(
        pg_dsn: str, tmp_path: Path, linux_image: QemuLabel) -> None:
    backend = QemuBackend(QemuSettings(state_dir=tmp_path / "vms", labels={"linux": linux_image}))
    config = OrchestratorConfig(
        host_name=f"vm-{uuid.uuid4().hex[:8]}", state_dir=tmp_path / "state", database_url=pg_dsn,
        grpc_listen="127.0.0.1:0", backend="qemu", capacity={"linux": 1},
        boot_timeout=420, heartbeat_timeout=90, lease_ttl=120,
        admin_listen="127.0.0.1:0", admin_token=ADMIN_TOKEN)
    async with running(config, backend=backend) as orch:
        summary = await asyncio.wait_for(orch.api.wait(await orch.api.submit(
            no_source_run(FAILING))), 840)
        [job] = summary.jobs
        assert job.state == JobState.FAILURE, job.message
        job_id = str(job.job_id)
        assert await orch.db.pool.fetchval(
            "SELECT held_until FROM jobs WHERE id = $1", job.job_id) is not None
        [qemu] = [p for p in qemu_processes(backend.state_dir) if "-kernel" in p.cmdline()]

        uname = await ciadm_at(orch.admin_url, "exec", job_id, "--", "uname", "-a")
        assert uname.returncode == 0, uname.stderr
        # The guest's Debian cloud kernel, not the host's.
        assert uname.stdout.startswith("Linux ") and "cloud-amd64" in uname.stdout, uname.stdout
        evidence = await ciadm_at(orch.admin_url, "exec", job_id, "--", "cat", "evidence.txt")
        assert (evidence.returncode, evidence.stdout) == (0, "the-evidence\n"), evidence.stderr

        released = await ciadm_at(orch.admin_url, "release", job_id)
        assert released.returncode == 0, released.stderr
        async with asyncio.timeout(60):
            while qemu.is_running() or list(backend.state_dir.iterdir()):
                await asyncio.sleep(0.2)
        assert qemu_processes(backend.state_dir) == []
        assert await backend.leftovers("") == []
        assert await orch.db.pool.fetchval(
            "SELECT held_until FROM jobs WHERE id = $1", job.job_id) is None
        gone = await ciadm_at(orch.admin_url, "exec", job_id, "--", "true")
        assert gone.returncode == 1 and "not held" in gone.stderr


def test_selftest_passes_on_the_qemu_backend(pg_dsn: str, tmp_path: Path,
                                             linux_image: QemuLabel) -> None:
    vms = tmp_path / "vms"
    label = "\n".join(f"{key} = {json.dumps(str(value))}"
                      for key, value in linux_image.model_dump(exclude={"limits"}).items()
                      if value is not None)
    config = tmp_path / "orchestrator.toml"
    config.write_text(f"""
[orchestrator]
state_dir = {json.dumps(str(tmp_path / "state"))}
grpc_listen = "127.0.0.1:0"
capacity = {{ linux = 1 }}
boot_timeout = 420

[orchestrator.qemu]
state_dir = {json.dumps(str(vms))}

[orchestrator.qemu.labels.linux]
{label}
""")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.main", "selftest", "--config", str(config),
         "--backend", "qemu", "--database-url", pg_dsn, "--timeout", "600"],
        capture_output=True, text=True, timeout=720, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("provision", "boot", "runner call-in", "job", "log and artifact",
                  "teardown", "nothing left behind"):
        assert f"ok    {stage}" in proc.stdout, proc.stdout
    assert "selftest passed on backend qemu, label linux" in proc.stdout
    assert list(vms.iterdir()) == []
    assert [p for p in psutil.process_iter(["cmdline"])
            if str(vms) in " ".join(p.info["cmdline"] or [])] == []
