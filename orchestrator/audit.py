"""The audit log: every administrative action (approve, cancel, admin tokens, secrets, ...), who
did it, on what, when, and how it ended, in the `audit_log` table of the shared Postgres.

Whoever performs an action records it: `await audit.record(conn, actor=..., action=...)`, in
the same transaction as the change when there is one, so an action is never done unrecorded.
Refusals are recorded too (`outcome` says why), so probing shows up.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

OK = "ok"
# Actors: an admin token is `token:NAME`; the integrations pass the forge login they checked,
# as `github:LOGIN` or `forgejo:LOGIN`.
TOKEN_ACTOR_PREFIX = "token:"
MAX_LIMIT = 1000
MAX_TEXT = 500

Executor = asyncpg.Connection | asyncpg.Pool


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    detail: str


def token_actor(name: str) -> str:
    """The actor recorded for a caller holding the admin token named `name`."""
    return f"{TOKEN_ACTOR_PREFIX}{name}"


async def record(db: Executor, *, actor: str, action: str, target: str = "",
                 outcome: str = OK, detail: str = "") -> None:
    """Append one entry; `outcome` is `ok` or why the action was refused. A refused value can
    be anything a caller sent: cut to MAX_TEXT characters, and a NUL (which PostgreSQL's text
    cannot hold) written as `\\0`."""
    await db.execute(
        "INSERT INTO audit_log (actor, action, target, outcome, detail)"
        " VALUES ($1, $2, $3, $4, $5)",
        *(value[:MAX_TEXT].replace("\0", "\\0")
          for value in (actor, action, target, outcome, detail)))


async def recent(db: Executor, limit: int = 50) -> list[AuditEntry]:
    """The newest `limit` entries, newest first."""
    rows = await db.fetch(
        "SELECT id, at, actor, action, target, outcome, detail FROM audit_log"
        " ORDER BY id DESC LIMIT $1", min(limit, MAX_LIMIT))
    return [AuditEntry(**dict(r)) for r in rows]
