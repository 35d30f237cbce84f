"""Reading a workflow file from disk and showing its problems the way compilers do."""
from __future__ import annotations

from pathlib import Path

from common.errors import SolsticeError
from common.workflow import Diagnostic, Workflow, WorkflowError, load_workflow
from common.workflow.source import LineIndex


class UsageError(SolsticeError):
    """The command cannot start (missing file, bad arguments): exit status 2."""


def read_text(path: Path) -> str:
    """The file's text; a missing or unreadable file is a `UsageError`, bad UTF-8 a `WorkflowError`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file",
                         hint="run from the repository root, or pass the workflow's path:"
                              " cidev validate path/to/workflow.kdl") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory",
                         hint=f"pass the file itself, e.g. {path / '.solstice' / 'workflow.kdl'}") from None
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
