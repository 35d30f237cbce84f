"""The `if` language: grammar, evaluation, and errors that point at the problem."""
from __future__ import annotations

import pytest

from common.workflow.expr import EvalContext, ExprError, evaluate_if, parse_expr, variables

PUSH_MAIN = EvalContext(event="push", branch="main", ref="refs/heads/main", repo="acme/app",
                        matrix={"os": "omnios"})
TAG = EvalContext(event="tag", tag="v1.0", ref="refs/tags/v1.0", repo="acme/app")


@pytest.mark.parametrize(("expr", "push_main", "tag"), [
    ("event == 'push'", True, False),
    ('event != "push"', False, True),
    ("branch == 'main' || event == 'pull_request'", True, False),
    ("branch == 'main' && event == 'push'", True, False),
    ("!(event == 'push')", False, True),
    ("!event == 'push'", False, True),  # `!` covers the comparison
    ("tag", False, True),
    ("!tag", True, False),
    ("tag == 'v1.0' || branch == 'main' && event == 'tag'", False, True),  # && binds tighter
    ("(tag == 'v1.0' || branch == 'main') && event == 'tag'", False, True),
    ("matrix.os == 'omnios'", True, False),
    ("matrix.arch == ''", True, True),
    ("repo == 'acme/app' && ref == 'refs/heads/main'", True, False),
    ("'main' == branch", True, False),
])
def test_evaluation(expr: str, push_main: bool, tag: bool) -> None:
    assert evaluate_if(expr, PUSH_MAIN) is push_main
    assert evaluate_if(expr, TAG) is tag


def test_no_condition_always_runs() -> None:
    assert evaluate_if(None, EvalContext()) is True


@pytest.mark.parametrize(("expr", "fragment", "offset"), [
    ("", "empty condition", 0),
    ("branch = 'main'", "unknown operator '='", 7),
    ("branch == 'main", "unterminated string", 10),
    ("event == push", "unknown name 'push'", 9),
    ("evnt == 'push'", "unknown name 'evnt'", 0),
    ("(event == 'push'", "missing `)`", 16),
    ("event == 'push' branch", "unexpected 'branch'", 16),
    ("event ==", "ends too early", 8),
    ("event == )", "expected a value", 9),
    ("event & 'x'", "unknown operator '&'", 6),
    ("event == 'a' $", "unexpected '$'", 13),
])
def test_errors_carry_the_offset(expr: str, fragment: str, offset: int) -> None:
    with pytest.raises(ExprError) as info:
        parse_expr(expr)
    assert fragment in info.value.message
    assert info.value.offset == offset
    assert info.value.hint


def test_suggestion_for_misspelled_names() -> None:
    with pytest.raises(ExprError) as info:
        parse_expr("brnach == 'main'")
    assert "did you mean 'branch'?" in (info.value.hint or "")


def test_variables_lists_what_is_read() -> None:
    tree = parse_expr("matrix.os == 'a' && !(branch == matrix.rust)")
    assert [v.name for v in variables(tree)] == ["matrix.os", "branch", "matrix.rust"]
    assert [v.offset for v in variables(tree)] == [0, 22, 32]
