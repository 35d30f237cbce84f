"""From a classified GitHub delivery to a confirmed `RunRequest` on the broker.

Trust, workflow fetch and trigger filtering are the shared fork policy
(`common.forge.policy.plan_run`), with `GitHubApi` as its reader. What is GitHub's own:
- the App acts as an installation, named in the delivery or looked up for the repository; a
  named one must have access to the repository, else the delivery is refused (400) before
  anything is fetched;
- a workflow that fails validation becomes a failed `solstice/workflow` check run (queued in
  the outbox, see `feedback`) whose summary lists every problem and whose annotations point
  at the lines of the file;
- a re-run of one job (`check_run` `rerequested`) becomes a `RunRequest` with `rerun_of`,
  sent untrusted with the default branch's workflow (see `common.messages.RerunOf`).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from common.broker import Broker
from common.forge.approval import approve
from common.forge.cache import CachedReader
from common.forge.errors import WebhookRejected
from common.forge.events import ApprovalSent, Ignored, Published
from common.forge.identity import repository_identity
from common.forge.inbox import InboxItem
from common.forge.policy import (
    InvalidWorkflow,
    RunCandidate,
    Trust,
    plan_run,
    run_request,
)
from common.forge.webhook import parse_json
from common.messages import EventKind, Repo, RerunOf, RunRequest
from common.observability import tracer
from common.workflow import DEFAULT_LIMITS, DEFAULT_PATH, Limits
from github_integration.api import GitHubApi
from github_integration.approval import approval_asked
from github_integration.errors import GitHubApiError
from github_integration.events import JobRerun, classify
from github_integration.feedback import WORKFLOW_CHECK_NAME, CheckRunOutbox

log = logging.getLogger(__name__)


class Intake:
    """Turns run candidates and job re-runs into confirmed run requests."""

    def __init__(self, api: GitHubApi, broker: Broker, outbox: CheckRunOutbox, *,
                 api_url: str, approval_for: Callable[[str], bool],
                 workflow_path: str = DEFAULT_PATH,
                 workflow_limits: Limits = DEFAULT_LIMITS, workflow_cache: int = 0) -> None:
        """`approval_for(owner/name)`: whether that repository's untrusted runs wait for approval;
        `workflow_cache`: how many workflow files read at a commit are remembered."""
        self._api = api
        self._reader = CachedReader(api, workflow_cache)
        self._api_url = api_url
        self._workflow_limits = workflow_limits
        self._broker = broker
        self._outbox = outbox
        self._approval_for = approval_for
        self._workflow_path = workflow_path

    async def process(self, item: InboxItem) -> Published | Ignored | ApprovalSent:
        """The inbox worker's processor: the stored delivery classified again, then handled."""
        payload = parse_json(item.body)
        identity = repository_identity(payload)
        asked = approval_asked(item.event, payload, item.delivery_id, identity=identity,
                               api_url=self._api_url)
        if asked is not None:
            return await approve(asked, self._api, self._broker)
        outcome = classify(item.event, payload, item.delivery_id, identity=identity,
                           api_url=self._api_url)
        if isinstance(outcome, Ignored):
            return outcome
        return await self.handle(outcome)

    async def handle(self, outcome: RunCandidate | JobRerun) -> Published | Ignored:
        """Fetch the workflow, decide trust, publish; `Ignored` when nothing should run.

        Raises `GitHubApiError` when GitHub could not answer, `BrokerError` when the broker
        did not confirm, `WebhookRejected` (400) when the App is not installed on the repository
        or the installation the delivery names has no access to it.
        """
        with tracer(__name__).start_as_current_span("github.intake") as span:
            span.set_attribute("solstice.request_id", outcome.request_id)
            repo = await self._with_installation(outcome.repo)
            if isinstance(outcome, JobRerun):
                return await self._rerun(dataclasses.replace(outcome, repo=repo))
            return await self._candidate(dataclasses.replace(outcome, repo=repo))

    async def _with_installation(self, repo: Repo) -> Repo:
        if repo.installation_id is not None:
            try:
                await self._api.auth.installation_token(repo.installation_id, repo.full_name)
            except GitHubApiError as exc:
                if exc.status in (404, 422):  # no such installation / no access to the repo
                    raise WebhookRejected(400, exc.message, hint=exc.hint) from exc
                raise
            return repo
        try:
            installation_id = await self._api.repo_installation(repo.owner, repo.name)
        except GitHubApiError as exc:
            if exc.not_found:
                raise WebhookRejected(400, f"the GitHub App is not installed on {repo.full_name}",
                                      hint="install the App on the repository, or remove the "
                                           "repository webhook that sent this") from exc
            raise
        return repo.model_copy(update={"installation_id": installation_id})

    async def _publish(self, request: RunRequest) -> Published:
        await self._broker.publish_run(request)
        log.info("run request published",
                 extra={"request_id": request.request_id, "repo": request.repo.full_name,
                        "trusted": request.trusted, "rerun": request.rerun_of is not None})
        return Published(request)

    async def _candidate(self, candidate: RunCandidate) -> Published | Ignored:
        plan = await plan_run(candidate, self._reader,
                              approval_for_untrusted=self._approval_for(candidate.repo.full_name),
                              workflow_path=self._workflow_path, limits=self._workflow_limits)
        if isinstance(plan, Ignored):
            return plan
        if isinstance(plan, InvalidWorkflow):
            await self._outbox.add_invalid_workflow(plan)
            return Ignored(f"{self._workflow_path} at {plan.workflow_ref} is invalid; "
                           f"reported as a failed {WORKFLOW_CHECK_NAME} check run")
        return await self._publish(plan)

    async def _rerun(self, rerun: JobRerun) -> Published | Ignored:
        ref = rerun.repo.default_branch
        source = await self._api.fetch_file(rerun.repo, self._workflow_path, ref)
        if source is None:
            return Ignored(f"no {self._workflow_path} at {ref}; nothing to re-run")
        candidate = RunCandidate(rerun.repo, EventKind.MANUAL, rerun.commit_sha,
                                 rerun.commit_sha, rerun.request_id)
        trust = Trust(False, ref, "a re-run keeps the trust of the run it repeats")
        request = run_request(candidate, source, trust,
                              approval_for_untrusted=self._approval_for(rerun.repo.full_name),
                              workflow_path=self._workflow_path)
        rerun_of = RerunOf(run_id=rerun.run_id, job_key=rerun.job_key)
        return await self._publish(request.model_copy(update={"rerun_of": rerun_of}))
