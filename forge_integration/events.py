"""Forgejo/Gitea webhook deliveries -> a `RunCandidate`, an `Ignored`, or a 400.

| event (`X-Forgejo-Event` / `X-Gitea-Event`) | outcome |
|---|---|
| `push` to `refs/heads/*` or `refs/tags/*` | a push or tag candidate |
| `push` whose `after` is forty zeros | ignored: the ref was deleted |
| `pull_request` `opened`, `synchronized`, `reopened` (also event `pull_request_sync`) | a PR candidate |
| `pull_request` with another action, `pull_request_*` (labels, reviews, comments...) | ignored |
| `create`, `delete` | ignored: the `push` of the same ref decides |
| anything else (`release`, `issues`...) | 400: unsupported event |

Only the fields used are modelled; the forges add fields freely. A body lacking one of them
is answered 400 naming the field. The run's repository is the `RepositoryIdentity` the caller
took from the body (the one that chose the webhook secret), never read again here.
"""
from __future__ import annotations

import logging
from typing import Any

from common.forge.errors import WebhookRejected
from common.forge.events import Ignored, Model, named, parse_model, sender_login
from common.forge.identity import RepositoryIdentity
from common.forge.policy import RunCandidate, push_candidate
from common.messages import EventKind, Repo

log = logging.getLogger(__name__)

ZERO_SHA = "0" * 40
FORGE_NAME = "the forge"  # in the hint of a 400 for a malformed body
PULL_REQUEST_ACTIONS = frozenset({"opened", "synchronized", "reopened"})
REF_EVENTS = frozenset({"create", "delete"})
HANDLED = ("push", "pull_request")


class _User(Model):
    login: str


class _Repository(Model):
    id: int
    clone_url: str
    default_branch: str = "main"


class _Push(Model):
    ref: str
    after: str
    repository: _Repository


class _Branch(Model):
    ref: str
    sha: str
    repo_id: int | None = None
    repo: _Repository | None = None


class _PullRequest(Model):
    head: _Branch
    base: _Branch
    user: _User


class _PullRequestEvent(Model):
    action: str
    number: int
    pull_request: _PullRequest
    repository: _Repository


def _repo(identity: RepositoryIdentity, repository: _Repository, forge: str, api_url: str) -> Repo:
    return Repo(forge=forge, owner=identity.owner, name=identity.name,
                clone_url=repository.clone_url, default_branch=repository.default_branch,
                api_url=api_url)


def _push(payload: dict[str, Any], identity: RepositoryIdentity, delivery_id: str,
          forge: str, api_url: str) -> RunCandidate | Ignored:
    push = parse_model(_Push, "push", payload, FORGE_NAME)
    if push.after == ZERO_SHA:
        return Ignored(f"push deletes {push.ref}; nothing to build")
    repo = _repo(identity, push.repository, forge, api_url)
    return push_candidate(repo, push.ref, push.after, delivery_id, sender_login(payload))


def _pull_request(payload: dict[str, Any], identity: RepositoryIdentity, delivery_id: str,
                  forge: str, api_url: str) -> RunCandidate | Ignored:
    action = payload.get("action")
    if action not in PULL_REQUEST_ACTIONS:
        return Ignored(f"pull_request action {action!r} does not start runs")
    event = parse_model(_PullRequestEvent, "pull_request", payload, FORGE_NAME)
    pr = event.pull_request
    head_repo_id = pr.head.repo.id if pr.head.repo is not None else pr.head.repo_id
    # A head whose repository the forge does not name is treated as a fork: trust is never
    # granted on missing information.
    fork = head_repo_id is None or head_repo_id != event.repository.id
    return RunCandidate(_repo(identity, event.repository, forge, api_url), EventKind.PULL_REQUEST,
                        pr.head.sha, f"refs/pull/{event.number}/head", delivery_id,
                        branch=pr.head.ref, pull_request=event.number, base_branch=pr.base.ref,
                        author=pr.user.login, fork=fork, sender=sender_login(payload))


def classify(event: str, payload: Any, delivery_id: str, *, identity: RepositoryIdentity | None,
             forge: str, api_url: str) -> RunCandidate | Ignored:
    """What to do about one delivery of `event` with the parsed JSON `payload`, whose
    repository is `identity` (from `common.forge.identity.repository_identity(payload)`)."""
    if not isinstance(payload, dict):
        raise WebhookRejected(400, f"{event} payload is not a JSON object")
    if event == "push":
        return _push(payload, named(identity, event), delivery_id, forge, api_url)
    if event in ("pull_request", "pull_request_sync"):
        if event == "pull_request_sync" and payload.get("action") is None:
            payload = {**payload, "action": "synchronized"}
        return _pull_request(payload, named(identity, event), delivery_id, forge, api_url)
    if event.startswith("pull_request_"):
        return Ignored(f"{event} event does not start runs")
    if event in REF_EVENTS:
        return Ignored(f"{event} event: the push of the same ref decides what runs")
    raise WebhookRejected(400, f"unsupported event {event!r}",
                          hint=f"Solstice acts on {', '.join(HANDLED)}; select only those "
                               "in the webhook's settings")
