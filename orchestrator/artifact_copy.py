"""The one-time copy of artifacts stored before the blob store (`artifact_chunks` rows, see
migrations 0006 and 0010) into it, run at every start until there is nothing left to copy.

One host at a time (an advisory lock). Each file is copied in a transaction of its own: its
chunks streamed into a blob under the key an upload would have given it, the size and sha256
checked against its row, the blob published, then the row given its `store_key` and its
chunks deleted. A copy killed half-way leaves rows without a key, copied again at the next
start (a blob published just before the kill is an orphan, deleted and written anew). When
every row has its key, `artifact_chunks` is dropped: later starts find no table and return.
"""
from __future__ import annotations

import hashlib
import logging

import asyncpg

from common.errors import SolsticeError
from orchestrator.blobstore import BlobStore
from orchestrator.blobstore.keys import artifact_key
from orchestrator.db import Database

log = logging.getLogger(__name__)

LOCK = "solstice.artifact_chunks.copy"


class ArtifactCopyFailed(SolsticeError):
    """A stored artifact could not be copied into the blob store."""


async def copy_chunk_rows(db: Database, blobs: BlobStore) -> int:
    """Copy every artifact still in `artifact_chunks` into `blobs`; how many were copied."""
    async with db.pool.acquire() as conn:
        if await conn.fetchval("SELECT to_regclass('artifact_chunks')") is None:
            return 0
        await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", LOCK)
        try:
            if await conn.fetchval("SELECT to_regclass('artifact_chunks')") is None:
                return 0  # another host finished the copy while this one waited
            rows = await conn.fetch(
                "SELECT a.id, a.attempt, a.path, a.size, a.sha256, j.run_id, j.key"
                " FROM artifacts a JOIN jobs j ON j.id = a.job_id"
                " WHERE a.store_key IS NULL ORDER BY a.id")
            for row in rows:
                await _copy(conn, blobs, row)
            await conn.execute("DROP TABLE artifact_chunks")
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", LOCK)
    log.info("artifacts copied into the blob store", extra={"files": len(rows),
                                                            "store": blobs.kind})
    return len(rows)


async def _copy(conn: asyncpg.Connection, blobs: BlobStore, row: asyncpg.Record) -> None:
    key = artifact_key(row["run_id"], row["key"], row["attempt"], row["path"])
    async with conn.transaction():
        await blobs.delete(key)
        async with blobs.writer(key) as writer:
            digest = hashlib.sha256()
            async for chunk in conn.cursor(
                    "SELECT data FROM artifact_chunks WHERE artifact_id = $1 ORDER BY seq",
                    row["id"], prefetch=2):
                data = bytes(chunk["data"])
                digest.update(data)
                await writer.write(data)
            if (writer.size, digest.hexdigest()) != (row["size"], row["sha256"]):
                raise ArtifactCopyFailed(
                    f"stored artifact {row['path']!r} (artifacts.id {row['id']}) has "
                    f"{writer.size} bytes with sha256 {digest.hexdigest()}, its row says "
                    f"{row['size']} bytes with sha256 {row['sha256']}",
                    hint="the database copy is damaged: restore it, or delete that row to "
                         "give the file up")
            await conn.execute("UPDATE artifacts SET store_key = $2 WHERE id = $1",
                               row["id"], key)
            await conn.execute("DELETE FROM artifact_chunks WHERE artifact_id = $1", row["id"])
            await writer.commit()
