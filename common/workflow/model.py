"""The typed workflow model: what a valid `.solstice/workflow.kdl` means.

Instances come from `load_workflow`, which has already checked every rule; the classes here
hold values only. Durations are seconds, sizes are megabytes, `None` means "not given".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Trigger:
    """`on "push" branches="main" "release/*"`: an event, optionally only for some branches.

    Patterns after the event filter branches (push, pull_request: the target branch) or tag
    names (`on "tag" "v*"`).
    """

    event: str  # one of common.messages.EventKind's values
    branches: tuple[str, ...] = ()  # glob patterns; empty = every branch
    tags: tuple[str, ...] = ()  # glob patterns for tag events; empty = every tag


@dataclass(frozen=True, slots=True)
class Resources:
    """What a job's VM needs; None leaves the choice to the orchestrator."""

    vcpus: int | None = None
    ram_mb: int | None = None
    disk_gb: int | None = None


@dataclass(frozen=True, slots=True)
class Matrix:
    """Axes in declaration order, combinations removed (`exclude`) and added (`include`)."""

    axes: tuple[tuple[str, tuple[str, ...]], ...]
    exclude: tuple[dict[str, str], ...] = ()  # partial: drops every combination it matches
    include: tuple[dict[str, str], ...] = ()  # complete: one value for every axis

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)


class Step(NamedTuple):
    """One command; `name`, `run` may hold `${{ matrix.X }}` until the job is expanded.

    A named tuple rather than a frozen dataclass: equally immutable, and a large workflow
    builds thousands of steps on every validation, which a tuple does several times faster.
    """

    name: str
    run: str
    timeout: int | None = None  # seconds; None = bounded by the job's timeout
    if_expr: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """A job as declared; `expand` turns a matrixed job into one `PlannedJob` per combination."""

    id: str
    runs_on: str
    steps: tuple[Step, ...]
    timeout: int | None = None  # seconds; None = the orchestrator's default
    needs: tuple[str, ...] = ()
    if_expr: str | None = None
    resources: Resources = field(default_factory=Resources)
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # names only; values come from the orchestrator's store
    matrix: Matrix | None = None
    setup: str | None = None  # path of a script run before the steps
    artifacts: tuple[str, ...] = ()  # glob patterns collected into the run record
    # Patterns the run's gate requires at least one file for (`artifacts ... required=#true`).
    required_artifacts: tuple[str, ...] = ()
    # Keep the machine this long after the job failed, to open a shell in it (`ciadm shell`).
    hold_on_failure: int | None = None


@dataclass(frozen=True, slots=True)
class Workflow:
    """A whole workflow file; `jobs` keeps declaration order."""

    name: str | None
    jobs: tuple[Job, ...]
    fail_fast: bool = False
    triggers: tuple[Trigger, ...] = ()  # empty = every event
    env: dict[str, str] = field(default_factory=dict)
    hold_on_failure: int | None = None  # every job's, unless the job says otherwise

    def job(self, job_id: str) -> Job:
        """The job named `job_id` (KeyError if there is none)."""
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(job_id)
