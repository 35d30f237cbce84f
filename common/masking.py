"""Secret masking: every secret value becomes `***` before a log line leaves the machine.

The runner masks at the source and the orchestrator masks again as a second line of defence,
both with `SecretMasker`. Masking works on bytes (logs are bytes, not always UTF-8) with one
compiled regular expression over every form of every secret, so masking 1M lines costs one
C-level `re.sub` per block.

Rules, chosen on purpose:
- Each value is masked in every form `common.secret_forms` derives from it: as printed,
  `set -x` quoted, whitespace-folded by an unquoted `echo`, JSON-escaped, Python `repr`,
  URL-encoded, base64 (also inside a longer encoded stream) and hex. At any position the
  longest form wins.
- A multi-line secret (a PEM key) is also masked line by line: each non-empty line of the
  value, stripped of surrounding whitespace, is a secret of its own. Programs print such values
  with their own indentation or line endings, so matching the whole value at once would miss them.
- Values (or lines of values) shorter than `MIN_SECRET_LENGTH` bytes are not masked. Masking
  a 1-2 byte value would replace that byte pair in every line (`a` -> `***` everywhere), which
  wrecks the log and still reveals the value through the pattern of asterisks; such a value
  protects nothing. `SecretMasker.too_short` counts them so callers can warn (without the value).
- Output is only emitted when no secret can straddle the emit point: `LineMasker` holds a
  partial line until its newline arrives, so a secret split across two pipe reads is masked.
  A line longer than `max_line` is emitted early except for its last `longest form - 1`
  bytes, which is still exact: the result equals masking the whole stream at once.
- Each output stream is masked on its own (one `LineMasker` per pipe): a secret a step splits
  between stdout and stderr shows in neither stream whole, but the two halves are stored.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from common.secret_forms import MIN_SECRET_LENGTH, secret_forms

__all__ = ["MASK", "MIN_SECRET_LENGTH", "LineMasker", "SecretMasker", "secret_pieces"]

MASK = b"***"
# Up to this many forms in all, `mask` first looks for each form on its own (`_pattern_for`).
PREFILTER_MAX_FORMS = 48


def secret_pieces(values: Iterable[str | bytes],
                  verbatim: Iterable[str | bytes] = ()) -> tuple[list[bytes], int]:
    """The byte strings to mask for `values` (every form) and `verbatim` (as they are),
    longest first, and how many non-empty lines of `values` were too short to mask."""
    pieces: set[bytes] = set()
    too_short = 0
    for value in values:
        forms, short = secret_forms(value.encode() if isinstance(value, str) else value)
        pieces |= forms
        too_short += short
    for value in verbatim:
        raw = (value.encode() if isinstance(value, str) else value).strip()
        if len(raw) >= MIN_SECRET_LENGTH:
            pieces.add(raw)
    return sorted(pieces, key=lambda p: (-len(p), p)), too_short


def _alternation(pieces: list[bytes]) -> bytes:
    """A regular expression matching any of `pieces`, the longest where several start at one
    position. Written as a prefix tree: `re` tries alternatives one by one, so sharing
    prefixes keeps the work per position small with dozens of forms per secret."""
    tree: dict = {}
    for piece in pieces:
        node = tree
        for byte in piece:
            node = node.setdefault(byte, {})
        node[None] = {}

    def emit(node: dict) -> bytes:
        # A run of nodes with a single child and no end becomes one literal (iteratively: a
        # secret may be longer than Python's recursion limit); recursion only at branches.
        chain = bytearray()
        while len(node) == 1 and None not in node:
            (byte, node), = node.items()
            chain.append(byte)
        branches = [re.escape(bytes([byte])) + emit(child)
                    for byte, child in sorted((k, v) for k, v in node.items() if k is not None)]
        if None in node:
            branches.append(b"")  # after the longer branches: the longest match wins
        if len(branches) > 1:
            tail = b"(?:" + b"|".join(branches) + b")"
        else:
            tail = branches[0] if branches else b""
        return re.escape(bytes(chain)) + tail

    return emit(tree)


@functools.lru_cache(maxsize=256)
def _compile(pieces: tuple[bytes, ...]) -> re.Pattern[bytes]:
    return re.compile(_alternation(list(pieces)))


class SecretMasker:
    """Replaces every secret value with `***`; stateless and shareable between streams.

    `values` are masked in every form; `verbatim` values only as they are: that is for the
    runner's token, which no step is given (the runner strips it from their environment), so
    only the runner or the orchestrator could print it, and never encoded. Every job masks the
    token, most jobs nothing else, and a single literal is the fastest pattern there is.
    """

    def __init__(self, values: Iterable[str | bytes] = (),
                 verbatim: Iterable[str | bytes] = ()) -> None:
        pieces, self.too_short = secret_pieces(values, verbatim)
        self.max_len = len(pieces[0]) if pieces else 0
        self._pieces = tuple(pieces)
        self._pattern = _compile(self._pieces) if pieces else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def _pattern_for(self, data: bytes) -> re.Pattern[bytes] | None:
        """The pattern to run over `data`, None when no form can match there.

        With few forms, looking for each one with `in` (a C substring search that skips
        ahead) and compiling the alternation of those present is several times faster than
        the full pattern, which must try every position whose byte starts some form (hex and
        base64 forms start with digits and letters, that is nearly every byte of a log).
        The result is the same: a form absent from `data` cannot match in it.
        """
        if self._pattern is None or len(self._pieces) > PREFILTER_MAX_FORMS:
            return self._pattern
        present = tuple(p for p in self._pieces if p in data)
        if not present:
            return None
        return self._pattern if len(present) == len(self._pieces) else _compile(present)

    def mask(self, data: bytes) -> bytes:
        """Mask a complete piece of output (no more bytes of it will follow)."""
        pattern = self._pattern_for(data)
        return pattern.sub(MASK, data) if pattern is not None else data

    def contains(self, data: bytes) -> bool:
        """Whether `data` holds a form of a secret (complete in `data`)."""
        pattern = self._pattern_for(data)
        return pattern is not None and pattern.search(data) is not None

    def mask_text(self, text: str) -> str:
        """Mask a string (for lines the runner or orchestrator writes itself)."""
        if self._pattern is None:
            return text
        return self.mask(text.encode()).decode(errors="replace")

    def line_masker(self, max_line: int = 65536) -> LineMasker:
        """A streaming masker for one output stream (one per pipe)."""
        return LineMasker(self, max_line)

    def _mask_prefix(self, data: bytes, keep: int) -> tuple[bytes, int]:
        """Mask the part of `data` that no future byte can change; return it and its length.

        Matches starting before `len(data) - keep` are complete in `data` (no secret is longer
        than `keep + 1`), so they are final; a match that starts there and runs past the cut
        moves the cut to its end, exactly as masking the whole stream would.
        """
        cut = len(data) - keep
        if cut <= 0:
            return b"", 0
        pattern = self._pattern_for(data)
        if pattern is None:
            return data[:cut], cut
        out: list[bytes] = []
        pos = 0
        for match in pattern.finditer(data):
            if match.start() >= cut:
                break
            out.append(data[pos:match.start()])
            out.append(MASK)
            pos = match.end()
        cut = max(cut, pos)
        out.append(data[pos:cut])
        return b"".join(out), cut


class LineMasker:
    """Masks one byte stream that arrives in arbitrary pieces.

    `feed` returns masked whole lines as soon as their newline arrived (and the safe head of
    an over-long line); `finish` returns the rest at end of stream.
    """

    def __init__(self, masker: SecretMasker, max_line: int) -> None:
        self._masker = masker
        self._max_line = max(max_line, masker.max_len)
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        data = self._held + data if self._held else data
        end = data.rfind(b"\n") + 1
        head = self._masker.mask(data[:end]) if end else b""
        rest = data[end:]
        if len(rest) > self._max_line:
            safe, cut = self._masker._mask_prefix(rest, max(self._masker.max_len - 1, 0))
            head += safe
            rest = rest[cut:]
        self._held = rest
        return head

    def finish(self) -> bytes:
        data, self._held = self._held, b""
        return self._masker.mask(data)
