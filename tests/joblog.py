"""A job's stored log as tests read it: through the orchestrator's one log reader, so a test
sees the same chunks whether the log is still rows or already compacted into the blob store."""
from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg

from orchestrator.blobstore.filesystem import FilesystemBlobStore
from orchestrator.logarchive import LogChunk, read_chunks
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


async def cluster_job_log(pool: asyncpg.Pool, blob_root: Path, job_id: uuid.UUID) -> bytes:
    """The current attempt's log of a job run by orchestrator processes (`tests.multihost`)
    sharing the filesystem blob store at `blob_root`: rows or archive alike."""
    blobs = await FilesystemBlobStore.open(blob_root)
    try:
        async with pool.acquire() as conn:
            attempt = await conn.fetchval("SELECT attempt FROM jobs WHERE id = $1", job_id)
            chunks = await read_chunks(conn, blobs, job_id, attempt, 0)
    finally:
        await blobs.close()
    return b"".join(c.data for c in chunks)
