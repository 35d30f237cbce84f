"""The in-process API of an orchestrator: submit runs, watch them, wait for their summary.

`cidev run` drives a standalone orchestrator through it; an admin service can wrap the same
calls later. Every answer comes from Postgres; `watch` streams the live updates of this process.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from common.messages import JobState, RunRequest
from common.workflow.units import format_duration
from orchestrator import audit, steering
from orchestrator.db import Database
from orchestrator.effects import Effects
from orchestrator.intake import Intake, RunOptions
from orchestrator.store import Store
from orchestrator.updates import Hub, RunUpdate, Watch

FINAL_RUN_STATES = frozenset({"success", "failure", "error", "cancelled", "skipped"})
# Every state a run can be in (the CHECK on runs.state), in the order of a run's life.
RUN_STATES = ("awaiting_approval", "queued", "running", "success", "failure", "error",
              "cancelled", "skipped")


@dataclass(frozen=True)
class StepSummary:
    index: int
    name: str
    state: str
    exit_code: int | None
    duration_ms: int | None


@dataclass(frozen=True)
class JobSummary:
    job_id: uuid.UUID
    key: str
    runs_on: str
    state: JobState
    message: str
    attempt: int
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[StepSummary] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class RunSummary:
    run_id: uuid.UUID
    state: str
    message: str
    workflow_name: str
    created_at: datetime
    finished_at: datetime | None
    jobs: list[JobSummary] = field(default_factory=list)
    # Who approved / cancelled the run (`token:NAME`, `github:LOGIN`, ...) and when.
    approved_by: str | None = None
    approved_at: datetime | None = None
    cancelled_by: str | None = None
    cancelled_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_RUN_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "success"


async def load_summary(db: Database, run_id: uuid.UUID) -> RunSummary | None:
    async with db.pool.acquire() as conn:
        run = await conn.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
        if run is None:
            return None
        jobs = await conn.fetch("SELECT * FROM jobs WHERE run_id = $1 ORDER BY position, key",
                                run_id)
        steps = await conn.fetch(
            "SELECT s.* FROM steps s JOIN jobs j ON j.id = s.job_id WHERE j.run_id = $1"
            " ORDER BY s.job_id, s.index", run_id)
    by_job: dict[uuid.UUID, list[StepSummary]] = {}
    for s in steps:
        by_job.setdefault(s["job_id"], []).append(StepSummary(
            s["index"], s["name"], s["state"], s["exit_code"], s["duration_ms"]))
    return RunSummary(
        run_id=run["id"], state=run["state"], message=run["message"],
        workflow_name=run["workflow_name"], created_at=run["created_at"],
        finished_at=run["finished_at"], approved_by=run["approved_by"],
        approved_at=run["approved_at"], cancelled_by=run["cancelled_by"],
        cancelled_at=run["cancelled_at"],
        jobs=[JobSummary(job_id=j["id"], key=j["key"], runs_on=j["runs_on"],
                         state=JobState(j["state"]), message=j["message"], attempt=j["attempt"],
                         queued_at=j["created_at"], started_at=j["started_at"],
                         finished_at=j["finished_at"], steps=by_job.get(j["id"], []))
              for j in jobs])


class OrchestratorAPI:
    def __init__(self, *, db: Database, intake: Intake, store: Store, hub: Hub,
                 effects: Effects) -> None:
        self.db = db
        self.intake = intake
        self.store = store
        self.hub = hub
        self.effects = effects

    async def submit(self, request: RunRequest, options: RunOptions = RunOptions()) -> uuid.UUID:
        """Record and plan a run (idempotent on `request.request_id`); return its id."""
        return await self.intake.accept(request, options)

    def watch(self, run_id: uuid.UUID | None = None,
              kinds: tuple[type, ...] | None = None) -> Watch:
        """Live updates from now on; subscribe before `submit` to miss nothing of a new run."""
        return self.hub.watch(run_id, kinds)

    async def summary(self, run_id: uuid.UUID) -> RunSummary | None:
        return await load_summary(self.db, run_id)

    async def wait(self, run_id: uuid.UUID) -> RunSummary:
        """Block until the run ended; its summary."""
        with self.hub.watch(run_id, kinds=(RunUpdate,)) as watch:
            summary = await load_summary(self.db, run_id)
            if summary is None:
                raise KeyError(run_id)
            while not summary.final:
                await watch.queue.get()
                summary = await load_summary(self.db, run_id)
                assert summary is not None
            return summary

    async def cancel_run(self, run_id: uuid.UUID, reason: str = "cancelled", *,
                         actor: str | None = None) -> bool:
        """Cancel a run that has not ended; False if it ended already (or is unknown).

        `actor` is who asks (`token:NAME`, `github:LOGIN`, ...): recorded on the run and in the
        audit log with the outcome. None for the orchestrator's own cancels."""
        cancelled, changes = await self.store.cancel_run(run_id, reason, actor=actor)
        self.effects.apply(changes)
        return cancelled

    async def approve_run(self, run_id: uuid.UUID, actor: str) -> bool:
        """Let a run waiting for approval start; False if it was not waiting. `actor` (who
        approves: `token:NAME`, `github:LOGIN`, ...) is recorded on the run, with the time,
        and in the audit log, refusal included."""
        approved, changes = await self.store.approve_run(run_id, actor)
        self.effects.apply(changes)
        return approved

    async def rerun(self, run_id: uuid.UUID, *, job_id: uuid.UUID | None = None,
                    failed_only: bool = False, hold_seconds: int | None = None,
                    actor: str) -> list[str]:
        """A new attempt of an ended run's jobs (all, those that did not succeed, or `job_id`)
        and of their dependents, each held `hold_seconds` if it fails; the keys re-queued,
        audited as `actor`'s. `RerunRefused` while the run has not ended."""
        keys, changes = await steering.rerun(self.db, run_id, job_id=job_id,
                                             failed_only=failed_only,
                                             hold_seconds=hold_seconds, by=actor)
        held = f"; held {format_duration(hold_seconds)} if failed" if hold_seconds else ""
        await audit.record(self.db.pool, actor=actor, action="rerun", target=str(run_id),
                           detail=",".join(keys) + held)
        self.effects.apply(changes)
        return keys

    async def cancel_job(self, job_id: uuid.UUID, reason: str = "cancelled") -> None:
        self.effects.apply(await self.store.cancel_job(job_id, reason))
