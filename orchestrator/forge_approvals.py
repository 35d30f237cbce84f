"""Approvals given on the forge (`RunApproval`, from an integration): which runs they start.

The integration checked the actor's write access; here the approval reaches only runs of its
own repository that wait for approval now: the one it names, or those of its pull request
created before the approval was given (a commit pushed after a maintainer's comment was not
what they read) and, with a commit prefix, whose commit starts with it.
"""
from __future__ import annotations

import logging
import uuid

from common.messages import RunApproval
from orchestrator.api import OrchestratorAPI
from orchestrator.db import Database

log = logging.getLogger(__name__)

_WAITING = """
SELECT r.id FROM runs r
WHERE r.repo->>'forge' = $1 AND lower(r.repo->>'owner') = lower($2)
  AND lower(r.repo->>'name') = lower($3)
  AND EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = r.id AND j.state = 'awaiting_approval')
  AND ($4::uuid IS NULL OR r.id = $4)
  AND ($5::integer IS NULL OR ((r.request->>'pull_request')::integer = $5
                               AND r.created_at <= $6))
  AND left(r.commit_sha, length($7)) = $7
ORDER BY r.created_at
"""


def approver(approval: RunApproval) -> str:
    """Who approved, as recorded on the run and in the audit log: `FORGE:LOGIN`."""
    return f"{approval.repo.forge}:{approval.actor}"


async def apply_approval(db: Database, api: OrchestratorAPI,
                         approval: RunApproval) -> list[uuid.UUID]:
    """Approve the runs `approval` reaches (module docstring); the ids of those it started."""
    if approval.run_id is None and approval.pull_request is None:
        log.warning("approval names neither a run nor a pull request; ignored",
                    extra={"request_id": approval.request_id})
        return []
    repo = approval.repo
    rows = await db.pool.fetch(_WAITING, repo.forge, repo.owner, repo.name, approval.run_id,
                               approval.pull_request, approval.requested_at,
                               approval.commit_prefix.lower())
    started = [row["id"] for row in rows
               if await api.approve_run(row["id"], approver(approval))]
    log.info("approval from the forge", extra={
        "repo": repo.full_name, "actor": approval.actor, "request_id": approval.request_id,
        "runs": [str(run_id) for run_id in started]})
    return started
