"""What goes back to GitHub, through the shared status outbox (`common.forge.outbox`).

Two kinds of outbox rows, target `github`:
- `job_event`: a `JobEvent` from the broker, keyed by its job and ordered by its `sequence`;
  the sender hands it to `CheckRunReporter`, which creates or updates the job's check run;
- `check_run`: a complete check-run body for a commit, used for a workflow that fails
  validation (`solstice/workflow`, failed, with the problems as annotations).

Rows stay in PostgreSQL until GitHub accepted them, so a GitHub outage delays check runs but
loses none, and a restart resumes where it stopped.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from common.broker.base import Delivery
from common.forge.outbox import Outbox, OutboxItem, OutboxWorker
from common.forge.policy import InvalidWorkflow
from common.messages import JobEvent, Repo, decode
from github_integration.api import GitHubApi
from github_integration.checks import ANNOTATIONS_PER_REQUEST, fit_text
from github_integration.reporter import CheckRunReporter

TARGET = "github"
WORKFLOW_CHECK_NAME = "solstice/workflow"


def invalid_workflow_row(invalid: InvalidWorkflow) -> tuple[str, dict[str, Any]]:
    """The outbox key and row of the failed check run of a workflow that does not validate."""
    candidate = invalid.candidate
    diagnostics = invalid.error.diagnostics
    path = diagnostics[0].path
    problems = "\n".join(f"- {d.format()}" for d in diagnostics)
    summary = f"`{path}` at {invalid.workflow_ref} cannot be used, so nothing ran:\n\n{problems}"
    output: dict[str, Any] = {"title": "Invalid workflow file", "summary": fit_text(summary)}
    annotations = [
        {"path": d.path, "start_line": d.line, "end_line": d.line, "annotation_level": "failure",
         "message": fit_text(d.message + (f"\n{d.hint}" if d.hint else ""))}
        for d in diagnostics if d.line >= 1
    ][:ANNOTATIONS_PER_REQUEST]
    if annotations:
        output["annotations"] = annotations
    body = {"name": WORKFLOW_CHECK_NAME, "head_sha": candidate.commit_sha, "status": "completed",
            "conclusion": "failure",
            "completed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "output": output}
    key = f"workflow:{candidate.repo.full_name}@{candidate.commit_sha}"
    return key, {"kind": "check_run", "repo": candidate.repo.model_dump(mode="json"), "body": body}


class CheckRunSender:
    """The outbox's sender: applies one row to GitHub (raises `GitHubApiError` if refused)."""

    def __init__(self, api: GitHubApi, reporter: CheckRunReporter) -> None:
        self._api = api
        self._reporter = reporter

    async def __call__(self, item: OutboxItem) -> None:
        row = item.payload
        if row["kind"] == "job_event":
            await self._reporter.deliver(JobEvent.model_validate(row["event"]))
        else:
            await self._api.create_check_run(Repo.model_validate(row["repo"]), row["body"])


class CheckRunOutbox:
    """Adds rows to the `github` outbox and wakes its worker."""

    def __init__(self, outbox: Outbox, worker: OutboxWorker) -> None:
        self._outbox = outbox
        self._worker = worker

    async def add_job_event(self, event: JobEvent) -> None:
        """Queue `event` for its job's check run (a redelivered event is queued once)."""
        await self._outbox.enqueue(f"job:{event.job_id}", event.sequence,
                                   {"kind": "job_event", "event": event.model_dump(mode="json")})
        self._worker.notify()

    async def add_invalid_workflow(self, invalid: InvalidWorkflow) -> None:
        """Queue the failed `solstice/workflow` check run of `invalid` (once per commit)."""
        key, row = invalid_workflow_row(invalid)
        await self._outbox.enqueue(key, 0, row)
        self._worker.notify()


class JobEventFeed:
    """The broker handler of job events: into the outbox, then acked.

    Events about other forges' repositories are acked and dropped: every integration sees
    every job event. A malformed event raises `MessageError`, which dead-letters it.
    """

    def __init__(self, outbox: CheckRunOutbox) -> None:
        self._outbox = outbox

    async def __call__(self, delivery: Delivery) -> None:
        event = decode(delivery.body, JobEvent)
        if event.repo.forge == "github":
            await self._outbox.add_job_event(event)
        await delivery.ack()
