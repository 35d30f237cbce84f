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
  under this host's lease with that attempt, or held by this host for debugging within its
  `held_until` (orchestrator/holds.py). At start, the holds of this host's previous life end:
  their runners' tokens died with it, so their machines are destroyed.

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

from common.messages import JobState
from common.postgres import DATABASE_ERRORS
from orchestrator.backends.base import BackendError, VMBackend
from orchestrator.db import Database
from orchestrator.hosts import HostRegistry
from orchestrator.store import ACTIVE, DEFAULT_MAX_RETRIES, Changes, hand_back

log = logging.getLogger(__name__)

@dataclass
class ReapReport:
    """What one pass did, for logs and tests."""

    requeued: list[uuid.UUID] = field(default_factory=list)
    errored: list[uuid.UUID] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)


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
        await self.db.pool.execute(
            "UPDATE jobs SET held_until = NULL, held_host = NULL, held_admin = NULL"
            " WHERE held_host = $1", self.host)
        await self._reap(report, skip_requeue=True)
        return report

    async def run(self) -> None:
        """Reap every `interval` seconds until cancelled; a failing pass is retried later."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reap_once()
            except DATABASE_ERRORS as exc:
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
            "SELECT id, attempt FROM jobs WHERE (lease_host = $1 AND state = ANY($2))"
            " OR (held_host = $1 AND held_until > now())", self.host, ACTIVE)}
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
