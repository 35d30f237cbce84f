"""The official KDL test suites, run through the parser the workflow loader uses.

KDL 2.0 cases live in `tests/test_cases` (a `_fail` suffix marks inputs that must be rejected);
KDL 1.0 cases in `v1/tests/test_cases` (there, an input without an `expected_kdl` file must be
rejected). A valid input must parse to the same tree as its expected output; a rejected one
must come with a line:col inside the document. The source locator must find exactly the nodes,
arguments and properties ckdl found, for every valid input.
"""
from __future__ import annotations

import math
from pathlib import Path

import ckdl
import pytest

from common.workflow.document import KdlSyntaxError, parse_kdl
from common.workflow.source import SourceMap
from tests.fixtures import FIXTURES

KDL = FIXTURES / "kdl"
SUITES = {2: KDL / "tests" / "test_cases", 1: KDL / "v1" / "tests" / "test_cases"}

# What ckdl 1.0 (the parser underneath) gets wrong against the final KDL 2.0 suite.
XFAIL_V2 = {
    "braces_in_bare_id.kdl": "ckdl rejects `foo123{bar}`: it does not end a bare identifier at `{`",
    "unicode_escaped_too_long_lead0_fail.kdl": "ckdl accepts a \\u{...} escape with more than six digits",
    "vertical_tab_whitespace.kdl": "ckdl treats U+000B as a space; KDL 2.0 final makes it a newline",
    "zero_space_before_slashdash_arg.kdl": "ckdl requires a space before /- (KDL 2.0 final does not)",
    "zero_space_before_slashdash_children.kdl": "ckdl requires a space before /- (KDL 2.0 final does not)",
    "zero_space_before_slashdash_prop.kdl": "ckdl requires a space before /- (KDL 2.0 final does not)",
}


def _cases(version: int) -> list:
    root = SUITES[version]
    params = []
    for path in sorted((root / "input").glob("*.kdl")):
        expected = root / "expected_kdl" / path.name
        if version == 2:
            must_fail = path.stem.endswith("_fail")
        else:
            must_fail = not expected.exists()
        marks = []
        if version == 2 and path.name in XFAIL_V2:
            marks.append(pytest.mark.xfail(reason=XFAIL_V2[path.name], strict=True))
        params.append(pytest.param(version, path, None if must_fail else expected,
                                   id=f"v{version}-{path.stem}", marks=marks))
    return params


def _same_value(a: object, b: object) -> bool:
    if isinstance(a, ckdl.Value) or isinstance(b, ckdl.Value):
        return (isinstance(a, ckdl.Value) and isinstance(b, ckdl.Value)
                and a.type_annotation == b.type_annotation and _same_value(a.value, b.value))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _same_nodes(left: list, right: list) -> bool:
    """Structural equality, with NaN equal to NaN (ckdl's Node == compares NaN by IEEE rules)."""
    if len(left) != len(right):
        return False
    for a, b in zip(left, right, strict=False):
        if (a.name, a.type_annotation) != (b.name, b.type_annotation):
            return False
        if len(a.args) != len(b.args) or not all(map(_same_value, a.args, b.args)):
            return False
        if a.properties.keys() != b.properties.keys():
            return False
        if not all(_same_value(a.properties[k], b.properties[k]) for k in a.properties):
            return False
        if not _same_nodes(a.children, b.children):
            return False
    return True


def test_suites_are_present() -> None:
    assert len(list((SUITES[2] / "input").glob("*.kdl"))) > 300
    assert len(list((SUITES[1] / "input").glob("*.kdl"))) > 200


@pytest.mark.parametrize(("version", "path", "expected"), _cases(2) + _cases(1))
def test_official_case(version: int, path: Path, expected: Path | None) -> None:
    text = path.read_text(encoding="utf-8")
    if expected is None:
        with pytest.raises(KdlSyntaxError) as info:
            parse_kdl(text, version=version)
        problem = info.value.problem
        assert 1 <= problem.line <= text.count("\n") + 2
        assert problem.col >= 1 and problem.message and problem.hint
        return
    doc = parse_kdl(text, version=version)
    want = ckdl.parse(expected.read_text(encoding="utf-8"), version=version)
    assert _same_nodes(list(doc.nodes), list(want.nodes))


def _walk(source_nodes: list, kdl_nodes: list, prefix: tuple[int, ...]):
    assert len(source_nodes) == len(kdl_nodes), prefix
    for index, (s, k) in enumerate(zip(source_nodes, kdl_nodes, strict=False)):
        path = prefix + (index,)
        kept_args = [e for e in s.entries if e.key is None and not e.discarded]
        kept_props = {e.key for e in s.entries if e.key is not None and not e.discarded}
        assert len(kept_args) == len(k.args), path
        assert kept_props == set(k.properties), path
        yield path, k
        yield from _walk(s.children, k.children, path)


@pytest.mark.parametrize(("version", "path", "expected"),
                         [p for p in _cases(2) + _cases(1) if p.values[2] is not None and not p.marks])
def test_locator_agrees_with_ckdl(version: int, path: Path, expected: Path) -> None:
    """Every node ckdl keeps is found at the same path, with the same arguments and properties,
    and a map built for one path places that node exactly where the full map does."""
    text = path.read_text(encoding="utf-8")
    doc = parse_kdl(text, version=version)
    full = SourceMap(text)
    for node_path, kdl_node in _walk(full.roots, list(doc.nodes), ()):
        name = full.node(node_path).name
        if name.kind == "bare":
            assert text[name.start:name.end] == kdl_node.name
        selective = SourceMap(text, [node_path])
        assert selective.offset(node_path) == full.offset(node_path)
        for key in kdl_node.properties:
            assert selective.offset(node_path, prop=key) == full.offset(node_path, prop=key)
