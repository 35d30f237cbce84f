"""The run record's description: `manifest.json`, written when a run ends, and its gate.

The manifest says everything a later reader needs to trust a run's outputs without the
database: what ran (workflow name and the sha256 of its text), why (the trigger), whether it
was trusted and who approved it, each job's attempt, machine, timings and steps, and every
artifact with its size and sha256. Its JSON Schema is `docs/schemas/manifest.schema.json`,
generated from `Manifest` (`python -m orchestrator.manifest --schema`).

The gate reads the manifest only: a run is `accepted` when every job that was meant to run
succeeded and every artifact pattern a job marked `required=#true` matched at least one of
that job's files; otherwise it is `quarantined` with each reason listed. Nothing is dropped:
a quarantined run keeps its files, flagged.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import sys
import uuid
from datetime import datetime
from importlib import metadata
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from common.messages import JobState

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkflowRecord(_Record):
    name: str
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the workflow's text")


class TriggerRecord(_Record):
    forge: str
    event: str
    repository: str = Field(description="owner/name on the forge")
    ref: str
    commit: str
    pull_request: int | None = None
    sender: str | None = Field(None, description="the forge login whose action started the run")


class StepRecord(_Record):
    index: int = Field(ge=0)
    name: str
    state: str
    exit_code: int | None = None
    duration_ms: int | None = None


class ArtifactRecord(_Record):
    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class JobRecord(_Record):
    key: str
    matrix: dict[str, str] = {}
    label: str
    image: str | None = None
    backend: str | None = None
    host: str | None = None
    attempt: int = Field(ge=0)
    state: str
    exit_code: int | None = Field(None, description="the last step's exit code that ran")
    message: str = ""
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    steps: list[StepRecord]
    artifacts: list[ArtifactRecord]
    required_artifacts: list[str] = Field([], description="patterns marked required=#true")


class GateRecord(_Record):
    status: Literal["accepted", "quarantined"]
    reasons: list[str] = Field(description="why the run was quarantined; empty when accepted")


class Manifest(_Record):
    """`manifest.json` at the root of a run's record."""

    manifest_version: Literal[1] = MANIFEST_VERSION
    run_id: uuid.UUID
    workflow: WorkflowRecord
    trigger: TriggerRecord
    trusted: bool
    approved_by: str | None = None
    state: str
    message: str = ""
    created_at: datetime
    finished_at: datetime | None = None
    jobs: list[JobRecord]
    gate: GateRecord
    orchestrator_version: str


def orchestrator_version() -> str:
    """The installed distribution's version (the manifest names what wrote it)."""
    try:
        return metadata.version("solstice-ci")
    except metadata.PackageNotFoundError:
        return "unknown"


def evaluate_gate(jobs: list[JobRecord]) -> GateRecord:
    """`accepted` or `quarantined` with every reason, from the jobs' records alone.

    A job skipped by its own `if` was not meant to run; one skipped because a need failed
    was, and the failed need is already a reason.
    """
    reasons: list[str] = []
    for job in jobs:
        if job.state == JobState.SKIPPED and not job.message.startswith("skipped: needed"):
            continue
        if job.state != JobState.SUCCESS:
            reasons.append(f"job {job.key} ended {job.state}"
                           + (f": {job.message}" if job.message else ""))
            continue
        for pattern in job.required_artifacts:
            if not any(fnmatch.fnmatchcase(a.path, pattern) for a in job.artifacts):
                reasons.append(f"job {job.key} produced no artifact matching required "
                               f"pattern {pattern!r}")
    return GateRecord(status="quarantined" if reasons else "accepted", reasons=reasons)


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


async def build_manifest(conn: asyncpg.Connection, run_id: uuid.UUID) -> Manifest:
    """The manifest of run `run_id` as the database holds it now (call once the run ended)."""
    run = await conn.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
    if run is None:
        raise LookupError(f"no run {run_id}")
    request, repo = run["request"], run["repo"]
    jobs: list[JobRecord] = []
    for job in await conn.fetch("SELECT * FROM jobs WHERE run_id = $1 ORDER BY created_at, key",
                                run_id):
        spec = job["spec"]
        steps = [StepRecord(index=s["index"], name=s["name"], state=s["state"],
                            exit_code=s["exit_code"], duration_ms=s["duration_ms"])
                 for s in await conn.fetch("SELECT * FROM steps WHERE job_id = $1 ORDER BY index",
                                           job["id"])]
        ran = [s for s in steps if s.exit_code is not None]
        artifacts = [ArtifactRecord(path=a["path"], size=a["size"], sha256=a["sha256"])
                     for a in await conn.fetch(
                         "SELECT path, size, sha256 FROM artifacts WHERE job_id = $1"
                         " AND attempt = $2 ORDER BY path", job["id"], job["attempt"])]
        jobs.append(JobRecord(
            key=job["key"], matrix=spec.get("matrix") or {}, label=job["runs_on"],
            image=job["image"], backend=job["backend"], host=job["lease_host"],
            attempt=job["attempt"], state=job["state"],
            exit_code=ran[-1].exit_code if ran else None, message=job["message"],
            created_at=job["created_at"], started_at=job["started_at"],
            finished_at=job["finished_at"],
            duration_s=_duration(job["started_at"], job["finished_at"]),
            steps=steps, artifacts=artifacts,
            required_artifacts=spec.get("required_artifacts") or []))
    source = run["workflow_source"] or request.get("workflow_source", "")
    return Manifest(
        run_id=run_id,
        workflow=WorkflowRecord(name=run["workflow_name"], path=run["workflow_path"],
                                sha256=hashlib.sha256(source.encode()).hexdigest()),
        trigger=TriggerRecord(forge=repo["forge"], event=run["event"],
                              repository=f"{repo['owner']}/{repo['name']}", ref=run["ref"],
                              commit=run["commit_sha"], pull_request=request.get("pull_request"),
                              sender=request.get("sender")),
        trusted=run["trusted"], approved_by=run["approved_by"], state=run["state"],
        message=run["message"], created_at=run["created_at"], finished_at=run["finished_at"],
        jobs=jobs, gate=evaluate_gate(jobs), orchestrator_version=orchestrator_version())


async def record_manifest(conn: asyncpg.Connection, run_id: uuid.UUID) -> Manifest:
    """Build the ended run's manifest and store it with its gate on the run, in the caller's
    transaction (the run's end and its record commit together)."""
    manifest = await build_manifest(conn, run_id)
    await conn.execute("UPDATE runs SET manifest = $2, gate = $3 WHERE id = $1", run_id,
                       manifest.model_dump(mode="json"), manifest.gate.status)
    return manifest


def schema() -> dict[str, Any]:
    """The JSON Schema of `manifest.json`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://solstice-ci.org/schemas/manifest.schema.json",
            **Manifest.model_json_schema()}


if __name__ == "__main__":
    if sys.argv[1:] != ["--schema"]:
        sys.exit("usage: python -m orchestrator.manifest --schema")
    print(json.dumps(schema(), indent=2))
