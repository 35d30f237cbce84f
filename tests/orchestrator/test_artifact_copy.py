"""The one-time copy of artifacts stored as `artifact_chunks` rows (before migration 0010)
into the blob store: a database migrated to 0006 and filled as the old orchestrator did, then
migrated to the end and copied, on real PostgreSQL and a real filesystem store."""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from orchestrator.artifact_copy import ArtifactCopyFailed, copy_chunk_rows
from orchestrator.artifact_records import list_artifacts
from orchestrator.blobstore.filesystem import FilesystemBlobStore
from orchestrator.blobstore.keys import artifact_key
from orchestrator.db import Database, migrate
from orchestrator.db.migrate import MIGRATIONS_DIR

MIB = 1024 * 1024
JOB_KEY = "build[os=omnios/r151046]"
FILES = {"out/a.txt": b"hello\n", "out/big.iso": random.Random(1).randbytes(3 * MIB + 5),
         "empty": b""}


async def _old_database(dsn: str, tmp_path: Path) -> tuple[uuid.UUID, uuid.UUID]:
    """A database at migration 0006 holding one finished run whose job stored FILES as the
    old orchestrator did (1 MiB chunk rows); its run and job ids."""
    old = tmp_path / "migrations-0006"
    old.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if int(path.name[:4]) <= 6:
            shutil.copy(path, old)
    run_id, job_id = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, old)
        await conn.execute(
            "INSERT INTO runs (id, request_id, repo, commit_sha, ref, event, workflow_path,"
            " trusted, request, state) VALUES ($1, 'r1', $2, $3, 'refs/heads/main', 'push',"
            " '.solstice/workflow.kdl', true, '{}', 'success')",
            run_id, json.dumps({"owner": "o", "name": "n"}), "0" * 40)
        await conn.execute(
            "INSERT INTO jobs (id, run_id, key, name, runs_on, spec, timeout_seconds, state,"
            " attempt) VALUES ($1, $2, $3, 'build', 'local', '{}', 60, 'success', 1)",
            job_id, run_id, JOB_KEY)
        for path, data in FILES.items():
            artifact = await conn.fetchval(
                "INSERT INTO artifacts (job_id, attempt, path, size, sha256) VALUES"
                " ($1, 1, $2, $3, $4) RETURNING id",
                job_id, path, len(data), hashlib.sha256(data).hexdigest())
            for seq, start in enumerate(range(0, len(data), MIB)):
                await conn.execute("INSERT INTO artifact_chunks (artifact_id, seq, data)"
                                   " VALUES ($1, $2, $3)", artifact, seq, data[start:start + MIB])
        await migrate(conn)  # 0010 and whatever follows
    finally:
        await conn.close()
    return run_id, job_id


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    database = await Database.connect(pg_dsn, min_size=1, max_size=2)
    yield database
    await database.close()


async def test_chunk_rows_are_copied_into_the_store_once(pg_dsn: str, tmp_path: Path,
                                                         db: Database) -> None:
    run_id, _ = await _old_database(pg_dsn, tmp_path)
    blobs = await FilesystemBlobStore.open(tmp_path / "blobs")
    # An earlier copy killed after publishing a blob, before committing its row: an orphan.
    async with blobs.writer(artifact_key(run_id, JOB_KEY, 1, "empty")) as writer:
        await writer.write(b"half a copy")
        await writer.commit()
    assert await list_artifacts(db, run_id) == []  # rows without a key are not served yet

    assert await copy_chunk_rows(db, blobs) == len(FILES)

    records = await list_artifacts(db, run_id)
    assert sorted(r.path for r in records) == sorted(FILES)
    for record in records:
        data = b"".join([piece async for piece in blobs.read(record.store_key)])
        assert data == FILES[record.path]
        assert record.sha256 == hashlib.sha256(data).hexdigest() and record.size == len(data)
        assert record.store_key == artifact_key(run_id, JOB_KEY, 1, record.path)
    assert await db.pool.fetchval("SELECT to_regclass('artifact_chunks')") is None
    # Idempotent: the next start finds nothing to copy and changes nothing.
    assert await copy_chunk_rows(db, blobs) == 0
    assert len(await blobs.list("runs/")) == len(FILES)


async def test_a_damaged_row_stops_the_copy_and_keeps_the_rows(pg_dsn: str, tmp_path: Path,
                                                              db: Database) -> None:
    run_id, _ = await _old_database(pg_dsn, tmp_path)
    await db.pool.execute("UPDATE artifacts SET sha256 = repeat('0', 64) WHERE path = 'out/big.iso'")
    blobs = await FilesystemBlobStore.open(tmp_path / "blobs")
    with pytest.raises(ArtifactCopyFailed, match="'out/big.iso'.*its row says"):
        await copy_chunk_rows(db, blobs)
    # What was copied before it stays copied; the damaged file keeps its chunk rows, unpublished.
    copied = {r.path for r in await list_artifacts(db, run_id)}
    assert "out/big.iso" not in copied
    assert await db.pool.fetchval("SELECT count(*) FROM artifact_chunks") > 0
    assert {info.key.rsplit("/attempt-1/", 1)[1] for info in await blobs.list("runs/")} == copied
