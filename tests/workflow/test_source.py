"""The source locator on its own: tricky text, partial scans, syntax error positions."""
from __future__ import annotations

import ckdl
import pytest

from common.workflow.document import KdlSyntaxError, parse_kdl
from common.workflow.source import LineIndex, SourceMap

TRICKY_V2 = '''// braces and quotes where they do not count
workflow {
    a "x\\
       {" { b }
    /- gone { c "}" }
    c """
      } " {
      """ #"}"# ##"{"#"## (t)1 k = "v"
    /* { /* nested } */ "still comment" */
    d \\ // a continued line
      "arg" { e; f }; g
    h /- "dropped" key=#"raw"# /-{ ignored }
}
'''
TRICKY_V1 = '''workflow {
    a r#"{ "quoted" }"# r"}" key="{"
    /- gone { c "}" }
    b { c; d { e } }
    f
}
'''


def paths(nodes: list, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    found = []
    for index, node in enumerate(nodes):
        found.append(prefix + (index,))
        found += paths(node.children, prefix + (index,))
    return found


@pytest.mark.parametrize(("text", "version", "names"), [(TRICKY_V2, 2, "workflow a b c d e f g h"),
                                                       (TRICKY_V1, 1, "workflow a b c d e f")])
def test_partial_scan_places_nodes_like_the_full_scan(text: str, version: int, names: str) -> None:
    doc = ckdl.parse(text, version=version)
    full = SourceMap(text)
    every = paths(list(doc.nodes))
    assert len(every) == len(paths(full.roots))
    for path in every:
        assert SourceMap(text, [path]).offset(path) == full.offset(path), path
    assert {text[full.node(p).name.start:full.node(p).name.end] for p in every} == set(names.split())


def test_property_and_argument_positions() -> None:
    source = SourceMap(TRICKY_V2)
    line_of = source.position
    assert line_of(source.offset((0, 1), prop="k")) == (8, 32)
    assert line_of(source.offset((0, 1), prop="k", value=True)) == (8, 36)
    assert line_of(source.offset((0, 1), arg=3)) == (8, 27)  # (t)1: the annotation starts it
    assert line_of(source.offset((0, 2), arg=0)) == (11, 7)  # after the escaped newline
    assert line_of(source.offset((0, 4), prop="key", value=True)) == (12, 24)
    assert line_of(source.offset((0, 4), prop="missing")) == (12, 5)  # falls back to the node


def test_inner_offsets_only_move_inside_plain_strings() -> None:
    text = 'a x="0123456789" y="a\\tb"\n'
    source = SourceMap(text)
    assert source.position(source.offset((0,), prop="x", inner=4)) == (1, 10)
    assert source.position(source.offset((0,), prop="y", inner=2)) == (1, 20)  # escapes: value start


def test_line_index_counts_lines_like_an_editor() -> None:
    index = LineIndex("a\r\nb\rc\nd")
    assert [index.position(i) for i in (0, 3, 5, 7)] == [(1, 1), (2, 1), (3, 1), (4, 1)]


@pytest.mark.parametrize(("text", "where", "fragment"), [
    ('a {\n  b "x\n', (2, 5), "unterminated string"),
    ("a {\n  b /* c\n}\n", (2, 5), "unterminated block comment"),
    ('a #"raw\n', (1, 3), "unterminated raw string"),
    ('a """\nx\n', (1, 3), "unterminated multi-line string"),
    ("a {\n  b { c }\n", (1, 3), "never closed"),
    ("a\n}\n", (2, 1), "unexpected `}`"),
    ("a { b } c\n", (1, 9), "nothing may follow"),
    ("a \\ b\n", (1, 3), "must end the line"),
    ("a /-\n", (1, 3), "comments out nothing"),
    ("a key=\n", (1, 3), "needs a value"),
    ("a (t)\n", (1, 3), "must follow the type annotation"),
    ("(t)\n", (1, 1), "needs a name"),
    ("a 1.2.3 b\n", (1, 3), "cannot parse `1.2.3`"),
    ("a\nb k=0x\n", (2, 5), "cannot parse `0x`"),
])
def test_syntax_errors_are_located(text: str, where: tuple[int, int], fragment: str) -> None:
    with pytest.raises(KdlSyntaxError) as info:
        parse_kdl(text)
    problem = info.value.problem
    assert (problem.line, problem.col) == where
    assert fragment in problem.message and problem.hint
