"""A `RunApproval` from an integration, as it arrives on the runs queue: it starts exactly the
waiting runs it reaches (its repository; its run, or its pull request's runs created before it
and matching its commit prefix) and records the forge login as the approver."""
from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

from common.messages import EventKind, JobState, Repo, RunApproval
from tests.orchestrator.conftest import Harness

WORKFLOW = 'workflow name="ci" { job id="build" runs_on="local" { step name="b" run="cat hello.txt" } }'


def commit(source) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "c"]):
        subprocess.run(["git", *args], cwd=source, check=True, env=env, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, check=True, text=True,
                          capture_output=True).stdout.strip()


async def waiting_run(harness: Harness, repo: Repo, sha: str, pull_request: int) -> uuid.UUID:
    return await harness.submit(WORKFLOW, repo=repo, commit_sha=sha, trusted=False,
                                needs_approval=True, event=EventKind.PULL_REQUEST,
                                ref=f"refs/pull/{pull_request}/head", branch="feature",
                                base_branch="main", pull_request=pull_request)


async def state(harness: Harness, run_id: uuid.UUID) -> JobState:
    summary = await harness.api.summary(run_id)
    assert summary is not None
    return summary.jobs[0].state


async def test_forge_approvals_start_exactly_the_runs_they_reach(harness: Harness) -> None:
    sha = commit(harness.source)
    app = Repo(forge="github", owner="acme", name="app", clone_url=f"file://{harness.source}")
    other = app.model_copy(update={"name": "other"})
    on_pr = await waiting_run(harness, app, sha, 7)
    other_pr = await waiting_run(harness, app, sha, 8)
    other_repo = await waiting_run(harness, other, sha, 7)
    by_button = await waiting_run(harness, app, sha, 9)
    broker = harness.orchestrator.broker

    async def approve(**fields) -> None:
        await broker.publish_run(RunApproval(**{"request_id": str(uuid.uuid4()),
                                                "actor": "maintainer", "repo": app, **fields}))

    # Too early (before the runs were created), or for another commit: nothing starts.
    await approve(pull_request=7, requested_at=datetime.now(UTC) - timedelta(hours=1))
    await approve(pull_request=7, commit_prefix="0000000")
    await approve(run_id=other_repo)  # a run of another repository than the approval's
    await asyncio.sleep(1.0)
    for run_id in (on_pr, other_pr, other_repo, by_button):
        assert await state(harness, run_id) is JobState.AWAITING_APPROVAL

    await approve(pull_request=7, commit_prefix=sha[:10])
    await approve(run_id=by_button, actor="clicker")
    for run_id in (on_pr, by_button):
        final = await asyncio.wait_for(harness.api.wait(run_id), 60)
        assert final.state == "success", final
    for run_id in (other_pr, other_repo):
        assert await state(harness, run_id) is JobState.AWAITING_APPROVAL
    approvers = dict(await harness.orchestrator.db.pool.fetch(
        "SELECT id, approved_by FROM runs WHERE id = ANY($1)", [on_pr, by_button, other_pr]))
    assert approvers == {on_pr: "github:maintainer", by_button: "github:clicker",
                         other_pr: None}
