"""Artifact intake: a runner's `UploadArtifact` stream written to the blob store as it arrives.

Each file gets one `artifacts` row (path, size, sha256 and its blob's `store_key`, laid out by
`blobstore.keys`) and one blob, written through the store's writer in pieces: memory per
upload stays around one write unit whatever the file's size. The row is inserted, the bytes
streamed, size and sha256 checked against what the runner announced, the blob published and
the row committed, in that order inside one transaction: a refused path, a cap reached, a
damaged file or a dropped stream aborts the blob (nothing published) and rolls the row back.

Caps: `file_bytes` per file and `job_bytes` per job attempt, counted over every call of the
attempt, including bytes still arriving on concurrent calls (`JobSession.artifact_bytes`; an
attempt runs on one host only, so the session sees all of its uploads). A path is stored once
per attempt: a second upload of it is refused, never an overwrite; earlier attempts' files
live under keys of their own and are never touched.

A blob without a committed row (the orchestrator died between publishing the blob and
committing its row) is an orphan no listing shows; the next upload of that path in that
attempt, the only writer its key can have, deletes it first.

An upload holds a connection for as long as its stream lasts, so uploads draw from a small pool
of their own (`concurrency` connections): however many runners upload at once, the state
machine's pool (leases, logs, results) never waits behind them, and at most `concurrency`
files are written to the store at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, TypeVar

import asyncpg
import grpc

from common.errors import SolsticeError
from common.postgres import create_pool
from orchestrator import validate
from orchestrator.artifact_records import find_artifact
from orchestrator.blobstore import (
    BlobExists,
    BlobKeyError,
    BlobNotFound,
    BlobStore,
    BlobStoreUnavailable,
    BlobWriter,
)
from orchestrator.blobstore.base import check_key
from orchestrator.blobstore.keys import artifact_key
from orchestrator.db import Database
from orchestrator.sessions import JobSession
from protos import runner_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

MIB = 1024 * 1024
GIB = 1024 * MIB
# Bytes hashed and written at once, off the event loop (`_Pipeline`).
BATCH_BYTES = 4 * MIB
# How much of a refused upload is read and dropped before the refusal is answered (`_drain`).
DRAIN_BYTES = 64 * MIB
DRAIN_SECONDS = 10.0


@dataclass(frozen=True)
class ArtifactLimits:
    """What one job attempt may upload, and how many uploads run at once on this host."""

    file_bytes: int = 4 * GIB
    job_bytes: int = 8 * GIB
    concurrency: int = 4


class ArtifactRefused(SolsticeError):
    """An upload the orchestrator will not store; `code` is the gRPC answer."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INVALID_ARGUMENT


class ArtifactTooLarge(ArtifactRefused):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ArtifactExists(ArtifactRefused):
    code = grpc.StatusCode.ALREADY_EXISTS


class ArtifactDamaged(ArtifactRefused):
    code = grpc.StatusCode.DATA_LOSS


class ArtifactStoreUnavailable(ArtifactRefused):
    """The blob store failed (disk full, S3 unreachable); the runner retries."""

    code = grpc.StatusCode.UNAVAILABLE


class NotOurAttempt(ArtifactRefused):
    """The job is not running on this host under this attempt any more."""

    code = grpc.StatusCode.UNAUTHENTICATED


@dataclass(frozen=True)
class Received:
    files: int
    bytes: int


class ArtifactStore:
    """Receives artifact uploads into `blobs` (metadata in PostgreSQL). Open with `open`."""

    def __init__(self, pool: asyncpg.Pool, db: Database, host: str, limits: ArtifactLimits,
                 blobs: BlobStore) -> None:
        self._pool = pool
        self._db = db
        self.host = host
        self.limits = limits
        self.blobs = blobs

    @classmethod
    async def open(cls, db: Database, host: str, limits: ArtifactLimits,
                   blobs: BlobStore) -> ArtifactStore:
        """A store writing through its own pool of `limits.concurrency` connections to `db`'s
        server (opened on demand)."""
        pool = await create_pool(db.dsn, min_size=0, max_size=limits.concurrency,
                                 server_settings=db.server_settings)
        return cls(pool, db, host, limits, blobs)

    async def close(self) -> None:
        await self._pool.close()

    async def read(self, job_id: uuid.UUID, attempt: int, path: str) -> AsyncIterator[bytes]:
        """The bytes of a stored artifact of that attempt, in order; nothing if there is none
        (or its blob is gone, which is logged: a reader checking size and sha256 notices)."""
        record = await find_artifact(self._db, job_id, path, attempt)
        if record is None:
            return
        try:
            async for piece in self.blobs.read(record.store_key):
                yield piece
        except BlobNotFound:
            log.error("an artifact's blob is missing", extra={"key": record.store_key})

    async def receive(self, session: JobSession,
                      chunks: AsyncIterator[runner_pb2.ArtifactChunk]) -> Received:
        """Store every file of one `UploadArtifact` stream; `ArtifactRefused` on the first
        file that cannot be stored (the files before it stay stored)."""
        stream = _checked(session, chunks)
        files = size = 0
        try:
            # The connection is taken before the first chunk is read: a call waiting for one
            # holds no more of the runner's bytes than grpc's flow-control window.
            async with self._pool.acquire() as conn:
                async for first in stream:
                    size += await self._store_file(conn, session, first, stream)
                    files += 1
        except ArtifactRefused:
            await _drain(chunks)
            raise
        return Received(files, size)

    async def _store_file(self, conn: asyncpg.Connection, session: JobSession,
                          first: runner_pb2.ArtifactChunk,
                          stream: AsyncIterator[runner_pb2.ArtifactChunk]) -> int:
        """Store one file: its row and its blob, committed together; its size. The chunks
        come through `_checked`: the path (first chunk only) and sha256 (last chunk only) are
        already validated."""
        path = first.path
        reserved = 0

        def release() -> None:
            # Given back as soon as the file fails, not after its rollback: a concurrent upload
            # of the same job must not be refused for bytes that will never be stored.
            nonlocal reserved
            session.artifact_bytes -= reserved
            reserved = 0

        def reserve(size: int, more: int) -> None:
            nonlocal reserved
            if size > self.limits.file_bytes:
                release()
                raise ArtifactTooLarge(
                    f"artifact {path!r} is larger than the limit of "
                    f"{self.limits.file_bytes} bytes per file",
                    hint="upload less (narrow the job's artifact patterns) or raise "
                         "max_artifact_file_bytes")
            if session.artifact_bytes + more > self.limits.job_bytes:
                release()
                raise ArtifactTooLarge(
                    f"artifact {path!r} goes past the limit of "
                    f"{self.limits.job_bytes} bytes of artifacts per job",
                    hint="upload less (narrow the job's artifact patterns) or raise "
                         "max_artifact_job_bytes")
            session.artifact_bytes += more
            reserved += more

        try:
            async with conn.transaction():
                key = await self._claim(conn, session, path)
                async with self.blobs.writer(key) as writer, _Pipeline(writer, path) as pipeline:
                    size = 0
                    chunk = first
                    while True:
                        data = chunk.data
                        size += len(data)
                        reserve(size, len(data))
                        session.touch()
                        await pipeline.add(data)
                        if chunk.last:
                            break
                        chunk = await anext(stream, None)
                        if chunk is None:
                            raise ArtifactRefused(f"the upload ended in the middle of {path!r}")
                    sha256 = await pipeline.finish()
                    if size != chunk.size or sha256 != chunk.sha256.lower():
                        raise ArtifactDamaged(
                            f"artifact {path!r} arrived damaged: {size} bytes with sha256 "
                            f"{sha256}, the runner sent {chunk.size} bytes with "
                            f"sha256 {chunk.sha256 or '(none)'}",
                            hint="the file changed while it was read, or the stream was corrupted")
                    # The job may have ended while the file arrived: checked again before the
                    # blob turns visible.
                    if not await conn.fetchval(
                            "UPDATE artifacts a SET size = $2, sha256 = $3 FROM jobs j"
                            " WHERE a.store_key = $1 AND j.id = a.job_id AND j.attempt = a.attempt"
                            " AND j.lease_host = $4 AND j.state = 'running' RETURNING true",
                            key, size, sha256, self.host):
                        raise NotOurAttempt("the job ended or moved while its artifact was uploaded")
                    await _stored(writer.commit(), path)
        except BaseException:
            release()
            raise
        return size

    async def _claim(self, conn: asyncpg.Connection, session: JobSession, path: str) -> str:
        """Insert the file's row (visible only at commit) and clear its key of an orphan; its
        key. A concurrent upload of the same path waits here until the first one committed or
        failed."""
        key = artifact_key(session.run_id, session.key, session.attempt, path)
        try:
            check_key(key, self.blobs.max_key_bytes)
        except BlobKeyError as exc:
            raise ArtifactRefused(f"artifact path {path!r} refused: it is too long for the "
                                  f"{self.blobs.kind} blob store ({exc.message})") from exc
        claimed = await conn.fetchval(
            "INSERT INTO artifacts (job_id, attempt, path, size, sha256, store_key)"
            " SELECT $1, $2, $4, 0, '', $5 FROM jobs WHERE id = $1 AND attempt = $2"
            " AND lease_host = $3 AND state = 'running'"
            " ON CONFLICT (job_id, attempt, path) DO NOTHING RETURNING true",
            session.job_id, session.attempt, self.host, path, key)
        if claimed:
            if await _stored(self.blobs.delete(key), path):
                log.warning("deleted an orphaned artifact blob (a previous try published it, "
                            "its row was never committed)", extra={"key": key})
            return key
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM artifacts WHERE job_id = $1"
                               " AND attempt = $2 AND path = $3)",
                               session.job_id, session.attempt, path):
            raise ArtifactExists(f"artifact {path!r} was already uploaded by this job",
                                 hint="each path is stored once per job attempt")
        raise NotOurAttempt("the job is not running on this host under this attempt")


class _Pipeline:
    """A file's bytes hashed and written in `BATCH_BYTES` batches in worker threads (sha256
    releases the GIL), one batch in flight while the event loop receives the next: the loop
    only parses and checks chunks. As an `async with` block it waits for the batch in flight
    when the block fails, so nothing writes behind a writer being aborted."""

    def __init__(self, writer: BlobWriter, path: str) -> None:
        self._writer = writer
        self._path = path
        self._digest = hashlib.sha256()
        self._batch = bytearray()
        self._flight: asyncio.Future[None] | None = None

    async def add(self, data: bytes) -> None:
        self._batch += data
        if len(self._batch) >= BATCH_BYTES:
            await self._send()

    async def finish(self) -> str:
        """Everything added is hashed and handed to the writer; the hex sha256."""
        await self._send()
        await self._land()
        return self._digest.hexdigest()

    async def _send(self) -> None:
        await self._land()
        if self._batch:
            batch, self._batch = self._batch, bytearray()
            self._flight = asyncio.ensure_future(self._absorb(batch))

    async def _absorb(self, batch: bytearray) -> None:
        await asyncio.gather(asyncio.to_thread(self._digest.update, batch),
                             _stored(self._writer.write(batch), self._path))

    async def _land(self) -> None:
        flight, self._flight = self._flight, None
        if flight is not None:
            await flight

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        flight, self._flight = self._flight, None
        if flight is not None:
            await asyncio.wait({flight})
            if not flight.cancelled():
                flight.exception()  # retrieved: the block's own exception is the one raised


async def _stored(operation: Awaitable[T], path: str) -> T:
    """`operation` on the blob store, its failures as the upload's refusal."""
    try:
        return await operation
    except BlobExists as exc:
        raise ArtifactRefused(f"artifact path {path!r} refused: {exc.message}") from exc
    except BlobStoreUnavailable as exc:
        log.error("the blob store failed during an artifact upload",
                  extra={"path": path, "error": exc.message})
        raise ArtifactStoreUnavailable(f"artifact {path!r} could not be stored: {exc.message}",
                                       hint=exc.hint) from exc


async def _drain(chunks: AsyncIterator[runner_pb2.ArtifactChunk]) -> None:
    """Read and drop what the runner still sends (up to `DRAIN_BYTES`, `DRAIN_SECONDS`) before
    a refusal is answered. grpc's asyncio client reports a write that fails because the call
    just ended as INTERNAL in place of the server's status (grpc/grpc#36066): answered only
    once the runner stopped sending, the refusal reaches it with its own code."""
    drained = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in chunks:
                drained += len(chunk.data)
                if drained > DRAIN_BYTES:
                    return


async def _checked(session: JobSession, chunks: AsyncIterator[runner_pb2.ArtifactChunk],
                   ) -> AsyncIterator[runner_pb2.ArtifactChunk]:
    """The stream's chunks, each checked at the edge (`validate.artifact_chunk`), refusing one
    that names another job than the token's."""
    first = True
    async for chunk in chunks:
        try:
            validate.artifact_chunk(chunk, first=first)
        except validate.InvalidMessage as exc:
            raise ArtifactRefused(str(exc)) from exc
        if chunk.job_id != str(session.job_id):
            raise ArtifactRefused("an artifact chunk names another job than the token's")
        first = chunk.last
        yield chunk
