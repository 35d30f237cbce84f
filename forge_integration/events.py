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
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from common.forge.errors import WebhookRejected
from common.forge.identity import RepositoryIdentity
from common.forge.policy import RunCandidate
from common.messages import EventKind, Repo

log = logging.getLogger(__name__)

ZERO_SHA = "0" * 40
PULL_REQUEST_ACTIONS = frozenset({"opened", "synchronized", "reopened"})
REF_EVENTS = frozenset({"create", "delete"})
HANDLED = ("push", "pull_request")


@dataclass(frozen=True)
class Ignored:
    """Nothing to run; answered 200 with `reason` (and logged)."""

    reason: str


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _User(_Model):
    login: str


class _Repository(_Model):
    id: int
    clone_url: str
    default_branch: str = "main"


class _Push(_Model):
    ref: str
    after: str
    repository: _Repository


class _Branch(_Model):
    ref: str
    sha: str
    repo_id: int | None = None
    repo: _Repository | None = None


class _PullRequest(_Model):
    head: _Branch
    base: _Branch
    user: _User


class _PullRequestEvent(_Model):
    action: str
    number: int
    pull_request: _PullRequest
    repository: _Repository


def _parse(model: type[_Model], event: str, payload: dict[str, Any]) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise WebhookRejected(400, f"malformed {event} payload: {where}: {first['msg']}",
                              hint="the forge sends this field; was the body altered on the way?") from exc


def _named(identity: RepositoryIdentity | None, event: str) -> RepositoryIdentity:
    if identity is None:
        raise WebhookRejected(400, f"malformed {event} payload: repository: Field required")
    return identity


def _repo(identity: RepositoryIdentity, repository: _Repository, forge: str, api_url: str) -> Repo:
    return Repo(forge=forge, owner=identity.owner, name=identity.name,
                clone_url=repository.clone_url, default_branch=repository.default_branch,
                api_url=api_url)


def _push(payload: dict[str, Any], identity: RepositoryIdentity, delivery_id: str,
          forge: str, api_url: str) -> RunCandidate | Ignored:
    push = _parse(_Push, "push", payload)
    if push.after == ZERO_SHA:
        return Ignored(f"push deletes {push.ref}; nothing to build")
    repo = _repo(identity, push.repository, forge, api_url)
    if push.ref.startswith("refs/heads/"):
        return RunCandidate(repo, EventKind.PUSH, push.after, push.ref, delivery_id,
                            branch=push.ref.removeprefix("refs/heads/"))
    if push.ref.startswith("refs/tags/"):
        return RunCandidate(repo, EventKind.TAG, push.after, push.ref, delivery_id,
                            tag=push.ref.removeprefix("refs/tags/"))
    return Ignored(f"push to {push.ref} is neither a branch nor a tag")


def _pull_request(payload: dict[str, Any], identity: RepositoryIdentity, delivery_id: str,
                  forge: str, api_url: str) -> RunCandidate | Ignored:
    action = payload.get("action")
    if action not in PULL_REQUEST_ACTIONS:
        return Ignored(f"pull_request action {action!r} does not start runs")
    event = _parse(_PullRequestEvent, "pull_request", payload)
    pr = event.pull_request
    head_repo_id = pr.head.repo.id if pr.head.repo is not None else pr.head.repo_id
    # A head whose repository the forge does not name is treated as a fork: trust is never
    # granted on missing information.
    fork = head_repo_id is None or head_repo_id != event.repository.id
    return RunCandidate(_repo(identity, event.repository, forge, api_url), EventKind.PULL_REQUEST,
                        pr.head.sha, f"refs/pull/{event.number}/head", delivery_id,
                        branch=pr.head.ref, pull_request=event.number, base_branch=pr.base.ref,
                        author=pr.user.login, fork=fork)


def classify(event: str, payload: Any, delivery_id: str, *, identity: RepositoryIdentity | None,
             forge: str, api_url: str) -> RunCandidate | Ignored:
    """What to do about one delivery of `event` with the parsed JSON `payload`, whose
    repository is `identity` (from `common.forge.identity.repository_identity(payload)`)."""
    if not isinstance(payload, dict):
        raise WebhookRejected(400, f"{event} payload is not a JSON object")
    if event == "push":
        return _push(payload, _named(identity, event), delivery_id, forge, api_url)
    if event in ("pull_request", "pull_request_sync"):
        if event == "pull_request_sync" and payload.get("action") is None:
            payload = {**payload, "action": "synchronized"}
        return _pull_request(payload, _named(identity, event), delivery_id, forge, api_url)
    if event.startswith("pull_request_"):
        return Ignored(f"{event} event does not start runs")
    if event in REF_EVENTS:
        return Ignored(f"{event} event: the push of the same ref decides what runs")
    raise WebhookRejected(400, f"unsupported event {event!r}",
                          hint=f"Solstice acts on {', '.join(HANDLED)}; select only those "
                               "in the webhook's settings")
