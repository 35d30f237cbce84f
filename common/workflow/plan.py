"""From a validated `Workflow` to the jobs of one run: matrix expansion, order, triggers."""
from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import product

from common.workflow.expr import EvalContext
from common.workflow.model import Job, Matrix, Step, Workflow

_TEMPLATE_RE = re.compile(r"\$\{\{\s*matrix\.([A-Za-z_][A-Za-z0-9_-]*)\s*\}\}")


@dataclass(frozen=True, slots=True)
class PlannedJob:
    """One job of a run: a declared job, or one combination of a matrixed job.

    `key` is stable across runs and unique in the workflow: the job id, plus the matrix values
    in axis order for a matrixed job (`build[rust=stable,os=omnios]`). `runs_on` and the steps'
    names and commands have `${{ matrix.X }}` substituted; `needs` holds keys, and needing a
    matrixed job means needing every one of its combinations.
    """

    key: str
    job: Job
    runs_on: str
    steps: tuple[Step, ...]
    matrix: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()

    def context(self, run: EvalContext) -> EvalContext:
        """The run's `if` context with this job's matrix values, for its job and step `if`s."""
        return replace(run, matrix=self.matrix)


def matrix_combinations(matrix: Matrix) -> list[dict[str, str]]:
    """Every combination in a stable order: the axes' product minus `exclude`, then `include`.

    Exclude rules naming the same axes are one set lookup per combination, so the work is the
    product times the number of distinct axis sets the rules name (the loader bounds both).
    """
    names = matrix.axis_names
    position = {name: i for i, name in enumerate(names)}
    excluded: dict[tuple[int, ...], set[tuple[str, ...]]] = {}
    for rule in matrix.exclude:
        axes = tuple(sorted(position[axis] for axis in rule))
        excluded.setdefault(axes, set()).add(tuple(rule[names[i]] for i in axes))
    shapes = list(excluded.items())
    kept = [values for values in product(*(values for _, values in matrix.axes))
            if not any(tuple(values[i] for i in axes) in rules for axes, rules in shapes)]
    seen = set(kept)
    for extra in matrix.include:
        values = tuple(extra[name] for name in names)
        if values not in seen:
            seen.add(values)
            kept.append(values)
    return [dict(zip(names, values, strict=True)) for values in kept]


def job_key(job_id: str, matrix: dict[str, str]) -> str:
    """`build` or `build[rust=stable,os=omnios]`."""
    if not matrix:
        return job_id
    return f"{job_id}[{','.join(f'{k}={v}' for k, v in matrix.items())}]"


def substitute(text: str, matrix: dict[str, str]) -> str:
    """Replace each `${{ matrix.X }}` with the value of axis X."""
    if "${{" not in text:
        return text
    return _TEMPLATE_RE.sub(lambda m: matrix[m.group(1)], text)


def expand(workflow: Workflow) -> list[PlannedJob]:
    """The jobs of a run, in declaration order (a matrixed job's combinations in matrix order)."""
    combos = {job.id: matrix_combinations(job.matrix) if job.matrix else [{}] for job in workflow.jobs}
    keys = {job_id: [job_key(job_id, c) for c in cs] for job_id, cs in combos.items()}
    planned = []
    for job in workflow.jobs:
        needs = tuple(key for need in job.needs for key in keys[need])
        for combo, key in zip(combos[job.id], keys[job.id], strict=False):
            steps = tuple(
                Step(name=substitute(s.name, combo), run=substitute(s.run, combo),
                     timeout=s.timeout, if_expr=s.if_expr) if combo else s
                for s in job.steps
            )
            planned.append(PlannedJob(key=key, job=job, runs_on=substitute(job.runs_on, combo),
                                      steps=steps, matrix=combo, needs=needs))
    return planned


def topological_order(jobs: Sequence[PlannedJob]) -> list[PlannedJob]:
    """`jobs` ordered so each comes after everything it needs; ties keep the given order.

    Raises ValueError on a cycle or an unknown need, which `load_workflow` already rejects.
    """
    index = {job.key: i for i, job in enumerate(jobs)}
    waiting = [0] * len(jobs)
    dependents: list[list[int]] = [[] for _ in jobs]
    for i, job in enumerate(jobs):
        for need in job.needs:
            if need not in index:
                raise ValueError(f"{job.key} needs {need}, which is not among the jobs")
            waiting[i] += 1
            dependents[index[need]].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(jobs[i])
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(jobs):
        raise ValueError("the jobs' needs form a cycle")
    return order


@lru_cache(maxsize=256)
def _glob(pattern: str) -> tuple[str, ...]:
    """The pattern as tokens: `**`, `*`, `?` and single literal characters; a run of stars is
    one token (`**` if any of them is)."""
    tokens: list[str] = []
    for part in re.split(r"(\*\*|\*|\?)", pattern):
        if part in ("*", "**") and tokens and tokens[-1] in ("*", "**"):
            tokens[-1] = "**" if "**" in (part, tokens[-1]) else "*"
        elif part in ("*", "**", "?"):
            tokens.append(part)
        else:
            tokens.extend(part)
    return tuple(tokens)


def glob_matches(pattern: str, name: str) -> bool:
    """Whether branch or tag `name` matches `pattern` (`release/*`, `v*`, `feature/**`).

    `*` matches within one path segment, `**` across segments, `?` one character. The pattern
    comes from the workflow and the name from whoever pushed, so this walks every way the
    pattern can match at once, in time linear in the name (times the pattern's live
    positions); a backtracking regex takes exponential time on `*a*a*a*a...c`.
    """
    tokens = _glob(pattern)
    end = len(tokens)

    def past_stars(states: set[int]) -> set[int]:
        # A star may match nothing: every position on a star also stands after it.
        return states | {s + 1 for s in states if s < end and tokens[s] in ("*", "**")}

    states = past_stars({0})
    for char in name:
        following: set[int] = set()
        for s in states:
            token = tokens[s] if s < end else None
            if token == "**" or (token == "*" and char != "/"):
                following.add(s)
            elif token == char or (token == "?" and char != "/"):
                following.add(s + 1)
        states = past_stars(following)
        if not states:
            return False
    return end in states


def matches_trigger(workflow: Workflow, event: str, branch: str | None = None,
                    tag: str | None = None) -> bool:
    """Whether an event starts this workflow. No `on` at all means every event does.

    `branch` is the pushed branch, or a pull request's target branch; `tag` the pushed tag.
    """
    if not workflow.triggers:
        return True
    for trigger in workflow.triggers:
        if trigger.event != event:
            continue
        if trigger.branches and not (branch and any(glob_matches(p, branch) for p in trigger.branches)):
            continue
        if trigger.tags and not (tag and any(glob_matches(p, tag) for p in trigger.tags)):
            continue
        return True
    return False
