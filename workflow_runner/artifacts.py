"""Collect the files matching the job's artifact patterns, and every file under `out/` in the
workspace (a job publishes by writing there), and upload them with their sha256.

Patterns are relative to the workspace and may use `**`. Only regular files inside the
workspace are sent: a symlink resolving outside it is skipped (a pattern cannot publish the
machine's own files), and a name the orchestrator would refuse (`common.artifact_paths`) is
skipped with the reason. Each file is its own `UploadArtifact` call, read and sent
`CHUNK_BYTES` at a time (never whole in memory): the first chunk names its path, the last one
has `last`, `size` and the hex `sha256`. A call that fails transiently is retried; the
orchestrator stores a path once per attempt, so `ALREADY_EXISTS` on a retry means an earlier
try landed and only its answer was lost.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import grpc

from common.artifact_paths import ArtifactPathError, check_artifact_path
from common.errors import SolsticeError
from protos import runner_pb2
from workflow_runner.client import RunnerClient

CHUNK_BYTES = 256 * 1024
# What the orchestrator answers a file it will not store (too large, a bad name, uploaded
# twice, arrived damaged): final for that file, never retried.
REFUSALS = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT,
                      grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.DATA_LOSS})


class ArtifactRefused(SolsticeError):
    """The orchestrator refused an artifact; the job's files were not all stored."""


@dataclass(frozen=True)
class Artifact:
    path: str     # its name: relative to the workspace, POSIX, accepted by check_artifact_path
    source: Path  # the regular file it resolves to, inside the workspace


@dataclass(frozen=True)
class Collected:
    files: list[Artifact]  # sorted by path
    problems: list[str]  # one line per pattern or file that was refused


@dataclass(frozen=True)
class Uploaded:
    files: int
    bytes: int


# The `out/` contract: whatever a step writes under `out/` is published without being listed.
OUT_PATTERN = "out/**/*"


def collect(workspace: Path, patterns: list[str]) -> Collected:
    """The regular files under `workspace` matching any of `patterns`."""
    root = workspace.resolve()
    found: dict[str, Artifact] = {}
    problems: list[str] = []
    for pattern in patterns:
        pure = PurePosixPath(pattern)
        if not pattern or pure.is_absolute() or ".." in pure.parts:
            problems.append(f"artifact pattern {pattern!r} ignored: it must be a relative path "
                            "inside the workspace")
            continue
        for path in root.glob(pattern):
            name = path.relative_to(root).as_posix()
            target = path.resolve()
            if not target.is_relative_to(root):
                problems.append(f"artifact {name} skipped: it links outside the workspace")
                continue
            if not target.is_file() or name in found:
                continue
            try:
                check_artifact_path(name)
            except ArtifactPathError as exc:
                problems.append(f"artifact skipped: {exc.message}")
                continue
            found[name] = Artifact(name, target)
    return Collected([found[name] for name in sorted(found)], problems)


def _open(artifact: Artifact) -> int:
    """A descriptor of the artifact's file, refusing what is no longer the regular file that
    was collected (a symlink or a FIFO put in its place since)."""
    fd = os.open(artifact.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"artifact {artifact.path} is no longer a regular file")
    return fd


def _chunks(artifact: Artifact, job_id: str) -> Iterator[runner_pb2.ArtifactChunk]:
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(_open(artifact), "rb") as fh:
        block = fh.read(CHUNK_BYTES)
        first = True
        while True:
            following = fh.read(CHUNK_BYTES) if block else b""
            digest.update(block)
            size += len(block)
            last = not following
            yield runner_pb2.ArtifactChunk(
                job_id=job_id, path=artifact.path if first else "", data=block,
                last=last, sha256=digest.hexdigest() if last else "",
                size=size if last else 0)
            if last:
                return
            block, first = following, False


async def _upload_file(client: RunnerClient, artifact: Artifact) -> int:
    tries = 0

    async def send() -> int:
        nonlocal tries
        tries += 1
        size = 0
        # Written chunk by chunk rather than from a request iterator: grpc turns an
        # iterator's exception into a bare cancellation, which would hide an unreadable file.
        call = client.stub.UploadArtifact(metadata=client.metadata)
        try:
            for chunk in _chunks(artifact, client.job_id):
                size += len(chunk.data)
                await call.write(chunk)
            await call.done_writing()
        except asyncio.InvalidStateError:
            pass  # the server ended the call early; awaiting it tells how
        except BaseException:
            call.cancel()
            raise
        try:
            return (await call).bytes
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS and tries > 1:
                return size
            if exc.code() in REFUSALS:
                raise ArtifactRefused(f"{exc.code().name}: {exc.details()}") from exc
            raise

    return await client.with_retry(send, f"UploadArtifact {artifact.path}")


async def upload(client: RunnerClient, files: list[Artifact]) -> Uploaded:
    """Send `files` one call each, retrying transient errors. Stops at the first file the
    orchestrator refuses (`ArtifactRefused`) or that cannot be read (`OSError`; its call is
    cancelled and nothing of it is stored)."""
    total = 0
    for artifact in files:
        total += await _upload_file(client, artifact)
    return Uploaded(len(files), total)
