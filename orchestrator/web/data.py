"""What the pages show, read from the shared Postgres (so any host answers for any run)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from orchestrator.api import JobSummary, RunSummary, load_summary
from orchestrator.artifact_records import ArtifactRecord, list_artifacts
from orchestrator.db import Database
from orchestrator.web.templates import duration

PAGE_SIZE = 50
# The run list's filters: query parameter -> the SQL it compares with ("repository" is
# `owner/name`, or an owner alone, compared as the index `runs_by_repository` reads them).
FILTERS = {
    "repository": "repo->>'owner'",
    "branch": "request->>'branch'",
    "state": "state",
    "event": "event",
}
# What a badge says for the last run's state; a cancelled or skipped run says nothing about the code.
BADGE_STATES = {"queued": "running", "running": "running", "success": "passing",
                "failure": "failing", "error": "failing"}


def forge_web_url(repo: dict[str, Any]) -> str | None:
    """The repository's page on its forge (from its clone URL), or None for a local one.
    Only http(s) URLs, without any credentials a clone URL may carry."""
    parts = urlsplit(repo.get("clone_url", ""))
    try:
        port = parts.port
    except ValueError:  # not a port number: not a URL to link to
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, host, parts.path.removesuffix(".git").rstrip("/"), "", ""))


@dataclass(frozen=True)
class RunRow:
    """A run as the run list shows it."""

    run_id: uuid.UUID
    repository: str
    commit_sha: str
    ref: str
    branch: str | None
    event: str
    pull_request: int | None
    state: str
    workflow_name: str
    created_at: datetime
    finished_at: datetime | None
    repo_url: str | None

    @property
    def commit_url(self) -> str | None:
        return f"{self.repo_url}/commit/{self.commit_sha}" if self.repo_url else None

    @property
    def pull_request_url(self) -> str | None:
        if self.repo_url is None or self.pull_request is None:
            return None
        return f"{self.repo_url}/pull/{self.pull_request}"


def _row(record: asyncpg.Record) -> RunRow:
    repo, request = record["repo"], record["request"]  # jsonb: decoded by the pool's codec
    return RunRow(
        run_id=record["id"], repository=f"{repo.get('owner', '')}/{repo.get('name', '')}",
        commit_sha=record["commit_sha"], ref=record["ref"], branch=request.get("branch"),
        event=record["event"], pull_request=request.get("pull_request"), state=record["state"],
        workflow_name=record["workflow_name"], created_at=record["created_at"],
        finished_at=record["finished_at"], repo_url=forge_web_url(repo))


@dataclass(frozen=True)
class RunPage:
    """One page of the run list; `older` is the cursor of the next page, if there is one."""

    rows: list[RunRow]
    older: uuid.UUID | None


async def list_runs(db: Database, filters: dict[str, str], *, before: uuid.UUID | None = None,
                    limit: int = PAGE_SIZE) -> RunPage:
    """Runs newest first, matching every filter given (names of `FILTERS`), older than the run
    `before` (the cursor of the page before)."""
    where, args = [], []
    for name, value in filters.items():
        if name == "repository" and "/" in value:
            value, repo_name = value.split("/", 1)
            args.append(repo_name)
            where.append(f"repo->>'name' = ${len(args)}")
        args.append(value)
        where.append(f"{FILTERS[name]} = ${len(args)}")
    if before is not None:
        args.append(before)
        where.append(f"(created_at, id) < (SELECT created_at, id FROM runs WHERE id = ${len(args)})")
    args.append(limit + 1)
    rows = await db.pool.fetch(
        "SELECT id, repo, commit_sha, ref, event, request, state, workflow_name, created_at,"
        f" finished_at FROM runs {'WHERE ' + ' AND '.join(where) if where else ''}"
        f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}", *args)
    page = [_row(r) for r in rows[:limit]]
    return RunPage(page, page[-1].run_id if len(rows) > limit else None)


@dataclass(frozen=True)
class RunDetail:
    """Everything the run page shows."""

    row: RunRow
    summary: RunSummary
    trusted: bool
    approved_by: str | None
    sender: str | None
    tag: str | None
    base_branch: str | None
    workflow_path: str
    needs: dict[uuid.UUID, list[str]] = field(default_factory=dict)
    gate: str | None = None  # the run record's verdict once the run ended (orchestrator.manifest)
    gate_reasons: list[str] = field(default_factory=list)
    artifacts: list[ArtifactRecord] = field(default_factory=list)

    @property
    def awaiting_approval(self) -> bool:
        return any(j.state.value == "awaiting_approval" for j in self.summary.jobs)

    def depths(self) -> list[list[JobSummary]]:
        """The jobs in columns: a job stands one column right of the deepest job it needs."""
        by_key = {j.key: j for j in self.summary.jobs}
        depth: dict[str, int] = {}

        def depth_of(key: str, seen: frozenset[str]) -> int:
            if key not in depth:
                needs = [n for n in self.needs.get(by_key[key].job_id, [])
                         if n in by_key and n not in seen]
                depth[key] = 1 + max((depth_of(n, seen | {key}) for n in needs), default=-1)
            return depth[key]

        columns: list[list[JobSummary]] = []
        for job in self.summary.jobs:
            d = depth_of(job.key, frozenset())
            columns.extend([] for _ in range(d + 1 - len(columns)))
            columns[d].append(job)
        return columns


async def run_detail(db: Database, run_id: uuid.UUID) -> RunDetail | None:
    summary = await load_summary(db, run_id)
    if summary is None:
        return None
    async with db.pool.acquire() as conn:
        run = await conn.fetchrow(
            "SELECT id, repo, commit_sha, ref, event, request, state, workflow_name, created_at,"
            " finished_at, trusted, approved_by, workflow_path, gate,"
            " manifest -> 'gate' -> 'reasons' AS gate_reasons FROM runs WHERE id = $1", run_id)
        needs = await conn.fetch("SELECT id, needs FROM jobs WHERE run_id = $1", run_id)
    request = run["request"]
    return RunDetail(
        row=_row(run), summary=summary, trusted=run["trusted"], approved_by=run["approved_by"],
        sender=request.get("sender"), tag=request.get("tag"),
        base_branch=request.get("base_branch"), workflow_path=run["workflow_path"],
        needs={r["id"]: list(r["needs"]) for r in needs}, gate=run["gate"],
        gate_reasons=run["gate_reasons"] or [], artifacts=await list_artifacts(db, run_id))


async def badge_state(db: Database, owner: str, name: str, branch: str | None,
                      workflow: str | None) -> str:
    """passing, failing, running or unknown: the last push or manual run of the repository on
    `branch` (its default branch when None), of `workflow` (name or path) when given."""
    args: list[Any] = [owner, name]
    where = ["repo->>'owner' = $1", "repo->>'name' = $2", "event IN ('push', 'manual')",
             "state NOT IN ('cancelled', 'skipped')"]
    if branch is None:
        where.append("request->>'branch' = repo->>'default_branch'")
    else:
        args.append(branch)
        where.append(f"request->>'branch' = ${len(args)}")
    if workflow is not None:
        args.append(workflow)
        where.append(f"(workflow_name = ${len(args)} OR workflow_path = ${len(args)})")
    state = await db.pool.fetchval(
        f"SELECT state FROM runs WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT 1",
        *args)
    return BADGE_STATES.get(state, "unknown")


async def job_status(db: Database, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The job's state and its steps' states and durations, as the job page's stream sends
    them (`took` already formatted)."""
    async with db.pool.acquire() as conn:
        state = await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id)
        if state is None:
            return None
        steps = await conn.fetch("SELECT index, state, duration_ms FROM steps WHERE job_id = $1"
                                 " ORDER BY index", job_id)
    return {"state": state, "steps": [
        {"index": s["index"], "state": s["state"],
         "took": duration(None if s["duration_ms"] is None else s["duration_ms"] / 1000)}
        for s in steps]}
