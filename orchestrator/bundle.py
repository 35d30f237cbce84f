"""A run's record as one streamed `.tar.gz`: `manifest.json` first, then every artifact under
`jobs/<job-key>/attempt-<n>/<path>`, as the manifest lists them.

Built as it is sent (tar headers and gzip by hand around the stored chunks), so neither the
orchestrator nor the client ever holds a whole artifact; the first bytes go out before the
last artifact is read.
"""
from __future__ import annotations

import json
import tarfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

BLOCK = tarfile.BLOCKSIZE
# Readers of a stored artifact: (job_id, attempt, path) -> its bytes in order.
ArtifactReader = Callable[[uuid.UUID, int, str], AsyncIterator[bytes]]


class BundleError(Exception):
    """A stored artifact does not match its manifest entry (size): the bundle is cut short."""


def member_name(job_key: str, attempt: int, path: str) -> str:
    """Where an artifact sits in a run's record (the bundle, `cidev run --record`)."""
    return f"jobs/{job_key}/attempt-{attempt}/{path}"


def _header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


async def _tar(manifest: dict[str, Any], jobs: dict[str, uuid.UUID],
               read: ArtifactReader) -> AsyncIterator[bytes]:
    now = time.time()
    document = json.dumps(manifest, indent=2).encode() + b"\n"
    yield _header("manifest.json", len(document), now) + document + _padding(len(document))
    for job in manifest["jobs"]:
        for artifact in job["artifacts"]:
            name = member_name(job["key"], job["attempt"], artifact["path"])
            yield _header(name, artifact["size"], now)
            sent = 0
            async for chunk in read(jobs[job["key"]], job["attempt"], artifact["path"]):
                sent += len(chunk)
                yield chunk
            if sent != artifact["size"]:
                raise BundleError(f"artifact {name} has {sent} bytes stored, the manifest says "
                                  f"{artifact['size']}")
            yield _padding(sent)
    yield b"\0" * (2 * BLOCK)


async def stream_bundle(manifest: dict[str, Any], jobs: dict[str, uuid.UUID],
                        read: ArtifactReader) -> AsyncIterator[bytes]:
    """The gzip-compressed tar of the run record; `jobs` maps each job key to its id."""
    gzip = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    async for piece in _tar(manifest, jobs, read):
        out = gzip.compress(piece)
        if out:
            yield out
    yield gzip.flush()
