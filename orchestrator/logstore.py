"""Log chunks into Postgres in batches: one COPY per batch, ordered, durable before acked.

`add` never blocks; a writer task flushes when a batch is big enough or `max_delay` after its
first chunk arrived; `sync` waits until everything added so far is stored (a StreamLogs call
acks only after that). A batch that meets a chunk already stored (a runner resending after a
lost ack) is written again row by row with ON CONFLICT DO NOTHING, so redelivery is a no-op.

One batch holds chunks of every job on the host, so a record the database refuses must not
cost the others: a batch that fails for any reason but a database restart is written again
record by record, and only the refused records are dropped (logged with their job). The
writer itself is supervised: if its task ends for any reason but `close`, the store fails
(`LogStoreFailed` from `add` and `sync`, so no caller waits for ever) and, the writer being a
task of the service's `Supervisor`, the service exits and is restarted rather than run on
without storing logs.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from common.errors import SolsticeError
from common.retry import Backoff, retry_async
from orchestrator.blobstore import BlobStore
from orchestrator.db import TRANSIENT_ERRORS, Database
from orchestrator.logarchive import LogChunk, read_chunks

log = logging.getLogger(__name__)

COLUMNS = ("job_id", "attempt", "seq", "step_index", "stream", "ts", "data")
INSERT = ("INSERT INTO log_chunks (job_id, attempt, seq, step_index, stream, ts, data)"
          " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING")
# `Supervisor.spawn`: start a named task under the service's supervision.
Spawn = Callable[[str, Coroutine[Any, Any, None]], "asyncio.Task[Any]"]
Record = tuple[uuid.UUID, int, int, int, int, datetime, bytes]
# Errors worth waiting out (database restarting); anything else is a bug and is raised.
TRANSIENT = TRANSIENT_ERRORS
RETRY = Backoff(initial=0.1, maximum=5)


class LogStoreFailed(SolsticeError):
    """The log writer stopped; nothing more is stored until the service restarts."""


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
        # `sync` callers: (records that must be written, future resolved once they are).
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.failure: LogStoreFailed | None = None
        self.rows_written = 0
        # Told the jobs of each batch once it is stored (the web pages' live streams).
        self.on_written: Callable[[set[uuid.UUID]], None] | None = None

    def start(self, spawn: Spawn) -> None:
        """Start the writer as a task of `spawn` (the service's `Supervisor.spawn`), so that a
        writer stopping on its own fails the service rather than leaving it half alive."""
        self._task = spawn("log-writer", self._writer())
        self._task.add_done_callback(self._writer_ended)

    async def close(self) -> None:
        """Write what is pending, then stop."""
        if self.failure is None:
            await self.sync()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def add(self, record: Record) -> None:
        self._check()
        self._pending.append(record)
        self._pending_bytes += len(record[6])
        self._added += 1
        if len(self._pending) >= self.max_rows or self._pending_bytes >= self.max_bytes:
            self._urgent = True
        self._wake.set()

    async def sync(self) -> None:
        """Return once every record added before this call is in the database."""
        self._check()
        target = self._added
        if self._written >= target:
            return
        self._urgent = True
        self._wake.set()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        await waiter

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if task is not self._task:
            return  # stopped by `close`
        error = None if task.cancelled() else task.exception()
        reason = f"the log writer stopped unexpectedly: {error!r}" if error is not None else \
            "the log writer stopped unexpectedly"
        log.critical("%s; log chunks can no longer be stored", reason, exc_info=error)
        self.failure = LogStoreFailed(reason, hint="the orchestrator exits so that its service "
                                                   "manager restarts it")
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(self.failure)
        self._waiters = []

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            if not self._urgent:
                # asyncio.timeout rather than wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the inner wait completes (CPython gh-86296).
                try:
                    async with asyncio.timeout(self.max_delay):
                        await self._wait_urgent()
                except TimeoutError:
                    pass
            self._wake.clear()
            self._urgent = False
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            if not batch:
                continue
            await self._store(batch)
            self._written += len(batch)
            self.rows_written += len(batch)
            self._release()
            if self.on_written is not None:
                self.on_written({record[0] for record in batch})

    def _release(self) -> None:
        """Resolve the `sync` calls whose records are all written."""
        waiting = []
        for target, waiter in self._waiters:
            if waiter.done():
                continue
            if self._written >= target:
                waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._waiters = waiting

    async def _wait_urgent(self) -> None:
        while not self._urgent:
            self._wake.clear()
            await self._wake.wait()

    async def _store(self, batch: list[Record]) -> None:
        """Write `batch`, waiting out database restarts; if the database (or the encoding of a
        value) refuses it, write its records one by one and drop only those refused."""
        try:
            await retry_async(functools.partial(self._write, batch), retry_on=TRANSIENT,
                              backoff=RETRY, describe="storing logs")
        except Exception:
            log.exception("a batch of log chunks was refused; storing its chunks one by one",
                          extra={"chunks": len(batch)})
            for record in batch:
                await self._store_one(record)

    async def _store_one(self, record: Record) -> None:
        try:
            await retry_async(functools.partial(self.db.pool.execute, INSERT, *record),
                              retry_on=TRANSIENT, backoff=RETRY, describe="storing a log chunk")
        except Exception:
            log.exception("log chunk refused by the database; dropped",
                          extra={"job_id": str(record[0]), "attempt": record[1],
                                 "seq": record[2]})

    async def _write(self, batch: list[Record]) -> None:
        async with self.db.pool.acquire() as conn:
            try:
                await conn.copy_records_to_table("log_chunks", records=batch, columns=COLUMNS)
            except asyncpg.UniqueViolationError:
                await conn.executemany(INSERT, batch)


@dataclass(frozen=True)
class LogSlice:
    """Stored chunks of a job's current attempt after some sequence number."""

    attempt: int
    done: bool  # the job had ended when this was read
    chunks: list[LogChunk]  # in order

    @property
    def last_seq(self) -> int | None:
        return self.chunks[-1].seq if self.chunks else None


async def read_log(db: Database, blobs: BlobStore | None, job_id: uuid.UUID, *,
                   attempt: int | None = None, after_seq: int = 0) -> LogSlice | None:
    """The job's chunks after `after_seq` (of `attempt`, default the current one); None if no
    such job. Every reader of a log (web pages, `ciadm logs`) goes through here: it serves the
    rows of a running job and the archive of a compacted one alike (`logarchive`), so readers
    that follow a log in a loop see one sequence across a compaction. `LogUnavailable` when a
    compacted log cannot be read. The shared Postgres and blob store hold every host's logs,
    so a reader follows a job wherever it runs."""
    async with db.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                           readonly=True):
        job = await conn.fetchrow(
            "SELECT attempt, finished_at IS NOT NULL AS done FROM jobs WHERE id = $1", job_id)
        if job is None:
            return None
        attempt = job["attempt"] if attempt is None else attempt
        chunks = await read_chunks(conn, blobs, job_id, attempt, after_seq)
    return LogSlice(attempt=attempt, done=job["done"], chunks=chunks)
