"""What a broken workflow file gets: every problem, with where it is and what to do."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from common.errors import SolsticeError


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in a workflow file, located at 1-based `line`:`col`."""

    path: str
    line: int
    col: int
    message: str
    hint: str | None = None
    job: str | None = None
    step: str | None = None

    def format(self) -> str:
        """Compiler style: `path:line:col: error: message`, then the hint on its own line."""
        where = []
        if self.job is not None:
            where.append(f"job {self.job!r}")
        if self.step is not None:
            where.append(f"step {self.step!r}")
        context = f" [{', '.join(where)}]" if where else ""
        text = f"{self.path}:{self.line}:{self.col}: error: {self.message}{context}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WorkflowError(SolsticeError):
    """A workflow file that cannot be used; `diagnostics` lists every problem found, in order.

    `source` is the text the diagnostics point into, for showing the offending lines.
    """

    def __init__(self, diagnostics: list[Diagnostic], source: str | None = None) -> None:
        if not diagnostics:
            raise ValueError("WorkflowError needs at least one diagnostic")
        first = diagnostics[0]
        more = f" (and {len(diagnostics) - 1} more)" if len(diagnostics) > 1 else ""
        super().__init__(f"{first.path}:{first.line}:{first.col}: {first.message}{more}",
                         hint=first.hint)
        self.diagnostics = diagnostics
        self.source = source

    def __reduce__(self) -> tuple[type[WorkflowError], tuple[list[Diagnostic], str | None]]:
        """Pickle it whole: validation runs in a worker process (`offload.py`)."""
        return WorkflowError, (self.diagnostics, self.source)

    def __str__(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)
