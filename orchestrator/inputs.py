"""The artifacts a job receives from the jobs it needs (`FetchInputs`).

Each needed job's final attempt: the one whose success released this job. The files stream
from the artifact store chunk by chunk, never whole, with the size and sha256 recorded on
arrival, which the runner checks again as it writes them under `inputs/<job-key>/`.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from orchestrator.artifacts import ArtifactStore
from orchestrator.db import Database
from orchestrator.sessions import JobSession
from protos import runner_pb2


async def stream(db: Database, artifacts: ArtifactStore, session: JobSession
                 ) -> AsyncIterator[runner_pb2.InputChunk]:
    """Every artifact of the jobs `session`'s job needs, as `InputChunk`s, file after file."""
    files = await db.pool.fetch(
        "SELECT n.id AS job_id, n.key, n.attempt, a.path, a.size, a.sha256"
        " FROM jobs j JOIN jobs n ON n.run_id = j.run_id AND n.key = ANY(j.needs)"
        " JOIN artifacts a ON a.job_id = n.id AND a.attempt = n.attempt"
        " WHERE j.id = $1 ORDER BY n.key, a.path", session.job_id)
    for file in files:
        first = runner_pb2.InputChunk(job_key=file["key"], path=file["path"], size=file["size"],
                                      sha256=file["sha256"])
        pending = first
        async for data in artifacts.read(file["job_id"], file["attempt"], file["path"]):
            if pending.data:
                yield pending
                pending = runner_pb2.InputChunk()
            pending.data = data
        pending.last = True
        yield pending
