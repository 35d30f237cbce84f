"""Named admin tokens, the audit log, and who approved or cancelled a run, met as an operator
meets them: the real `ciadm` in a subprocess against a real orchestrator (real gRPC, real
PostgreSQL, the real runner on the local backend)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

from common.messages import JobState
from orchestrator.api import RUN_STATES
from tests.orchestrator.conftest import ADMIN_TOKEN, Factory, Harness

GATED = """
workflow name="gated" {
    job id="deploy" runs_on="local" { step name="d" run="echo deployed"; }
}
"""


async def ciadm(harness: Harness, *args: str, token: str | None = ADMIN_TOKEN
                ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ciadm.main", "--orchestrator",
           harness.orchestrator.admin_url, *(("--token", token) if token else ()), *args]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode or 0, out.decode(), err.decode())


def audit_rows(listing: str) -> list[list[str]]:
    """`ciadm audit` lines split in columns (when is two: date and time)."""
    return [line.split() for line in listing.splitlines()[1:]]


async def test_named_tokens_create_use_list_revoke_and_audit(harness: Harness) -> None:
    created = await ciadm(harness, "token", "create", "ops-alice")
    assert created.returncode == 0, created.stderr
    alice = created.stdout.strip()
    assert len(alice) >= 40 and "shown this once" in created.stderr
    stored = await harness.orchestrator.db.pool.fetchrow(
        "SELECT * FROM admin_tokens WHERE name = 'ops-alice'")
    assert alice.encode() not in bytes(stored["token_hash"]) and len(stored["token_hash"]) == 32
    assert alice not in str(dict(stored))

    # Alice's token administers, and what she does is recorded as hers.
    run_id = await harness.submit(GATED, trusted=False, needs_approval=True)
    approved = await ciadm(harness, "approve", str(run_id)[:8], token=alice)
    assert approved.returncode == 0, approved.stderr
    assert "approved by token:ops-alice at 20" in approved.stdout
    final = await asyncio.wait_for(harness.api.wait(run_id), 60)
    assert final.state == "success" and final.approved_by == "token:ops-alice"
    shown = await ciadm(harness, "show", str(run_id))
    assert "approved by token:ops-alice" in shown.stdout

    listed = await ciadm(harness, "token", "list")
    row = next(line for line in listed.stdout.splitlines() if line.startswith("ops-alice "))
    assert "token:bootstrap" in row and row.rstrip().endswith("-")  # not revoked
    assert row.split()[5] != "-"  # last used: just now

    for args, message in [
            (("token", "create", "ops-alice"), "exists already"),
            (("token", "create", "Bad Name"), "is not a token name"),
            (("token", "create", "bootstrap"), "configured admin_token's name"),
            (("token", "revoke", "nobody"), "no admin token named 'nobody'"),
            (("token", "revoke", "bootstrap"), "replace it in the orchestrators' configuration")]:
        refused = await ciadm(harness, *args)
        assert refused.returncode == 1 and message in refused.stderr, (args, refused.stderr)

    revoked = await ciadm(harness, "token", "revoke", "ops-alice")
    assert revoked.returncode == 0, revoked.stderr
    after = await ciadm(harness, "runs", token=alice)
    assert after.returncode == 1 and "refused the admin token" in after.stderr
    again = await ciadm(harness, "token", "revoke", "ops-alice")
    assert again.returncode == 1 and "revoked already" in again.stderr
    listed = await ciadm(harness, "token", "list")
    assert "by token:bootstrap" in next(line for line in listed.stdout.splitlines()
                                        if line.startswith("ops-alice "))

    audit = await ciadm(harness, "audit", "--limit", "20")
    assert audit.returncode == 0, audit.stderr
    rows = audit_rows(audit.stdout)
    newest_first = [(r[2], r[3], r[4], r[5]) for r in rows]
    assert newest_first[:3] == [
        ("token:bootstrap", "token.revoke", "ops-alice", "refused:"),
        ("token:bootstrap", "token.revoke", "ops-alice", "ok"),
        ("token:bootstrap", "token.revoke", "bootstrap", "refused:")]
    assert ("token:ops-alice", "approve", str(run_id), "ok") in newest_first
    assert ("token:bootstrap", "token.create", "ops-alice", "ok") == newest_first[-1]
    assert sum("refused:" in r for r in rows) == 6


async def test_awaiting_approval_runs_are_listed_by_state(harness: Harness) -> None:
    assert "awaiting_approval" in RUN_STATES
    waiting = await harness.submit(GATED, trusted=False, needs_approval=True)
    trusted = await harness.run(GATED)
    listed = await ciadm(harness, "runs", "--state", "awaiting_approval")
    assert listed.returncode == 0, listed.stderr
    assert str(waiting) in listed.stdout and str(trusted.run_id) not in listed.stdout
    assert "awaiting_approval" in listed.stdout

    assert await harness.api.approve_run(waiting, "github:maintainer")
    await asyncio.wait_for(harness.api.wait(waiting), 60)
    assert (await ciadm(harness, "runs", "--state", "awaiting_approval")).stdout == "no runs\n"
    done = await ciadm(harness, "runs", "--state", "success")
    assert str(waiting) in done.stdout and str(trusted.run_id) in done.stdout


async def test_cancel_records_who_and_a_late_cancel_is_refused_and_audited(
        harness: Harness) -> None:
    run_id = await harness.submit(GATED, trusted=False, needs_approval=True)
    cancelled = await ciadm(harness, "cancel", str(run_id))
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled by token:bootstrap at 20" in cancelled.stdout
    summary = await harness.api.summary(run_id)
    assert summary.state == "cancelled" and summary.cancelled_at is not None
    assert summary.jobs[0].message == "cancelled by token:bootstrap"

    late = await ciadm(harness, "cancel", str(run_id))
    assert late.returncode == 1 and "already ended (cancelled)" in late.stderr
    approve = await ciadm(harness, "approve", str(run_id))
    assert approve.returncode == 1 and "not waiting for approval" in approve.stderr
    missing = await ciadm(harness, "approve", str(uuid.uuid4()))
    assert missing.returncode == 1
    rows = [(r[2], r[3], r[5:]) for r in audit_rows((await ciadm(harness, "audit")).stdout)]
    assert rows[0][:2] == ("token:bootstrap", "approve") and "no run with id" in " ".join(rows[0][2])
    assert rows[1][:2] == ("token:bootstrap", "approve") and "(cancelled)" in " ".join(rows[1][2])
    assert rows[2][:2] == ("token:bootstrap", "cancel") and "already ended" in " ".join(rows[2][2])
    assert rows[3] == ("token:bootstrap", "cancel", ["ok", "(cancelled", "by", "token:bootstrap)"])


async def test_an_integration_approves_and_cancels_as_a_forge_login(harness: Harness) -> None:
    """What the forge integrations call once they checked the user's permission."""
    run_id = await harness.submit(GATED, trusted=False, needs_approval=True)
    assert await harness.api.approve_run(run_id, "github:octocat")
    assert not await harness.api.approve_run(run_id, "github:octocat")  # once is enough
    final = await asyncio.wait_for(harness.api.wait(run_id), 60)
    assert final.approved_by == "github:octocat" and final.approved_at is not None
    assert final.jobs[0].state == JobState.SUCCESS
    assert not await harness.api.cancel_run(run_id, "too late", actor="forgejo:someone")
    shown = await ciadm(harness, "show", str(run_id))
    assert "approved by github:octocat" in shown.stdout and "cancelled by" not in shown.stdout
    rows = [(r[2], r[3], r[5]) for r in audit_rows((await ciadm(harness, "audit")).stdout)]
    assert rows == [("forgejo:someone", "cancel", "refused:"),
                    ("github:octocat", "approve", "refused:"),
                    ("github:octocat", "approve", "ok")]


async def test_the_development_opt_out_is_recorded_as_such(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(admin_token=None, insecure_admin_no_auth=True)
    run_id = await harness.submit(GATED, trusted=False, needs_approval=True)
    cancelled = await ciadm(harness, "cancel", str(run_id), token=None)
    assert "cancelled by insecure-no-auth at" in cancelled.stdout, cancelled.stderr
    rows = audit_rows((await ciadm(harness, "audit", token=None)).stdout)
    assert [(r[2], r[3]) for r in rows] == [("insecure-no-auth", "cancel")]


async def test_an_integration_acts_for_a_forge_user_through_the_admin_service(
        harness: Harness) -> None:
    """An integration in another process holds a token of its own and names the forge user
    whose permission it checked; both are recorded."""
    created = await ciadm(harness, "token", "create", "github-app")
    app_token = created.stdout.strip()
    run_id = await harness.submit(GATED, trusted=False, needs_approval=True)
    bad = await ciadm(harness, "approve", str(run_id), "--on-behalf-of", "octocat",
                      token=app_token)
    assert bad.returncode == 1 and "FORGE:LOGIN" in bad.stderr
    approved = await ciadm(harness, "approve", str(run_id), "--on-behalf-of", "github:octocat",
                           token=app_token)
    assert approved.returncode == 0, approved.stderr
    assert "approved by github:octocat via token:github-app at" in approved.stdout
    await asyncio.wait_for(harness.api.wait(run_id), 60)
    rows = [(r[2:6], r[6:]) for r in audit_rows((await ciadm(harness, "audit")).stdout)]
    assert rows[0] == (["github:octocat", "via", "token:github-app", "approve"],
                       [str(run_id), "ok"])
    assert rows[1][0] == ["token:github-app", "approve", str(run_id), "refused:"]
