"""What the command-line tools (`cidev`, `ciadm`, the integrations' commands) do at their
edge, whatever the command."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

# 128 + SIGPIPE: what a shell reports for a writer whose reader went away.
BROKEN_PIPE_STATUS = 141
# A table's free-text column (an error) is cut to this many characters.
TEXT_WIDTH = 80


def quiet_on_closed_stdout(command: Callable[[], int]) -> int:
    """Run `command` and return its exit status; when the reader of stdout went away
    (`ciadm show RUN | head -4`), end quietly with status 141 instead of a traceback."""
    try:
        status = command()
        sys.stdout.flush()  # inside the try: buffered output may meet the closed pipe only here
        return status
    except BrokenPipeError:
        # Python flushes stdout once more at exit; pointing it at /dev/null keeps that flush
        # from failing and printing "Exception ignored ... BrokenPipeError" after all.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_STATUS


def one_line(text: str, width: int = TEXT_WIDTH) -> str:
    """`text` on one line of at most `width` characters (an ellipsis ends a cut one), for a
    table."""
    flat = " ".join(text.split())
    return flat[:width - 1] + "…" if len(flat) > width else flat
