"""`ciadm download`'s progress bar: drawn on a terminal, silent elsewhere."""
from __future__ import annotations

import io

from ciadm.progress import MIB, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_is_drawn_on_a_terminal_only() -> None:
    screen = Terminal()
    bar = Progress("out/image.iso", 4 * MIB, screen)
    bar.update(MIB, force=True)
    bar.finish(4 * MIB)
    drawn = screen.getvalue()
    assert drawn.startswith("\rout/image.iso [######..................]  25% 1.0/4.0 MiB")
    assert "[########################] 100% 4.0/4.0 MiB" in drawn and drawn.endswith("\n")
    piped = io.StringIO()
    quiet = Progress("out/image.iso", 4 * MIB, piped)
    quiet.update(MIB, force=True)
    quiet.finish(4 * MIB)
    assert piped.getvalue() == ""
