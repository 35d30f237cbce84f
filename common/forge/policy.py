"""From a normalised forge event to a `RunRequest`: trust, workflow at the right commit, triggers.

Both integrations parse their webhooks into a `RunCandidate`, then call `plan_run` with a
`ForgeReader` (their API client). The fork policy lives here once:

- a push, a tag or a manual trigger is trusted: whoever pushed has write access;
- a pull request from another repository (a fork), or whose author lacks write access on the
  base repository, is untrusted: its workflow is read from the *base branch* (the PR cannot
  rewrite what runs, nor which secrets it asks for), the PR's head commit is still what gets
  built, the run gets no secrets, and it waits for approval if the repository asks for it.

`plan_run` answers with one of: `RunRequest` (publish it), `Ignored` (no workflow file, or its
`on` triggers do not match: answered 200), `InvalidWorkflow` (report a failed status pointing
at the first problem; never a silent drop).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common.forge.events import Ignored
from common.messages import EventKind, Repo, RunRequest
from common.workflow import (
    DEFAULT_LIMITS,
    DEFAULT_PATH,
    Limits,
    Workflow,
    WorkflowError,
    load_workflow_async,
    matches_trigger,
)

# Runs are consumed highest priority first: a human waiting on a manual run, then what lands
# on the default branch and releases, then other branches, then pull requests.
PRIORITY_MANUAL = 8
PRIORITY_DEFAULT_BRANCH = 6
PRIORITY_BRANCH = 4
PRIORITY_PULL_REQUEST = 2


class ForgeReader(Protocol):
    """What the policy needs from a forge's API. Failures raise `ForgeApiError`."""

    async def fetch_file(self, repo: Repo, path: str, ref: str) -> str | None:
        """The text of `path` at `ref` (a commit sha or a branch), None if there is no such file."""

    async def can_write(self, repo: Repo, user: str) -> bool:
        """Whether `user` may push to `repo` (write, maintain or admin)."""


@dataclass(frozen=True)
class RunCandidate:
    """A forge event that may start a run, normalised.

    `request_id` is the run's idempotency key (normally the delivery id). For pull requests,
    `branch` is the head branch, `base_branch` the target, `author` the PR's author and `fork`
    whether the head lives in another repository (True when the forge does not say).
    """

    repo: Repo
    event: EventKind
    commit_sha: str
    ref: str
    request_id: str
    branch: str | None = None
    tag: str | None = None
    pull_request: int | None = None
    base_branch: str | None = None
    author: str | None = None
    fork: bool = False
    sender: str | None = None  # the login whose push or pull request update this is


def push_candidate(repo: Repo, ref: str, sha: str, request_id: str,
                   sender: str | None = None) -> RunCandidate | Ignored:
    """What a push of `sha` to `ref` asks for: a branch or tag run, else nothing."""
    if ref.startswith("refs/heads/"):
        return RunCandidate(repo, EventKind.PUSH, sha, ref, request_id,
                            branch=ref.removeprefix("refs/heads/"), sender=sender)
    if ref.startswith("refs/tags/"):
        return RunCandidate(repo, EventKind.TAG, sha, ref, request_id,
                            tag=ref.removeprefix("refs/tags/"), sender=sender)
    return Ignored(f"push to {ref} is neither a branch nor a tag")


@dataclass(frozen=True)
class Trust:
    """How far to trust a candidate, and where its workflow file is read from."""

    trusted: bool
    workflow_ref: str
    reason: str


@dataclass(frozen=True)
class InvalidWorkflow:
    """The workflow file does not validate; the commit gets a failed status saying why."""

    candidate: RunCandidate
    error: WorkflowError
    workflow_ref: str


PlanOutcome = RunRequest | Ignored | InvalidWorkflow


async def decide_trust(candidate: RunCandidate, forge: ForgeReader) -> Trust:
    """Apply the fork policy (module docstring) to `candidate`."""
    if candidate.event is not EventKind.PULL_REQUEST:
        return Trust(True, candidate.commit_sha, "pushed by someone with write access")
    base = candidate.base_branch or candidate.repo.default_branch
    if candidate.fork:
        return Trust(False, base, "pull request from another repository")
    if not candidate.author or not await forge.can_write(candidate.repo, candidate.author):
        return Trust(False, base, f"author {candidate.author or '(unknown)'} has no write access")
    return Trust(True, candidate.commit_sha, "pull request by a collaborator with write access")


def trigger_branch(candidate: RunCandidate) -> str | None:
    """The branch the workflow's `on ... branches=` patterns are matched against."""
    if candidate.event is EventKind.PULL_REQUEST:
        return candidate.base_branch
    return candidate.branch


def priority(candidate: RunCandidate) -> int:
    """The run's queue priority (see the PRIORITY_* constants)."""
    if candidate.event is EventKind.MANUAL:
        return PRIORITY_MANUAL
    if candidate.event is EventKind.PULL_REQUEST:
        return PRIORITY_PULL_REQUEST
    if candidate.event is EventKind.TAG or candidate.branch == candidate.repo.default_branch:
        return PRIORITY_DEFAULT_BRANCH
    return PRIORITY_BRANCH


def run_request(candidate: RunCandidate, workflow_source: str, trust: Trust, *,
                approval_for_untrusted: bool, workflow_path: str = DEFAULT_PATH) -> RunRequest:
    """The `RunRequest` for a candidate whose workflow validated and matched."""
    return RunRequest(
        request_id=candidate.request_id, repo=candidate.repo, commit_sha=candidate.commit_sha,
        ref=candidate.ref, event=candidate.event, branch=candidate.branch, tag=candidate.tag,
        pull_request=candidate.pull_request, base_branch=candidate.base_branch,
        sender=candidate.sender, workflow_path=workflow_path, workflow_source=workflow_source,
        trusted=trust.trusted,
        needs_approval=approval_for_untrusted and not trust.trusted,
        priority=priority(candidate))


def matches(workflow: Workflow, candidate: RunCandidate) -> bool:
    """Whether the workflow's `on` triggers (events, branch and tag patterns) start this run."""
    return matches_trigger(workflow, candidate.event.value, trigger_branch(candidate), candidate.tag)


async def plan_run(candidate: RunCandidate, forge: ForgeReader, *, approval_for_untrusted: bool,
                   workflow_path: str = DEFAULT_PATH,
                   limits: Limits = DEFAULT_LIMITS) -> PlanOutcome:
    """Decide trust, fetch the workflow at the trusted ref, validate it and filter by trigger.

    Raises `ForgeApiError` when the forge cannot be asked (the caller answers 503 so the forge
    retries the webhook).
    """
    trust = await decide_trust(candidate, forge)
    source = await forge.fetch_file(candidate.repo, workflow_path, trust.workflow_ref)
    if source is None:
        return Ignored(f"no {workflow_path} at {trust.workflow_ref}")
    try:
        workflow = await load_workflow_async(source, workflow_path, limits)
    except WorkflowError as exc:
        return InvalidWorkflow(candidate, exc, trust.workflow_ref)
    if not matches(workflow, candidate):
        where = trigger_branch(candidate) or candidate.tag or ""
        return Ignored(f"the workflow's `on` triggers do not start {candidate.event.value}"
                    + (f" on {where}" if where else ""))
    return run_request(candidate, source, trust, approval_for_untrusted=approval_for_untrusted,
                       workflow_path=workflow_path)
