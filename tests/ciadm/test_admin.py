"""`ciadm` against a real orchestrator's Admin gRPC service (real Postgres, runner, local backend)."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from common.messages import JobState
from orchestrator.api import RunSummary
from tests.orchestrator.conftest import ADMIN_TOKEN, Harness

WORKFLOW = """
workflow name="gate" {
    job id="build" runs_on="local" {
        step name="hello" run="echo built-it"
    }
}
"""


async def ciadm(harness: Harness, *args: str,
                token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    """Run the real `ciadm` CLI in a subprocess against the harness' Admin listener."""
    return await ciadm_at(harness.orchestrator.admin_url, *args, token=token)


async def ciadm_at(admin_url: str, *args: str,
                   token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    """Run the real `ciadm` CLI in a subprocess against the Admin listener at `admin_url`."""
    cmd = [sys.executable, "-m", "ciadm.main", "--orchestrator", admin_url]
    if token:
        cmd += ["--token", token]
    proc = await asyncio.create_subprocess_exec(*cmd, *args, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode or 0, out.decode(), err.decode())


async def test_untrusted_run_waits_for_approval_then_runs(harness: Harness) -> None:
    run_id = await harness.submit(WORKFLOW, trusted=False, needs_approval=True)
    summary = await harness.api.summary(run_id)
    assert [j.state for j in summary.jobs] == [JobState.AWAITING_APPROVAL]
    assert "waiting for a maintainer" in summary.jobs[0].message
    await asyncio.sleep(0.5)  # nothing may start meanwhile
    assert (await harness.api.summary(run_id)).jobs[0].state == JobState.AWAITING_APPROVAL

    shown = await ciadm(harness, "show", str(run_id)[:8])
    assert shown.returncode == 0, shown.stderr
    assert "awaiting_approval" in shown.stdout and "(untrusted)" in shown.stdout

    approved = await ciadm(harness, "approve", str(run_id))
    assert approved.returncode == 0, approved.stderr
    final: RunSummary = await asyncio.wait_for(harness.api.wait(run_id), 60)
    assert final.state == "success"

    again = await ciadm(harness, "approve", str(run_id))
    assert again.returncode == 1 and "not waiting for approval" in again.stderr

    logs = await ciadm(harness, "logs", str(final.jobs[0].job_id), "--follow")
    assert "built-it" in logs.stdout
    listed = await ciadm(harness, "runs")
    assert str(run_id) in listed.stdout
    hosts = await ciadm(harness, "hosts")
    assert harness.orchestrator.config.host_name in hosts.stdout and "alive" in hosts.stdout


async def test_cancel_a_waiting_run(harness: Harness) -> None:
    run_id = await harness.submit(WORKFLOW, trusted=False, needs_approval=True)
    done = await ciadm(harness, "cancel", str(run_id))
    assert done.returncode == 0, done.stderr
    summary = await harness.api.summary(run_id)
    assert summary.state == "cancelled"
    assert [j.state for j in summary.jobs] == [JobState.CANCELLED]


async def test_unknown_and_ambiguous_ids_are_clear_errors(harness: Harness) -> None:
    missing = await ciadm(harness, "show", "deadbeef")
    assert missing.returncode == 1 and "no run with id deadbeef" in missing.stderr
    short = await ciadm(harness, "show", "ab")
    assert short.returncode == 1 and "at least 4 characters" in short.stderr


@pytest.mark.parametrize("given", [None, "wrong"])
async def test_admin_token_is_enforced(orchestrator_factory, given: str | None) -> None:
    harness = await orchestrator_factory(admin_token="s3cret-admin-token-for-ciadm")
    refused = await ciadm(harness, "runs", token=given)
    assert refused.returncode == 1 and "admin token" in refused.stderr
    assert "--token-file" in refused.stderr  # says what to do
    allowed = await ciadm(harness, "runs", token="s3cret-admin-token-for-ciadm")
    assert allowed.returncode == 0, allowed.stderr


def test_no_orchestrator_tells_what_to_do() -> None:
    proc = subprocess.run([sys.executable, "-m", "ciadm.main", "--orchestrator", "127.0.0.1:1",
                           "runs"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "no orchestrator answers" in proc.stderr and "hint:" in proc.stderr


async def test_rerun_of_one_job_takes_the_earlier_runs_workflow_and_trust(harness: Harness) -> None:
    from common.messages import RerunOf

    workflow = """
workflow name="two" {
    job id="lint" runs_on="local" { step name="l" run="echo linted"; }
    job id="build" runs_on="local" { needs "lint"; step name="b" run="echo built"; }
    job id="docs" runs_on="local" { step name="d" run="echo docs"; }
}
"""
    first = await harness.api.wait(await harness.submit(workflow))
    assert first.state == "success" and len(first.jobs) == 3
    rerun = await harness.api.wait(await harness.submit(
        'workflow { job id="other" runs_on="local" { step name="o" run="false"; }; }',
        trusted=False, rerun_of=RerunOf(run_id=first.run_id, job_key="build")))
    assert rerun.state == "success"
    assert sorted(j.key for j in rerun.jobs) == ["build", "lint"]
    trusted = await harness.orchestrator.db.pool.fetchval(
        "SELECT trusted FROM runs WHERE id = $1", rerun.run_id)
    assert trusted is True
