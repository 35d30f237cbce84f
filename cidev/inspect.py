"""`cidev inspect PATH`: the jobs a workflow expands to, their steps, and the DAG between them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cidev.workflow_file import load, render, workflow_path
from common.workflow import DEFAULT_PATH, PlannedJob, Workflow, WorkflowError, expand, topological_order
from common.workflow.units import format_duration


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="show the expanded jobs, their steps and the DAG",
        description="Show what a workflow expands to: every job (one per matrix combination)"
                    " in run order with its steps, then the dependency graph.")
    parser.add_argument("path", nargs="?", type=Path, metavar="PATH",
                        help=f"workflow file or repository directory (default: the {DEFAULT_PATH}"
                             " of the current directory or the nearest one above it)")
    parser.add_argument("--dot", action="store_true", help="print the DAG in Graphviz dot format")
    parser.set_defaults(handler=run)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines() or [""]
    return lines[0] + (" ..." if len(lines) > 1 else "")


def describe_workflow(workflow: Workflow) -> list[str]:
    title = f"workflow {workflow.name!r}" if workflow.name else "workflow"
    out = [title + ("  (fail_fast)" if workflow.fail_fast else "")]
    if workflow.triggers:
        parts = []
        for trigger in workflow.triggers:
            patterns = trigger.branches or trigger.tags
            parts.append(trigger.event + (f" [{', '.join(patterns)}]" if patterns else ""))
        out.append("  on: " + ", ".join(parts))
    else:
        out.append("  on: every event")
    if workflow.env:
        out.append("  env: " + " ".join(f"{k}={v}" for k, v in workflow.env.items()))
    return out


def describe_job(planned: PlannedJob) -> list[str]:
    job = planned.job
    head = f"{planned.key}  runs_on={planned.runs_on}"
    if job.timeout:
        head += f"  timeout={format_duration(job.timeout)}"
    out = [head]
    if planned.needs:
        out.append("  needs: " + ", ".join(planned.needs))
    if job.if_expr:
        out.append(f"  if: {job.if_expr}")
    res = job.resources
    sizes = [f"{res.vcpus} vcpus" if res.vcpus else "", f"ram {res.ram_mb} MB" if res.ram_mb else "",
             f"disk {res.disk_gb} GB" if res.disk_gb else ""]
    if any(sizes):
        out.append("  resources: " + ", ".join(s for s in sizes if s))
    if job.env:
        out.append("  env: " + " ".join(f"{k}={v}" for k, v in job.env.items()))
    if job.secrets:
        out.append("  secrets: " + ", ".join(job.secrets))
    if job.setup:
        out.append(f"  setup: {job.setup}")
    for number, step in enumerate(planned.steps, start=1):
        extras = []
        if step.timeout:
            extras.append(f"timeout={format_duration(step.timeout)}")
        if step.if_expr:
            extras.append(f"if: {step.if_expr}")
        suffix = f"  ({'; '.join(extras)})" if extras else ""
        out.append(f"  {number}. {step.name}: {_one_line(step.run)}{suffix}")
    if job.artifacts:
        out.append("  artifacts: " + ", ".join(
            f"{pattern} (required)" if pattern in job.required_artifacts else pattern
            for pattern in job.artifacts))
    return out


def dag_tree(ordered: list[PlannedJob]) -> list[str]:
    """Each job under the jobs it needs; one needed by several is drawn once, then referenced."""
    dependents: dict[str, list[str]] = {job.key: [] for job in ordered}
    for job in ordered:
        for need in job.needs:
            dependents[need].append(job.key)
    out: list[str] = []
    drawn: set[str] = set()
    roots = [job.key for job in ordered if not job.needs]
    # An explicit stack: a long chain of needs must not hit Python's recursion limit.
    stack: list[tuple[str, str, str]] = [(key, "", "") for key in reversed(roots)]
    while stack:
        key, prefix, child_prefix = stack.pop()
        if key in drawn:
            out.append(f"{prefix}{key} (see above)")
            continue
        drawn.add(key)
        out.append(prefix + key)
        children = dependents[key]
        for index in reversed(range(len(children))):
            last = index == len(children) - 1
            stack.append((children[index], child_prefix + ("└── " if last else "├── "),
                          child_prefix + ("    " if last else "│   ")))
    return out


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dag_dot(ordered: list[PlannedJob]) -> str:
    lines = ["digraph workflow {", "  rankdir=LR;", "  node [shape=box];"]
    for job in ordered:
        label = f"{job.key}\\n{job.runs_on}".replace('"', '\\"')
        lines.append(f'  {_dot_id(job.key)} [label="{label}"];')
    for job in ordered:
        for need in job.needs:
            lines.append(f"  {_dot_id(need)} -> {_dot_id(job.key)};")
    lines.append("}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    path = workflow_path(args.path)
    try:
        workflow = load(path)
    except WorkflowError as exc:
        print(render(exc), file=sys.stderr)
        return 1
    ordered = topological_order(expand(workflow))
    if args.dot:
        print(dag_dot(ordered))
        return 0
    out = describe_workflow(workflow)
    out += ["", f"jobs ({len(ordered)}, in run order):"]
    for planned in ordered:
        out += ["  " + line for line in describe_job(planned)]
    out += ["", "dag:"] + ["  " + line for line in dag_tree(ordered)]
    print("\n".join(out))
    return 0
