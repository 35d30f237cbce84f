"""Reading a workflow file from disk and showing its problems the way compilers do."""
from __future__ import annotations

import os
from pathlib import Path

from common.errors import SolsticeError
from common.workflow import DEFAULT_PATH, Diagnostic, Workflow, WorkflowError, load_workflow
from common.workflow.source import LineIndex


class UsageError(SolsticeError):
    """The command cannot start (missing file, bad arguments): exit status 2."""


def find_workflow(start: Path) -> Path:
    """`.solstice/workflow.kdl` in `start` or the nearest directory above it that has one (as
    git looks for `.git`), relative to `start` when it is below it."""
    start = start.resolve()
    for directory in (start, *start.parents):
        candidate = directory / DEFAULT_PATH
        if candidate.is_file():
            return Path(os.path.relpath(candidate, start))
    raise UsageError(f"no {DEFAULT_PATH} in {start} or any directory above it",
                     hint="run inside a repository that has one, or pass the workflow's path:"
                          " cidev validate path/to/workflow.kdl")


def workflow_path(given: Path | None) -> Path:
    """The workflow file a command works on: `given`, `given/.solstice/workflow.kdl` when
    `given` is a directory, else the one found from the current directory upwards."""
    if given is None:
        return find_workflow(Path.cwd())
    if given.is_dir():
        inside = given / DEFAULT_PATH
        if not inside.is_file():
            raise UsageError(f"{given} is a directory without {DEFAULT_PATH}",
                             hint="pass the workflow file itself, or the directory of a "
                                  f"repository that has {DEFAULT_PATH}")
        return inside
    return given


def read_text(path: Path) -> str:
    """The file's text; a missing or unreadable file is a `UsageError`, bad UTF-8 a `WorkflowError`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file",
                         hint="pass the workflow's path, e.g. .solstice/workflow.kdl") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror})",
                         hint="check the file's permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = data[: exc.start].decode("utf-8")
        line, col = LineIndex(good).position(len(good))
        raise WorkflowError([Diagnostic(str(path), line, col,
                                        f"the file is not UTF-8 (byte 0x{data[exc.start]:02x})",
                                        "save the file as UTF-8")]) from None


def load(path: Path) -> Workflow:
    """Read and validate a workflow file (raises `UsageError` or `WorkflowError`)."""
    return load_workflow(read_text(path), str(path))


def render(error: WorkflowError) -> str:
    """Each problem as `path:line:col: error: ...`, the source line with a caret, and the hint."""
    lines = error.source.splitlines() if error.source is not None else []
    out = []
    for diag in error.diagnostics:
        block = [diag.format().split("\n", 1)[0]]
        if 1 <= diag.line <= len(lines):
            source = lines[diag.line - 1].replace("\t", " ")
            gutter = f"{diag.line:>5} | "
            block.append(gutter + source)
            block.append(" " * (len(gutter) - 2) + "| " + " " * (diag.col - 1) + "^")
        if diag.hint:
            block.append(f"  hint: {diag.hint}")
        out.append("\n".join(block))
    return "\n".join(out)
