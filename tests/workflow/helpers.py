"""Small helpers for workflow tests: load expecting failure, and find where text sits."""
from __future__ import annotations

import pytest

from common.workflow import Diagnostic, WorkflowError, load_workflow


def diagnostics(text: str, path: str = "wf.kdl") -> list[Diagnostic]:
    """The diagnostics of a workflow that must be rejected."""
    with pytest.raises(WorkflowError) as info:
        load_workflow(text, path)
    return info.value.diagnostics


def only(text: str, fragment: str) -> Diagnostic:
    """The one diagnostic whose message contains `fragment` (and fail if there are others)."""
    found = diagnostics(text)
    assert len(found) == 1, "\n".join(d.format() for d in found)
    assert fragment in found[0].message, found[0].format()
    return found[0]


def position(text: str, needle: str, nth: int = 0, offset: int = 0) -> tuple[int, int]:
    """1-based line and column of the `nth` occurrence of `needle` (plus `offset` characters)."""
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    index += offset
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def at(diag: Diagnostic) -> tuple[int, int]:
    return diag.line, diag.col
