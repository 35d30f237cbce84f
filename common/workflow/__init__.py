"""Workflow files (`.solstice/workflow.kdl`): parse, validate, plan.

The public API, used by the orchestrator, the runner and `cidev`:

- `load_workflow(text, path, limits) -> Workflow`: parse KDL 2.0 or 1.0 and check every rule.
  On any problem raises `WorkflowError` (a `SolsticeError`) whose `diagnostics` list all of
  them (up to 100), each a `Diagnostic(path, line, col, message, hint, job, step)`. `Limits`
  bound the file's size, jobs, steps, matrices and conditions, so the work is bounded.
- `load_workflow_async(...)`, `expand_async(workflow)`: the same in a worker thread, for
  callers inside an event loop (see `offload.py`).
- `expand(workflow) -> list[PlannedJob]`: one `PlannedJob` per job and matrix combination, with a
  stable `key` (`build[rust=stable,os=omnios]`), `runs_on` and steps substituted, and `needs`
  as keys.
- `topological_order(planned) -> list[PlannedJob]`: needs first, otherwise declaration order.
- `evaluate_if(expr, ctx) -> bool`: a job's or step's `if` in an `EvalContext` (event, branch,
  tag, ref, repo, matrix); `PlannedJob.context(run_ctx)` adds the job's matrix values.
- `matches_trigger(workflow, event, branch, tag) -> bool`: whether an event starts the workflow.

The model (`Workflow`, `Job`, `Step`, `Trigger`, `Matrix`, `Resources`) is frozen dataclasses;
durations are seconds, sizes megabytes (disk: gigabytes).
"""
from common.workflow.diagnostics import Diagnostic, WorkflowError
from common.workflow.expr import EvalContext, evaluate_if
from common.workflow.limits import DEFAULT_LIMITS, Limits
from common.workflow.loader import DEFAULT_PATH, load_workflow
from common.workflow.model import Job, Matrix, Resources, Step, Trigger, Workflow
from common.workflow.offload import expand_async, load_workflow_async
from common.workflow.plan import PlannedJob, expand, matches_trigger, topological_order

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_PATH",
    "Diagnostic",
    "EvalContext",
    "Job",
    "Limits",
    "Matrix",
    "PlannedJob",
    "Resources",
    "Step",
    "Trigger",
    "Workflow",
    "WorkflowError",
    "evaluate_if",
    "expand",
    "expand_async",
    "load_workflow",
    "load_workflow_async",
    "matches_trigger",
    "topological_order",
]
