"""The reaper: nothing of a dead job survives, and no job is lost with its host.

At start and then every `interval` seconds, on every host:
- jobs whose host died go back to the queue: a job still `provisioning`/`running` whose lease
  expired, or whose host is stale in the registry, is handed back (`queued`, a new JobRequest
  with attempt + 1 through the outbox), or ends `error` once it used up `max_retries`
  infrastructure retries. A failing step is never retried: only a lost host brings a job here.
  At start, the jobs still leased to this host's own name are from its previous life and are
  handed back at once.
- this host's machines that no live job owns are destroyed (`backend.leftovers` /
  `destroy_by_name`): what a crash, a kill -9 or a failed destroy left behind. Machine names
  are `<host prefix>-<12 hex of job id>-<attempt>`; one is live only while its job is active
  under this host's lease with that attempt.

Every change is one conditional UPDATE (the attempt is the fence), so reapers of several hosts
racing over one dead host's jobs hand each back exactly once; the dead host, should it wake,
has its writes refused.
"""
from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from common.messages import JobRequest, JobState
from orchestrator.backends.base import BackendError, VMBackend
from orchestrator.db import Database
from orchestrator.hosts import HostRegistry
from orchestrator.store import (
    _EVENT_COLUMNS,
    ACTIVE,
    Changes,
    Store,
    _emit,
    add_outbox,
    lock_run,
    notify_outbox,
)

log = logging.getLogger(__name__)

TRANSIENT = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
DEFAULT_MAX_RETRIES = 2


@dataclass
class ReapReport:
    """What one pass did, for logs and tests."""

    requeued: list[uuid.UUID] = field(default_factory=list)
    errored: list[uuid.UUID] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)


async def hand_back(db: Database, job_id: uuid.UUID, attempt: int, host: str, reason: str, *,
                    max_retries: int = DEFAULT_MAX_RETRIES,
                    only_if_dead: list[str] | None = None) -> tuple[JobState | None, Changes]:
    """Take attempt `attempt` of a job away from `host`: re-queue it, or end it `error`.

    `only_if_dead`: refuse unless the lease has expired or the host is in this list (the
    condition is re-checked in the UPDATE, so a lease renewed meanwhile is left alone).
    None when refused (the job moved on: ended, re-leased, or already handed back).
    """
    changes = Changes()
    if attempt > max_retries:
        state = JobState.ERROR
        message = (f"{reason}; gave up after {attempt} attempts "
                   f"({max_retries} infrastructure retries)")
        if only_if_dead is not None and not await _still_dead(db, job_id, attempt, only_if_dead):
            return None, changes
        finished = await Store(db, host).finish(job_id, attempt, state, message)
        return (state, finished) if finished is not None else (None, changes)
    async with db.transaction() as conn:
        run = await conn.fetchrow(
            "SELECT r.id, r.priority FROM jobs JOIN runs r ON r.id = jobs.run_id"
            " WHERE jobs.id = $1", job_id)
        if run is None:
            return None, changes
        # Run first, then job: the lock order of every settlement.
        await lock_run(conn, run["id"])
        row = await conn.fetchrow(
            "UPDATE jobs SET state = 'queued', message = $4, event_seq = event_seq + 1,"
            " lease_host = NULL, lease_expires_at = NULL, token_hash = NULL,"
            " token_used = false, token_expires_at = NULL, started_at = NULL"
            " FROM runs r WHERE jobs.id = $1 AND r.id = jobs.run_id AND jobs.attempt = $2"
            " AND jobs.lease_host = $3 AND jobs.state = ANY($5)"
            " AND ($6::text[] IS NULL OR jobs.lease_expires_at < now()"
            "      OR jobs.lease_host = ANY($6::text[]))"
            f" RETURNING {_EVENT_COLUMNS}, jobs.runs_on",
            job_id, attempt, host, f"{reason}; re-queued (attempt {attempt + 1})", ACTIVE,
            only_if_dead)
        if row is None:
            return None, changes
        await conn.execute(
            "UPDATE steps SET state = 'pending', exit_code = NULL, duration_ms = NULL,"
            " started_at = NULL, finished_at = NULL WHERE job_id = $1", job_id)
        await _emit(conn, row, changes)
        await add_outbox(conn, JobRequest(run_id=row["run_id"], job_id=job_id,
                                          job_key=row["key"], runs_on=row["runs_on"],
                                          attempt=attempt + 1, priority=run["priority"]))
        await notify_outbox(conn)
    return JobState.QUEUED, changes


async def _still_dead(db: Database, job_id: uuid.UUID, attempt: int,
                      dead_hosts: list[str]) -> bool:
    return bool(await db.pool.fetchval(
        "SELECT true FROM jobs WHERE id = $1 AND attempt = $2 AND state = ANY($3)"
        " AND (lease_expires_at < now() OR lease_host = ANY($4::text[]))",
        job_id, attempt, ACTIVE, dead_hosts))


class Reaper:
    """Runs the passes described in the module docstring for host `registry.name`."""

    def __init__(self, *, db: Database, backend: VMBackend, registry: HostRegistry,
                 machine_prefix: str, apply: Callable[[Changes], None],
                 max_retries: int = DEFAULT_MAX_RETRIES, interval: float = 30.0) -> None:
        self.db = db
        self.backend = backend
        self.registry = registry
        self.host = registry.name
        self.apply = apply
        self.max_retries = max_retries
        self.interval = interval
        self._machine = re.compile(rf"^{re.escape(machine_prefix)}-([0-9a-f]{{12}})-(\d+)$")
        self._machine_prefix = machine_prefix + "-"

    async def at_start(self) -> ReapReport:
        """Before taking jobs: hand back what this host's previous life held; clean up."""
        report = ReapReport()
        rows = await self.db.pool.fetch(
            "SELECT id, attempt FROM jobs WHERE lease_host = $1 AND state = ANY($2)",
            self.host, ACTIVE)
        for row in rows:
            await self._hand_back(row["id"], row["attempt"], self.host,
                                  f"host {self.host} restarted while running the job",
                                  None, report)
        await self._reap(report, skip_requeue=True)
        return report

    async def run(self) -> None:
        """Reap every `interval` seconds until cancelled; a failing pass is retried later."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reap_once()
            except TRANSIENT as exc:
                log.warning("reaper pass failed (database); will retry", extra={"error": str(exc)})
            except Exception:
                log.exception("reaper pass failed; will retry")

    async def reap_once(self) -> ReapReport:
        report = ReapReport()
        await self._reap(report, skip_requeue=False)
        return report

    async def _reap(self, report: ReapReport, *, skip_requeue: bool) -> None:
        if not skip_requeue:
            await self._requeue_dead(report)
        await self._destroy_leftovers(report)
        if report.requeued or report.errored or report.destroyed:
            log.info("reaper pass", extra={"host": self.host, "requeued": len(report.requeued),
                                           "errored": len(report.errored),
                                           "destroyed": len(report.destroyed)})

    async def _requeue_dead(self, report: ReapReport) -> None:
        stale = await self.registry.stale_hosts()
        rows = await self.db.pool.fetch(
            "SELECT id, attempt, lease_host, lease_expires_at < now() AS expired FROM jobs"
            " WHERE state = ANY($1) AND (lease_expires_at < now() OR lease_host = ANY($2::text[]))",
            ACTIVE, stale)
        for row in rows:
            why = ("stopped renewing its lease" if row["expired"]
                   else "stopped sending heartbeats")
            await self._hand_back(row["id"], row["attempt"], row["lease_host"],
                                  f"host {row['lease_host']} {why}", stale, report)

    async def _hand_back(self, job_id: uuid.UUID, attempt: int, host: str, reason: str,
                         only_if_dead: list[str] | None, report: ReapReport) -> None:
        state, changes = await hand_back(self.db, job_id, attempt, host, reason,
                                         max_retries=self.max_retries, only_if_dead=only_if_dead)
        if state is None:
            return
        self.apply(changes)
        (report.requeued if state == JobState.QUEUED else report.errored).append(job_id)
        log.warning("job taken from a dead host", extra={"job_id": str(job_id), "host": host,
                                                         "attempt": attempt,
                                                         "outcome": state.value})

    async def _destroy_leftovers(self, report: ReapReport) -> None:
        # List the machines before reading the leases: a job leases before it provisions, so
        # any machine listed here either has its lease visible below or has already ended.
        names = await self.backend.leftovers(self._machine_prefix)
        if not names:
            return
        live = {(r["id"].hex[:12], r["attempt"]) for r in await self.db.pool.fetch(
            "SELECT id, attempt FROM jobs WHERE lease_host = $1 AND state = ANY($2)",
            self.host, ACTIVE)}
        for name in names:
            match = self._machine.match(name)
            if match is None or (match.group(1), int(match.group(2))) in live:
                continue
            try:
                await self.backend.destroy_by_name(name)
            except BackendError as exc:
                log.error("could not destroy a leftover machine; will retry",
                          extra={"machine": name, "error": exc.message})
                continue
            report.destroyed.append(name)
