"""From a classified GitHub delivery to a confirmed `RunRequest` on the broker.

The fork policy: a pull request from another repository, or by an author without write
access to the repository, is untrusted. Its code is still built, but the workflow comes from
the base branch (so a pull request cannot rewrite what runs with which rights), the run gets
no secrets, and in repositories configured so it waits for `ciadm approve RUN`.

A workflow that fails validation becomes a failed `solstice/workflow` check run whose summary
lists every problem and whose annotations point at the lines of the file; nothing is dropped
silently.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from common.broker import Broker
from common.messages import EventKind, RerunOf, Repo, RunRequest
from common.observability import tracer
from common.workflow import DEFAULT_PATH, WorkflowError, load_workflow, matches_trigger
from github_integration.api import GitHubApi
from github_integration.checks import ANNOTATIONS_PER_REQUEST, fit_text
from github_integration.errors import GitHubApiError
from github_integration.events import Ignored, JobRerun, PayloadError, RepoRef, RunTrigger

log = logging.getLogger(__name__)

WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})
WORKFLOW_CHECK_NAME = "solstice/workflow"
# Runs of the default branch go first, then other pushes and tags, then pull requests.
PRIORITY_DEFAULT_BRANCH, PRIORITY_PUSH, PRIORITY_PULL_REQUEST = 2, 1, 0


@dataclass(frozen=True)
class IntakeSettings:
    """What the intake needs from the service's configuration."""

    api_url: str
    workflow_path: str = DEFAULT_PATH
    # Repositories (`owner/name`, or `*` for all) whose untrusted runs wait for approval.
    require_approval: tuple[str, ...] = ()

    def approval_required(self, full_name: str) -> bool:
        names = {name.lower() for name in self.require_approval}
        return "*" in names or full_name.lower() in names


@dataclass(frozen=True)
class Published:
    """The broker confirmed this run request."""

    request: RunRequest


class Intake:
    """Turns run triggers and job re-runs into confirmed run requests."""

    def __init__(self, api: GitHubApi, broker: Broker, settings: IntakeSettings) -> None:
        self._api = api
        self._broker = broker
        self._settings = settings

    async def handle(self, outcome: RunTrigger | JobRerun) -> Published | Ignored:
        """Fetch the workflow, decide trust, publish; `Ignored` when nothing should run.

        Raises `GitHubApiError` when GitHub could not answer, `BrokerError` when the broker
        did not confirm, `PayloadError` when the App is not installed on the repository.
        """
        with tracer(__name__).start_as_current_span("github.intake") as span:
            span.set_attribute("solstice.request_id", outcome.request_id)
            installation_id = await self._installation(outcome.repo)
            if isinstance(outcome, JobRerun):
                return await self._rerun(outcome, installation_id)
            return await self._trigger(outcome, installation_id)

    async def _installation(self, repo: RepoRef) -> int:
        if repo.installation_id is not None:
            return repo.installation_id
        try:
            return await self._api.repo_installation(repo.owner, repo.name)
        except GitHubApiError as exc:
            if exc.not_found:
                raise PayloadError(f"the GitHub App is not installed on {repo.owner}/{repo.name}",
                                   hint="install the App on the repository, or remove the "
                                        "repository webhook that sent this") from exc
            raise

    def _repo(self, ref: RepoRef, installation_id: int) -> Repo:
        return Repo(forge="github", owner=ref.owner, name=ref.name, clone_url=ref.clone_url,
                    default_branch=ref.default_branch, api_url=self._settings.api_url,
                    installation_id=installation_id)

    async def _trusted(self, trigger: RunTrigger, installation_id: int) -> bool:
        if trigger.fork:
            return False
        if trigger.author is None:
            return True  # a push: only writers can push
        permission = await self._api.permission(trigger.repo.owner, trigger.repo.name,
                                                trigger.author, installation_id=installation_id)
        return permission in WRITE_PERMISSIONS

    async def _workflow(self, repo: RepoRef, ref: str, installation_id: int) -> str | None:
        return await self._api.file_at(repo.owner, repo.name, self._settings.workflow_path, ref,
                                       installation_id=installation_id)

    async def _trigger(self, trigger: RunTrigger, installation_id: int) -> Published | Ignored:
        trusted = await self._trusted(trigger, installation_id)
        source_ref = trigger.commit_sha if trusted else (
            trigger.base_branch or trigger.repo.default_branch)
        text = await self._workflow(trigger.repo, source_ref, installation_id)
        if text is None:
            return Ignored(f"no {self._settings.workflow_path} at {source_ref}; nothing to run")
        try:
            workflow = load_workflow(text, self._settings.workflow_path)
        except WorkflowError as exc:
            await self._report_invalid(trigger, installation_id, exc)
            return Ignored(f"{self._settings.workflow_path} is invalid; reported as a failed "
                           f"{WORKFLOW_CHECK_NAME} check run")
        # A pull request's branch filter applies to its target branch.
        branch = trigger.base_branch if trigger.event is EventKind.PULL_REQUEST else trigger.branch
        if not matches_trigger(workflow, trigger.event.value, branch, trigger.tag):
            return Ignored(f"the workflow's `on` triggers do not include this "
                           f"{trigger.event.value} ({trigger.ref})")
        if trigger.event is EventKind.PULL_REQUEST:
            priority = PRIORITY_PULL_REQUEST
        elif trigger.branch == trigger.repo.default_branch:
            priority = PRIORITY_DEFAULT_BRANCH
        else:
            priority = PRIORITY_PUSH
        full_name = f"{trigger.repo.owner}/{trigger.repo.name}"
        request = RunRequest(
            request_id=trigger.request_id, repo=self._repo(trigger.repo, installation_id),
            commit_sha=trigger.commit_sha, ref=trigger.ref, event=trigger.event,
            branch=trigger.branch, tag=trigger.tag, pull_request=trigger.pull_request,
            base_branch=trigger.base_branch, workflow_path=self._settings.workflow_path,
            workflow_source=text, trusted=trusted,
            needs_approval=not trusted and self._settings.approval_required(full_name),
            priority=priority)
        await self._broker.publish_run(request)
        log.info("run request published", extra={"request_id": request.request_id,
                                                  "repo": full_name, "trusted": trusted})
        return Published(request)

    async def _rerun(self, rerun: JobRerun, installation_id: int) -> Published | Ignored:
        ref = rerun.repo.default_branch
        text = await self._workflow(rerun.repo, ref, installation_id)
        if text is None:
            return Ignored(f"no {self._settings.workflow_path} at {ref}; nothing to re-run")
        full_name = f"{rerun.repo.owner}/{rerun.repo.name}"
        request = RunRequest(
            request_id=rerun.request_id, repo=self._repo(rerun.repo, installation_id),
            commit_sha=rerun.commit_sha, ref=rerun.commit_sha, event=EventKind.MANUAL,
            workflow_path=self._settings.workflow_path, workflow_source=text, trusted=False,
            needs_approval=self._settings.approval_required(full_name),
            rerun_of=RerunOf(run_id=rerun.run_id, job_key=rerun.job_key))
        await self._broker.publish_run(request)
        log.info("job re-run published", extra={"request_id": request.request_id,
                                                "run_id": str(rerun.run_id),
                                                "job_key": rerun.job_key})
        return Published(request)

    async def _report_invalid(self, trigger: RunTrigger, installation_id: int,
                              error: WorkflowError) -> None:
        problems = "\n".join(f"- {d.format()}" for d in error.diagnostics)
        summary = (f"`{self._settings.workflow_path}` at {trigger.commit_sha[:12]} cannot be "
                   f"used, so nothing ran:\n\n{problems}")
        annotations: list[dict[str, Any]] = [
            {"path": d.path, "start_line": d.line, "end_line": d.line,
             "annotation_level": "failure", "message": d.message + (f"\n{d.hint}" if d.hint else "")}
            for d in error.diagnostics if d.line >= 1
        ][:ANNOTATIONS_PER_REQUEST]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        output: dict[str, Any] = {"title": "Invalid workflow file",
                                  "summary": fit_text(summary)}
        if annotations:
            output["annotations"] = annotations
        await self._api.create_check_run(
            trigger.repo.owner, trigger.repo.name,
            {"name": WORKFLOW_CHECK_NAME, "head_sha": trigger.commit_sha, "status": "completed",
             "conclusion": "failure", "completed_at": now, "output": output},
            installation_id=installation_id)
