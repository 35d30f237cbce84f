"""Property tests: whatever the text, the loader answers with a Workflow or a WorkflowError whose
diagnostics all point inside the document and say what to do. Never another exception."""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.workflow import Workflow, WorkflowError, expand, load_workflow, topological_order

EXAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "full.kdl").read_text()
SEED = 'workflow { job id="build" runs_on="illumos" { step name="Build" run="make" } }\n'
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments that mean something to a KDL lexer or to the workflow schema.
PIECES = ["{", "}", '"', "'", "/-", "/*", "*/", "//", "\\", "#", 'r#"', '#"', '"#', '"""', "=", ";",
          "\n", "\r\n", " ", "\t", "(t)", "#true", "#null", "true", "${{", "}}", "matrix.", "\u00a0",
          "\ufeff", "\x0b", "é", "job", "step", "needs", "matrix", "if", "on", "id=", "run=",
          'runs_on="x"', "include", "exclude", "1.5", "0x1F", "-", "==", "&&"]


def check(text: str) -> None:
    try:
        workflow = load_workflow(text, "fuzz.kdl")
    except WorkflowError as exc:
        assert exc.diagnostics
        lines = max(1, text.count("\n") + text.count("\r") + 1)
        for diag in exc.diagnostics:
            assert 1 <= diag.line <= lines + 1, diag
            assert diag.col >= 1 and diag.message and diag.hint, diag
            assert diag.path == "fuzz.kdl"
        return
    assert isinstance(workflow, Workflow)
    planned = expand(workflow)
    assert len(topological_order(planned)) == len(planned)


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    check(text)


@FUZZ
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=60))
def test_random_token_soup(pieces: list[str]) -> None:
    check("".join(pieces))


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from([EXAMPLE, SEED, EXAMPLE.replace("#true", "true")]))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 12)))
        insert = draw(st.sampled_from(PIECES) | st.just(""))
        text = text[:start] + insert + text[end:]
    return text


@FUZZ
@given(mutated())
def test_mutated_documents(text: str) -> None:
    check(text)


NAMES = ["workflow", "job", "step", "needs", "if", "env", "matrix", "os", "include", "exclude",
         "setup", "resources", "secrets", "artifacts", "on", "stpe", "jobs"]
KEYS = ["id", "runs_on", "name", "run", "timeout", "if", "path", "vcpus", "ram", "disk", "os",
        "branches", "fail_fast", "runs-on"]
VALUES = st.one_of(
    st.sampled_from(['"build"', '"x"', '"45m"', '"8G"', '"0s"', "4", "#true", "#null", '""',
                     "\"event == 'push'\"", '"${{ matrix.os }}"', '"${{ matrix.zz }}"', '"push"',
                     "\"branch ==\"", "1.5"]),
    st.text(alphabet="abcxyz09 -_.", max_size=8).map(lambda s: '"' + s + '"'),
)


@st.composite
def node(draw: st.DrawFn, depth: int = 0) -> str:
    name = draw(st.sampled_from(NAMES))
    args = draw(st.lists(VALUES, max_size=3))
    props = draw(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
    parts = [name] + args + [f"{k}={v}" for k, v in props]
    if depth < 3 and draw(st.booleans()):
        children = draw(st.lists(node(depth + 1), max_size=4))
        parts.append("{\n" + "\n".join("    " * (depth + 1) + c for c in children) + "\n" + "    " * depth + "}")
    return " ".join(parts)


@FUZZ
@given(st.lists(node(), min_size=0, max_size=3))
def test_schema_shaped_documents(nodes: list[str]) -> None:
    check("\n".join(nodes) + "\n")


@FUZZ
@given(node())
def test_schema_shaped_workflow(inner: str) -> None:
    check('workflow {\n    job id="a" runs_on="x" {\n        ' + inner + '\n        step name="a" run="a"\n    }\n}\n')
