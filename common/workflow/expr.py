"""`if` conditions of jobs and steps: a tiny language, parsed once and evaluated per run.

Grammar (loosest binding first)::

    expr       := and ("||" and)*
    and        := unary ("&&" unary)*
    unary      := "!" unary | "(" expr ")" | comparison
    comparison := operand (("==" | "!=") operand)?
    operand    := 'string' | "string" | event | branch | tag | ref | repo | matrix.AXIS

An operand on its own is true when it is not empty, so `tag` means "this run is for a tag".
`!` applies to a whole comparison: `!branch == 'main'` is `!(branch == 'main')`.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from common.errors import SolsticeError
from common.workflow.limits import EXPRESSION_DEPTH_CEILING

VARIABLES = ("event", "branch", "tag", "ref", "repo")
_TOKEN_RE = re.compile(
    r"""(?P<space>\s+)|(?P<op>==|!=|&&|\|\||!|\(|\))|(?P<str>'[^']*'|"[^"]*")"""
    r"""|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)?)"""
)


class ExprError(SolsticeError):
    """An `if` expression that does not parse; `offset` is where in the text it went wrong."""

    def __init__(self, message: str, offset: int, *, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.offset = offset


class ExprTooDeep(ExprError):
    """A condition nested deeper (in `(` and `!`) than allowed; stops the recursive parser
    well before the interpreter's recursion limit."""


@dataclass(frozen=True, slots=True)
class EvalContext:
    """What an `if` can look at: the event that started the run and the job's matrix values."""

    event: str = ""
    branch: str | None = None
    tag: str | None = None
    ref: str = ""
    repo: str = ""
    matrix: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Literal:
    value: str


@dataclass(frozen=True, slots=True)
class Variable:
    name: str  # one of VARIABLES, or "matrix.AXIS"
    offset: int


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Literal | Variable
    right: Literal | Variable


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "&&" or "||"
    operands: tuple[Node, ...]


Node = Literal | Variable | Compare | Not | BoolOp


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "op", "str", "name", "end"
    text: str
    offset: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            ch = text[pos]
            if ch in "'\"":
                raise ExprError("unterminated string in condition", pos,
                                hint=f"close the string with {ch}")
            if ch in "=&|":
                raise ExprError(f"unknown operator {ch!r} in condition", pos,
                                hint="operators are ==, !=, &&, ||, ! (write == to compare)")
            raise ExprError(f"unexpected {ch!r} in condition", pos,
                            hint="quote values: branch == 'main'")
        kind = m.lastgroup or ""
        if kind != "space":
            tokens.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, max_depth: int) -> None:
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.max_depth = max_depth

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ExprError("empty condition", 0, hint="write e.g. branch == 'main', or drop the `if`")
        node = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise ExprError(f"unexpected {tok.text!r} in condition", tok.offset,
                            hint="join conditions with && or ||")
        return node

    def expr(self) -> Node:
        return self._chain("||", self.conjunction)

    def conjunction(self) -> Node:
        return self._chain("&&", self.unary)

    def _chain(self, op: str, sub: Callable[[], Node]) -> Node:
        operands = [sub()]
        while self.peek().text == op and self.peek().kind == "op":
            self.take()
            operands.append(sub())
        return operands[0] if len(operands) == 1 else BoolOp(op, tuple(operands))

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("!", "("):
            self.depth += 1
            if self.depth > self.max_depth:
                raise ExprTooDeep(f"condition nests `(` and `!` deeper than {self.max_depth} levels",
                                  tok.offset, hint="remove redundant parentheses and negations")
            self.take()
            if tok.text == "!":
                node: Node = Not(self.unary())
            else:
                node = self.expr()
                close = self.take()
                if close.text != ")":
                    raise ExprError("missing `)` in condition", close.offset,
                                    hint="close every ( with a )")
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self) -> Node:
        left = self.operand()
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("==", "!="):
            self.take()
            return Compare(tok.text, left, self.operand())
        return left

    def operand(self) -> Literal | Variable:
        tok = self.take()
        if tok.kind == "str":
            return Literal(tok.text[1:-1])
        if tok.kind == "name":
            if tok.text in VARIABLES or tok.text.startswith("matrix."):
                return Variable(tok.text, tok.offset)
            close = difflib.get_close_matches(tok.text, VARIABLES, n=1)
            suggestion = f"did you mean {close[0]!r}? " if close else ""
            raise ExprError(f"unknown name {tok.text!r} in condition", tok.offset,
                            hint=f"{suggestion}names are {', '.join(VARIABLES)}, matrix.AXIS;"
                                 " quote literal text: 'main'")
        if tok.kind == "end":
            raise ExprError("condition ends too early", tok.offset,
                            hint="a value must follow the operator")
        raise ExprError(f"expected a value, found {tok.text!r}", tok.offset,
                        hint="compare names with quoted strings: event == 'push'")


@lru_cache(maxsize=1024)
def parse_expr(text: str, max_depth: int = EXPRESSION_DEPTH_CEILING) -> Node:
    """Parse an `if` condition, raising `ExprError` with the offset of the problem
    (`ExprTooDeep` past `max_depth` levels of `(` and `!`)."""
    return _Parser(text, max_depth).parse()


def variables(node: Node) -> list[Variable]:
    """Every variable the condition reads, in order (to check `matrix.X` against the axes)."""
    if isinstance(node, Variable):
        return [node]
    if isinstance(node, Compare):
        return variables(node.left) + variables(node.right)
    if isinstance(node, Not):
        return variables(node.operand)
    if isinstance(node, BoolOp):
        return [v for sub in node.operands for v in variables(sub)]
    return []


def _value(node: Literal | Variable, ctx: EvalContext) -> str:
    if isinstance(node, Literal):
        return node.value
    if node.name.startswith("matrix."):
        return ctx.matrix.get(node.name[len("matrix."):], "")
    return getattr(ctx, node.name) or ""


def _evaluate(node: Node, ctx: EvalContext) -> bool:
    if isinstance(node, Compare):
        equal = _value(node.left, ctx) == _value(node.right, ctx)
        return equal if node.op == "==" else not equal
    if isinstance(node, Not):
        return not _evaluate(node.operand, ctx)
    if isinstance(node, BoolOp):
        if node.op == "&&":
            return all(_evaluate(sub, ctx) for sub in node.operands)
        return any(_evaluate(sub, ctx) for sub in node.operands)
    return bool(_value(node, ctx))


def evaluate_if(expr: str | None, ctx: EvalContext) -> bool:
    """Whether a job or step with condition `expr` runs in `ctx` (no condition: it runs)."""
    if expr is None:
        return True
    return _evaluate(parse_expr(expr), ctx)
