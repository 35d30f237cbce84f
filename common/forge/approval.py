"""Approval from the forge: a maintainer starts the untrusted runs that wait for approval.

Both integrations turn their webhooks into an `ApprovalAsked` (GitHub: the "Approve and run"
button of a waiting check run, or a comment; Forgejo/Gitea: a comment, see
`common.forge.commands`), then call `handle_approval`: the actor's write access is checked
through the forge's API; with it, a `RunApproval` is published on the runs queue for the
orchestrators (`orchestrator/forge_approvals.py`); without it nothing starts, the refusal is
logged and, on a pull request, answered with a comment. Answered 202 `approval_published` or
200 `ignored` (webhook outcomes, see `common.forge.webhook.answer`).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from common.broker import Broker, BrokerError
from common.forge.errors import ForgeApiError, WebhookRejected
from common.forge.events import ApprovalSent, Ignored
from common.messages import Repo, RunApproval

log = logging.getLogger(__name__)

APPROVED = "approval_published"
REFUSED = "ignored"


class ApprovalForge(Protocol):
    """What approving needs of a forge's API. Failures raise `ForgeApiError`."""

    async def can_write(self, repo: Repo, user: str) -> bool:
        """Whether `user` may push to `repo` (write, maintain or admin)."""

    async def comment(self, repo: Repo, number: int, body: str) -> None:
        """Comment on issue or pull request `number`."""


@dataclass(frozen=True)
class ApprovalAsked:
    """Someone asked on the forge to start waiting runs: one run (`run_id`) or those of a pull
    request (`pull_request`) created before `requested_at`, limited to commits starting
    with `commit_prefix` when it is given."""

    repo: Repo
    actor: str
    request_id: str
    requested_at: datetime
    run_id: uuid.UUID | None = None
    pull_request: int | None = None
    commit_prefix: str = ""


def refusal(asked: ApprovalAsked) -> str:
    """The reply to someone without write access (names no admin command)."""
    return (f"@{asked.actor}: only someone with write access to {asked.repo.full_name} can "
            "approve runs, so the runs waiting for approval stay waiting.")


async def handle_approval(asked: ApprovalAsked, forge: ApprovalForge,
                          broker: Broker) -> tuple[str, str]:
    """Check the actor, then publish the approval or refuse it; `(outcome, reason)`.

    Raises `WebhookRejected`: 503 when the forge or the broker cannot be reached (the forge
    redelivers the webhook), 400 when the forge refuses for good (e.g. a GitHub installation
    without access to the repository)."""
    context = {"repo": asked.repo.full_name, "actor": asked.actor, "delivery": asked.request_id}
    try:
        allowed = await forge.can_write(asked.repo, asked.actor)
    except ForgeApiError as exc:
        raise WebhookRejected(503 if exc.retryable else 400,
                              f"cannot check {asked.actor}'s permission: {exc.message}",
                              hint=exc.hint) from exc
    if not allowed:
        log.info("approval refused: the actor has no write access", extra=context)
        if asked.pull_request is not None:
            try:
                await forge.comment(asked.repo, asked.pull_request, refusal(asked))
            except ForgeApiError as exc:
                # The refusal stands whether or not the reply could be posted.
                log.warning("could not reply to a refused approval",
                            extra=context | {"error": exc.message})
        return REFUSED, f"{asked.actor} has no write access to {asked.repo.full_name}"
    try:
        await broker.publish_run(RunApproval(
            request_id=asked.request_id, repo=asked.repo, actor=asked.actor,
            run_id=asked.run_id, pull_request=asked.pull_request,
            commit_prefix=asked.commit_prefix, requested_at=asked.requested_at))
    except (BrokerError, ConnectionError, TimeoutError) as exc:
        raise WebhookRejected(503, f"the approval could not be queued: {exc}",
                              hint="the forge retries the delivery") from exc
    log.info("approval published", extra=context)
    target = f"run {asked.run_id}" if asked.run_id else f"pull request #{asked.pull_request}"
    return APPROVED, f"{asked.actor} approved the waiting runs of {target}"


async def approve(asked: ApprovalAsked | Ignored, forge: ApprovalForge,
                  broker: Broker) -> ApprovalSent | Ignored:
    """The inbox worker's handling of an approval delivery: `ApprovalSent` once published,
    `Ignored` (with why) for a comment that approves nothing or an actor without write
    access."""
    if isinstance(asked, Ignored):
        return asked
    outcome, reason = await handle_approval(asked, forge, broker)
    return ApprovalSent(reason) if outcome == APPROVED else Ignored(reason)
