"""GitHub deliveries that approve waiting runs (see `common.forge.approval`).

- `check_run` `requested_action` with the identifier of Solstice's "Approve and run" button
  (`checks.APPROVE_IDENTIFIER`) on a check run Solstice created: approves that run, for the
  `sender` who pressed it;
- `issue_comment` `created` on a pull request whose body holds `/solstice approve [SHA]`
  (`common.forge.commands`): approves the pull request's waiting runs, for the comment's
  author, as of the comment's `created_at`.

`approval_asked` returns None for any other delivery (the usual classification goes on), an
`Ignored` for an `issue_comment` or a button that is no approval, else the `ApprovalAsked`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from common.forge.approval import ApprovalAsked
from common.forge.commands import parse_command
from common.forge.errors import WebhookRejected
from common.forge.events import Model, parse_model
from common.forge.identity import RepositoryIdentity
from github_integration.checks import APPROVE_IDENTIFIER
from github_integration.events import (
    Ignored,
    _Account,
    _CheckRun,
    _Delivery,
    _repo,
    parse_external_id,
)


class _Sent(_Delivery):
    sender: _Account


class _RequestedAction(Model):
    identifier: str


class _ButtonPressed(_Sent):
    check_run: _CheckRun
    requested_action: _RequestedAction


class _Comment(Model):
    body: str
    user: _Account
    created_at: datetime


class _Issue(Model):
    number: int
    pull_request: dict[str, Any] | None = None


class _IssueComment(_Sent):
    issue: _Issue
    comment: _Comment


def approval_asked(event: str, payload: Any, delivery_id: str, *,
                   identity: RepositoryIdentity | None,
                   api_url: str) -> ApprovalAsked | Ignored | None:
    """What `event` with body `payload` asks of approvals (module docstring)."""
    if not isinstance(payload, dict):
        return None
    action = payload.get("action")
    if event == "check_run" and action == "requested_action":
        pressed = parse_model(_ButtonPressed, event, payload, "github")
        run = parse_external_id(pressed.check_run.external_id)
        if pressed.requested_action.identifier != APPROVE_IDENTIFIER or run is None:
            return Ignored(f"requested action {pressed.requested_action.identifier!r} on "
                           f"{pressed.check_run.name!r} is not Solstice's approval")
        if identity is None:
            raise WebhookRejected(400, f"malformed {event} payload: repository: Field required")
        return ApprovalAsked(repo=_repo(pressed, identity, api_url),
                             actor=pressed.sender.login, request_id=delivery_id,
                             requested_at=datetime.now().astimezone(), run_id=run[0])
    if event != "issue_comment":
        return None
    if action != "created":
        return Ignored(f"issue_comment action {action!r} approves nothing")
    comment = parse_model(_IssueComment, event, payload, "github")
    command = parse_command(comment.comment.body)
    if command is None:
        return Ignored("the comment holds no /solstice command")
    if comment.issue.pull_request is None:
        return Ignored(f"#{comment.issue.number} is an issue, not a pull request")
    if identity is None:
        raise WebhookRejected(400, f"malformed {event} payload: repository: Field required")
    return ApprovalAsked(repo=_repo(comment, identity, api_url), actor=comment.comment.user.login,
                         request_id=delivery_id, requested_at=comment.comment.created_at,
                         pull_request=comment.issue.number, commit_prefix=command.commit_prefix)
