"""What an operator steers with `ciadm`: re-runs of jobs, draining hosts, the queue by label.

A re-run is a new attempt of the same job rows: the jobs chosen and every job that needs them
(transitively) go back to `queued` with their attempt history kept (`job_attempts` holds how
each earlier attempt ended; log chunks and artifacts are kept per attempt). Only a run that
ended can be re-run, so no job of it is running while its dependents are reset.

A drained host stops taking jobs and lets its running ones finish: the flag lives in the host
registry, and the host's heartbeat reads it back (`HostRegistry.run`), so no signal is needed.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from common.errors import SolsticeError
from common.messages import FINAL_JOB_STATES, JobState
from orchestrator.db import Database
from orchestrator.hosts import HostInfo
from orchestrator.intake import SKIPPED_BY_IF
from orchestrator.store import Changes, _transition, lock_run, notify_outbox, settle

# What `rerun --failed` repeats (a job cancelled by fail_fast did not succeed either).
NOT_SUCCEEDED = frozenset({JobState.FAILURE, JobState.ERROR, JobState.TIMED_OUT,
                           JobState.CANCELLED})
FINAL = [s.value for s in FINAL_JOB_STATES]


class RerunRefused(SolsticeError):
    """The run cannot be re-run as asked (still running, nothing failed)."""


async def rerun(db: Database, run_id: uuid.UUID, *, job_id: uuid.UUID | None = None,
                failed_only: bool = False, hold_seconds: int | None = None,
                by: str) -> tuple[list[str], Changes]:
    """Queue a new attempt of the run's jobs (all of them, those that did not succeed, or
    `job_id`) and of everything that needs them; return the job keys re-queued.

    `hold_seconds`: each new attempt's machine is held that long if it fails (the operator's
    request, as `ciadm hold` makes on a running job). An earlier attempt's request is dropped."""
    changes = Changes()
    async with db.transaction() as conn:
        run = await lock_run(conn, run_id)
        if run["finished_at"] is None:
            raise RerunRefused(f"run {run_id} has not ended ({run['state']})",
                               hint=f"wait for it, or `ciadm cancel {run_id}` first")
        jobs = await conn.fetch(
            "SELECT id, key, needs, state, message, attempt, lease_host, started_at, finished_at"
            " FROM jobs WHERE run_id = $1", run_id)
        eligible = [j for j in jobs if not j["message"].startswith(SKIPPED_BY_IF)]
        if job_id is not None:
            seeds = {j["key"] for j in eligible if j["id"] == job_id}
        elif failed_only:
            seeds = {j["key"] for j in eligible if JobState(j["state"]) in NOT_SUCCEEDED}
        else:
            seeds = {j["key"] for j in eligible}
        if not seeds:
            raise RerunRefused(f"nothing to re-run in run {run_id}",
                               hint="no job of it failed" if failed_only else
                               "its workflow did not validate, or its jobs were skipped by their `if`")
        chosen = _with_dependents(seeds, eligible)
        for job in (j for j in eligible if j["key"] in chosen):
            await conn.execute(
                "INSERT INTO job_attempts (job_id, attempt, state, message, host, started_at,"
                " finished_at, rerun_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                job["id"], job["attempt"], job["state"], job["message"], job["lease_host"],
                job["started_at"], job["finished_at"], by)
            await _transition(
                conn, job["id"], JobState.QUEUED, FINAL, f"re-run by {by}", changes,
                extra=", released = false, cancel_requested = false, lease_host = NULL,"
                      " lease_expires_at = NULL, token_hash = NULL, token_used = false,"
                      " token_expires_at = NULL, leased_at = NULL, started_at = NULL,"
                      " finished_at = NULL, queued_at = NULL, retry_base = jobs.attempt")
            await conn.execute(
                "UPDATE steps SET state = 'pending', exit_code = NULL, duration_ms = NULL,"
                " started_at = NULL, finished_at = NULL WHERE job_id = $1", job["id"])
            await conn.execute("UPDATE jobs SET hold_ttl = $2 WHERE id = $1", job["id"],
                               hold_seconds)
        await conn.execute("UPDATE runs SET state = 'queued', message = '', finished_at = NULL"
                           " WHERE id = $1", run_id)
        await settle(conn, run_id, changes)
        await notify_outbox(conn)
    return sorted(chosen), changes


def _with_dependents(seeds: set[str], jobs: list[asyncpg.Record]) -> set[str]:
    chosen = set(seeds)
    grew = True
    while grew:
        grew = False
        for job in jobs:
            if job["key"] not in chosen and chosen.intersection(job["needs"]):
                chosen.add(job["key"])
                grew = True
    return chosen


async def set_drained(db: Database, host: str, drained: bool) -> bool:
    """Drain (or undrain) `host`; False when no host of that name is registered."""
    return bool(await db.pool.fetchval(
        "UPDATE hosts SET drained = $2 WHERE name = $1 RETURNING true", host, drained))


@dataclass(frozen=True)
class LabelQueue:
    """The jobs waiting for one `runs_on` label, and the hosts that would take them."""

    label: str
    depth: int
    oldest_wait_s: float
    hosts: list[str]
    capacity: int

    @property
    def served(self) -> bool:
        return bool(self.hosts)


async def queue_by_label(db: Database, hosts: list[HostInfo]) -> list[LabelQueue]:
    """Every label with jobs waiting or a host serving it. A host serves a label while it is
    alive, running (not stopping) and not drained."""
    rows = await db.pool.fetch(
        "SELECT runs_on, count(*) AS depth,"
        " extract(epoch FROM now() - min(coalesce(queued_at, created_at))) AS oldest"
        " FROM jobs WHERE state = 'queued' AND released AND NOT cancel_requested"
        " GROUP BY runs_on")
    waiting = {r["runs_on"]: (r["depth"], float(r["oldest"])) for r in rows}
    serving = [h for h in hosts if h.alive and h.state == "running" and not h.drained]
    labels = set(waiting) | {label for h in serving for label, slots in h.capacity.items() if slots}
    return [LabelQueue(label=label, depth=waiting.get(label, (0, 0.0))[0],
                       oldest_wait_s=waiting.get(label, (0, 0.0))[1],
                       hosts=sorted(h.name for h in serving if h.capacity.get(label)),
                       capacity=sum(h.capacity.get(label, 0) for h in serving))
            for label in sorted(labels)]
