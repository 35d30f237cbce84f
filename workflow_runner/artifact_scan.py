"""Refuse artifact files that hold a secret, before anything is uploaded.

Artifacts are stored as they are, so a file holding a secret (a config file a step wrote, a
log copied into the tree) would publish it to whoever can download the job's artifacts. Each
file is read in blocks and searched for every form the log masker knows (`SecretMasker`:
raw, quoted, escaped, base64, hex); a form split between two blocks is still found. A file
holding one is refused: the job's log names it (never the value) and the job fails, while the
other files are uploaded. The scan sees the bytes of the file: a secret inside a compressed or
encrypted archive is not found.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from common.masking import SecretMasker
from workflow_runner.artifacts import Artifact

BLOCK_BYTES = 1024 * 1024


def holds_secret(path: Path, masker: SecretMasker, block_bytes: int = BLOCK_BYTES) -> bool:
    """Whether the file at `path` contains a form of a secret of `masker`."""
    if not masker:
        return False
    # Keep the last `max_len - 1` bytes of a block: a form starting there may end in the next.
    keep = masker.max_len - 1
    tail = b""
    with path.open("rb") as fh:
        while block := fh.read(block_bytes):
            data = tail + block
            if masker.contains(data):
                return True
            tail = data[-keep:] if keep else b""
    return False


async def refused(files: list[Artifact], masker: SecretMasker) -> list[Artifact]:
    """The artifacts that must not be uploaded; read in a thread so a large artifact does not
    stall the heartbeat and the log stream. Raises `OSError` when a file cannot be read."""
    def scan() -> list[Artifact]:
        return [artifact for artifact in files if holds_secret(artifact.source, masker)]

    return await asyncio.to_thread(scan)
