"""Collect the files matching the job's artifact patterns and upload them with their sha256.

Patterns are relative to the workspace and may use `**`. Only regular files inside the
workspace are sent (a symlink pointing outside is skipped, so a pattern cannot publish the
machine's own files). One `UploadArtifact` call carries every file: the first chunk of a file
names its path, the last one has `last`, `size` and the hex `sha256`. A retried call sends all
files again, so the orchestrator must replace a file it already has under the same path.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from protos import runner_pb2
from workflow_runner.client import RunnerClient

CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class Collected:
    files: list[Path]  # relative to the workspace, sorted
    problems: list[str]  # one line per pattern or file that was refused


def collect(workspace: Path, patterns: list[str]) -> Collected:
    """The regular files under `workspace` matching any of `patterns`."""
    root = workspace.resolve()
    found: set[Path] = set()
    problems: list[str] = []
    for pattern in patterns:
        pure = PurePosixPath(pattern)
        if not pattern or pure.is_absolute() or ".." in pure.parts:
            problems.append(f"artifact pattern {pattern!r} ignored: it must be a relative path "
                            "inside the workspace")
            continue
        for path in root.glob(pattern):
            target = path.resolve()
            if not target.is_relative_to(root):
                problems.append(f"artifact {path.relative_to(root)} skipped: it links "
                                "outside the workspace")
            elif target.is_file():
                found.add(path.relative_to(root))
    return Collected(sorted(found), problems)


def _chunks(workspace: Path, files: list[Path], job_id: str) -> Iterator[runner_pb2.ArtifactChunk]:
    for rel in files:
        digest = hashlib.sha256()
        size = 0
        with (workspace / rel).open("rb") as fh:
            block = fh.read(CHUNK_BYTES)
            first = True
            while True:
                following = fh.read(CHUNK_BYTES) if block else b""
                digest.update(block)
                size += len(block)
                last = not following
                yield runner_pb2.ArtifactChunk(
                    job_id=job_id, path=rel.as_posix() if first else "", data=block,
                    last=last, sha256=digest.hexdigest() if last else "",
                    size=size if last else 0)
                if last:
                    break
                block, first = following, False


async def upload(client: RunnerClient, workspace: Path, files: list[Path]) -> runner_pb2.ArtifactAck:
    """Send `files`; retried as a whole on transient errors. A file that cannot be read
    raises `OSError` (the call is cancelled, nothing half-sent is kept)."""
    root = workspace.resolve()

    async def send() -> runner_pb2.ArtifactAck:
        # Written chunk by chunk rather than from a request iterator: grpc turns an
        # iterator's exception into a bare cancellation, which would hide an unreadable file.
        call = client.stub.UploadArtifact(metadata=client.metadata)
        try:
            for chunk in _chunks(root, files, client.job_id):
                await call.write(chunk)
            await call.done_writing()
        except asyncio.InvalidStateError:
            pass  # the server ended the call early; awaiting it tells how
        except BaseException:
            call.cancel()
            raise
        return await call

    return await client.with_retry(send, "UploadArtifact")
