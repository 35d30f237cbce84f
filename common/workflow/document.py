"""Text to KDL document: KDL 2.0 first, then 1.0, with a located error when neither parses."""
from __future__ import annotations

import ckdl

from common.errors import SolsticeError
from common.workflow.source import SyntaxProblem, find_syntax_error


class KdlSyntaxError(SolsticeError):
    """The text is not KDL; `problem` says where and why."""

    def __init__(self, problem: SyntaxProblem) -> None:
        super().__init__(f"{problem.line}:{problem.col}: {problem.message}", hint=problem.hint)
        self.problem = problem


def parse_kdl(text: str, version: int | None = None) -> ckdl.Document:
    """Parse `text` as KDL `version` (2 or 1), or as whichever of the two it is written in.

    A document valid in both versions reads the same in both, so trying 2 first is safe.
    """
    versions = (version,) if version else (2, 1)
    for candidate in versions:
        try:
            return ckdl.parse(text, version=candidate)
        except (ckdl.ParseError, UnicodeError):
            # ckdl raises UnicodeDecodeError for a `\u{...}` escape of a lone surrogate.
            continue
    raise KdlSyntaxError(find_syntax_error(text, versions))
