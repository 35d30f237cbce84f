"""Terminal colours in job logs as HTML: SGR escapes become styled `<span>`s.

The text is HTML-escaped first, then its escapes are read: SGR 0 (reset), 1/22 (bold), 3/23
(italic), 4/24 (underline), 30-37/90-97 and 40-47/100-107 (the 16 colours, as classes
`fgN`/`bgN` the page's style sheet colours), 39/49 (default colours), 38;5;N / 48;5;N (the
256-colour palette) and 38;2;R;G;B / 48;2;R;G;B (truecolor), the last two as inline colours.
Every other escape (cursor moves, OSC titles and links, charset switches) is dropped. A
carriage return inside a line keeps what was written after it, as a terminal shows a
progress bar. Styles carry over from one line to the next within one call; each line's
HTML is complete on its own (its spans closed), so lines can be wrapped in elements.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, replace

# CSI (ESC [ params intermediates final), OSC (ESC ] ... BEL or ESC \), ESC + intermediates +
# final (charset switches), any other ESC + byte.
ESCAPE = re.compile(r"\x1b(?:\[([0-9;:?<=>]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?"
                    r"|[ -/]+[0-~]|[@-Z\\-_]|.?)")
# The 6x6x6 cube and the grey ramp of the 256-colour palette (xterm's values).
CUBE = (0, 95, 135, 175, 215, 255)


@dataclass(frozen=True)
class Style:
    """The current SGR state: colours as a class number (0-15) or a `#rrggbb` string."""

    fg: int | str | None = None
    bg: int | str | None = None
    bold: bool = False
    italic: bool = False
    underline: bool = False

    def open_tag(self) -> str:
        """`<span ...>` for this style, or "" when it is the default."""
        classes, styles = [], []
        for name, value in (("fg", self.fg), ("bg", self.bg)):
            if isinstance(value, int):
                classes.append(f"{name}{value}")
            elif value is not None:
                styles.append(f"{'color' if name == 'fg' else 'background-color'}:{value}")
        classes += [name for name, on in (("b", self.bold), ("i", self.italic),
                                          ("u", self.underline)) if on]
        if not classes and not styles:
            return ""
        attrs = f' class="{" ".join(classes)}"' if classes else ""
        attrs += f' style="{";".join(styles)}"' if styles else ""
        return f"<span{attrs}>"


def palette(n: int) -> int | str:
    """Colour `n` of the 256-colour palette: 0-15 as the class number, else `#rrggbb`."""
    if n < 16:
        return n
    if n < 232:
        n -= 16
        r, g, b = CUBE[n // 36], CUBE[n // 6 % 6], CUBE[n % 6]
    else:
        r = g = b = 8 + (n - 232) * 10
    return f"#{r:02x}{g:02x}{b:02x}"


def _extended(codes: list[int], i: int) -> tuple[int | str | None, int]:
    """The colour of `38;5;N` / `38;2;R;G;B` starting at `codes[i]` (the 38 or 48), and how
    many codes it used; None for a malformed one (its codes are skipped)."""
    if i + 1 < len(codes) and codes[i + 1] == 5:
        if i + 2 < len(codes) and 0 <= codes[i + 2] <= 255:
            return palette(codes[i + 2]), 3
        return None, len(codes) - i
    if i + 1 < len(codes) and codes[i + 1] == 2:
        rgb = codes[i + 2:i + 5]
        if len(rgb) == 3 and all(0 <= c <= 255 for c in rgb):
            return "#{:02x}{:02x}{:02x}".format(*rgb), 5
        return None, len(codes) - i
    return None, len(codes) - i


def apply_sgr(style: Style, params: str) -> Style:
    """`style` after one SGR sequence's parameters (`"1;31"`; empty means reset)."""
    try:
        codes = [int(p) if p else 0 for p in re.split(r"[;:]", params)] if params else [0]
    except ValueError:
        return style
    i = 0
    while i < len(codes):
        code, used = codes[i], 1
        if code == 0:
            style = Style()
        elif code in (1, 3, 4):
            style = replace(style, **{{1: "bold", 3: "italic", 4: "underline"}[code]: True})
        elif code in (22, 23, 24):
            style = replace(style, **{{22: "bold", 23: "italic", 24: "underline"}[code]: False})
        elif 30 <= code <= 37 or 90 <= code <= 97:
            style = replace(style, fg=code - 30 if code < 90 else code - 90 + 8)
        elif 40 <= code <= 47 or 100 <= code <= 107:
            style = replace(style, bg=code - 40 if code < 100 else code - 100 + 8)
        elif code == 39:
            style = replace(style, fg=None)
        elif code == 49:
            style = replace(style, bg=None)
        elif code in (38, 48):
            colour, used = _extended(codes, i)
            if colour is not None:
                style = replace(style, **{"fg" if code == 38 else "bg": colour})
        i += used
    return style


class AnsiRenderer:
    """Turns log text into HTML lines; `style` carries over between calls of one renderer."""

    def __init__(self) -> None:
        self.style = Style()

    def lines(self, text: str) -> list[str]:
        """One HTML string per line of `text` (a final newline ends the last line)."""
        if text.endswith("\n"):
            text = text[:-1]
        return [self._line(line) for line in text.split("\n")] if text else []

    def _line(self, line: str) -> str:
        line = line.removesuffix("\r")
        if "\r" in line:
            line = line.rsplit("\r", 1)[1]
        out: list[str] = []
        is_open = False  # a span is open; spans open only around text, never empty

        def text(piece: str) -> None:
            nonlocal is_open
            if piece and not is_open and (tag := self.style.open_tag()):
                out.append(tag)
                is_open = True
            out.append(piece)

        position = 0
        escaped = html.escape(line, quote=False)
        for match in ESCAPE.finditer(escaped):
            text(escaped[position:match.start()])
            position = match.end()
            if match.group(2) == "m":
                before = self.style
                self.style = apply_sgr(self.style, match.group(1))
                if is_open and self.style != before:
                    out.append("</span>")
                    is_open = False
        text(escaped[position:])
        if is_open:
            out.append("</span>")
        return "".join(out)


def to_html(text: str) -> list[str]:
    """The HTML lines of `text`, starting from the default style."""
    return AnsiRenderer().lines(text)
