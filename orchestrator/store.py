"""Every state change of runs and jobs, as SQL. Postgres is the truth; this is how it changes.

Each transition is one conditional UPDATE (`WHERE state = ANY(...) AND attempt = $n ...`): a
writer whose view is stale (a host that lost its lease, a late runner report) changes nothing
and is told so. Messages caused by a change (JobRequests for released jobs, JobEvents) are
written to the outbox in the same transaction; `outbox.OutboxRelay` publishes them.

DAG settlement takes the run row's lock first, so two jobs of one run ending at once cannot
both miss that a common dependent is now ready.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg

from common.messages import (
    FINAL_JOB_STATES,
    JobEvent,
    JobRequest,
    JobState,
    Repo,
)
from common.tracing import current_traceparent
from orchestrator import audit
from orchestrator.db import Database
from orchestrator.manifest import record_manifest

OUTBOX_CHANNEL = "solstice_outbox"
ACTIVE = [JobState.PROVISIONING.value, JobState.RUNNING.value]
FINAL = [s.value for s in FINAL_JOB_STATES]
# A failed job of a fail_fast workflow cancels the rest of the run.
FAILED = {JobState.FAILURE, JobState.TIMED_OUT, JobState.ERROR}
LOG_TAIL_LINES = 20
# Infrastructure retries: how often a job whose host died is re-queued before it ends `error`.
DEFAULT_MAX_RETRIES = 2


@dataclass
class Changes:
    """What one transaction did, for the in-process watchers once it committed."""

    jobs: list[tuple[uuid.UUID, uuid.UUID, str, JobState, str]] = field(default_factory=list)
    cancel: list[uuid.UUID] = field(default_factory=list)  # running jobs told to stop
    cancel_reason: str = ""
    run_finished: tuple[uuid.UUID, str, str] | None = None

    def merge(self, other: Changes) -> None:
        self.jobs += other.jobs
        self.cancel += other.cancel
        self.cancel_reason = other.cancel_reason or self.cancel_reason
        self.run_finished = other.run_finished or self.run_finished


@dataclass(frozen=True)
class Lease:
    """This host's claim on a job: valid while `attempt` is the job's attempt."""

    job_id: uuid.UUID
    run_id: uuid.UUID
    key: str
    runs_on: str
    attempt: int
    spec: dict[str, Any]
    repo: Repo
    commit_sha: str
    ref: str
    trusted: bool
    event: str = "push"
    branch: str | None = None  # the run's branch (a pull request's head branch), if any


async def notify_outbox(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)


async def add_outbox(conn: asyncpg.Connection, message: JobRequest | JobEvent) -> None:
    """Outbox `message` with the current span's trace context (`common.tracing`)."""
    await conn.execute("INSERT INTO outbox (kind, payload, trace_context) VALUES ($1, $2, $3)",
                       message.type, message.model_dump(mode="json"), current_traceparent())


async def _emit(conn: asyncpg.Connection, row: asyncpg.Record, changes: Changes,
                *, failing_step: str | None = None, log_tail: str = "") -> None:
    """Outbox a JobEvent for `row` (a jobs row joined with its run, after the transition)."""
    state = JobState(row["state"])
    await add_outbox(conn, JobEvent(
        run_id=row["run_id"], job_id=row["id"], job_key=row["key"],
        workflow_name=row["workflow_name"], state=state, sequence=row["event_seq"],
        repo=Repo.model_validate(row["repo"]), commit_sha=row["commit_sha"],
        request_id=row["request_id"], description=row["message"],
        failing_step=failing_step, log_tail=log_tail))
    changes.jobs.append((row["run_id"], row["id"], row["key"], state, row["message"]))


# The columns `_emit` needs, from an UPDATE ... FROM runs r.
_EVENT_COLUMNS = ("jobs.id, jobs.run_id, jobs.key, jobs.state, jobs.message, jobs.event_seq,"
                  " r.workflow_name, r.repo, r.commit_sha, r.request_id")


async def _transition(conn: asyncpg.Connection, job_id: uuid.UUID, to: JobState,
                      from_states: list[str], message: str, changes: Changes,
                      extra: str = "") -> asyncpg.Record | None:
    """Move one job to `to` if it is in `from_states`; emit its event. None if refused."""
    row = await conn.fetchrow(
        f"UPDATE jobs SET state = $2, message = $3, event_seq = event_seq + 1 {extra}"
        f" FROM runs r WHERE jobs.id = $1 AND r.id = jobs.run_id AND jobs.state = ANY($4)"
        f" RETURNING {_EVENT_COLUMNS}",
        job_id, to.value, message, from_states)
    if row is not None:
        await _emit(conn, row, changes)
    return row


async def insert_job(conn: asyncpg.Connection, *, job_id: uuid.UUID, run_id: uuid.UUID,
                     key: str, name: str, position: int, runs_on: str, needs: list[str],
                     spec: dict[str, Any],
                     timeout_seconds: int, state: JobState, message: str,
                     steps: list[str], changes: Changes) -> None:
    """A new job (queued, or skipped when its `if` is false) with its pending steps."""
    await conn.execute(
        "INSERT INTO jobs (id, run_id, key, name, runs_on, needs, spec, timeout_seconds,"
        " state, message, event_seq, finished_at, position)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1,"
        " CASE WHEN $9 = 'skipped' THEN now() END, $11)",
        job_id, run_id, key, name, runs_on, needs, spec, timeout_seconds, state.value, message,
        position)
    await conn.executemany(
        "INSERT INTO steps (job_id, index, name, state) VALUES ($1, $2, $3, $4)",
        [(job_id, i, step, "skipped" if state == JobState.SKIPPED else "pending")
         for i, step in enumerate(steps)])
    row = await conn.fetchrow(
        f"SELECT {_EVENT_COLUMNS} FROM jobs JOIN runs r ON r.id = jobs.run_id WHERE jobs.id = $1",
        job_id)
    await _emit(conn, row, changes)


async def lock_run(conn: asyncpg.Connection, run_id: uuid.UUID) -> asyncpg.Record:
    return await conn.fetchrow("SELECT * FROM runs WHERE id = $1 FOR UPDATE", run_id)


async def settle(conn: asyncpg.Connection, run_id: uuid.UUID, changes: Changes) -> None:
    """Release jobs whose needs all succeeded; skip those with a need that did not.

    Call with the run row locked. Skips cascade, so it loops until nothing changes.
    """
    priority = await conn.fetchval("SELECT priority FROM runs WHERE id = $1", run_id)
    while True:
        jobs = await conn.fetch(
            "SELECT id, key, runs_on, needs, state, released, attempt FROM jobs"
            " WHERE run_id = $1", run_id)
        state_of = {j["key"]: JobState(j["state"]) for j in jobs}
        changed = False
        for job in jobs:
            if job["state"] != JobState.QUEUED.value or job["released"]:
                continue
            needs = [state_of.get(n, JobState.SKIPPED) for n in job["needs"]]
            if all(s == JobState.SUCCESS for s in needs):
                await conn.execute("UPDATE jobs SET released = true, queued_at = now()"
                                   " WHERE id = $1", job["id"])
                await add_outbox(conn, JobRequest(
                    run_id=run_id, job_id=job["id"], job_key=job["key"],
                    runs_on=job["runs_on"], attempt=job["attempt"] + 1,
                    priority=priority))
                changed = True
            elif any(s.final and s != JobState.SUCCESS for s in needs):
                failed = [n for n in job["needs"] if state_of.get(n) != JobState.SUCCESS
                          and state_of.get(n, JobState.SKIPPED).final]
                await _transition(conn, job["id"], JobState.SKIPPED, [JobState.QUEUED.value],
                                  f"skipped: needed {', '.join(failed)}, which did not succeed",
                                  changes, extra=", finished_at = now()")
                await conn.execute("UPDATE steps SET state = 'skipped' WHERE job_id = $1",
                                   job["id"])
                changed = True
        if not changed:
            break
    await _finish_run_if_done(conn, run_id, changes)


async def _finish_run_if_done(conn: asyncpg.Connection, run_id: uuid.UUID,
                              changes: Changes) -> None:
    states = [JobState(r["state"]) for r in
              await conn.fetch("SELECT state FROM jobs WHERE run_id = $1", run_id)]
    if not all(s.final for s in states):
        return
    if any(s in (JobState.FAILURE, JobState.TIMED_OUT) for s in states):
        outcome = "failure"
    elif JobState.ERROR in states:
        outcome = "error"
    elif JobState.CANCELLED in states:
        outcome = "cancelled"
    else:
        outcome = "success"
    ok = sum(s == JobState.SUCCESS for s in states)
    message = f"{ok} of {len(states)} jobs succeeded"
    row = await conn.fetchrow(
        "UPDATE runs SET state = $2, message = $3, finished_at = now()"
        " WHERE id = $1 AND finished_at IS NULL RETURNING id", run_id, outcome, message)
    if row is not None:
        await record_manifest(conn, run_id)
        changes.run_finished = (run_id, outcome, message)


@dataclass(frozen=True)
class StartedJob:
    """A job whose runner just fetched it with a valid token."""

    job_id: uuid.UUID
    run_id: uuid.UUID
    key: str
    attempt: int
    spec: dict[str, Any]
    repo: Repo
    commit_sha: str
    ref: str


class Store:
    """The transitions, each in its own transaction on `db`, on behalf of host `host`."""

    def __init__(self, db: Database, host: str) -> None:
        self.db = db
        self.host = host

    async def lease(self, job_id: uuid.UUID, *, ttl: float, token_hash: bytes,
                    token_ttl: float) -> tuple[Lease | None, Changes]:
        """queued → provisioning for this host with attempt + 1, if the job is still queued.

        Refused (None) for a job that is running elsewhere, final, cancelled, or not released.
        """
        changes = Changes()
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE jobs SET state = 'provisioning', message = '', event_seq = event_seq + 1,"
                " attempt = jobs.attempt + 1, lease_host = $2, lease_expires_at = now() + $3,"
                " token_hash = $4, token_used = false, token_expires_at = now() + $5,"
                " leased_at = now(), started_at = NULL"
                " FROM runs r WHERE jobs.id = $1 AND r.id = jobs.run_id AND jobs.state = 'queued'"
                " AND jobs.released AND NOT jobs.cancel_requested"
                f" RETURNING {_EVENT_COLUMNS}, jobs.runs_on, jobs.attempt, jobs.spec, r.ref,"
                " r.trusted, r.state AS run_state, r.event, r.request->>'branch' AS branch",
                job_id, self.host, timedelta(seconds=ttl), token_hash,
                timedelta(seconds=token_ttl))
            if row is None:
                return None, changes
            await _emit(conn, row, changes)
            if row["attempt"] > 1:  # a retry: forget what the earlier attempt's steps did
                await conn.execute(
                    "UPDATE steps SET state = 'pending', exit_code = NULL, duration_ms = NULL,"
                    " started_at = NULL, finished_at = NULL WHERE job_id = $1", job_id)
            await notify_outbox(conn)
        if row["run_state"] == "queued":
            # Separate statement: taking the run's lock while holding the job's could deadlock
            # with a settlement (which locks run, then jobs).
            await self.db.pool.execute("UPDATE runs SET state = 'running' WHERE id = $1"
                                       " AND state = 'queued'", row["run_id"])
        return Lease(job_id=row["id"], run_id=row["run_id"], key=row["key"],
                     runs_on=row["runs_on"], attempt=row["attempt"], spec=row["spec"],
                     repo=Repo.model_validate(row["repo"]), commit_sha=row["commit_sha"],
                     ref=row["ref"], trusted=row["trusted"], event=row["event"],
                     branch=row["branch"]), changes

    async def claim_token(self, job_id: uuid.UUID, token_hash: bytes
                          ) -> tuple[StartedJob | None, Changes]:
        """provisioning → running when the runner presents the job's unused, unexpired token."""
        changes = Changes()
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE jobs SET state = 'running', token_used = true, started_at = now(),"
                " event_seq = event_seq + 1"
                " FROM runs r WHERE jobs.id = $1 AND r.id = jobs.run_id"
                " AND jobs.state = 'provisioning' AND jobs.token_hash = $2"
                " AND NOT jobs.token_used AND jobs.token_expires_at > now()"
                " AND jobs.lease_host = $3"
                f" RETURNING {_EVENT_COLUMNS}, jobs.attempt, jobs.spec, r.ref",
                job_id, token_hash, self.host)
            if row is None:
                return None, changes
            await _emit(conn, row, changes)
            await notify_outbox(conn)
        return StartedJob(job_id=row["id"], run_id=row["run_id"], key=row["key"],
                          attempt=row["attempt"], spec=row["spec"],
                          repo=Repo.model_validate(row["repo"]),
                          commit_sha=row["commit_sha"], ref=row["ref"]), changes

    async def renew_lease(self, job_id: uuid.UUID, attempt: int, ttl: float) -> bool | None:
        """Extend this host's lease. None: the lease is lost; else whether a cancel is asked."""
        return await self.db.pool.fetchval(
            "UPDATE jobs SET lease_expires_at = now() + $4 WHERE id = $1 AND attempt = $2"
            " AND lease_host = $3 AND state = ANY($5) RETURNING cancel_requested",
            job_id, attempt, self.host, timedelta(seconds=ttl), ACTIVE)

    async def record_machine(self, job_id: uuid.UUID, attempt: int, backend: str,
                             image: str) -> None:
        """Which backend and image the job's machine has, for the run record."""
        await self.db.pool.execute(
            "UPDATE jobs SET backend = $3, image = $4 WHERE id = $1 AND attempt = $2"
            " AND lease_host = $5", job_id, attempt, backend, image, self.host)

    async def record_step(self, job_id: uuid.UUID, attempt: int, index: int, state: str,
                          exit_code: int | None, duration_ms: int | None) -> str | None:
        """A step started or finished; the step's name, or None if refused (stale or unknown)."""
        started = state == "running"
        return await self.db.pool.fetchval(
            "UPDATE steps SET state = $4, exit_code = $5, duration_ms = $6,"
            " started_at = CASE WHEN $7 THEN now() ELSE steps.started_at END,"
            " finished_at = CASE WHEN $7 THEN NULL ELSE now() END"
            " FROM jobs WHERE steps.job_id = $1 AND steps.index = $3 AND jobs.id = steps.job_id"
            " AND jobs.attempt = $2 AND jobs.lease_host = $8 AND jobs.state = 'running'"
            " AND steps.state = ANY($9) RETURNING steps.name",
            job_id, attempt, index, state, exit_code, duration_ms, started, self.host,
            ["pending"] if started else ["pending", "running"])

    async def finish(self, job_id: uuid.UUID, attempt: int, state: JobState,
                     message: str) -> Changes | None:
        """End this host's attempt of a job; release or skip its dependents; maybe end the run.

        None when refused: the attempt is not ours any more (lease lost) or already ended.
        """
        changes = Changes()
        async with self.db.transaction() as conn:
            run_id = await conn.fetchval("SELECT run_id FROM jobs WHERE id = $1", job_id)
            if run_id is None:
                return None
            run = await lock_run(conn, run_id)
            row = await conn.fetchrow(
                "UPDATE jobs SET state = $3, message = $4, event_seq = event_seq + 1,"
                " finished_at = now(), token_hash = NULL, lease_expires_at = NULL"
                " FROM runs r WHERE jobs.id = $1 AND r.id = jobs.run_id AND jobs.attempt = $2"
                " AND jobs.lease_host = $5 AND jobs.state = ANY($6)"
                f" RETURNING {_EVENT_COLUMNS}",
                job_id, attempt, state.value, message, self.host, ACTIVE)
            if row is None:
                return None
            leftover = {JobState.TIMED_OUT: "timed_out", JobState.CANCELLED: "cancelled",
                        JobState.ERROR: "cancelled"}.get(state, "cancelled")
            await conn.execute(
                "UPDATE steps SET state = CASE WHEN state = 'running' THEN $2 ELSE 'skipped' END,"
                " finished_at = now() WHERE job_id = $1 AND state IN ('pending', 'running')",
                job_id, leftover)
            failing_step, tail = await self._failure_context(conn, job_id, attempt, state)
            await _emit(conn, row, changes, failing_step=failing_step, log_tail=tail)
            if state in FAILED and run["fail_fast"]:
                await self._cancel_rest(conn, run_id, "cancelled: another job failed and the"
                                        " workflow is fail_fast", changes)
            await settle(conn, run_id, changes)
            await notify_outbox(conn)
        return changes

    async def _failure_context(self, conn: asyncpg.Connection, job_id: uuid.UUID,
                               attempt: int, state: JobState) -> tuple[str | None, str]:
        """The failing step's name and its last log lines, for the forge's status."""
        if state not in (JobState.FAILURE, JobState.TIMED_OUT):
            return None, ""
        step = await conn.fetchrow(
            "SELECT index, name FROM steps WHERE job_id = $1"
            " AND state IN ('failure', 'timed_out') ORDER BY index LIMIT 1", job_id)
        if step is None:
            return None, ""
        # Rows, never an archive: the attempt is ending in this very transaction, and only an
        # attempt that has ended is compacted (orchestrator/logarchive.py).
        chunks = await conn.fetch(
            "SELECT data FROM log_chunks WHERE job_id = $1 AND attempt = $2 AND step_index = $3"
            " ORDER BY seq DESC LIMIT $4", job_id, attempt, step["index"], LOG_TAIL_LINES)
        text = b"".join(bytes(c["data"]) for c in reversed(chunks)).decode(errors="replace")
        return step["name"], "\n".join(text.splitlines()[-LOG_TAIL_LINES:])

    async def _cancel_rest(self, conn: asyncpg.Connection, run_id: uuid.UUID, message: str,
                           changes: Changes) -> None:
        """Cancel every job of the run that has not ended (run row locked by the caller)."""
        waiting = [JobState.QUEUED.value, JobState.AWAITING_APPROVAL.value]
        queued = await conn.fetch("SELECT id FROM jobs WHERE run_id = $1 AND state = ANY($2)",
                                  run_id, waiting)
        for job in queued:
            await _transition(conn, job["id"], JobState.CANCELLED, waiting,
                              message, changes, extra=", finished_at = now()")
            await conn.execute("UPDATE steps SET state = 'skipped' WHERE job_id = $1", job["id"])
        active = await conn.fetch(
            "UPDATE jobs SET cancel_requested = true WHERE run_id = $1 AND state = ANY($2)"
            " AND NOT cancel_requested RETURNING id", run_id, ACTIVE)
        changes.cancel += [r["id"] for r in active]
        changes.cancel_reason = message

    async def cancel_run(self, run_id: uuid.UUID, message: str = "cancelled", *,
                         actor: str | None = None) -> tuple[bool, Changes]:
        """Cancel the run's queued jobs now and ask its running ones to stop; False (nothing
        done) if the run is unknown or ended already.

        `actor` (`token:NAME`, `github:LOGIN`, ...) is recorded on the run and in the audit log,
        refusal included; None for the orchestrator's own cancels (Ctrl-C of `cidev run`)."""
        changes = Changes()
        async with self.db.transaction() as conn:
            run = await lock_run(conn, run_id)
            if run is not None and run["finished_at"] is None:
                await self._cancel_rest(conn, run_id, message, changes)
                if actor is not None:
                    await conn.execute("UPDATE runs SET cancelled_by = $2, cancelled_at = now()"
                                       " WHERE id = $1", run_id, actor)
                    await audit.record(conn, actor=actor, action="cancel", target=str(run_id),
                                       detail=message)
                await settle(conn, run_id, changes)
                await notify_outbox(conn)
                return True, changes
        if actor is not None:
            why = "no such run" if run is None else f"the run already ended ({run['state']})"
            await audit.record(self.db.pool, actor=actor, action="cancel", target=str(run_id),
                               outcome=f"refused: {why}")
        return False, changes

    async def approve_run(self, run_id: uuid.UUID, actor: str) -> tuple[bool, Changes]:
        """Queue the jobs of a run that waits for approval, recording who approved (`actor`:
        `token:NAME`, `github:LOGIN`, ...) and when, on the run and in the audit log; False
        (and the refusal audited) if the run was not waiting."""
        changes = Changes()
        async with self.db.transaction() as conn:
            run = await lock_run(conn, run_id)
            waiting = [] if run is None else await conn.fetch(
                "SELECT id FROM jobs WHERE run_id = $1 AND state = 'awaiting_approval'", run_id)
            for job in waiting:
                await _transition(conn, job["id"], JobState.QUEUED,
                                  [JobState.AWAITING_APPROVAL.value],
                                  f"approved by {actor}", changes)
            if waiting:
                await conn.execute(
                    "UPDATE runs SET approved_by = $2, approved_at = now(),"
                    " state = CASE WHEN state = 'awaiting_approval' THEN 'queued' ELSE state END"
                    " WHERE id = $1", run_id, actor)
                await audit.record(conn, actor=actor, action="approve", target=str(run_id))
                await settle(conn, run_id, changes)
                await notify_outbox(conn)
                return True, changes
        why = ("no such run" if run is None else
               f"the run is not waiting for approval ({run['state']}"
               + (f", approved by {run['approved_by']})" if run["approved_by"] else ")"))
        await audit.record(self.db.pool, actor=actor, action="approve", target=str(run_id),
                           outcome=f"refused: {why}")
        return False, changes

    async def cancel_job(self, job_id: uuid.UUID, message: str = "cancelled") -> Changes:
        """Cancel one job: at once if queued, else ask its runner to stop."""
        changes = Changes()
        async with self.db.transaction() as conn:
            run_id = await conn.fetchval("SELECT run_id FROM jobs WHERE id = $1", job_id)
            if run_id is None:
                return changes
            await lock_run(conn, run_id)
            row = await _transition(conn, job_id, JobState.CANCELLED, [JobState.QUEUED.value],
                                    message, changes, extra=", finished_at = now()")
            if row is None:
                if await conn.fetchval(
                        "UPDATE jobs SET cancel_requested = true WHERE id = $1 AND state = ANY($2)"
                        " RETURNING id", job_id, ACTIVE):
                    changes.cancel.append(job_id)
                    changes.cancel_reason = message
            else:
                await conn.execute("UPDATE steps SET state = 'skipped' WHERE job_id = $1", job_id)
            await settle(conn, run_id, changes)
            await notify_outbox(conn)
        return changes


async def hand_back(db: Database, job_id: uuid.UUID, attempt: int, host: str, reason: str, *,
                    max_retries: int = DEFAULT_MAX_RETRIES,
                    only_if_dead: list[str] | None = None) -> tuple[JobState | None, Changes]:
    """Take attempt `attempt` of a job away from `host`: re-queue it, or end it `error`.

    `only_if_dead`: refuse unless the lease has expired or the host is in this list (the
    condition is re-checked in the UPDATE, so a lease renewed meanwhile is left alone).
    None when refused (the job moved on: ended, re-leased, or already handed back).
    """
    changes = Changes()
    # Retries count from the job's latest re-run (`ciadm rerun`), not from its first attempt.
    retry_base = await db.pool.fetchval("SELECT retry_base FROM jobs WHERE id = $1", job_id) or 0
    if attempt - retry_base > max_retries:
        state = JobState.ERROR
        message = (f"{reason}; gave up after {attempt - retry_base} attempts "
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
            " queued_at = now(), lease_host = NULL, lease_expires_at = NULL, token_hash = NULL,"
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
