"""A one-line progress bar on a terminal (stderr), redrawn at most ten times a second; silent
when stderr is not a terminal (a pipe, a file, CI logs)."""
from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24
MIB = 1024 * 1024


class Progress:
    """`update(done)` as bytes arrive, `finish()` at the end."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.shown = self.stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.shown or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        part = done / self.total if self.total else 1.0
        filled = int(part * WIDTH)
        rate = done / max(now - self._started, 1e-6) / MIB
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] "
                          f"{part:4.0%} {done / MIB:.1f}/{self.total / MIB:.1f} MiB "
                          f"{rate:.1f} MiB/s\x1b[K")
        self.stream.flush()

    def finish(self, done: int) -> None:
        if self.shown:
            self.update(done, force=True)
            self.stream.write("\n")
            self.stream.flush()
