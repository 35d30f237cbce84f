"""Job events -> Forgejo/Gitea commit statuses, through the shared outbox.

One status per job, context `solstice/<workflow>/<job>`:

| job state | status `state` | description |
|---|---|---|
| queued, provisioning | pending | queued / starting a VM |
| running | pending | running |
| awaiting approval | pending | waiting for approval |
| success | success | passed |
| skipped | success | skipped (a skipped job must not block a merge) |
| failure, timed out | failure | the failing step, or "timed out" |
| error, cancelled | error | infrastructure error / cancelled: not the code's fault |

`target_url` is the job's log page. A workflow that fails validation gets one `failure`
status, context `solstice/workflow`, whose description is the first problem
(`path:line:col: message`) and whose link opens the file at that line on the forge.
"""
from __future__ import annotations

from typing import Any

from common.forge.errors import ForgeApiError
from common.forge.outbox import OutboxItem
from common.forge.policy import InvalidWorkflow
from common.messages import JobEvent, JobState, Repo
from forge_integration.api import ForgejoApi

# GitHub's limit for the same field; Forgejo shows longer ones cut in the commit list anyway.
DESCRIPTION_LIMIT = 140
CONTEXT_PREFIX = "solstice"

_STATES: dict[JobState, tuple[str, str]] = {
    JobState.QUEUED: ("pending", "queued"),
    JobState.PROVISIONING: ("pending", "starting a VM"),
    JobState.RUNNING: ("pending", "running"),
    JobState.AWAITING_APPROVAL: ("pending",
                                 "waiting for a maintainer: comment /solstice approve to run it"),
    JobState.SUCCESS: ("success", "passed"),
    JobState.SKIPPED: ("success", "skipped"),
    JobState.FAILURE: ("failure", "failed"),
    JobState.TIMED_OUT: ("failure", "timed out"),
    JobState.ERROR: ("error", "infrastructure error"),
    JobState.CANCELLED: ("error", "cancelled"),
}


def _cut(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def context(workflow_name: str, job_key: str) -> str:
    return f"{CONTEXT_PREFIX}/{workflow_name or 'workflow'}/{job_key}"


def status_body(event: JobEvent) -> dict[str, str]:
    """The `POST .../statuses/{sha}` body for a job event."""
    state, summary = _STATES[event.state]
    if event.state is JobState.FAILURE and event.failing_step:
        summary = f"failed at step {event.failing_step!r}"
    if event.description and event.state in (JobState.ERROR, JobState.CANCELLED,
                                              JobState.TIMED_OUT):
        summary = f"{summary}: {event.description}"
    return {"state": state, "context": context(event.workflow_name, event.job_key),
            "description": _cut(summary), "target_url": event.log_url}


def payload(repo: Repo, sha: str, body: dict[str, str]) -> dict[str, Any]:
    """An outbox row: where to post and what."""
    return {"forge": repo.forge, "api_url": repo.api_url, "owner": repo.owner,
            "repo": repo.name, "sha": sha, "body": body}


def event_payload(event: JobEvent) -> dict[str, Any]:
    return payload(event.repo, event.commit_sha, status_body(event))


def _html_url(repo: Repo) -> str:
    return repo.clone_url.removesuffix(".git")


def invalid_workflow_payload(invalid: InvalidWorkflow) -> tuple[str, dict[str, Any]]:
    """The outbox key and row of the failed status of a workflow that does not validate."""
    candidate = invalid.candidate
    first = invalid.error.diagnostics[0]
    more = len(invalid.error.diagnostics) - 1
    description = f"{first.path}:{first.line}:{first.col}: {first.message}"
    if more:
        description += f" (+{more} more)"
    # The file as the run would have read it: the commit, or the base branch for untrusted PRs.
    where = "commit" if invalid.workflow_ref == candidate.commit_sha else "branch"
    target = f"{_html_url(candidate.repo)}/src/{where}/{invalid.workflow_ref}/{first.path}#L{first.line}"
    body = {"state": "failure", "context": f"{CONTEXT_PREFIX}/workflow",
            "description": _cut(description), "target_url": target}
    key = f"workflow:{candidate.repo.forge}:{candidate.repo.full_name}@{candidate.commit_sha}"
    return key, payload(candidate.repo, candidate.commit_sha, body)


def event_key(event: JobEvent) -> str:
    return f"job:{event.job_id}"


class StatusSender:
    """The outbox's sender: posts a row's status through the API client of its forge."""

    def __init__(self, clients: dict[str, ForgejoApi]) -> None:
        self._clients = clients

    async def __call__(self, item: OutboxItem) -> None:
        row = item.payload
        client = self._clients.get(row["forge"])
        if client is None:
            raise ForgeApiError(f"no {row['forge']} site configured to post statuses to",
                                status=0, retryable=False,
                                hint=f"add [forge_integration.sites.{row['forge']}]")
        await client.create_status(row["owner"], row["repo"], row["sha"], row["body"])
