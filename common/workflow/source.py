"""Where things are in a KDL document: a small, linear tokenizer that maps nodes to line:col.

ckdl parses the document (and is the judge of what is valid KDL) but reports no positions.
This module scans the same text once more, understanding just enough KDL 1.0 *and* 2.0 to find
node boundaries: quoted, raw (`r#"..."#`, `#"..."#`) and multi-line (`\"\"\"`) strings, line and
nested block comments, slashdash (`/-`), type annotations, escaped newlines and braces. Each
node that ckdl keeps is addressed the way the loader walks ckdl's tree: by its path of child
indices (slashdashed nodes do not count), and each argument by index, each property by key.

The scanner also spots structural syntax errors (an unterminated string or comment, an unclosed
`{`, a stray `}`) and gives their position; `find_syntax_error` combines it with ckdl to locate
the rest. It runs only when something must be reported, never on the happy path.
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import ckdl
import kdl

# Code points KDL treats as horizontal space. VT (U+000B) is included because ckdl treats it
# as space in KDL 2 documents; positions must agree with how ckdl split the nodes.
_SPACE = "\t \x0b\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000\ufeff"
_NEWLINES = "\r\n\x0c\x85\u2028\u2029"
_SPACE_RE = re.compile(f"[{_SPACE}]+")
_NEWLINE_RE = re.compile("\r\n|[\r\n\x0c\x85\u2028\u2029]")
# Line breaks as an editor counts them, for the line numbers shown to people.
_EDITOR_LINE_RE = re.compile(r"\r\n|\r|\n")
_QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_MULTILINE_RE = re.compile(r'"""(?:[^"\\]|\\.|"(?!""))*"""', re.DOTALL)
_RAW_START_RE = re.compile(r'r?(#*)"')
_BARE_RE = re.compile(r'[^\s\\/(){};\[\]="]+')
_COMMENT_MARK_RE = re.compile(r"/\*|\*/")
# Skipping a node nobody asked about: one regex match runs over everything that cannot open or
# close a block or end the node (text, and strings of every kind, which may hold braces).
_STRINGS = (r'"""(?:[^"\\]|\\.|"(?!""))*"""|"(?:[^"\\]|\\.)*"'
            r'|r?(?P<hashes>#+)"[\s\S]*?"(?P=hashes)|r"[^"]*"')
_BLOCK_RUN_RE = re.compile(r'(?:[^"{}/r#]+|' + _STRINGS + r'|r(?!#*")|#(?!#*")|/(?![/*]))*', re.DOTALL)
_HEADER_RUN_RE = re.compile(r'(?:[^"{}/r#;\\\r\n\x0c\x85\u2028\u2029]+|' + _STRINGS
                            + r'|r(?!#*")|#(?!#*")|/(?![/*-]))*', re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "/": "/", "b": "\b",
            "f": "\f", "s": " "}


# A trie of child indices: which nodes' insides must be scanned in detail.
Wanted = dict[int, "Wanted"]
_SKIP: Wanted = {}


class LexError(Exception):
    """A structural syntax error the scanner can pin down by itself."""

    def __init__(self, offset: int, message: str, hint: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message
        self.hint = hint


@dataclass(slots=True)
class Token:
    """One value-like token: a string of any kind or a bare word (identifier, number, keyword)."""

    start: int
    end: int
    kind: str  # "quoted", "raw", "multiline", "bare"


@dataclass(slots=True)
class Entry:
    """An argument or a property as written; `key` is None for an argument."""

    start: int
    end: int
    key: str | None
    value: Token | None
    discarded: bool


@dataclass(slots=True)
class SourceNode:
    """A node's place in the text: where it starts and ends, its entries and children."""

    start: int
    name: Token | None = None
    end: int = 0
    parts: list[tuple[int, int]] = field(default_factory=list)  # spans of name and entries
    entries: list[Entry] = field(default_factory=list)
    children: list[SourceNode] = field(default_factory=list)  # kept by ckdl, by index
    all_children: list[SourceNode] = field(default_factory=list)  # including slashdashed
    brace: int | None = None
    # The arguments and properties ckdl kept, made on first use: once per node, as a node
    # may hold thousands of them.
    kept_args: list[Entry] | None = None
    kept_props: dict[str, Entry] | None = None

    def arg(self, index: int) -> Entry | None:
        if self.kept_args is None:
            self.kept_args = [e for e in self.entries if e.key is None and not e.discarded]
        kept = self.kept_args
        return kept[index] if 0 <= index < len(kept) else None

    def prop(self, key: str) -> Entry | None:
        if self.kept_props is None:
            # The last one wins, as in ckdl.
            self.kept_props = {e.key: e for e in self.entries if e.key is not None and not e.discarded}
        return self.kept_props.get(key)


def _decode_string(raw: str, kind: str) -> str:
    """The text a key or value token stands for (enough to match ckdl's keys and name things)."""
    if kind == "bare":
        return raw
    if kind == "raw":
        inner = raw[raw.index('"') + 1:]
        return inner[: inner.rindex('"')]
    body = raw[1:-1]
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt == "u":
                close = body.find("}", i)
                try:
                    out.append(chr(int(body[i + 3:close], 16)))
                    i = close + 1
                    continue
                except ValueError:
                    pass
            if nxt.isspace():
                i += 1
                while i < len(body) and body[i].isspace():
                    i += 1
                continue
        out.append(ch)
        i += 1
    return "".join(out)


class _Scanner:
    """Recursive descent over the token structure of a KDL document (both versions)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.n = len(text)
        self.open: list[SourceNode] = []  # the nodes being scanned, outermost first

    # -- spaces and comments -------------------------------------------------------------
    def _block_comment(self) -> None:
        start = self.pos
        depth = 0
        pos = self.pos
        while True:
            m = _COMMENT_MARK_RE.search(self.text, pos)
            if m is None:
                raise LexError(start, "unterminated block comment",
                               "close the comment with */ (block comments nest: each /* needs its */)")
            depth += 1 if m.group() == "/*" else -1
            pos = m.end()
            if depth == 0:
                self.pos = pos
                return

    def _line_comment(self) -> None:
        m = _NEWLINE_RE.search(self.text, self.pos)
        self.pos = m.start() if m else self.n

    def _node_space(self) -> None:
        """Skip spaces, block comments and escaped newlines (what may separate entries)."""
        text = self.text
        while self.pos < self.n:
            m = _SPACE_RE.match(text, self.pos)
            if m:
                self.pos = m.end()
                continue
            if text.startswith("/*", self.pos):
                self._block_comment()
                continue
            if text[self.pos] == "\\":
                start = self.pos
                self.pos += 1
                m = _SPACE_RE.match(text, self.pos)
                if m:
                    self.pos = m.end()
                if text.startswith("//", self.pos):
                    self._line_comment()
                m = _NEWLINE_RE.match(text, self.pos)
                if m:
                    self.pos = m.end()
                elif self.pos < self.n:
                    raise LexError(start, "a `\\` outside a string must end the line",
                                   "remove the backslash, or put it last on the line to continue the node")
                continue
            return

    def _line_space(self) -> None:
        """Skip everything that may separate nodes: spaces, newlines, comments, `;`."""
        text = self.text
        while self.pos < self.n:
            self._node_space()
            if self.pos >= self.n:
                return
            m = _NEWLINE_RE.match(text, self.pos)
            if m:
                self.pos = m.end()
            elif text.startswith("//", self.pos):
                self._line_comment()
            elif text[self.pos] == ";":
                self.pos += 1
            else:
                return

    # -- tokens --------------------------------------------------------------------------
    def _token(self) -> Token:
        text, pos = self.text, self.pos
        if text.startswith('"""', pos):
            m = _MULTILINE_RE.match(text, pos)
            if m is None:
                raise LexError(pos, "unterminated multi-line string",
                               'close it with """ on a line of its own')
            return self._take(m.end(), "multiline")
        if text.startswith('"', pos):
            m = _QUOTED_RE.match(text, pos)
            if m is None:
                raise LexError(pos, "unterminated string",
                               'close the string with " (for text over several lines use """ ... """)')
            return self._take(m.end(), "quoted")
        m = _RAW_START_RE.match(text, pos)
        if m and (text[pos] == "r" or m.group(1)):
            closing = '"' + m.group(1)
            if text[pos] != "r" and text.startswith('"""', m.end() - 1):
                closing = '"""' + m.group(1)
                end = text.find(closing, m.end() + 2)
            else:
                end = text.find(closing, m.end())
            if end < 0:
                raise LexError(pos, "unterminated raw string",
                               f"close the raw string with {closing}")
            return self._take(end + len(closing), "raw")
        m = _BARE_RE.match(text, pos)
        if m is None:
            shown = "end of line" if _NEWLINE_RE.match(text, pos) else f"`{text[pos]}`"
            raise LexError(pos, f"unexpected {shown}",
                           "quote values that contain special characters, e.g. \"a=b\"")
        return self._take(m.end(), "bare")

    def _take(self, end: int, kind: str) -> Token:
        token = Token(self.pos, end, kind)
        self.pos = end
        return token

    def _skip_block(self, opener: int) -> None:
        """Move past the `}` matching `opener` (the scanner stands just after it)."""
        text = self.text
        depth = 1
        while True:
            self.pos = _BLOCK_RUN_RE.match(text, self.pos).end()  # type: ignore[union-attr]
            if self.pos >= self.n:
                raise LexError(opener, "`{` is never closed",
                               "add the matching } after the node's last child")
            if text.startswith("/*", self.pos):
                self._block_comment()
            elif text.startswith("//", self.pos):
                self._line_comment()
            else:
                ch = text[self.pos]
                self.pos += 1
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        return

    def _skip_node(self) -> SourceNode:
        """A node whose insides nobody asked about: only where it starts and ends."""
        text = self.text
        node = SourceNode(start=self.pos)
        while True:
            self.pos = _HEADER_RUN_RE.match(text, self.pos).end()  # type: ignore[union-attr]
            if self.pos >= self.n:
                break
            ch = text[self.pos]
            if ch == "{":
                self.pos += 1
                self._skip_block(self.pos - 1)
            elif ch == "\\":
                self._node_space()
            elif text.startswith("/*", self.pos):
                self._block_comment()
            elif text.startswith("/-", self.pos):
                self._slashdash()
            elif ch in ";}/" or _NEWLINE_RE.match(text, self.pos):
                break
            else:
                self.pos += 1  # what a string alternative refused: only in invalid text
        node.end = self.pos
        return node

    def _slashdash(self) -> None:
        start = self.pos
        self.pos += 2
        self._line_space()
        if self.pos >= self.n or self.text[self.pos] in "};":
            raise LexError(start, "`/-` comments out nothing",
                           "put /- right before the node, value or { block to comment out, or remove it")

    def _type_annotation(self) -> None:
        start = self.pos
        self.pos += 1
        self._node_space()
        if self.pos < self.n and self.text[self.pos] != ")":
            self._token()
            self._node_space()
        if not self.text.startswith(")", self.pos):
            raise LexError(start, "unclosed type annotation", "close it with ), e.g. (u8)5")
        self.pos += 1
        self._node_space()

    # -- structure -----------------------------------------------------------------------
    def nodes(self, opener: int | None, want: Wanted | None = None) -> tuple[list[SourceNode], list[SourceNode]]:
        """Nodes up to the matching `}` (opener given) or the end of the text.

        `want` (None: everything) is a trie of the kept-child indices whose insides matter;
        other nodes' children blocks are skipped without being scanned node by node.
        """
        kept: list[SourceNode] = []
        every: list[SourceNode] = []
        text = self.text
        while True:
            self._line_space()
            if self.pos >= self.n:
                if opener is not None:
                    raise LexError(opener, "`{` is never closed",
                                   "add the matching } after the node's last child")
                return kept, every
            if text[self.pos] == "}":
                if opener is None:
                    raise LexError(self.pos, "unexpected `}` with no `{` open",
                                   "remove it, or add the { it was meant to close")
                self.pos += 1
                return kept, every
            discarded = False
            if text.startswith("/-", self.pos):
                self._slashdash()
                discarded = True
            inner = None if want is None else _SKIP if discarded else want.get(len(kept), _SKIP)
            node = self._skip_node() if inner is _SKIP else self._node(inner)
            every.append(node)
            if not discarded:
                kept.append(node)

    def _node(self, want: Wanted | None) -> SourceNode:
        node = SourceNode(start=self.pos)
        self.open.append(node)
        self._node_body(node, want)
        self.open.pop()  # left in place by a LexError, to say which job and step it was in
        return node

    def _node_body(self, node: SourceNode, want: Wanted | None) -> None:
        text = self.text
        part_start = self.pos
        if text.startswith("(", self.pos):
            self._type_annotation()
        if self.pos >= self.n or text[self.pos] in "{};" or _NEWLINE_RE.match(text, self.pos):
            raise LexError(part_start, "a node needs a name here",
                           "start the node with its name, e.g. `step name=... run=...`")
        node.name = self._token()
        node.parts.append((part_start, self.pos))
        node.end = self.pos
        after_children = False
        while True:
            self._node_space()
            if self.pos >= self.n:
                return
            ch = text[self.pos]
            if ch == ";" or _NEWLINE_RE.match(text, self.pos):
                return
            if text.startswith("//", self.pos) or ch == "}":
                return
            discarded = False
            if text.startswith("/-", self.pos):
                self._slashdash()
                discarded = True
            if text.startswith("{", self.pos):
                opener = self.pos
                self.pos += 1
                kept, every = self.nodes(opener, want)
                node.all_children.extend(every)
                if not discarded:
                    node.brace = opener
                    node.children = kept
                    after_children = True
                node.end = self.pos
                continue
            if after_children:
                raise LexError(self.pos, "nothing may follow a node's children block on the same node",
                               "end the node after its closing }, or move this before the {")
            self._entry(node, discarded)

    def _entry(self, node: SourceNode, discarded: bool) -> None:
        text = self.text
        start = self.pos
        if text.startswith("(", self.pos):
            self._type_annotation()
        if self.pos >= self.n or self.text[self.pos] in "{};" or _NEWLINE_RE.match(text, self.pos):
            raise LexError(start, "a value must follow the type annotation", "write e.g. (u8)5")
        first = self._token()
        save = self.pos
        self._node_space()
        if text.startswith("=", self.pos):
            self.pos += 1
            self._node_space()
            if text.startswith("(", self.pos):
                self._type_annotation()
            if self.pos >= self.n or text[self.pos] in "{};" or _NEWLINE_RE.match(text, self.pos):
                raise LexError(first.start, "a property needs a value after `=`",
                               'write key="value"')
            value = self._token()
            key = _decode_string(text[first.start:first.end], first.kind)
            node.entries.append(Entry(first.start, value.end, key, value, discarded))
        else:
            self.pos = save
            node.entries.append(Entry(start, first.end, None, first, discarded))
        node.parts.append((start, self.pos))
        node.end = self.pos


class LineIndex:
    """Offsets to 1-based (line, column), counting lines the way editors do."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [m.end() for m in _EDITOR_LINE_RE.finditer(text)]
        self.bom = text.startswith("\ufeff")  # editors do not show it as a column

    def position(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, offset) - 1
        col = offset - self.starts[line] + 1
        if line == 0 and self.bom and offset > 0:
            col -= 1
        return line + 1, col


class SourceMap:
    """Positions of the nodes ckdl kept, addressed by child-index paths from the document."""

    def __init__(self, text: str, paths: Iterable[tuple[int, ...]] | None = None) -> None:
        """Map `text`; given `paths`, only what is needed to place those nodes is scanned."""
        self.text = text
        self.lines = LineIndex(text)
        want: Wanted | None = None
        if paths is not None:
            want = {}
            for path in paths:
                level = want
                for index in path:
                    level = level.setdefault(index, {})
        try:
            self.roots, _ = _Scanner(text).nodes(None, want)
        except LexError:
            # The text parsed with ckdl, so this is a gap in the scanner: positions degrade
            # to the start of the document rather than failing the report.
            self.roots = []

    def node(self, path: tuple[int, ...]) -> SourceNode | None:
        """The node at `path`, or the deepest ancestor found."""
        found = None
        level = self.roots
        for index in path:
            if index >= len(level):
                break
            found = level[index]
            level = found.children
        return found

    def offset(self, path: tuple[int, ...], arg: int | None = None, prop: str | None = None,
               inner: int | None = None, value: bool = False) -> int:
        """Offset of a node, its `arg`-th argument or its `prop` property (falls back outward).

        `value` points at a property's value rather than its key; `inner` moves into a
        single-line quoted value by that many characters, so an error in an expression can
        point at the offending character.
        """
        node = self.node(path)
        if node is None:
            return 0
        entry = None
        if arg is not None:
            entry = node.arg(arg)
        elif prop is not None:
            entry = node.prop(prop)
        if entry is None:
            return node.name.start if node.name else node.start
        token = entry.value
        if token is None or (inner is None and not value):
            return entry.start
        raw = self.text[token.start:token.end]
        if (inner is not None and token.kind == "quoted" and "\\" not in raw and "\n" not in raw
                and inner < len(raw) - 1):
            return token.start + 1 + inner
        return token.start

    def position(self, offset: int) -> tuple[int, int]:
        return self.lines.position(offset)


@dataclass(frozen=True, slots=True)
class SyntaxProblem:
    """Where a document stops being valid KDL, and what to do about it."""

    line: int
    col: int
    message: str
    hint: str
    job: str | None = None  # the id of the job it is in, when that can be read
    step: str | None = None  # the name of the step it is in


def _context(text: str, chain: list[SourceNode]) -> tuple[str | None, str | None]:
    """Job id and step name of the nodes enclosing a problem, as far as they can be read."""
    found: dict[str, str | None] = {"job": None, "step": None}
    for node in chain:
        kind = text[node.name.start:node.name.end] if node.name else ""
        key = {"job": "id", "step": "name"}.get(kind)
        for entry in node.entries if key else ():
            if entry.key == key and entry.value is not None and not entry.discarded:
                found[kind] = _decode_string(text[entry.value.start:entry.value.end], entry.value.kind)
    return found["job"], found["step"]


def _chain_at(nodes: list[SourceNode], offset: int) -> list[SourceNode]:
    """The nodes whose text contains `offset`, outermost first."""
    chain: list[SourceNode] = []
    level = nodes
    while True:
        for node in level:
            if node.start <= offset < max(node.end, node.start + 1):
                chain.append(node)
                level = node.all_children
                break
        else:
            return chain


def _kdl_py_problem(text: str) -> SyntaxProblem | None:
    """Last resort: kdl-py (KDL 1.0 only) reports `line:col` in its messages."""
    try:
        kdl.parse(text)
    except kdl.ParseError as exc:
        m = re.match(r"(\d+):(\d+) (?:parse error: )?(.*)", str(exc), re.DOTALL)
        if m:
            return SyntaxProblem(int(m.group(1)), int(m.group(2)), f"invalid KDL: {m.group(3)}",
                                 "fix the syntax at this position")
    return None


def _parses(text: str, version: int) -> str | None:
    """None if `text` parses as KDL `version`, else ckdl's complaint."""
    try:
        ckdl.parse(text, version=version)
    except (ckdl.ParseError, UnicodeError) as exc:
        # ckdl raises UnicodeDecodeError for escapes of lone surrogates (`\u{D800}`).
        return str(exc) if isinstance(exc, ckdl.ParseError) else "invalid unicode escape"
    return None


def _first_bad(text: str, nodes: list[SourceNode], version: int) -> tuple[int, str, str] | None:
    """Bisect down the node tree to the first part that ckdl rejects in `version`."""
    for node in nodes:
        if _parses(text[node.start:node.end], version) is None:
            continue
        inner = _first_bad(text, node.all_children, version)
        if inner is not None:
            return inner
        for index, (start, end) in enumerate(node.parts):
            snippet = text[start:end]
            complaint = _parses(snippet if index == 0 else f"n {snippet}", version)
            if complaint is None:
                continue
            entry = node.entries[index - 1] if index else None
            if entry is not None and entry.key is not None and entry.value is not None:
                value = text[entry.value.start:end]
                if _parses(f"n {value}", version) is not None:
                    return entry.value.start, value, complaint
            return start, snippet, complaint
        complaint = _parses(text[node.start:node.end], version) or "parse error"
        return node.start, text[node.start:node.end].split("\n", 1)[0], complaint
    return None


def _hint_for(snippet: str, version: int) -> str:
    if version == 2 and snippet in ("true", "false", "null"):
        return f"KDL 2 spells it #{snippet}; KDL 1 spells it {snippet} (do not mix the two in one file)"
    if version == 1 and snippet.startswith("#"):
        return "this is KDL 2 syntax while earlier lines are KDL 1: write the whole file in one version"
    if any(c in snippet for c in "=,[]<>"):
        return 'quote the value as a string, e.g. "a,b"'
    return 'quote strings ("..."), write numbers plainly, booleans as #true/#false (KDL 2)'


def find_syntax_error(text: str, versions: tuple[int, ...] = (2, 1)) -> SyntaxProblem:
    """Locate why `text` is not KDL in any of `versions`; call only when ckdl rejected it."""
    lines = LineIndex(text)
    scanner = _Scanner(text)
    try:
        _, roots = scanner.nodes(None)
    except LexError as exc:
        line, col = lines.position(exc.offset)
        job, step = _context(text, scanner.open)
        return SyntaxProblem(line, col, exc.message, exc.hint, job, step)
    candidates = []
    for version in versions:
        bad = _first_bad(text, roots, version)
        if bad is not None:
            candidates.append((bad[0], version, bad, version))
    if candidates:
        # The version the document follows furthest is the one it is written in (ties: KDL 2).
        _, _, (offset, snippet, complaint), version = max(candidates)
        line, col = lines.position(offset)
        first_line = snippet.splitlines()[0] if snippet else snippet
        shown = first_line if len(first_line) <= 40 and first_line == snippet else first_line[:37] + "..."
        job, step = _context(text, _chain_at(roots, offset))
        return SyntaxProblem(line, col, f"invalid KDL: cannot parse `{shown}` ({complaint})",
                             _hint_for(snippet, version), job, step)
    if 1 in versions:
        located = _kdl_py_problem(text)
        if located is not None:
            return located
    return SyntaxProblem(1, 1, "invalid KDL: the document mixes KDL 1.0 and 2.0 syntax",
                         "write the whole file in one version (KDL 2: #true, \"\"\" strings; KDL 1: true, r\"raw\")")
