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
- A job can add values at run time: a line holding `::add-mask::VALUE` (anywhere in the line,
  so `set -x`'s `+ echo '::add-mask::VALUE'` counts) masks VALUE, in every form, in everything
  after it (and in the rest of its own block of lines); the line itself shows
  `::add-mask::***`. `MAX_ADDED_MASKS` values of at most `MAX_ADDED_MASK_BYTES` each per job;
  past either, the command's line is still hidden but nothing more is masked.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

from common.secret_forms import MIN_SECRET_LENGTH, secret_forms

__all__ = ["ADD_MASK", "MASK", "MAX_ADDED_MASKS", "MAX_ADDED_MASK_BYTES", "MIN_SECRET_LENGTH",
           "LineMasker", "SecretMasker", "secret_pieces"]

MASK = b"***"
ADD_MASK = b"::add-mask::"
MAX_ADDED_MASKS = 256
MAX_ADDED_MASK_BYTES = 4096
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
        self.added: list[bytes] = []  # values added at run time, in order
        self._use(pieces)

    def _use(self, pieces: list[bytes]) -> None:
        self.max_len = len(pieces[0]) if pieces else 0
        self._pieces = tuple(pieces)
        self._pattern = _compile(self._pieces) if pieces else None

    def add(self, value: bytes) -> bool:
        """Mask `value` (in every form) from now on: a value a job registered at run time.
        False when it adds nothing: too short, already added, or past the job's limits."""
        value = value.strip()
        if (len(value) < MIN_SECRET_LENGTH or len(value) > MAX_ADDED_MASK_BYTES
                or value in self.added or len(self.added) >= MAX_ADDED_MASKS):
            return False
        pieces, _ = secret_pieces([value])
        self.added.append(value)
        self._use(sorted(set(self._pieces) | set(pieces), key=lambda p: (-len(p), p)))
        return True

    def take_commands(self, lines: bytes, on_mask: Callable[[bytes], None] | None = None) -> bytes:
        """`lines` (whole lines) with the value of every `::add-mask::VALUE` registered
        (`add`, then `on_mask(value)` for each value new to this masker) and hidden: the
        line keeps what precedes the command and shows `::add-mask::***`."""
        if ADD_MASK not in lines:
            return lines
        out = []
        for line in lines.split(b"\n"):  # lines end at \n only, as `LineMasker` cuts them
            head, *values = line.split(ADD_MASK)
            if not values:
                out.append(line)
                continue
            ending = b"\r" if line.endswith(b"\r") else b""
            for value in values:  # each command of the line, should there be several
                value = value.strip()
                quote = head[-1:]
                if quote in (b"'", b'"') and value.endswith(quote):  # `set -x`, a quoted echo
                    value = value[:-1]
                if value and value != MASK and self.add(value) and on_mask is not None:
                    on_mask(value)
            out.append(head + (ADD_MASK + MASK) * len(values) + ending)
        return b"\n".join(out)

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

    def line_masker(self, max_line: int = 65536, *,
                    on_mask: Callable[[bytes], None] | None = None) -> LineMasker:
        """A streaming masker for one output stream (one per pipe); with `on_mask`, it also
        takes `::add-mask::` commands and calls `on_mask` with each value they add."""
        return LineMasker(self, max_line, on_mask)

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
    an over-long line); `finish` returns the rest at end of stream. With `on_mask`, lines are
    searched for `::add-mask::` commands before masking (`SecretMasker.take_commands`): an
    over-long line is never emitted past the start of a command, and a command whose value
    grows past `MAX_ADDED_MASK_BYTES` is hidden up to its newline, so the value never shows.
    """

    def __init__(self, masker: SecretMasker, max_line: int,
                 on_mask: Callable[[bytes], None] | None = None) -> None:
        self._masker = masker
        self._max_line = max_line
        self._on_mask = on_mask
        self._held = b""
        self._dropping = False  # the rest of an over-long command line

    def _take(self, lines: bytes) -> bytes:
        return lines if self._on_mask is None else self._masker.take_commands(lines, self._on_mask)

    def feed(self, data: bytes) -> bytes:
        if self._dropping:
            newline = data.find(b"\n")
            if newline < 0:
                return b""
            self._dropping, data = False, data[newline:]
        data = self._held + data if self._held else data
        end = data.rfind(b"\n") + 1
        head = self._masker.mask(self._take(data[:end])) if end else b""
        rest = data[end:]
        if len(rest) > max(self._max_line, self._masker.max_len):
            marker = rest.find(ADD_MASK) if self._on_mask is not None else -1
            if marker >= 0:
                # Emit what precedes the command; hold the command until its newline, unless
                # its value is longer than any mask may be: then hide it to the end of its line.
                head += self._masker.mask(rest[:marker])
                rest = rest[marker:]
                if len(rest) - len(ADD_MASK) > MAX_ADDED_MASK_BYTES:
                    self._held, self._dropping = b"", True
                    return head + ADD_MASK + MASK
            else:
                # Held back: what could still become a secret, or the start of a command.
                keep = max(self._masker.max_len - 1,
                           len(ADD_MASK) - 1 if self._on_mask is not None else 0)
                safe, cut = self._masker._mask_prefix(rest, keep)
                head += safe
                rest = rest[cut:]
        self._held = rest
        return head

    def finish(self) -> bytes:
        data, self._held = self._held, b""
        return self._masker.mask(self._take(data))
