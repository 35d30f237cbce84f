"""GitHub webhook bodies -> what Solstice should do about them.

`classify` reads one delivery (the `X-GitHub-Event` name and the parsed JSON body) and returns
- `Ignored(reason)`: answered 200, nothing published (a closed PR, a deleted branch, a ping);
- `RunCandidate`: a commit to build, for the shared fork policy (`common.forge.policy`);
- `JobRerun`: someone pressed "Re-run" on one of our check runs;
or raises `WebhookRejected` (400) for an event Solstice does not handle or a body that lacks
what its event must carry. Only the fields used are modelled; GitHub adds fields freely.

The `Repo` of a candidate is the `RepositoryIdentity` the caller took from the body once
(`common.forge.identity`) and carries the delivery's `installation.id`; a webhook sent by a
repository hook rather than the App has none, and the intake looks it up. A named installation
is trusted with nothing: the intake checks it has access to that repository.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from common.forge.errors import WebhookRejected
from common.forge.events import Ignored, Model, named, parse_model, sender_login
from common.forge.identity import RepositoryIdentity
from common.forge.policy import RunCandidate, push_candidate
from common.messages import EventKind, Repo

ZERO_SHA = "0" * 40
FORGE_NAME = "GitHub"  # in the hint of a 400 for a malformed body
PULL_REQUEST_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
CHECK_SUITE_ACTIONS = frozenset({"requested", "rerequested"})
# Delivered to every GitHub App whatever it subscribes to, so they cannot be refused with 400.
APP_LIFECYCLE_EVENTS = frozenset({"installation", "installation_repositories",
                                  "installation_target", "github_app_authorization"})
HANDLED_EVENTS = ("push", "pull_request", "check_suite", "check_run", "ping")


class _Account(Model):
    login: str


class _Repository(Model):
    id: int
    clone_url: str
    default_branch: str = "main"


class _Installation(Model):
    id: int


class _Delivery(Model):
    repository: _Repository
    installation: _Installation | None = None


class _Push(_Delivery):
    ref: str
    after: str
    deleted: bool = False


class _PullRequestRef(Model):
    ref: str
    sha: str
    repo: _Repository | None  # None when the fork was deleted


class _PullRequest(Model):
    number: int
    head: _PullRequestRef
    base: _PullRequestRef
    user: _Account


class _PullRequestEvent(_Delivery):
    action: str
    pull_request: _PullRequest


class _CheckSuite(Model):
    head_sha: str
    head_branch: str | None = None


class _CheckSuiteEvent(_Delivery):
    action: str
    check_suite: _CheckSuite


class _CheckRun(Model):
    id: int
    name: str
    head_sha: str
    external_id: str | None = None


class _CheckRunEvent(_Delivery):
    action: str
    check_run: _CheckRun


@dataclass(frozen=True)
class JobRerun:
    """A re-run of one job, asked for from the check run Solstice created for it."""

    repo: Repo
    request_id: str
    commit_sha: str
    run_id: uuid.UUID
    job_key: str


Outcome = Ignored | RunCandidate | JobRerun


def _repo(delivery: _Delivery, identity: RepositoryIdentity, api_url: str) -> Repo:
    r = delivery.repository
    return Repo(forge="github", owner=identity.owner, name=identity.name, clone_url=r.clone_url,
                default_branch=r.default_branch, api_url=api_url,
                installation_id=delivery.installation.id if delivery.installation else None)


def commit_request_id(delivery: _Delivery, ref: str, sha: str) -> str:
    """The run key of "this commit on this ref": a push and the check suite GitHub opens
    for the same push share it, so the orchestrator records one run for the two deliveries."""
    return f"github/{delivery.repository.id}/{ref}@{sha}"


def parse_external_id(value: str | None) -> tuple[uuid.UUID, str] | None:
    """`(run_id, job_key)` from a check run's `external_id`, None if Solstice did not write it."""
    run, sep, job_key = (value or "").partition("/")
    if not sep or not job_key:
        return None
    try:
        return uuid.UUID(run), job_key
    except ValueError:
        return None


def _push(payload: dict[str, Any], identity: RepositoryIdentity, api_url: str) -> Outcome:
    push = parse_model(_Push, "push", payload, FORGE_NAME)
    if push.deleted or push.after == ZERO_SHA:
        return Ignored(f"push deletes {push.ref}; nothing to build")
    repo = _repo(push, identity, api_url)
    request_id = commit_request_id(push, push.ref, push.after)
    return push_candidate(repo, push.ref, push.after, request_id, sender_login(payload))


def _pull_request(payload: dict[str, Any], identity: RepositoryIdentity, delivery_id: str,
                  api_url: str) -> Outcome:
    action = payload.get("action")
    if action not in PULL_REQUEST_ACTIONS:
        return Ignored(f"pull_request action {action!r} does not start runs")
    event = parse_model(_PullRequestEvent, "pull_request", payload, FORGE_NAME)
    pr = event.pull_request
    fork = pr.head.repo is None or pr.head.repo.id != event.repository.id
    return RunCandidate(_repo(event, identity, api_url), EventKind.PULL_REQUEST, pr.head.sha,
                        f"refs/pull/{pr.number}/head", delivery_id, branch=pr.head.ref,
                        pull_request=pr.number, base_branch=pr.base.ref, author=pr.user.login,
                        fork=fork, sender=sender_login(payload))


def _check_suite(payload: dict[str, Any], identity: RepositoryIdentity, delivery_id: str,
                 api_url: str) -> Outcome:
    action = payload.get("action")
    if action not in CHECK_SUITE_ACTIONS:
        return Ignored(f"check_suite action {action!r} does not start runs")
    event = parse_model(_CheckSuiteEvent, "check_suite", payload, FORGE_NAME)
    suite = event.check_suite
    if not suite.head_branch:
        return Ignored("check suite is not on a branch; its push event starts the run")
    # GitHub opens check suites only for pushes to this repository (not to forks), so the
    # head branch was written by someone with write access: trusted, like a push.
    ref = f"refs/heads/{suite.head_branch}"
    request_id = (commit_request_id(event, ref, suite.head_sha) if action == "requested"
                  else delivery_id)
    return RunCandidate(_repo(event, identity, api_url), EventKind.PUSH, suite.head_sha, ref, request_id,
                        branch=suite.head_branch)


def _check_run(payload: dict[str, Any], identity: RepositoryIdentity, delivery_id: str,
               api_url: str) -> Outcome:
    action = payload.get("action")
    if action != "rerequested":
        return Ignored(f"check_run action {action!r} needs nothing from Solstice")
    event = parse_model(_CheckRunEvent, "check_run", payload, FORGE_NAME)
    job = parse_external_id(event.check_run.external_id)
    if job is None:
        return Ignored(f"check run {event.check_run.name!r} was not created by Solstice")
    return JobRerun(_repo(event, identity, api_url), delivery_id, event.check_run.head_sha, *job)


def classify(event: str, payload: Any, delivery_id: str, *, identity: RepositoryIdentity | None,
             api_url: str) -> Outcome:
    """What to do about one delivery of `event` with body `payload` (parsed JSON), whose
    repository is `identity` (`common.forge.identity.repository_identity(payload)`).

    `api_url` is the GitHub API root recorded in the run's `Repo` for reporting back.
    """
    if not isinstance(payload, dict):
        raise WebhookRejected(400, f"{event} payload is not a JSON object")
    if event == "ping":
        return Ignored("pong")
    if event in APP_LIFECYCLE_EVENTS:
        return Ignored(f"{event} event: nothing to build")
    if event == "push":
        return _push(payload, named(identity, event), api_url)
    if event == "pull_request":
        return _pull_request(payload, named(identity, event), delivery_id, api_url)
    if event == "check_suite":
        return _check_suite(payload, named(identity, event), delivery_id, api_url)
    if event == "check_run":
        return _check_run(payload, named(identity, event), delivery_id, api_url)
    raise WebhookRejected(400, f"unsupported event {event!r}",
                          hint=f"Solstice acts on {', '.join(HANDLED_EVENTS)}; "
                               "unsubscribe the App from the others")
