"""Masks a step registers through a file: each line written to `$SOLSTICE_MASK_FILE` is a
value to mask from then on, like a `::add-mask::VALUE` line, without printing anything.

The file lives outside the workspace (so it is never an artifact) and is read whenever a step's
output arrives, before that output is masked: a value written to it is masked in everything
the step prints afterwards. Only complete lines count while the step runs; when it ends, a
last line without its newline counts too.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from common.masking import MAX_ADDED_MASK_BYTES, MAX_ADDED_MASKS, SecretMasker

ENV = "SOLSTICE_MASK_FILE"
# Read no further than this: past it every value would be refused anyway.
MAX_READ_BYTES = MAX_ADDED_MASKS * (MAX_ADDED_MASK_BYTES + 2)


class MaskFile:
    """The mask file of one job; `poll` takes what was written since the last poll."""

    def __init__(self, path: Path, masker: SecretMasker,
                 on_mask: Callable[[bytes], None]) -> None:
        self.path = path
        self._masker = masker
        self._on_mask = on_mask
        self._offset = 0

    @classmethod
    def create(cls, masker: SecretMasker, on_mask: Callable[[bytes], None]) -> MaskFile:
        """An empty mask file (mode 0600) in the temporary directory."""
        fd, name = tempfile.mkstemp(prefix="solstice-masks-")
        os.close(fd)
        return cls(Path(name), masker, on_mask)

    def poll(self, *, final: bool = False) -> None:
        """Register the lines written since the last poll (with `final`, an unterminated last
        line too). A file a step truncated or replaced is read again from its start; a
        symlink, FIFO or device put in its place is ignored (never followed, never waited on)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return  # removed, or made a symlink: the step's business, nothing to take
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return
            if info.st_size < self._offset:
                self._offset = 0
            if info.st_size == self._offset or self._offset >= MAX_READ_BYTES:
                return
            data = os.pread(fd, min(info.st_size, MAX_READ_BYTES) - self._offset, self._offset)
        except OSError:
            return
        finally:
            os.close(fd)
        end = len(data) if final else data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            if self._masker.add(line):
                self._on_mask(line.strip())

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
