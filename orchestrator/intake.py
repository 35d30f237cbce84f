"""Run intake: a RunRequest becomes a run, its jobs, and JobRequests for the jobs ready now.

All in one transaction with the outbox, idempotent on the request id: a redelivered request
finds its run and changes nothing. A workflow that does not validate still becomes a run, ended
`failure` with every diagnostic, plus a JobEvent for a pseudo-job `workflow` so the forge shows
why; nothing is dropped silently.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from common.messages import JobEvent, JobState, RunRequest
from common.observability import log_context, tracer
from common.tracing import current_traceparent
from common.workflow import (
    DEFAULT_LIMITS,
    EvalContext,
    Limits,
    PlannedJob,
    Workflow,
    WorkflowError,
    evaluate_if,
    expand_async,
    load_workflow_async,
    matches_trigger,
)
from orchestrator.db import Database
from orchestrator.effects import Effects
from orchestrator.store import Changes, add_outbox, insert_job, notify_outbox, settle

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

WORKFLOW_JOB_KEY = "workflow"
# How the message of a job whose `if` was false begins (a re-run leaves such a job skipped).
SKIPPED_BY_IF = "skipped: `if "


APPROVAL_NOTE = "waiting for a maintainer: comment /solstice approve to run it"


@dataclass(frozen=True)
class RunOptions:
    """How a run deviates from what its event would do (`cidev run` uses these)."""

    # These job ids or exact job keys (`build[os=omnios]`) and what they need; None = all.
    only_jobs: frozenset[str] | None = None
    ignore_triggers: bool = False


def select_jobs(planned: list[PlannedJob], only: frozenset[str]) -> list[PlannedJob]:
    """The planned jobs whose id or key is in `only`, plus everything they need, transitively."""
    by_key = {p.key: p for p in planned}
    keep = {p.key for p in planned if p.job.id in only or p.key in only}
    todo = list(keep)
    while todo:
        for need in by_key[todo.pop()].needs:
            if need not in keep:
                keep.add(need)
                todo.append(need)
    return [p for p in planned if p.key in keep]


def job_spec(workflow: Workflow, planned: PlannedJob, ctx: EvalContext,
             default_timeout: int) -> dict[str, Any]:
    """What the runner and the backend need of a planned job, stored as the job's `spec`."""
    job = planned.job
    job_ctx = planned.context(ctx)
    return {
        "name": job.id,
        "key": planned.key,
        "runs_on": planned.runs_on,
        "matrix": planned.matrix,
        "env": {**workflow.env, **job.env},
        "secrets": list(job.secrets),
        "setup": job.setup,
        "artifacts": list(job.artifacts),
        "required_artifacts": list(job.required_artifacts),
        "needs": list(planned.needs),
        "timeout": job.timeout or default_timeout,
        "hold_on_failure": job.hold_on_failure or workflow.hold_on_failure,
        "resources": {"vcpus": job.resources.vcpus, "ram_mb": job.resources.ram_mb,
                      "disk_gb": job.resources.disk_gb},
        "steps": [{"name": s.name, "run": s.run, "timeout": s.timeout,
                   "enabled": evaluate_if(s.if_expr, job_ctx)} for s in planned.steps],
    }


def run_context(request: RunRequest) -> EvalContext:
    return EvalContext(event=request.event.value, branch=request.branch, tag=request.tag,
                       ref=request.ref, repo=request.repo.full_name)


class Intake:
    def __init__(self, db: Database, effects: Effects, *, default_job_timeout: int,
                 workflow_limits: Limits = DEFAULT_LIMITS) -> None:
        self.db = db
        self.effects = effects
        self.default_job_timeout = default_job_timeout
        self.workflow_limits = workflow_limits

    async def accept(self, request: RunRequest, options: RunOptions = RunOptions()) -> uuid.UUID:
        """Record the run of `request` (once) and plan its jobs; return the run id.

        A re-run of one job (`request.rerun_of`, from a forge's "re-run" button) plans that
        job and what it needs, whatever the triggers say, with the workflow, trust and approval
        of the run it repeats (see `_as_rerun`). The run's trace is that of its `run.intake`
        span (`runs.trace_context`).
        """
        with log_context(request_id=request.request_id), \
                _tracer.start_as_current_span("run.intake", attributes={
                    "solstice.request_id": request.request_id,
                    "solstice.repo": request.repo.full_name}) as span:
            run_id = await self._accept(request, options)
            span.set_attribute("solstice.run_id", str(run_id))
            return run_id

    async def _accept(self, request: RunRequest, options: RunOptions) -> uuid.UUID:
        if request.rerun_of is not None:
            request = await self._as_rerun(request)
            if options.only_jobs is None:
                options = RunOptions(only_jobs=frozenset({request.rerun_of.job_key}),
                                     ignore_triggers=True)
        workflow: Workflow | None = None
        problem: WorkflowError | None = None
        try:
            # Off the event loop: validating a large file takes long enough to starve runners.
            workflow = await load_workflow_async(request.workflow_source, request.workflow_path,
                                                 self.workflow_limits)
        except WorkflowError as exc:
            problem = exc
        changes = Changes()
        async with self.db.transaction() as conn:
            run_id = await conn.fetchval(
                "INSERT INTO runs (id, request_id, repo, commit_sha, ref, event, workflow_path,"
                " workflow_name, trusted, priority, fail_fast, request, workflow_source,"
                " trace_context)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                " ON CONFLICT (request_id) DO NOTHING RETURNING id",
                uuid.uuid4(), request.request_id, request.repo.model_dump(mode="json"),
                request.commit_sha, request.ref, request.event.value, request.workflow_path,
                (workflow.name or "") if workflow else "", request.trusted, request.priority,
                bool(workflow and workflow.fail_fast),
                request.model_dump(mode="json", exclude={"workflow_source"}),
                request.workflow_source, current_traceparent())
            if run_id is None:
                existing = await conn.fetchval("SELECT id FROM runs WHERE request_id = $1",
                                               request.request_id)
                log.info("run request already recorded", extra={"request_id": request.request_id,
                                                                "run_id": str(existing)})
                return existing
            if problem is not None:
                await self._invalid(conn, run_id, request, problem, changes)
            elif not options.ignore_triggers and not matches_trigger(
                    workflow, request.event.value, request.branch, request.tag):
                message = f"the workflow does not run on {request.event.value} of {request.ref}"
                await conn.execute("UPDATE runs SET state = 'skipped', message = $2,"
                                   " finished_at = now() WHERE id = $1", run_id, message)
                changes.run_finished = (run_id, "skipped", message)
            else:
                await self._plan(conn, run_id, request, workflow, options, changes)
                await settle(conn, run_id, changes)
            await notify_outbox(conn)
        self.effects.apply(changes)
        log.info("run recorded", extra={"run_id": str(run_id), "request_id": request.request_id,
                                        "jobs": len(changes.jobs)})
        return run_id

    async def _as_rerun(self, request: RunRequest) -> RunRequest:
        """The re-run with the earlier run's workflow, trust and approval; unchanged (as the
        integration sent it: untrusted, the default branch's workflow) if that run is unknown."""
        assert request.rerun_of is not None
        earlier = await self.db.pool.fetchrow(
            "SELECT workflow_source, trusted, approved_by,"
            " coalesce((request->>'needs_approval')::boolean, false) AS needed_approval"
            " FROM runs WHERE id = $1", request.rerun_of.run_id)
        if earlier is None or earlier["workflow_source"] is None:
            log.warning("re-run of an unknown run; running it as sent",
                        extra={"rerun_of": str(request.rerun_of.run_id)})
            return request
        return request.model_copy(update={
            "workflow_source": earlier["workflow_source"], "trusted": earlier["trusted"],
            "needs_approval": earlier["needed_approval"] and earlier["approved_by"] is None})

    async def _plan(self, conn: Any, run_id: uuid.UUID, request: RunRequest,
                    workflow: Workflow, options: RunOptions, changes: Changes) -> None:
        ctx = run_context(request)
        # An untrusted run the repository wants approved waits for a maintainer first (on the
        # forge, see orchestrator/forge_approvals.py, or `ciadm approve`). The note is what
        # the contributor reads in the forge's status.
        waiting = JobState.AWAITING_APPROVAL if request.needs_approval else JobState.QUEUED
        note = APPROVAL_NOTE if request.needs_approval else ""
        jobs = await expand_async(workflow)
        if options.only_jobs is not None:
            jobs = select_jobs(jobs, options.only_jobs)
        for position, planned in enumerate(jobs):
            runs = evaluate_if(planned.job.if_expr, planned.context(ctx))
            spec = job_spec(workflow, planned, ctx, self.default_job_timeout)
            await insert_job(
                conn, job_id=uuid.uuid4(), run_id=run_id, key=planned.key, name=planned.job.id,
                position=position, runs_on=planned.runs_on, needs=list(planned.needs), spec=spec,
                timeout_seconds=spec["timeout"],
                state=waiting if runs else JobState.SKIPPED,
                message=note if runs else f"{SKIPPED_BY_IF}{planned.job.if_expr}` is false",
                steps=[s.name for s in planned.steps], changes=changes)
        if request.needs_approval:
            # The run waits with its jobs (until none does: all skipped ends it in `settle`).
            await conn.execute(
                "UPDATE runs SET state = 'awaiting_approval' WHERE id = $1 AND EXISTS"
                " (SELECT 1 FROM jobs WHERE run_id = $1 AND state = 'awaiting_approval')",
                run_id)

    async def _invalid(self, conn: Any, run_id: uuid.UUID, request: RunRequest,
                       problem: WorkflowError, changes: Changes) -> None:
        diagnostics = [d.to_dict() for d in problem.diagnostics]
        message = str(problem)
        await conn.execute(
            "UPDATE runs SET state = 'failure', message = $2, diagnostics = $3,"
            " finished_at = now() WHERE id = $1", run_id, message, diagnostics)
        await add_outbox(conn, JobEvent(
            run_id=run_id, job_id=uuid.uuid4(), job_key=WORKFLOW_JOB_KEY, workflow_name="",
            state=JobState.FAILURE, sequence=1, repo=request.repo,
            commit_sha=request.commit_sha, request_id=request.request_id,
            description=f"{request.workflow_path} is not a valid workflow",
            log_tail=message))
        changes.run_finished = (run_id, "failure", message)
        log.warning("run request with an invalid workflow",
                    extra={"request_id": request.request_id,
                           "problems": len(problem.diagnostics)})
