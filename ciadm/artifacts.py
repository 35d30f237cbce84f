"""`ciadm artifacts` and `ciadm download`: the files a run's jobs produced.

A download goes to `DIR/<path>` with `--job`, else `DIR/<job key>/<path>` (the key made into one
directory name as the blob store does). Each file is written to `<name>.part`, its sha256
checked against the one the orchestrator recorded when the file arrived, and only then renamed
into place: a file with its final name is whole and verified. A `.part` left by an interrupted
download is resumed from where it stopped (and checked whole at the end like any other).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from ciadm.client import AddCommand, Client
from ciadm.progress import Progress
from common.artifact_paths import ArtifactPathError, check_artifact_path, job_directory
from common.errors import SolsticeError
from common.text import byte_size
from protos import admin_pb2

READ_BYTES = 1024 * 1024


class DownloadFailed(SolsticeError):
    """A file could not be downloaded whole and verified."""


async def _list(client: Client, args: argparse.Namespace) -> list[admin_pb2.Artifact]:
    reply = await client.stub.ListArtifacts(
        admin_pb2.ListArtifactsRequest(run_id=args.run, job=args.job or ""),
        metadata=client.metadata)
    return list(reply.artifacts)


async def cmd_artifacts(client: Client, args: argparse.Namespace) -> int:
    artifacts = await _list(client, args)
    if args.json:
        print(json.dumps([{
            "job_id": a.job_id, "job_key": a.job_key, "attempt": a.attempt, "path": a.path,
            "size": a.size, "sha256": a.sha256,
            "created": datetime.fromtimestamp(a.created_unix_ms / 1000, UTC).isoformat(),
            "url": a.url or None} for a in artifacts], indent=2))
        return 0
    if not artifacts:
        print("no artifacts")
        return 0
    key_width = max(len("JOB"), *(len(a.job_key) for a in artifacts))
    path_width = max(len("PATH"), *(len(a.path) for a in artifacts))
    print(f"{'JOB':<{key_width}}  {'PATH':<{path_width}}  {'SIZE':>10}  SHA256")
    for a in artifacts:
        print(f"{a.job_key:<{key_width}}  {a.path:<{path_width}}  {byte_size(a.size):>10}  "
              f"{a.sha256[:16]}")
    total = sum(a.size for a in artifacts)
    print(f"{len(artifacts)} files, {byte_size(total)}")
    return 0


def _target(directory: Path, artifact: admin_pb2.Artifact, per_job: bool) -> Path:
    """Where `artifact` goes under `directory`; refuses a path that would leave it."""
    try:
        check_artifact_path(artifact.path)
    except ArtifactPathError as exc:
        raise DownloadFailed(f"the orchestrator listed an artifact path this client refuses: "
                             f"{exc.message}") from exc
    base = directory / job_directory(artifact.job_key) if per_job else directory
    return base / artifact.path


async def _download(client: Client, artifact: admin_pb2.Artifact, target: Path) -> None:
    partial = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    done = 0
    if partial.exists() and partial.stat().st_size <= artifact.size:
        with partial.open("rb") as fh:
            while block := fh.read(READ_BYTES):
                digest.update(block)
                done += len(block)
    else:
        partial.unlink(missing_ok=True)
    progress = Progress(artifact.path, artifact.size)
    request = admin_pb2.ReadArtifactRequest(job_id=artifact.job_id, path=artifact.path,
                                            attempt=artifact.attempt, offset=done)
    with partial.open("ab") as fh:
        async for piece in client.stub.ReadArtifact(request, metadata=client.metadata):
            fh.write(piece.data)
            digest.update(piece.data)
            done += len(piece.data)
            progress.update(done)
        fh.flush()
        os.fsync(fh.fileno())
    progress.finish(done)
    if done != artifact.size or digest.hexdigest() != artifact.sha256:
        partial.unlink()
        raise DownloadFailed(
            f"{artifact.path}: sha256 mismatch: got {done} bytes with sha256 "
            f"{digest.hexdigest()}, the orchestrator recorded {artifact.size} bytes with sha256 "
            f"{artifact.sha256}; the damaged copy was deleted",
            hint="download it again; if it keeps failing, the stored file is damaged")
    partial.replace(target)


async def cmd_download(client: Client, args: argparse.Namespace) -> int:
    artifacts = await _list(client, args)
    if args.paths:
        listed = {a.path for a in artifacts}
        missing = [p for p in args.paths if p not in listed]
        if missing:
            raise DownloadFailed(
                f"no artifact {', '.join(map(repr, missing))} in this run"
                f"{' job' if args.job else ''}",
                hint="`ciadm artifacts RUN` lists them" + (f" ({len(listed)} files)"
                                                             if listed else " (none here)"))
        artifacts = [a for a in artifacts if a.path in args.paths]
    if not artifacts:
        print("no artifacts to download")
        return 0
    directory = Path(args.output)
    per_job = not args.job
    for artifact in artifacts:
        target = _target(directory, artifact, per_job)
        await _download(client, artifact, target)
        print(f"{target}  {byte_size(artifact.size)}  sha256 {artifact.sha256[:16]} verified")
    return 0


def register(add: AddCommand) -> None:
    listing = add("artifacts", cmd_artifacts, "list the files a run's jobs produced")
    listing.add_argument("run")
    listing.add_argument("--job", metavar="KEY", help="only this job (its key or id)")
    download = add("download", cmd_download,
                   "download a run's artifacts, each checked against its recorded sha256")
    download.add_argument("run")
    download.add_argument("paths", nargs="*", metavar="PATH",
                          help="only these artifact paths (default: all)")
    download.add_argument("--job", metavar="KEY",
                          help="only this job (its key or id); files go straight into DIR")
    download.add_argument("-o", "--output", metavar="DIR", required=True,
                          help="directory to write into (DIR/<job key>/<path> without --job)")
