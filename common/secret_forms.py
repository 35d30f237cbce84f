"""The forms in which a secret value shows up in a log: as printed, quoted, escaped, encoded.

A step rarely leaks a secret only verbatim. `bash -x` quotes it, an unquoted `echo $S` folds
its whitespace, `base64`, `xxd -p`, `urllib.parse.quote` and `json.dumps` encode it. The
masker masks every form returned by `secret_forms`; each function below computes one family
the way the named tool prints it, so a test can compare it with the tool itself.

Forms are bytes and never contain a line break: `LineMasker` masks line by line, so a form
that spans lines is replaced by its lines, stripped as the lines of a multi-line value.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from urllib.parse import quote, quote_plus

MIN_SECRET_LENGTH = 3
# A base64 or hex form shorter than this is not masked: 4-5 character runs of letters and
# digits occur in ordinary output, and masking them everywhere would wreck the log while a
# value that short (3-4 bytes) protects little. Every form of a value of 5 bytes or more
# reaches this length.
MIN_ENCODED_LENGTH = 6

_IFS = re.compile(rb"[ \t\n]+")
# bash's `sh_contains_shell_metas` (lib/sh/shquote.c): a word holding one of these is
# printed by `set -x` in single quotes, every `'` becoming `'\''`.
_SHELL_METAS = frozenset(b" \t\n'\"\\|&;()<>!{}*[?]^$`")
# ... as is a word starting with `#`, and a `~` that starts the word or follows `=` or `:`.
_QUOTED_TILDE_OR_HASH = re.compile(rb"\A#|(?:\A|[=:])~")
# bash's `ansic_quote`: the characters written as a backslash letter inside `$'...'`.
_ANSIC_LETTERS = {0x1B: b"\\E", 0x07: b"\\a", 0x0B: b"\\v", 0x08: b"\\b", 0x0C: b"\\f",
                  0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x5C: b"\\\\", 0x27: b"\\'"}
# Characters glibc's `iswprint` refuses in a UTF-8 locale (checked against bash 5.2).
_UNPRINTABLE = frozenset({"Cc", "Cs", "Cn", "Zl", "Zp"})


def secret_forms(value: bytes) -> tuple[set[bytes], int]:
    """Every form of `value` to mask, and how many of its non-empty lines are too short.

    The whole value (as given and stripped) gets every family; each line of a multi-line
    value gets the textual families (`text_forms`): its lines are what programs print one by
    one, while an encoder sees the whole value.
    """
    lines = [line.strip() for line in value.splitlines()]
    lines = [line for line in lines if line]
    too_short = sum(1 for line in lines if len(line) < MIN_SECRET_LENGTH)
    forms: set[bytes] = set()
    for whole in {value, value.strip()}:
        if len(whole.strip()) >= MIN_SECRET_LENGTH:
            forms |= text_forms(whole)
            forms |= {f for f in encoded_forms(whole) if len(f) >= MIN_ENCODED_LENGTH}
    if len(lines) > 1:
        for line in lines:
            if len(line) >= MIN_SECRET_LENGTH:
                forms |= text_forms(line)
    # Stripped like the lines of a value, so masking never swallows the whitespace around it.
    pieces = {part.strip() for form in forms for part in form.splitlines()}
    return {p for p in pieces if len(p) >= MIN_SECRET_LENGTH}, too_short


def text_forms(value: bytes) -> set[bytes]:
    """The value as shells and serialisers print it: raw, `set -x`, unquoted, JSON, Python
    `repr` (`print(os.environ)`, a dict in a log line, a test failure), URL."""
    forms = {value, single_quoted(value), collapsed(value)}
    for utf8 in (False, True):
        forms.add(ansi_c_quoted(value, utf8=utf8))
        forms.add(xtrace_words(value, utf8=utf8))
    forms |= json_forms(value) | python_repr(value)
    forms |= {quote(value, safe=""), quote(value, safe="/"), quote_plus(value, safe="")}
    return {f.encode() if isinstance(f, str) else f for f in forms}


def encoded_forms(value: bytes) -> set[bytes]:
    """base64 (standard and URL-safe, standalone and embedded) and hex (`xxd -p`, `od`)."""
    return base64_forms(value) | hex_forms(value)


def single_quoted(value: bytes) -> bytes:
    """The inside of bash's `'...'` quoting: `it's` -> `it'\\''s` (as in `'it'\\''s'`)."""
    return value.replace(b"'", b"'\\''")


def ansi_c_quoted(value: bytes, *, utf8: bool) -> bytes:
    """The inside of bash's `$'...'` quoting; `utf8` as in a UTF-8 locale (printable
    non-ASCII characters kept), otherwise as in the C locale (every such byte in octal)."""
    out: list[bytes] = []
    for char in value.decode("utf-8", errors="surrogateescape"):
        code = ord(char)
        if code in _ANSIC_LETTERS:
            out.append(_ANSIC_LETTERS[code])
        elif 0x20 <= code < 0x7F:
            out.append(char.encode())
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(b"\\%03o" % (code - 0xDC00))
        elif utf8 and code > 0x7F and unicodedata.category(char) not in _UNPRINTABLE:
            out.append(char.encode())
        else:
            out.extend(b"\\%03o" % byte for byte in char.encode())
    return b"".join(out)


def xtrace_word(word: bytes, *, utf8: bool) -> bytes:
    """One word as `set -x` prints it (bash's `xtrace_print_word_list`)."""
    if any(byte in _SHELL_METAS for byte in word) or _QUOTED_TILDE_OR_HASH.search(word):
        return b"'" + single_quoted(word) + b"'"
    quoted = ansi_c_quoted(word, utf8=utf8)
    return word if quoted == word else b"$'" + quoted + b"'"


def xtrace_words(value: bytes, *, utf8: bool) -> bytes:
    """`set -x` of an unquoted `$S`: each word quoted on its own, one space between; the
    opening quote of the first word and the closing one of the last are left out, as text
    around the expansion joins those words."""
    words = _IFS.split(value.strip(b" \t\n"))
    line = b" ".join(xtrace_word(w, utf8=utf8) for w in words if w)
    line = line.removeprefix(b"$'").removeprefix(b"'")
    return line.removesuffix(b"'")


def collapsed(value: bytes) -> bytes:
    """An unquoted `echo $S`: split on IFS whitespace, words joined by one space."""
    return b" ".join(w for w in _IFS.split(value) if w)


def json_forms(value: bytes) -> set[bytes]:
    """`json.dumps` without the quotes, ASCII-only and not (none for non-UTF-8 bytes)."""
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return set()
    return {json.dumps(text, ensure_ascii=ascii_only)[1:-1].encode() for ascii_only in (True, False)}


def python_repr(value: bytes) -> set[bytes]:
    """`repr` of the value as a `str`, without the quotes (none for non-UTF-8 bytes)."""
    try:
        return {repr(value.decode())[1:-1].encode()}
    except UnicodeDecodeError:
        return set()


def base64_forms(value: bytes) -> set[bytes]:
    """The standalone encodings (padded or not) in both alphabets, and the part of the
    encoding that is fixed whatever bytes surround the value, for each of the three
    alignments it can have in a longer encoded stream."""
    forms: set[bytes] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(value)
        forms |= {whole, whole.rstrip(b"=")}
        for offset in range(3):
            encoded = encode(b"\0" * offset + value)
            # Characters are 6 bits: the first ceil(8*offset/6) mix in preceding bytes, those
            # after floor(8*(offset+len)/6) mix in following ones.
            forms.add(encoded[-(-8 * offset // 6):8 * (offset + len(value)) // 6])
    return forms


def hex_forms(value: bytes) -> set[bytes]:
    """Lower and upper case hex (`xxd -p`, `.hex()`), and bytes spaced as `od -An -tx1`."""
    lower = binascii.hexlify(value)
    return {lower, lower.upper(), binascii.hexlify(value, b" ")}

