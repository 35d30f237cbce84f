"""How much work one workflow file may cause: size, jobs, steps, matrices, conditions.

Every limit is checked before the work it bounds (the file's size before parsing, a matrix's
size from its axis lengths before expanding it), so a hostile file costs at most a bounded,
linear amount of validation. Exceeding one is an ordinary validation error whose hint names
the config key (`workflow_limits.<key>` of the orchestrator and of both integrations).

`Limits` is a plain dataclass; the services' pydantic configs validate it as the table
`[<service>.workflow_limits]` (the `Field` constraints below apply there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import ConfigDict, Field

CONFIG_TABLE = "workflow_limits"
# Each nesting level of a condition costs a few Python frames in the recursive parser and
# evaluator; this keeps every configurable depth far from the interpreter's recursion limit.
EXPRESSION_DEPTH_CEILING = 100


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on a workflow file; the defaults admit any workflow a person writes by hand."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    max_bytes: Annotated[int, Field(gt=0)] = 1 << 20
    """Size of the file, UTF-8 encoded."""
    max_jobs: Annotated[int, Field(gt=0)] = 2000
    """Jobs of one run, after matrix expansion (bench/kdl_validate.py plans 1,004)."""
    max_dependencies: Annotated[int, Field(gt=0)] = 50_000
    """`needs` edges between the jobs of one run, after matrix expansion (needing a matrixed
    job means needing each of its combinations)."""
    max_steps: Annotated[int, Field(gt=0)] = 500
    """Steps of one job."""
    max_run_steps: Annotated[int, Field(gt=0)] = 50_000
    """Steps of all jobs of one run, after matrix expansion (each is a row to store)."""
    max_matrix_jobs: Annotated[int, Field(gt=0)] = 256
    """Jobs one matrix makes, after `exclude` and `include`."""
    max_matrix_combinations: Annotated[int, Field(gt=0)] = 4096
    """Combinations all matrices of the file make before `exclude`, counted from the axis
    lengths; bounds the work of applying the exclude rules."""
    max_matrix_axes: Annotated[int, Field(gt=0)] = 32
    """Axes of one matrix."""
    max_matrix_rules: Annotated[int, Field(gt=0)] = 256
    """`exclude` plus `include` rules of one matrix."""
    max_patterns: Annotated[int, Field(gt=0)] = 256
    """Branch and tag patterns of all `on` triggers together (each event is matched against
    them on the integrations' and orchestrators' event loops)."""
    max_expression_length: Annotated[int, Field(gt=0)] = 4096
    """Characters of one `if` condition."""
    max_expression_depth: Annotated[int, Field(gt=0, le=EXPRESSION_DEPTH_CEILING)] = 32
    """Nesting of `(` and `!` in one `if` condition."""

    def hint(self, key: str, advice: str) -> str:
        """`advice`, then where the limit is set (and what it is now)."""
        return (f"{advice}; the limit is {getattr(self, key)} ({CONFIG_TABLE}.{key} in the"
                " orchestrator's and the integrations' config)")


DEFAULT_LIMITS = Limits()
