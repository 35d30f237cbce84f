"""Held machines: a failed job's machine kept up, reached with `ciadm exec` / `shell` over its
runner's channel (real Postgres, gRPC servers, runner process, local backend)."""
from __future__ import annotations

import asyncio
import uuid

from common.messages import JobState
from orchestrator.api import RunSummary
from tests.ciadm.test_admin import ciadm
from tests.orchestrator.conftest import Harness

FAILING = """
workflow name="debug" hold_on_failure="{ttl}" {{
    job id="build" runs_on="local" {{
        step name="break" run="echo the-evidence > evidence.txt; exit 1"
    }}
}}
"""


async def held_failure(harness: Harness, ttl: str = "1m") -> RunSummary:
    """A run whose only job failed and whose machine is held."""
    summary = await asyncio.wait_for(harness.run(FAILING.format(ttl=ttl)), 60)
    assert summary.state == "failure"
    assert summary.jobs[0].state == JobState.FAILURE
    return summary


def machine_dirs(harness: Harness) -> list[str]:
    return sorted(p.name for p in harness.machines.iterdir()) if harness.machines.exists() else []


async def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def held_until(harness: Harness, job_id: uuid.UUID):
    return await harness.orchestrator.db.pool.fetchval(
        "SELECT held_until FROM jobs WHERE id = $1", job_id)


async def test_failed_job_is_held_exec_runs_in_its_workspace_then_release(harness: Harness):
    summary = await held_failure(harness)
    job_id = summary.jobs[0].job_id
    assert await held_until(harness, job_id) is not None
    assert len(machine_dirs(harness)) == 1  # the machine stays up after the result

    uname = await ciadm(harness, "exec", str(job_id), "--", "uname", "-a")
    assert uname.returncode == 0, uname.stderr
    assert "Linux" in uname.stdout
    evidence = await ciadm(harness, "exec", str(job_id)[:8], "--", "cat", "evidence.txt")
    assert evidence.returncode == 0, evidence.stderr
    assert evidence.stdout == "the-evidence\n"
    status = await ciadm(harness, "exec", str(job_id), "--", "sh", "-c", "exit 7")
    assert status.returncode == 7

    shown = await ciadm(harness, "show", str(summary.run_id))
    assert "machine held until" in shown.stdout and f"ciadm shell {job_id}" in shown.stdout
    hosts = await ciadm(harness, "hosts")
    assert "held 1" in hosts.stdout

    released = await ciadm(harness, "release", str(job_id))
    assert released.returncode == 0, released.stderr
    await wait_for(lambda: _gone(harness))
    assert await held_until(harness, job_id) is None
    again = await ciadm(harness, "exec", str(job_id), "--", "true")
    assert again.returncode == 1 and "not held" in again.stderr

    entries = await harness.orchestrator.db.pool.fetch(
        "SELECT actor, action, detail FROM audit_log WHERE target = $1 ORDER BY id",
        str(job_id))
    actions = [(e["actor"], e["action"]) for e in entries]
    assert actions.count(("token:bootstrap", "exec")) >= 6  # opened and closed, three times
    assert ("token:bootstrap", "release") in actions
    assert any("closed after" in e["detail"] and "exit 7" in e["detail"] for e in entries)


async def _gone(harness: Harness) -> bool:
    return not machine_dirs(harness)
