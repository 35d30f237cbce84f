"""Artifacts of the jobs this job needs, placed under `inputs/<job-key>/` in the workspace
before setup runs (`FetchInputs`).

Each file is written to a temporary name beside its place and renamed only once its size and
sha256 match what the orchestrator recorded, so a step never sees a partial or altered input.
A retried fetch starts over: files already in place are simply written again.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.artifact_paths import ArtifactPathError, check_artifact_path
from common.errors import SolsticeError
from protos import runner_pb2
from workflow_runner.client import RunnerClient

INPUTS_DIR = "inputs"


class InputError(SolsticeError):
    """An input arrived damaged or names a place outside `inputs/`: the job cannot start."""


@dataclass(frozen=True)
class Fetched:
    files: int
    bytes: int


def _target(root: Path, chunk: runner_pb2.InputChunk) -> Path:
    key = PurePosixPath(chunk.job_key)
    if not chunk.job_key or len(key.parts) != 1 or chunk.job_key in (".", ".."):
        raise InputError(f"an input names the job {chunk.job_key!r}, which is no job key")
    try:
        check_artifact_path(chunk.path)
    except ArtifactPathError as exc:
        raise InputError(f"an input of {chunk.job_key} was refused: {exc.message}") from exc
    return root / chunk.job_key / chunk.path


class _Writer:
    """One input file being received."""

    def __init__(self, target: Path, first: runner_pb2.InputChunk) -> None:
        self.target = target
        self.expected = (first.size, first.sha256)
        self.name = f"{first.job_key}/{first.path}"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.partial = target.with_name(f".{target.name}.partial")
        self.out = self.partial.open("wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.digest.update(data)
        self.size += len(data)

    def finish(self) -> int:
        self.out.close()
        if (self.size, self.digest.hexdigest()) != self.expected:
            self.partial.unlink(missing_ok=True)
            raise InputError(f"input {self.name} arrived with {self.size} bytes and sha256 "
                             f"{self.digest.hexdigest()}, not {self.expected[0]} bytes and "
                             f"{self.expected[1]}")
        os.replace(self.partial, self.target)
        return self.size

    def abandon(self) -> None:
        self.out.close()
        self.partial.unlink(missing_ok=True)


async def fetch(client: RunnerClient, workspace: Path) -> Fetched:
    """Receive every input into `workspace/inputs/`, retrying the whole fetch on a transient
    error. `InputError` when a file is damaged or misplaced."""
    root = workspace / INPUTS_DIR

    async def receive() -> Fetched:
        files = total = 0
        writer: _Writer | None = None
        request = runner_pb2.FetchInputsRequest(job_id=client.job_id)
        try:
            async for chunk in client.stub.FetchInputs(request, metadata=client.metadata):
                if writer is None:
                    writer = _Writer(_target(root, chunk), chunk)
                writer.write(chunk.data)
                if chunk.last:
                    total += writer.finish()
                    files += 1
                    writer = None
        finally:
            if writer is not None:
                writer.abandon()
        return Fetched(files, total)

    return await client.with_retry(receive, "FetchInputs")
