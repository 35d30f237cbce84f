"""What the orchestrator knows about stored artifacts, as the Admin service, the web pages
and (later) a run's manifest read it: one `ArtifactRecord` per file, from the `artifacts`
table. The bytes are in the blob store under `store_key` (`orchestrator.blobstore`).

A job's artifacts are those of its current attempt: an earlier attempt's files (its host died
mid-job) stay stored under their own keys but are not listed here.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import asyncpg

from orchestrator.db import Database

_SELECT = ("SELECT a.job_id, j.key AS job_key, a.attempt, a.path, a.size, a.sha256,"
           " a.store_key, a.created_at FROM artifacts a JOIN jobs j ON j.id = a.job_id"
           " WHERE a.store_key IS NOT NULL")


@dataclass(frozen=True)
class ArtifactRecord:
    job_id: uuid.UUID
    job_key: str
    attempt: int
    path: str
    size: int
    sha256: str       # hex, of the whole file, checked when it arrived
    store_key: str    # the blob holding its bytes
    created_at: datetime


def download_path(record: ArtifactRecord) -> str:
    """Where the web pages serve the file, relative to their base URL (`web_artifacts`)."""
    return f"/jobs/{record.job_id}/artifacts/{quote(record.path)}?attempt={record.attempt}"


def _record(row: asyncpg.Record) -> ArtifactRecord:
    return ArtifactRecord(**dict(row))


async def list_artifacts(db: Database, run_id: uuid.UUID,
                         job_id: uuid.UUID | None = None) -> list[ArtifactRecord]:
    """The artifacts of a run's jobs (or of one job), current attempts only, by job then path."""
    rows = await db.pool.fetch(
        f"{_SELECT} AND j.run_id = $1 AND ($2::uuid IS NULL OR j.id = $2)"
        " AND a.attempt = j.attempt ORDER BY j.position, j.key, a.path", run_id, job_id)
    return [_record(row) for row in rows]


async def find_artifact(db: Database, job_id: uuid.UUID, path: str,
                        attempt: int | None = None) -> ArtifactRecord | None:
    """One artifact of a job: of `attempt`, else of the job's current attempt."""
    row = await db.pool.fetchrow(
        f"{_SELECT} AND a.job_id = $1 AND a.path = $2"
        " AND a.attempt = coalesce($3::integer, j.attempt)", job_id, path, attempt)
    return _record(row) if row is not None else None
