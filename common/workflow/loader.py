"""KDL text -> `Workflow`, checking every rule and collecting every problem before failing.

The checks walk ckdl's tree and remember *where* a problem is as a path of child indices (plus
an argument index or a property key). Only when there is something to report does
`SourceMap` scan the text to turn those paths into line:col, so a valid file costs one ckdl
parse and one walk.
"""
from __future__ import annotations

import difflib
import gc
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any

import ckdl

from common.messages import EventKind
from common.workflow.diagnostics import Diagnostic, WorkflowError
from common.workflow.document import KdlSyntaxError, parse_kdl
from common.workflow.expr import ExprError, ExprTooDeep, parse_expr, variables
from common.workflow.limits import DEFAULT_LIMITS, Limits
from common.workflow.model import Job, Matrix, Resources, Step, Trigger, Workflow
from common.workflow.plan import matrix_combinations
from common.workflow.source import SourceMap
from common.workflow.units import parse_duration, parse_size_mb

DEFAULT_PATH = ".solstice/workflow.kdl"
EVENTS = tuple(kind.value for kind in EventKind)
BRANCH_EVENTS = ("push", "pull_request")
WORKFLOW_CHILDREN = ("on", "env", "job")
JOB_CHILDREN = ("needs", "if", "resources", "env", "secrets", "matrix", "setup", "step", "artifacts")
SINGLE_JOB_CHILDREN = ("if", "resources", "matrix", "setup")
STEP_PROPERTIES = ("name", "run", "timeout", "if")
_STEP_KEYS = frozenset(STEP_PROPERTIES)
JOB_PROPERTIES = ("id", "runs_on", "timeout", "hold_on_failure")
_JOB_KEYS = frozenset(JOB_PROPERTIES)
JOB_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
AXIS_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
MATRIX_REF_RE = re.compile(r"\s*matrix\.([A-Za-z_][A-Za-z0-9_-]*)\s*")
MINIMAL = 'workflow { job id="build" runs_on="illumos" { step name="Build" run="make" } }'
# A file with more problems than this reports these and how many more there are: the report
# goes into a commit status and the database, and nobody reads the 40,000th problem.
MAX_DIAGNOSTICS = 100
# Names a hint lists, and candidates a did-you-mean compares, at most: both run once per
# problem, so with every id of a 2,000-job workflow they would make the report quadratic.
_LISTED = 20
_CANDIDATES = 200

# Other CI dialects' top-level names, and what they are in a Solstice workflow.
_TOP_LEVEL_HINTS = {
    "name": 'name the workflow with a property: workflow name="CI" { ... }',
    "jobs": 'there is no `jobs` block: write each job as job id="..." runs_on="..." { step ... }'
            " directly inside workflow { ... }",
}

Path = tuple[int, ...]
_MISSING = object()
_NO_RESOURCES = Resources()


@dataclass(slots=True)
class _Pending:
    """A problem found in the tree, not yet given a line and column."""

    path: Path
    arg: int | None
    prop: str | None
    inner: int | None
    at_value: bool
    message: str
    hint: str | None
    job: str | None
    step: str | None


def _suggest(word: str, known: Iterable[str]) -> str:
    """`did you mean 'x'? ` for the closest of (the first `_CANDIDATES` of) `known`, or ''."""
    close = difflib.get_close_matches(word, list(islice(known, _CANDIDATES)), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _listing(names: Sequence[str]) -> str:
    """`a, b, c`, or the first `_LISTED` of them and how many more."""
    if len(names) <= _LISTED:
        return ", ".join(names)
    return f"{', '.join(names[:_LISTED])}, ... ({len(names) - _LISTED} more)"


class _Vocabulary:
    """Known names (job ids) for did-you-mean suggestions in time independent of their number.

    A close match (difflib ratio >= 0.6) has a length within a factor of 7/3 of the word's;
    the candidates compared are the known names nearest in length, at most `_CANDIDATES`.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.by_length: dict[int, list[str]] = {}
        for name in names:
            self.by_length.setdefault(len(name), []).append(name)
        self.cache: dict[str, str] = {}

    def suggest(self, word: str) -> str:
        """A did-you-mean for the first `MAX_DIAGNOSTICS` distinct words (no more are shown)."""
        if word not in self.cache:
            found = len(self.cache) < MAX_DIAGNOSTICS
            self.cache[word] = _suggest(word, self._candidates(len(word))) if found else ""
        return self.cache[word]

    def _candidates(self, length: int) -> Iterator[str]:
        # Beyond 7/3 (or under 3/7) of the length, no ratio reaches 0.6.
        yield from self.by_length.get(length, ())
        for delta in range(1, length * 4 // 3 + 1):
            yield from self.by_length.get(length - delta, ())
            yield from self.by_length.get(length + delta, ())


def _plain(value: Any) -> Any:
    """A KDL value without its type annotation (`(u8)5` -> 5); annotations carry no meaning here."""
    return value.value if isinstance(value, ckdl.Value) else value


_MATRIX_VALUE_HINT = ('write a non-empty string ("1.80") without , = [ or ]:'
                      " values appear in job keys like build[os=omnios]")


def _matrix_text(value: Any) -> str | None:
    """A matrix value as text, or None if it cannot be one (null, float, empty, key characters)."""
    if value is None or isinstance(value, float):
        return None
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if not text or any(c in text for c in ",=[]"):
        return None
    return text


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return repr(value)


class _Checker:
    """Walks the document, building the model and collecting `_Pending` problems."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.problems: list[_Pending] = []
        self.job: str | None = None
        self.step: str | None = None
        # (job id, needed id, where the `needs` node is, argument index), checked at the end.
        self.need_refs: list[tuple[str, str, Path, int]] = []
        # Jobs each job id plans (its matrix combinations), and the combinations matrices with
        # exclude rules have enumerated so far (`Limits.max_matrix_combinations`).
        self.planned: dict[str, int] = {}
        self.enumerated = 0
        self.patterns = 0  # branch and tag patterns of the triggers so far
        self.planned_steps = 0  # steps of the run after matrix expansion

    def error(self, path: Path, message: str, hint: str | None = None, *, arg: int | None = None,
              prop: str | None = None, inner: int | None = None, value: bool = False) -> None:
        """Record a problem at a node, its `arg`-th argument, or its property `prop` (the key;
        with `value`, the value; with `inner`, that many characters into a quoted value)."""
        self.problems.append(_Pending(path, arg, prop, inner, value, message, hint, self.job, self.step))

    # -- generic shape checks ------------------------------------------------------------
    def props(self, node: ckdl.Node, path: Path, allowed: tuple[str, ...], what: str) -> None:
        for key in node.properties:
            if key not in allowed:
                known = ", ".join(allowed) if allowed else "none"
                self.error(path, f"unknown property {key!r} on {what}",
                           f"{_suggest(key, allowed)}properties of {what}: {known}", prop=key)

    def no_args(self, node: ckdl.Node, path: Path, what: str, hint: str) -> None:
        if node.args:
            self.error(path, f"{what} takes no arguments (found {_describe(_plain(node.args[0]))})",
                       hint, arg=0)

    def no_children(self, node: ckdl.Node, path: Path, what: str, hint: str | None = None) -> None:
        if node.children:
            self.error(path, f"{what} takes no {{ ... }} block", hint or "remove the block")

    def text(self, node: ckdl.Node, path: Path, key: str, what: str, *, required: bool = False,
             hint: str | None = None) -> str | None:
        """The string property `key`, reporting a missing or non-string value."""
        value = node.properties.get(key, _MISSING)
        if type(value) is str and (value.strip() or not required):
            return value
        if value is _MISSING:
            if required:
                self.error(path, f"{what} has no {key}", hint)
            return None
        value = _plain(value)
        if not isinstance(value, str):
            self.error(path, f"{key} of {what} must be a string, not {_describe(value)}",
                       f'quote it: {key}="{value}"', prop=key, value=True)
            return None
        if not value.strip() and required:
            self.error(path, f"{key} of {what} is empty", hint, prop=key, value=True)
            return None
        return value

    def string_args(self, node: ckdl.Node, path: Path, what: str) -> list[str]:
        values = []
        for index, raw in enumerate(node.args):
            value = _plain(raw)
            if isinstance(value, str) and value:
                values.append(value)
            else:
                self.error(path, f"arguments of {what} must be non-empty strings, not {_describe(value)}",
                           'quote each value: "..."', arg=index)
        return values

    def duration(self, node: ckdl.Node, path: Path, what: str,
                 key: str = "timeout") -> int | None:
        value = node.properties.get(key, _MISSING)
        if value is _MISSING:
            return None
        value = _plain(value)
        seconds = parse_duration(value) if isinstance(value, str) else None
        if seconds is None:
            self.error(path, f"{key} of {what} is not a duration: {_describe(value)}",
                       'write hours, minutes and seconds like "45m", "1h30m" or "90s"',
                       prop=key, value=True)
        return seconds

    def condition(self, text: str, path: Path, axes: tuple[str, ...] | None, *,
                  arg: int | None = None, prop: str | None = None) -> None:
        """Report an `if` that does not parse or names a matrix axis the job lacks."""
        limit = self.limits.max_expression_length
        if len(text) > limit:
            self.error(path, f"the condition is {len(text)} characters long; at most {limit}"
                       " are allowed", self.limits.hint("max_expression_length", "shorten it"),
                       arg=arg, prop=prop, value=prop is not None)
            return
        try:
            tree = parse_expr(text, self.limits.max_expression_depth)
        except ExprError as exc:
            hint = (self.limits.hint("max_expression_depth", exc.hint or "")
                    if isinstance(exc, ExprTooDeep) else exc.hint)
            self.error(path, f"condition does not parse: {exc.message}", hint,
                       arg=arg, prop=prop, inner=exc.offset)
            return
        if "matrix." not in text:
            return
        for var in variables(tree):
            if var.name.startswith("matrix."):
                self.axis_ref(var.name[len("matrix."):], path, axes, arg=arg, prop=prop,
                              inner=var.offset)

    def axis_ref(self, axis: str, path: Path, axes: tuple[str, ...] | None, *,
                 arg: int | None = None, prop: str | None = None, inner: int | None = None) -> None:
        if axes is None:
            self.error(path, f"matrix.{axis} is used but the job has no matrix",
                       f"add matrix {{ {axis} \"a\" \"b\" }} to the job, or remove the reference",
                       arg=arg, prop=prop, inner=inner)
        elif axis not in axes:
            self.error(path, f"unknown matrix axis {axis!r}",
                       f"{_suggest(axis, axes)}the job's axes: {_listing(axes)}",
                       arg=arg, prop=prop, inner=inner)

    def templates(self, value: str, path: Path, prop: str, axes: tuple[str, ...] | None) -> None:
        """Check each `${{ ... }}` in a value; only `${{ matrix.AXIS }}` is substituted.

        One forward scan: each `${{` is closed by the first `}}` after it, and once a `${{`
        has no `}}` after it, neither has any later one (searching from every `${{` to the end
        of the value would be quadratic in a value of many unclosed ones).
        """
        start = value.find("${{")
        while start >= 0:
            end = value.find("}}", start + 3)
            if end < 0:
                self.error(path, "`${{` is never closed", "write ${{ matrix.AXIS }}", prop=prop,
                           inner=value.rfind("${{"))
                return
            ref = MATRIX_REF_RE.fullmatch(value, start + 3, end)
            if ref is None:
                shown = value[start:end + 2]
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                self.error(path, f"unsupported substitution {shown!r}",
                           "only ${{ matrix.AXIS }} is substituted; secrets and env reach steps"
                           " as environment variables", prop=prop, inner=start)
            else:
                self.axis_ref(ref.group(1), path, axes, prop=prop, inner=start)
            start = value.find("${{", end + 2)

    # -- the schema ----------------------------------------------------------------------
    def document(self, doc: ckdl.Document) -> Workflow | None:
        workflow_at: list[int] = []
        for index, node in enumerate(doc.nodes):
            if node.name == "workflow":
                workflow_at.append(index)
            elif node.name in WORKFLOW_CHILDREN or node.name in JOB_CHILDREN:
                self.error((index,), f"`{node.name}` must be inside the `workflow` node",
                           "move it into workflow { ... }" if node.name in WORKFLOW_CHILDREN
                           else "move it into a job: workflow { job id=... runs_on=... { ... } }")
            else:
                self.error((index,), f"unknown top-level node `{node.name}`",
                           _TOP_LEVEL_HINTS.get(node.name, f"{_suggest(node.name, ['workflow'])}"
                                                "everything goes inside one `workflow { ... }` node"))
        if not workflow_at:
            what = "there is no `workflow` node" if doc.nodes else "the file is empty"
            self.error((0,), what, f"a Solstice workflow looks like {MINIMAL}")
            return None
        for extra in workflow_at[1:]:
            self.error((extra,), "a file holds one `workflow` node; this is a second one",
                       "move its jobs into the first workflow node")
        index = workflow_at[0]
        return self.workflow(doc.nodes[index], (index,))

    def workflow(self, node: ckdl.Node, path: Path) -> Workflow:
        self.props(node, path, ("name", "fail_fast", "hold_on_failure"), "workflow")
        if node.args:
            first = _plain(node.args[0])
            self.no_args(node, path, "workflow",
                         f'name the workflow with a property: workflow name="{first}" {{ ... }}')
        name = self.text(node, path, "name", "workflow")
        hold_on_failure = self.duration(node, path, "workflow", "hold_on_failure")
        fail_fast = _plain(node.properties.get("fail_fast", False))
        if not isinstance(fail_fast, bool):
            self.error(path, f"fail_fast must be a boolean, not {_describe(fail_fast)}",
                       "write fail_fast=#true (KDL 2) or fail_fast=true (KDL 1)", prop="fail_fast",
                       value=True)
            fail_fast = False
        triggers: list[Trigger] = []
        env: dict[str, str] = {}
        jobs: list[Job] = []
        declared: list[tuple[str, Path]] = []
        for index, child in enumerate(node.children):
            where = path + (index,)
            if child.name == "on":
                trigger = self.trigger(child, where)
                if trigger is not None:
                    triggers.append(trigger)
            elif child.name == "env":
                env.update(self.env(child, where, "workflow env"))
            elif child.name == "job":
                job = self.job_node(child, where)
                if job is not None:
                    jobs.append(job)
                if self.job is not None:
                    declared.append((self.job, where))
            elif child.name in JOB_CHILDREN:
                self.error(where, f"`{child.name}` belongs inside a job, not directly in the workflow",
                           'put it in job id="..." runs_on="..." { ... }')
            else:
                self.error(where, f"unknown node `{child.name}` in workflow",
                           f"{_suggest(child.name, WORKFLOW_CHILDREN)}the workflow holds"
                           f" {', '.join(WORKFLOW_CHILDREN)}")
        if not any(child.name == "job" for child in node.children):
            self.error(path, "the workflow has no jobs",
                       'add a job: job id="build" runs_on="illumos" { step name="Build" run="make" }')
        planned = sum(self.planned.values())
        if planned > self.limits.max_jobs:
            self.error(path, f"the workflow makes {planned} jobs after matrix expansion;"
                       f" at most {self.limits.max_jobs} are allowed",
                       self.limits.hint("max_jobs", "drop jobs or matrix values, or split the"
                                        " workflow"))
        elif self.planned_steps > self.limits.max_run_steps:
            self.error(path, f"the workflow makes {self.planned_steps} steps after matrix"
                       f" expansion; at most {self.limits.max_run_steps} are allowed",
                       self.limits.hint("max_run_steps", "join steps, or move them into scripts"))
        self.dependencies(declared, path)
        return Workflow(name=name, jobs=tuple(jobs), fail_fast=fail_fast,
                        triggers=tuple(triggers), env=env, hold_on_failure=hold_on_failure)

    def trigger(self, node: ckdl.Node, path: Path) -> Trigger | None:
        self.props(node, path, ("branches", "tags"), "on")
        self.no_children(node, path, "on")
        args = self.string_args(node, path, "on")
        if not node.args:
            self.error(path, "`on` needs the event it reacts to",
                       f"write e.g. on \"push\" branches=\"main\"; events: {', '.join(EVENTS)}")
            return None
        event = _plain(node.args[0])
        if not isinstance(event, str) or not event:
            return None  # string_args reported it
        if event not in EVENTS:
            self.error(path, f"unknown event {event!r}",
                       f"{_suggest(event, EVENTS)}events: {', '.join(EVENTS)}", arg=0)
            return None
        patterns = args[1:]
        branches: list[str] = []
        tags: list[str] = []
        branch_prop = self.text(node, path, "branches", "on")
        tag_prop = self.text(node, path, "tags", "on")
        if event in BRANCH_EVENTS:
            branches = ([branch_prop] if branch_prop else []) + patterns
            if tag_prop is not None:
                self.error(path, f"tags= does not apply to {event} events",
                           'filter tags with on "tag" "v*"', prop="tags")
        elif event == "tag":
            tags = ([tag_prop] if tag_prop else []) + patterns
            if branch_prop is not None:
                self.error(path, "branches= does not apply to tag events",
                           'filter tag names instead: on "tag" "v*"', prop="branches")
        else:
            for key in ("branches", "tags"):
                if key in node.properties:
                    self.error(path, f"{key}= does not apply to {event} events",
                               "remove it: a manual run is started on purpose", prop=key)
            if patterns:
                self.error(path, f"{event} events take no patterns",
                           "remove the extra arguments", arg=1)
        self.patterns += len(branches) + len(tags)
        if self.patterns > self.limits.max_patterns >= self.patterns - len(branches) - len(tags):
            self.error(path, f"the triggers have more than {self.limits.max_patterns} branch and"
                       " tag patterns", self.limits.hint("max_patterns", "use wildcards (release/*)"))
        return Trigger(event=event, branches=tuple(branches), tags=tuple(tags))

    def env(self, node: ckdl.Node, path: Path, what: str) -> dict[str, str]:
        self.no_children(node, path, what)
        self.no_args(node, path, what, 'write variables as properties: env NAME="value"')
        values: dict[str, str] = {}
        for key, raw in node.properties.items():
            value = _plain(raw)
            if not NAME_RE.fullmatch(key):
                self.error(path, f"{key!r} is not a valid environment variable name",
                           "use letters, digits and _ (not starting with a digit)", prop=key)
            elif value is None or isinstance(value, float):
                self.error(path, f"value of {key} must be a string, not {_describe(value)}",
                           f'quote it: {key}="..."', prop=key, value=True)
            elif isinstance(value, bool):
                values[key] = "true" if value else "false"
            else:
                values[key] = str(value)
        return values

    def job_node(self, node: ckdl.Node, path: Path) -> Job | None:
        self.job = None
        self.step = None
        job_id = self.text(node, path, "id", "job", required=True,
                           hint='give the job an id: job id="build" runs_on="..." { ... }')
        if job_id is not None and not JOB_ID_RE.fullmatch(job_id):
            self.error(path, f"job id {job_id!r} has characters ids cannot use",
                       "use letters, digits, _ . and - (ids appear in needs and in job keys)",
                       prop="id")
            job_id = None
        self.job = job_id
        if not node.properties.keys() <= _JOB_KEYS:
            self.props(node, path, JOB_PROPERTIES, "job")
        if node.args:
            first = _plain(node.args[0])
            self.no_args(node, path, "job",
                         f'write the id as a property: job id="{first}"' if "id" not in node.properties
                         else "remove the arguments; a job's settings are properties and child nodes")
        runs_on = self.text(node, path, "runs_on", "job", required=True,
                            hint='say which machine label runs it: runs_on="illumos-stable"')
        timeout = self.duration(node, path, "job")
        hold_on_failure = self.duration(node, path, "job", "hold_on_failure")
        children = node.children

        # The matrix first: steps, `if` and runs_on may refer to its axes.
        matrix = None
        axes = None
        size = 1
        for index, child in enumerate(children):
            if child.name == "matrix":
                matrix, size = self.matrix(child, path + (index,))
                axes = matrix.axis_names if matrix is not None else self.declared_axes(child)
                break
        if job_id is not None:
            self.planned[job_id] = max(self.planned.get(job_id, 0), size)
        step_count = sum(1 for child in children if child.name == "step")
        self.planned_steps += size * step_count
        too_many_steps = step_count > self.limits.max_steps
        if too_many_steps:
            self.error(path, f"the job has {step_count} steps; at most {self.limits.max_steps}"
                       " are allowed",
                       self.limits.hint("max_steps", "join steps, or move them into a script"))
        if runs_on is not None:
            self.templates(runs_on, path, "runs_on", axes)

        if_expr = None
        resources = _NO_RESOURCES
        setup = None
        env: dict[str, str] = {}
        secrets: list[str] = []
        artifacts: list[str] = []
        required_artifacts: list[str] = []
        needs: list[str] = []
        steps: list[Step | None] = []
        seen: set[str] = set()
        for index, child in enumerate(children):
            name = child.name
            if name == "step":
                if too_many_steps:
                    continue
                step = _plain_step(child)
                if step is None:
                    step = self.step_node(child, path + (index,), len(steps) + 1, axes)
                    self.step = None
                steps.append(step)
                continue
            where = path + (index,)
            if name in SINGLE_JOB_CHILDREN:
                if name in seen:
                    self.error(where, f"a job has at most one `{name}`", "merge them into one")
                    continue
                seen.add(name)
            if name == "needs":
                needs.extend(self.needs_node(child, where, job_id))
            elif name == "if":
                if_expr = self.if_node(child, where, axes)
            elif name == "resources":
                resources = self.resources(child, where)
            elif name == "env":
                env.update(self.env(child, where, "job env"))
            elif name == "secrets":
                secrets.extend(self.names_node(child, where, "secrets", 'secrets "DEPLOY_KEY"'))
            elif name == "setup":
                setup = self.setup(child, where)
            elif name == "artifacts":
                patterns, required = self.artifacts_node(child, where)
                artifacts.extend(patterns)
                if required:
                    required_artifacts.extend(patterns)
            elif name != "matrix":
                close = _suggest(name, JOB_CHILDREN)
                hint = (f"{close}a job holds {', '.join(JOB_CHILDREN)}" if close or name != "job"
                        else "jobs cannot nest; declare it next to this one in the workflow")
                self.error(where, f"unknown node `{name}` in job", hint)
        if not step_count:
            self.error(path, "the job has no steps",
                       'add at least one: step name="Build" run="make"')
        if job_id is None or runs_on is None or too_many_steps or None in steps:
            return None
        return Job(id=job_id, runs_on=runs_on, steps=tuple(steps),  # type: ignore[arg-type]
                   timeout=timeout, needs=tuple(dict.fromkeys(needs)), if_expr=if_expr,
                   resources=resources, env=env, secrets=tuple(dict.fromkeys(secrets)),
                   matrix=matrix, setup=setup, artifacts=tuple(artifacts),
                   required_artifacts=tuple(dict.fromkeys(required_artifacts)),
                   hold_on_failure=hold_on_failure)

    def needs_node(self, node: ckdl.Node, path: Path, job_id: str | None) -> list[str]:
        """The ids a job needs; each is checked against the other jobs once all are known."""
        needs = self.list_node(node, path, "needs", 'needs "lint" "test"')
        if job_id is not None:
            for arg, raw in enumerate(node.args):
                need = _plain(raw)
                if isinstance(need, str) and need:
                    self.need_refs.append((job_id, need, path, arg))
        return needs

    def list_node(self, node: ckdl.Node, path: Path, what: str, example: str) -> list[str]:
        self.props(node, path, (), what)
        self.no_children(node, path, what)
        if not node.args:
            self.error(path, f"`{what}` lists nothing", f"write e.g. {example}")
        return self.string_args(node, path, what)

    def artifacts_node(self, node: ckdl.Node, path: Path) -> tuple[list[str], bool]:
        """`artifacts "pattern"... [required=#true]`: the patterns, and whether the run's gate
        demands at least one file for each of them."""
        self.props(node, path, ("required",), "artifacts")
        self.no_children(node, path, "artifacts")
        if not node.args:
            self.error(path, "`artifacts` lists nothing", 'write e.g. artifacts "target/release/app"')
        required = _plain(node.properties.get("required", False))
        if not isinstance(required, bool):
            self.error(path, f"required must be a boolean, not {_describe(required)}",
                       "write required=#true (KDL 2) or required=true (KDL 1)", prop="required",
                       value=True)
            required = False
        return self.string_args(node, path, "artifacts"), required

    def names_node(self, node: ckdl.Node, path: Path, what: str, example: str) -> list[str]:
        names = self.list_node(node, path, what, example)
        for index, name in enumerate(names):
            if not NAME_RE.fullmatch(name):
                self.error(path, f"{name!r} is not a valid {what} name",
                           "use letters, digits and _ (they become environment variables)", arg=index)
        return names

    def if_node(self, node: ckdl.Node, path: Path, axes: tuple[str, ...] | None) -> str | None:
        self.props(node, path, (), "if")
        self.no_children(node, path, "if")
        if len(node.args) != 1 or not isinstance(_plain(node.args[0]), str):
            self.error(path, "`if` takes exactly one string: the condition",
                       "write e.g. if \"branch == 'main' && event == 'push'\"")
            return None
        text = _plain(node.args[0])
        self.condition(text, path, axes, arg=0)
        return text

    def resources(self, node: ckdl.Node, path: Path) -> Resources:
        self.props(node, path, ("vcpus", "ram", "disk"), "resources")
        self.no_args(node, path, "resources", 'write resources vcpus=4 ram="8G" disk="40G"')
        self.no_children(node, path, "resources")
        vcpus = _plain(node.properties.get("vcpus"))
        if vcpus is not None and (isinstance(vcpus, bool) or not isinstance(vcpus, int) or vcpus < 1):
            self.error(path, f"vcpus must be a whole number of at least 1, not {_describe(vcpus)}",
                       "write e.g. vcpus=4", prop="vcpus", value=True)
            vcpus = None
        ram = self.size(node, path, "ram")
        disk = self.size(node, path, "disk")
        if disk is not None and disk % 1024:
            self.error(path, "disk is sized in whole gigabytes", 'write e.g. disk="40G"', prop="disk",
                       value=True)
            disk = None
        return Resources(vcpus=vcpus, ram_mb=ram, disk_gb=disk // 1024 if disk else None)

    def size(self, node: ckdl.Node, path: Path, key: str) -> int | None:
        if key not in node.properties:
            return None
        value = _plain(node.properties[key])
        megabytes = parse_size_mb(value) if isinstance(value, str) else None
        if megabytes is None:
            self.error(path, f"{key} is not a size: {_describe(value)}",
                       f'write a number with a unit: {key}="512M", {key}="8G"', prop=key, value=True)
        return megabytes

    def setup(self, node: ckdl.Node, path: Path) -> str | None:
        self.props(node, path, ("path",), "setup")
        self.no_children(node, path, "setup")
        if node.args:
            self.no_args(node, path, "setup", f'write setup path="{_plain(node.args[0])}"')
        return self.text(node, path, "path", "setup", required=True,
                         hint='name the script: setup path=".solstice/setup.sh"')

    def declared_axes(self, node: ckdl.Node) -> tuple[str, ...]:
        """Axis names of a matrix that has problems, so references to them are still checked."""
        return tuple(c.name for c in node.children if c.name not in ("include", "exclude"))

    def matrix(self, node: ckdl.Node, path: Path) -> tuple[Matrix | None, int]:
        """The matrix and how many jobs it makes (1 when it has problems)."""
        before = len(self.problems)
        self.props(node, path, (), "matrix")
        self.no_args(node, path, "matrix", "declare axes inside: matrix { os \"omnios\" \"openindiana\" }")
        limits = self.limits
        declared = sum(1 for child in node.children if child.name not in ("include", "exclude"))
        rules = len(node.children) - declared
        if declared > limits.max_matrix_axes or rules > limits.max_matrix_rules:
            what, count, key = (("axes", declared, "max_matrix_axes") if declared > limits.max_matrix_axes
                                else ("exclude and include rules", rules, "max_matrix_rules"))
            self.error(path, f"the matrix has {count} {what}; at most {getattr(limits, key)}"
                       " are allowed", limits.hint(key, "simplify the matrix, or split the job"))
            return None, 1
        axes: dict[str, tuple[str, ...]] = {}
        filters: dict[str, list[tuple[int, ckdl.Node]]] = {"include": [], "exclude": []}
        for index, child in enumerate(node.children):
            where = path + (index,)
            if child.name in filters:
                filters[child.name].append((index, child))
                continue
            if not AXIS_RE.fullmatch(child.name):
                self.error(where, f"matrix axis name {child.name!r} cannot be used in ${{{{ matrix.X }}}}",
                           "use letters, digits, _ and -")
            if child.name in axes:
                self.error(where, f"matrix axis {child.name!r} is declared twice", "merge the values")
            self.props(child, where, (), f"matrix axis {child.name!r}")
            self.no_children(child, where, f"matrix axis {child.name!r}")
            if not child.args:
                self.error(where, f"matrix axis {child.name!r} has no values",
                           f'list them: {child.name} "a" "b"')
            values: dict[str, None] = {}  # ordered, with constant-time membership
            for arg_index, raw in enumerate(child.args):
                text = _matrix_text(_plain(raw))
                if text is None:
                    self.error(where, f"matrix value {_describe(_plain(raw))} cannot be used",
                               _MATRIX_VALUE_HINT, arg=arg_index)
                    continue
                if text in values:
                    self.error(where, f"matrix axis {child.name!r} lists {text!r} twice",
                               "remove the repeated value", arg=arg_index)
                values[text] = None
            axes[child.name] = tuple(values)
        if not node.children:
            self.error(path, "the matrix has no axes", 'add one: matrix { os "omnios" "openindiana" }')
        product = math.prod(len(values) for values in axes.values())
        if filters["exclude"] and product > limits.max_matrix_combinations - self.enumerated:
            # Exclude rules are applied to every combination: count them before making them.
            self.error(path, f"the matrix makes {product} combinations before exclude; the"
                       f" workflow's matrices with exclude rules may make at most"
                       f" {limits.max_matrix_combinations} together",
                       limits.hint("max_matrix_combinations",
                                   "drop values, or list the wanted combinations with include"))
            return None, 1
        excludes = [self.combination(c, path + (i,), axes, "exclude") for i, c in filters["exclude"]]
        includes = [self.combination(c, path + (i,), axes, "include") for i, c in filters["include"]]
        if len(self.problems) > before:
            return None, 1
        matrix = Matrix(axes=tuple(axes.items()),
                        exclude=tuple(e for e in excludes if e is not None),
                        include=tuple(i for i in includes if i is not None))
        count = self.combination_count(matrix, product, path)
        return (matrix, count) if 0 < count <= limits.max_matrix_jobs else (None, 1)

    def combination(self, node: ckdl.Node, path: Path, axes: dict[str, tuple[str, ...]],
                    kind: str) -> dict[str, str] | None:
        before = len(self.problems)
        self.no_children(node, path, kind)
        self.no_args(node, path, kind, f'name axis values as properties: {kind} os="omnios"')
        if not node.properties:
            self.error(path, f"`{kind}` names no axis values", f'write e.g. {kind} os="omnios"')
        values: dict[str, str] = {}
        for key, raw in node.properties.items():
            text = _matrix_text(_plain(raw))
            if text is None:
                self.error(path, f"{kind} value {_describe(_plain(raw))} cannot be used",
                           _MATRIX_VALUE_HINT, prop=key, value=True)
            elif key not in axes:
                self.error(path, f"{kind} names unknown matrix axis {key!r}",
                           f"{_suggest(key, axes)}axes: {_listing(list(axes)) or 'none'}", prop=key)
            elif kind == "exclude" and text not in axes[key]:
                self.error(path, f"exclude {key}={text!r} matches nothing: the axis has no such value",
                           f"{_suggest(text, axes[key])}values of {key}: {_listing(axes[key])}",
                           prop=key)
            values[key] = text or ""  # reported above when None; only its presence counts now
        missing = [axis for axis in axes if axis not in values]
        if kind == "include" and missing:
            self.error(path, f"include must give every axis a value; missing {', '.join(missing)}",
                       f"add {' '.join(f'{a}=...' for a in missing)}")
        if len(self.problems) > before:
            return None
        # Keep the axis order of the declaration, whatever order the properties were written in.
        return {axis: values[axis] for axis in axes if axis in values}

    def combination_count(self, matrix: Matrix, product: int, path: Path) -> int:
        """How many jobs the matrix makes (`product` combinations before exclude), reporting
        too many or none. Only a matrix with exclude rules is enumerated (its `product` was
        checked against `max_matrix_combinations`): without, the count is arithmetic."""
        if matrix.exclude:
            self.enumerated += product
            count = len(matrix_combinations(matrix))
        else:
            value_sets = [frozenset(values) for _, values in matrix.axes]
            outside = {tuple(rule.values()) for rule in matrix.include
                       if any(v not in known for v, known in zip(rule.values(), value_sets, strict=True))}
            count = product + len(outside)
        limit = self.limits.max_matrix_jobs
        if count > limit:
            self.error(path, f"the matrix makes {count} jobs; at most {limit} are allowed",
                       self.limits.hint("max_matrix_jobs",
                                        "drop values, add exclude rules, or split the job"))
        elif count == 0:
            self.error(path, "exclude rules remove every combination of the matrix",
                       "loosen the exclude rules")
        return count

    def step_node(self, node: ckdl.Node, path: Path, position: int,
                  axes: tuple[str, ...] | None) -> Step | None:
        props = node.properties
        raw_name = props.get("name")
        self.step = raw_name if type(raw_name) is str and raw_name else f"#{position}"
        if not props.keys() <= _STEP_KEYS:
            self.props(node, path, STEP_PROPERTIES, "step")
        if node.args:
            first = _plain(node.args[0])
            if "name" not in props and len(node.args) == 1:
                hint = f'write the name as a property: step name="{first}" run="..."'
            else:
                hint = 'quote the whole command: run="cargo test --workspace"'
            self.no_args(node, path, "step", hint)
        if node.children:
            nested = node.children[0]
            hint = ('put the command on the step itself: step name="..." run="..."'
                    if nested.name == "run" else "a step is one line: step name=\"...\" run=\"...\"")
            self.error(path, "a step takes no { ... } block", hint)
        name = self.text(node, path, "name", "step")
        run = self.text(node, path, "run", "step", required=True,
                        hint='add the command to execute: run="make test"')
        timeout = self.duration(node, path, "step")
        if_expr = self.text(node, path, "if", "step")
        if if_expr is not None:
            self.condition(if_expr, path, axes, prop="if")
        if name is not None:
            self.templates(name, path, "name", axes)
        if run is None:
            return None
        self.templates(run, path, "run", axes)
        if name is None:
            first_line = run.strip().splitlines()[0] if run.strip() else run
            name = first_line if len(first_line) <= 60 else first_line[:57] + "..."
        return Step(name=name, run=run, timeout=timeout, if_expr=if_expr)

    def dependencies(self, jobs: list[tuple[str, Path]], workflow_path: Path) -> None:
        """Unknown and duplicate ids, self-needs, cycles and the number of dependencies after
        matrix expansion, once every job id is known."""
        self.step = None
        first_at: dict[str, Path] = {}
        for job_id, path in jobs:
            if job_id in first_at:
                self.job = job_id
                self.error(path, f"job id {job_id!r} is used twice", "give every job its own id",
                           prop="id")
            else:
                first_at[job_id] = path
        known = list(first_at)
        vocabulary = _Vocabulary(known)
        listing = _listing(known)
        edges: dict[str, list[str]] = {}
        need_at: dict[tuple[str, str], tuple[Path, int]] = {}
        expanded = 0
        for job_id, need, where, arg in self.need_refs:
            self.job = job_id
            if (job_id, need) in need_at:
                continue  # a repeated need adds nothing (and was reported the first time)
            need_at[(job_id, need)] = (where, arg)
            if need == job_id:
                self.error(where, f"job {job_id!r} needs itself", "remove it from needs", arg=arg)
            elif need not in first_at:
                self.error(where, f"needs unknown job {need!r}",
                           f"{vocabulary.suggest(need)}jobs: {listing}", arg=arg)
            else:
                edges.setdefault(job_id, []).append(need)
                expanded += self.planned.get(job_id, 1) * self.planned.get(need, 1)
        self.job = None
        if expanded > self.limits.max_dependencies:
            self.error(workflow_path, f"the jobs' needs make {expanded} dependencies after matrix"
                       f" expansion; at most {self.limits.max_dependencies} are allowed",
                       self.limits.hint("max_dependencies", "need fewer jobs, or fewer matrixed"
                                        " jobs (needing one means needing each combination)"))
        for cycle in _cycles(known, edges):
            self.job = cycle[0]
            where, arg = need_at[(cycle[0], cycle[1])]
            shown = cycle if len(cycle) <= _LISTED else cycle[:_LISTED // 2] + ["..."] + cycle[-_LISTED // 2:]
            self.error(where, "dependency cycle: " + " -> ".join(shown),
                       "remove one of these needs; a job cannot wait for itself", arg=arg)
        self.job = None


def _plain_step(node: ckdl.Node) -> Step | None:
    """The step, if it is in the common plain form: string name and run, maybe a timeout.

    A workflow may have thousands of steps; this decides most of them without the per-property
    checks of `_Checker.step_node`, which handles (and reports on) everything else.
    """
    props = node.properties
    name = props.get("name")
    run = props.get("run")
    timeout = props.get("timeout", _MISSING)
    if (type(name) is str and name and type(run) is str and run.strip() and "if" not in props
            and props.keys() <= _STEP_KEYS and not node.args and not node.children
            and "${{" not in run and "${{" not in name):
        if timeout is _MISSING:
            return Step(name, run)
        seconds = parse_duration(timeout) if type(timeout) is str else None
        if seconds is not None:
            return Step(name, run, seconds)
    return None


def _cycles(nodes: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """Each cycle closed by a back edge of an iterative depth-first search, spelled out.

    At most `MAX_DIAGNOSTICS` of them: each can be as long as the workflow, so spelling out
    every one of a workflow's back edges would be quadratic.
    """
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycles: list[list[str]] = []
    for root in nodes:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        depth: dict[str, int] = {root: 0}  # where each node on the path is on it
        on_path: list[str] = [root]
        state[root] = 1
        while stack:
            node, next_edge = stack[-1]
            targets = edges.get(node, [])
            if next_edge < len(targets):
                stack[-1] = (node, next_edge + 1)
                target = targets[next_edge]
                if state.get(target) == 1:
                    if len(cycles) < MAX_DIAGNOSTICS:
                        cycles.append(on_path[depth[target]:] + [target])
                elif target not in state:
                    state[target] = 1
                    stack.append((target, 0))
                    depth[target] = len(on_path)
                    on_path.append(target)
            else:
                state[node] = 2
                stack.pop()
                on_path.pop()
    return cycles


def _locate(problems: list[_Pending], text: str, path: str) -> list[Diagnostic]:
    """The problems with line:col, in order; past `MAX_DIAGNOSTICS`, one more says how many
    were left out.

    Only the problems shown are located, so only the nodes they are in are scanned in detail:
    ordering by child-index path is document order (a node's own entries come before its
    children), so they are those of the first nodes in path order.
    """
    ordered = sorted(problems, key=lambda p: p.path)
    if len(ordered) > MAX_DIAGNOSTICS:
        # Up to the first one left out (to say where the rest start), with its node's others.
        cut = MAX_DIAGNOSTICS + 1
        while cut < len(ordered) and ordered[cut].path == ordered[cut - 1].path:
            cut += 1
        ordered = ordered[:cut]
    source = SourceMap(text, (p.path for p in ordered))
    located = []
    for p in ordered:
        offset = source.offset(p.path, arg=p.arg, prop=p.prop, inner=p.inner, value=p.at_value)
        line, col = source.position(offset)
        located.append(Diagnostic(path=path, line=line, col=col, message=p.message, hint=p.hint,
                                  job=p.job, step=p.step))
    located.sort(key=lambda d: (d.line, d.col))
    if len(problems) > MAX_DIAGNOSTICS:
        rest = located[MAX_DIAGNOSTICS]
        located[MAX_DIAGNOSTICS:] = [Diagnostic(
            path=path, line=rest.line, col=rest.col,
            message=f"{len(problems) - MAX_DIAGNOSTICS} more problems from here on are not shown",
            hint="fix the problems above and validate again (cidev validate)")]
    return located


def _encoded_size(text: str, limit: int) -> int:
    """The UTF-8 size of `text`, or just its length when that alone exceeds `limit`."""
    if len(text) > limit:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector out of one parse and validation.

    Both only allocate (tens of thousands of objects for a large workflow, all alive until
    the end), so every collection the allocations trigger scans them in vain: a quarter of
    the time for a 1,000-job file (bench/kdl_validate.py).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_workflow(text: str, path: str = DEFAULT_PATH, limits: Limits = DEFAULT_LIMITS) -> Workflow:
    """Parse and validate a workflow file's text; `path` names it in diagnostics.

    Raises `WorkflowError` listing every problem (KDL syntax, or all schema problems at once,
    at most `MAX_DIAGNOSTICS`), including any of `limits` exceeded. The work is bounded by
    `limits` and linear in the size of the text; in an event loop use `load_workflow_async`.
    """
    size = _encoded_size(text, limits.max_bytes)
    if size > limits.max_bytes:
        raise WorkflowError([Diagnostic(
            path, 1, 1, f"the file is {size} bytes; at most {limits.max_bytes} are accepted",
            limits.hint("max_bytes", "shorten the workflow, or move long scripts into files of"
                        " the repository that steps run"))])
    with _collector_paused():
        try:
            doc = parse_kdl(text)
        except KdlSyntaxError as exc:
            p = exc.problem
            raise WorkflowError([Diagnostic(path, p.line, p.col, p.message, p.hint, p.job,
                                            p.step)], text) from None
        checker = _Checker(limits)
        workflow = checker.document(doc)
    if checker.problems or workflow is None:
        raise WorkflowError(_locate(checker.problems, text, path), text)
    return workflow
