"""The ANSI-to-HTML converter of the job page."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.web.ansi import AnsiRenderer, Style, apply_sgr, palette, to_html

ESC = "\x1b"


def test_html_is_escaped_before_colours_are_read() -> None:
    assert to_html("<script>alert('x') & \"y\"</script>\n") == [
        "&lt;script&gt;alert('x') &amp; \"y\"&lt;/script&gt;"]
    assert to_html(f"{ESC}[31m<b>{ESC}[0m") == ['<span class="fg1">&lt;b&gt;</span>']


def test_the_sixteen_colours_bold_italic_underline_and_resets() -> None:
    line = f"{ESC}[1;32mok{ESC}[0m {ESC}[3;4;91mbright{ESC}[22;23;24m{ESC}[39m plain{ESC}[44mbg{ESC}[49m!"
    assert to_html(line) == ['<span class="fg2 b">ok</span> <span class="fg9 i u">bright</span>'
                             ' plain<span class="bg4">bg</span>!']
    assert to_html(f"{ESC}[97;107mx{ESC}[m") == ['<span class="fg15 bg15">x</span>']


def test_256_colours_and_truecolor() -> None:
    assert palette(3) == 3 and palette(16) == "#000000" and palette(196) == "#ff0000"
    assert palette(231) == "#ffffff" and palette(232) == "#080808" and palette(255) == "#eeeeee"
    assert to_html(f"{ESC}[38;5;196mred{ESC}[48;5;2m{ESC}[38;2;1;2;255mblue") == [
        '<span style="color:#ff0000">red</span>'
        '<span class="bg2" style="color:#0102ff">blue</span>']
    # Malformed extended colours are ignored, not guessed.
    style = Style()
    for params in ("38;5", "38;2;1;2", "38;5;300", "38", "48;9", "3x"):
        assert apply_sgr(style, params) == style
    assert apply_sgr(style, "38:5:1").fg == 1


def test_other_escapes_are_dropped() -> None:
    text = (f"{ESC}]0;window title{ESC}\\a{ESC}[2K{ESC}[1Gb{ESC}(Bc{ESC}[?25l"
            f"{ESC}]8;;http://x?a&b{chr(7)}link{ESC}]8;;{chr(7)}d{ESC}")
    assert to_html(text) == ["abclinkd"]


def test_carriage_returns_keep_what_a_terminal_would_show() -> None:
    assert to_html("10%\r50%\r100%\r\ndone\r\n") == ["100%", "done"]


def test_styles_carry_across_lines_and_each_line_is_closed() -> None:
    assert to_html(f"{ESC}[31mone\ntwo{ESC}[0m\nthree\n") == [
        '<span class="fg1">one</span>', '<span class="fg1">two</span>', "three"]
    renderer = AnsiRenderer()
    assert renderer.lines(f"{ESC}[1ma\n") == ['<span class="b">a</span>']
    assert renderer.lines("b\n") == ['<span class="b">b</span>']


@given(st.text(alphabet=st.sampled_from(["a", "<", "&", "\n", "\r", ESC, "[", "]", ";", "3",
                                         "8", "5", "m", "2", "\x07", "\"", "'"]), max_size=80))
def test_no_input_makes_markup_or_leaves_an_escape(text: str) -> None:
    for line in to_html(text):
        outside_tags = line
        for tag in ("</span>",):
            outside_tags = outside_tags.replace(tag, "")
        while "<span" in outside_tags:
            start = outside_tags.index("<span")
            outside_tags = outside_tags[:start] + outside_tags[outside_tags.index(">", start) + 1:]
        assert "<" not in outside_tags and ">" not in outside_tags and ESC not in outside_tags
        assert line.count("<span") == line.count("</span>")
