"""Forgejo/Gitea deliveries that approve waiting runs (see `common.forge.approval`).

An `issue_comment` (`X-Forgejo-Event` / `X-Gitea-Event`) `created` on a pull request whose
body holds `/solstice approve [SHA]` (`common.forge.commands`) approves the pull request's
waiting runs, for the comment's author, as of the comment's `created_at`. Both forges send
`is_pull` and an `issue.pull_request` object for a pull request's comments.

`approval_asked` returns None for other events (the usual classification goes on), an
`Ignored` for a comment that approves nothing, else the `ApprovalAsked`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from common.forge.approval import ApprovalAsked
from common.forge.commands import parse_command
from common.forge.errors import WebhookRejected
from common.forge.identity import RepositoryIdentity
from common.messages import Repo
from forge_integration.events import Ignored


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _User(_Model):
    login: str


class _Repository(_Model):
    clone_url: str
    default_branch: str = "main"


class _Comment(_Model):
    body: str
    user: _User
    created_at: datetime


class _Issue(_Model):
    number: int
    pull_request: dict[str, Any] | None = None


class _IssueComment(_Model):
    action: str
    issue: _Issue
    comment: _Comment
    repository: _Repository
    is_pull: bool = False


def approval_asked(event: str, payload: Any, delivery_id: str, *,
                   identity: RepositoryIdentity | None, forge: str,
                   api_url: str) -> ApprovalAsked | Ignored | None:
    """What `event` with body `payload` asks of approvals (module docstring)."""
    if event != "issue_comment" or not isinstance(payload, dict):
        return None
    if payload.get("action") != "created":
        return Ignored(f"issue_comment action {payload.get('action')!r} approves nothing")
    try:
        delivery = _IssueComment.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise WebhookRejected(400, f"malformed {event} payload: {where}: {first['msg']}") from exc
    command = parse_command(delivery.comment.body)
    if command is None:
        return Ignored("the comment holds no /solstice command")
    if not delivery.is_pull and delivery.issue.pull_request is None:
        return Ignored(f"#{delivery.issue.number} is an issue, not a pull request")
    if identity is None:
        raise WebhookRejected(400, f"malformed {event} payload: repository: Field required")
    repo = Repo(forge=forge, owner=identity.owner, name=identity.name,  # type: ignore[arg-type]
                clone_url=delivery.repository.clone_url,
                default_branch=delivery.repository.default_branch, api_url=api_url)
    return ApprovalAsked(repo=repo, actor=delivery.comment.user.login, request_id=delivery_id,
                         requested_at=delivery.comment.created_at,
                         pull_request=delivery.issue.number, commit_prefix=command.commit_prefix)
