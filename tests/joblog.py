"""A job's stored log as tests read it: through the orchestrator's one log reader, so a test
sees the same chunks whether the log is still rows or already compacted into the blob store."""
from __future__ import annotations

import uuid

from orchestrator.logarchive import LogChunk
from orchestrator.logstore import read_log
from orchestrator.service import Orchestrator


async def stored_chunks(orchestrator: Orchestrator, job_id: uuid.UUID) -> list[LogChunk]:
    """Every chunk of every attempt of the job, attempt by attempt, in order."""
    current = await read_log(orchestrator.db, orchestrator.blobs, job_id)
    assert current is not None, f"no job {job_id}"
    chunks: list[LogChunk] = []
    for attempt in range(current.attempt + 1):
        piece = await read_log(orchestrator.db, orchestrator.blobs, job_id, attempt=attempt)
        assert piece is not None
        chunks += piece.chunks
    return chunks


async def stored_log(orchestrator: Orchestrator, job_id: uuid.UUID) -> bytes:
    """The job's log bytes, every attempt in order."""
    return b"".join(c.data for c in await stored_chunks(orchestrator, job_id))
