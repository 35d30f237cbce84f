"""The retention sweeper: finished runs past their age go, with their jobs, logs and blobs.

How long a run is kept (`RetentionPolicy`): `retention_days` after it ended, or its
repository's entry in `retention_repositories`; a run of the repository's default branch or of
a tag at least `retention_days_default_branch`. 0 keeps for ever.

One host sweeps at a time (a PostgreSQL advisory lock, taken without waiting: a host that finds
it held leaves the sweep to the holder), every `retention_interval` seconds, under the service's
`Supervisor`; `ciadm prune` asks for a sweep now, `ciadm prune --dry-run` for the list only.

Order, for crashes: one transaction deletes a batch of runs (their jobs, steps, log rows,
artifact and log archive rows go by cascade) and records each run's blob prefix in
`blob_deletions`; only after it committed are the blobs deleted, then the prefix's row. So no
row ever names a blob that is gone: a reader who finds the run finds its blobs. A crash after
the commit leaves prefixes whose blobs nobody can reach; the next sweep, on any host, deletes
them first. (Blobs first would leave, after a crash, rows whose logs and downloads fail.) A
reader that loaded a row just before the commit and reads the blob just after gets the readers'
clear "gone from the blob store" answer, never a server error.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from common.postgres import DATABASE_ERRORS
from orchestrator.blobstore import BlobStore, BlobStoreUnavailable
from orchestrator.blobstore.keys import run_prefix
from orchestrator.db import Database

log = logging.getLogger(__name__)

LOCK = "solstice.retention"
# Runs deleted per transaction.
BATCH = 100
EXPECTED = (*DATABASE_ERRORS, BlobStoreUnavailable)

# $1 days, $2 default-branch days, $3/$4 the repositories' overrides, $5 how many at most, $6
# the shortest retention of any run (so the index on finished_at skips the recent ones).
EXPIRED = """
WITH policy AS (
    SELECT r.id, (r.repo->>'owner') || '/' || (r.repo->>'name') AS repository, r.ref,
           r.finished_at, COALESCE(o.days, $1) AS days,
           COALESCE(r.ref = 'refs/heads/' || (r.repo->>'default_branch')
                    OR r.ref LIKE 'refs/tags/%', false) AS long_lived
    FROM runs r
    LEFT JOIN unnest($3::text[], $4::integer[]) AS o (name, days)
           ON o.name = (r.repo->>'owner') || '/' || (r.repo->>'name')
    WHERE r.finished_at < now() - make_interval(days => $6)
), kept AS (
    SELECT *, CASE WHEN days = 0 OR (long_lived AND $2 = 0) THEN NULL
                   WHEN long_lived THEN GREATEST(days, $2) ELSE days END AS keep_days
    FROM policy
)
SELECT id, repository, ref, finished_at, keep_days,
       ((SELECT COALESCE(sum(a.size), 0) FROM artifacts a JOIN jobs j ON j.id = a.job_id
         WHERE j.run_id = kept.id)
     + (SELECT COALESCE(sum(l.size), 0) FROM log_archives l JOIN jobs j ON j.id = l.job_id
         WHERE j.run_id = kept.id)
     + (SELECT COALESCE(sum(octet_length(c.data)), 0) FROM log_chunks c
         JOIN jobs j ON j.id = c.job_id WHERE j.run_id = kept.id))::bigint AS bytes
FROM kept
WHERE finished_at < now() - make_interval(days => keep_days)
ORDER BY finished_at, id
LIMIT $5
"""


@dataclass(frozen=True)
class RetentionPolicy:
    """How many days a finished run is kept; see the module docstring."""

    days: int
    default_branch_days: int
    repositories: Mapping[str, int]


@dataclass(frozen=True)
class ExpiredRun:
    """A run past its age: what a sweep deletes (or, dry, would)."""

    run_id: uuid.UUID
    repository: str
    ref: str
    finished_at: datetime
    keep_days: int
    bytes: int  # its artifacts and logs, as stored


@dataclass(frozen=True)
class SweepReport:
    runs: list[ExpiredRun]
    dry_run: bool
    # False when another host held the sweep's lock (and nothing was done here).
    swept: bool = True

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.runs)


class RetentionSweeper:
    """Run `run()` under the service's `Supervisor`; `sweep()` for one sweep now."""

    def __init__(self, db: Database, blobs: BlobStore, policy: RetentionPolicy, *,
                 interval: float) -> None:
        self.db = db
        self.blobs = blobs
        self.policy = policy
        self.interval = interval
        # What the last periodic sweep did (None until one finished).
        self.last_report: SweepReport | None = None

    async def run(self) -> None:
        """Sweep now and every `interval` seconds until cancelled; a pass the database or the
        blob store failed is retried next time."""
        while True:
            try:
                self.last_report = await self.sweep()
            except EXPECTED as exc:
                log.warning("retention sweep failed; will retry", extra={"error": str(exc)})
            await asyncio.sleep(self.interval)

    async def expired(self, limit: int | None = None) -> list[ExpiredRun]:
        """The runs past their age, oldest first."""
        async with self.db.pool.acquire() as conn:
            return await self._expired(conn, limit)

    async def _expired(self, conn: asyncpg.Connection, limit: int | None) -> list[ExpiredRun]:
        names = list(self.policy.repositories)
        ages = [days for days in (self.policy.days, *self.policy.repositories.values()) if days]
        if not ages:
            return []  # every run is kept for ever
        rows = await conn.fetch(EXPIRED, self.policy.days, self.policy.default_branch_days,
                                names, [self.policy.repositories[n] for n in names], limit,
                                min(ages))
        return [ExpiredRun(run_id=r["id"], repository=r["repository"], ref=r["ref"],
                           finished_at=r["finished_at"], keep_days=r["keep_days"],
                           bytes=r["bytes"]) for r in rows]

    async def sweep(self, *, dry_run: bool = False) -> SweepReport:
        """Delete every run past its age (`dry_run`: only list them). Returns what went; with
        `swept` False when another host is sweeping right now."""
        if dry_run:
            return SweepReport(await self.expired(), dry_run=True)
        async with self.db.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                       LOCK):
                return SweepReport([], dry_run=False, swept=False)
            try:
                await self._delete_blobs(conn)
                deleted: list[ExpiredRun] = []
                while batch := await self._expired(conn, BATCH):
                    deleted += await self._delete_runs(conn, batch)
                    await self._delete_blobs(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", LOCK)
        if deleted:
            log.info("retention sweep", extra={"runs": len(deleted),
                                               "bytes": sum(r.bytes for r in deleted)})
        return SweepReport(deleted, dry_run=False)

    async def _delete_runs(self, conn: asyncpg.Connection,
                           batch: list[ExpiredRun]) -> list[ExpiredRun]:
        """Delete the runs' rows and record their blob prefixes, in one transaction."""
        async with conn.transaction():
            gone = {r["id"] for r in await conn.fetch(
                "DELETE FROM runs WHERE id = ANY($1::uuid[]) AND finished_at IS NOT NULL"
                " RETURNING id", [r.run_id for r in batch])}
            await conn.execute(
                "INSERT INTO blob_deletions (prefix) SELECT unnest($1::text[])"
                " ON CONFLICT DO NOTHING", [run_prefix(run_id) for run_id in gone])
        return [r for r in batch if r.run_id in gone]

    async def _delete_blobs(self, conn: asyncpg.Connection) -> None:
        """Delete the blobs of the runs already deleted, then their prefixes' rows."""
        for row in await conn.fetch("SELECT prefix FROM blob_deletions ORDER BY created_at"):
            await self.blobs.delete_prefix(row["prefix"])
            await conn.execute("DELETE FROM blob_deletions WHERE prefix = $1", row["prefix"])
