"""Log chunks into Postgres in batches: one COPY per batch, ordered, durable before acked.

`add` never blocks; a writer task flushes when a batch is big enough or `max_delay` after its
first chunk arrived; `sync` waits until everything added so far is stored (a StreamLogs call
acks only after that). A batch that meets a chunk already stored (a runner resending after a
lost ack) is written again row by row with ON CONFLICT DO NOTHING, so redelivery is a no-op.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from common.retry import Backoff, retry_async
from orchestrator.db import TRANSIENT_ERRORS, Database

log = logging.getLogger(__name__)

COLUMNS = ("job_id", "attempt", "seq", "step_index", "stream", "ts", "data")
Record = tuple[uuid.UUID, int, int, int, int, datetime, bytes]
# Errors worth waiting out (database restarting); anything else is a bug and is raised.
TRANSIENT = TRANSIENT_ERRORS


class LogStore:
    """The orchestrator's single log writer. `start` it, `add` records, `sync` before acking."""

    def __init__(self, db: Database, *, max_rows: int = 5000, max_bytes: int = 1 << 20,
                 max_delay: float = 0.02) -> None:
        self.db = db
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.max_delay = max_delay
        self._pending: list[Record] = []
        self._pending_bytes = 0
        self._added = 0
        self._written = 0
        self._wake = asyncio.Event()
        self._urgent = False
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.rows_written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._writer(), name="log-writer")

    async def close(self) -> None:
        """Write what is pending, then stop."""
        await self.sync()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def add(self, record: Record) -> None:
        self._pending.append(record)
        self._pending_bytes += len(record[6])
        self._added += 1
        if len(self._pending) >= self.max_rows or self._pending_bytes >= self.max_bytes:
            self._urgent = True
        self._wake.set()

    async def sync(self) -> None:
        """Return once every record added before this call is in the database."""
        target = self._added
        if self._written >= target:
            return
        self._urgent = True
        self._wake.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            if not self._urgent:
                try:
                    await asyncio.wait_for(self._wait_urgent(), self.max_delay)
                except TimeoutError:
                    pass
            self._wake.clear()
            self._urgent = False
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            if not batch:
                continue
            try:
                await retry_async(functools.partial(self._write, batch), retry_on=TRANSIENT,
                                  backoff=Backoff(initial=0.1, maximum=5), describe="storing logs")
            except asyncpg.PostgresError:
                # Not transient (e.g. the job row was deleted): say so loudly, keep serving.
                log.exception("log chunks refused by the database; dropped",
                              extra={"chunks": len(batch)})
            self._written += len(batch)
            self.rows_written += len(batch)
            async with self._progress:
                self._progress.notify_all()

    async def _wait_urgent(self) -> None:
        while not self._urgent:
            self._wake.clear()
            await self._wake.wait()

    async def _write(self, batch: list[Record]) -> None:
        async with self.db.pool.acquire() as conn:
            try:
                await conn.copy_records_to_table("log_chunks", records=batch, columns=COLUMNS)
            except asyncpg.UniqueViolationError:
                await conn.executemany(
                    "INSERT INTO log_chunks (job_id, attempt, seq, step_index, stream, ts, data)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING", batch)


@dataclass(frozen=True)
class LogSlice:
    """Stored chunks of a job's current attempt after some sequence number."""

    attempt: int
    done: bool  # the job had ended when this was read
    chunks: list[asyncpg.Record]  # seq, step_index, stream, data; in order

    @property
    def last_seq(self) -> int | None:
        return self.chunks[-1]["seq"] if self.chunks else None


async def read_log(db: Database, job_id: uuid.UUID, *, attempt: int | None = None,
                   after_seq: int = 0) -> LogSlice | None:
    """The job's chunks after `after_seq` (of `attempt`, default the current one); None if no
    such job. Readers that follow a log (ciadm, web pages) call this in a loop: the shared
    Postgres holds every host's logs, so they follow a job wherever it runs."""
    async with db.pool.acquire() as conn:
        job = await conn.fetchrow(
            "SELECT attempt, finished_at IS NOT NULL AS done FROM jobs WHERE id = $1", job_id)
        if job is None:
            return None
        attempt = job["attempt"] if attempt is None else attempt
        chunks = await conn.fetch(
            "SELECT seq, step_index, stream, data FROM log_chunks"
            " WHERE job_id = $1 AND attempt = $2 AND seq > $3 ORDER BY seq",
            job_id, attempt, after_seq)
    return LogSlice(attempt=attempt, done=job["done"], chunks=list(chunks))
