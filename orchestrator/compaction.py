"""The log compactor: a supervised task that moves ended job attempts' logs into the blob store.

It hears of every job this process ends (the `Hub`'s job updates) and compacts its log at once,
after the log writer stored what it still held; every `interval` seconds a sweep compacts the
attempts that ended elsewhere or while no compactor ran (a host that died, a retry that left
its earlier attempt's rows, chunks that came after a compaction). Any number of hosts may
sweep at once: `logarchive.compact` settles who moved which rows.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable

from common.postgres import DATABASE_ERRORS
from orchestrator.blobstore import BlobStore, BlobStoreUnavailable
from orchestrator.db import Database
from orchestrator.logarchive import compact
from orchestrator.logstore import LogStore
from orchestrator.updates import Hub, JobUpdate

log = logging.getLogger(__name__)

# Attempts a sweep compacts at most; the next sweep goes on.
SWEEP_BATCH = 200
# The ended attempts that still have rows. `log_chunks` holds the running jobs' logs, possibly
# millions of rows: its (job_id, attempt) pairs are walked along the primary key one index
# probe each (a loose index scan), never by reading every row.
ENDED_WITH_ROWS = """
WITH RECURSIVE attempts AS (
    (SELECT job_id, attempt FROM log_chunks ORDER BY job_id, attempt LIMIT 1)
    UNION ALL
    SELECT later.job_id, later.attempt FROM attempts, LATERAL (
        SELECT job_id, attempt FROM log_chunks
        WHERE (job_id, attempt) > (attempts.job_id, attempts.attempt)
        ORDER BY job_id, attempt LIMIT 1) AS later
)
SELECT a.job_id, a.attempt FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE j.finished_at IS NOT NULL OR a.attempt < j.attempt
LIMIT $1
"""
# What a pass expects and waits out: the database or the blob store restarting.
EXPECTED = (*DATABASE_ERRORS, BlobStoreUnavailable)


class LogCompactor:
    """Run `run()` under the service's `Supervisor`; `sweep()` once, for tests and tools."""

    def __init__(self, db: Database, blobs: BlobStore, logs: LogStore, hub: Hub, *,
                 interval: float) -> None:
        self.db = db
        self.blobs = blobs
        self.logs = logs
        self.hub = hub
        self.interval = interval

    async def run(self) -> None:
        """Compact ended jobs as they end, and sweep every `interval` seconds, until cancelled."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        with self.hub.watch(kinds=(JobUpdate,)) as watch:
            while True:
                if loop.time() >= next_sweep:
                    await self._guarded(self.sweep(), "sweep")
                    next_sweep = loop.time() + self.interval
                try:
                    async with asyncio.timeout(max(0.0, next_sweep - loop.time())):
                        update = await watch.queue.get()
                except TimeoutError:
                    continue
                assert isinstance(update, JobUpdate)
                if update.state.final:
                    await self._guarded(self.compact_job(update.job_id), "compaction")

    async def _guarded(self, work: Awaitable[int], what: str) -> None:
        try:
            await work
        except EXPECTED as exc:
            log.warning("log %s failed; the next sweep retries", what,
                        extra={"error": str(exc)})

    async def compact_job(self, job_id: uuid.UUID) -> int:
        """Compact every ended attempt of the job that still has rows; how many were."""
        await self.logs.sync()  # chunks this host holds for it become rows first
        attempts = await self.db.pool.fetch(
            "SELECT DISTINCT c.attempt FROM log_chunks c JOIN jobs j ON j.id = c.job_id"
            " WHERE c.job_id = $1 AND (j.finished_at IS NOT NULL OR c.attempt < j.attempt)",
            job_id)
        return await self._compact([(job_id, a["attempt"]) for a in attempts])

    async def sweep(self) -> int:
        """Compact the ended attempts that still have rows, whichever host ended them."""
        await self.logs.sync()
        rows = await self.db.pool.fetch(ENDED_WITH_ROWS, SWEEP_BATCH)
        return await self._compact([(r["job_id"], r["attempt"]) for r in rows])

    async def _compact(self, attempts: list[tuple[uuid.UUID, int]]) -> int:
        done = 0
        for job_id, attempt in attempts:
            archived = await compact(self.db, self.blobs, job_id, attempt)
            if archived is not None:
                done += 1
                log.info("job log compacted", extra={
                    "job_id": str(job_id), "attempt": attempt, "key": archived.key,
                    "chunks": archived.chunks, "bytes": archived.data_bytes,
                    "stored_bytes": archived.size})
        return done
