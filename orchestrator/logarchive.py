"""A job's log in either of its two forms, and the move from one to the other.

While a job attempt runs, its log is `log_chunks` rows (`logstore.LogStore` writes them). Once
it ended, `compact` moves them into one gzip'd JSON-lines blob of the blob store
(`keys.log_archive_key`), one line per chunk that keeps what every reader needs to resume by
sequence number:

    {"seq": 1, "step": 0, "stream": 1, "ts": "2026-11-30T08:00:00.123456+00:00", "text": "..."}

(`"b64"` instead of `"text"` for bytes that are not UTF-8), readable with `zcat | jq`.

Crash safety: the blob is written and committed first; then one transaction deletes exactly
the rows it holds and inserts the `log_archives` row naming it. Dying in between leaves the
rows (still read) and an unnamed blob, deleted with its run. Each compaction writes a key of
its own, so two hosts compacting the same attempt never touch each other's blob: the one whose
transaction deletes fewer rows than it archived lost the race, rolls back and deletes its own
blob. Chunks stored after a compaction (a runner resending late) become a later segment.

`read_chunks` is the one reader of both forms: it reads the rows and the archive rows in one
snapshot, so a compaction committing meanwhile can neither hide nor double a chunk.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from common.errors import SolsticeError
from orchestrator.blobstore import BlobNotFound, BlobStore, BlobStoreUnavailable
from orchestrator.blobstore.keys import log_archive_key
from orchestrator.db import Database

log = logging.getLogger(__name__)

# Rows fetched per query while compacting, and compressed bytes handed to the writer at once.
PAGE_ROWS = 2000
WRITE_BYTES = 1024 * 1024
GZIP = 31  # zlib's wbits for the gzip container, so `zcat` reads a blob


class LogUnavailable(SolsticeError):
    """A compacted log cannot be read now: the blob store is unreachable (or not configured)."""


class LogGone(LogUnavailable):
    """A compacted log's blob is gone from the blob store while a row still names it."""


@dataclass(frozen=True)
class LogChunk:
    """One chunk of a job's log as the runner sent it (masked)."""

    seq: int
    step_index: int
    stream: int
    ts: datetime
    data: bytes


def encode_line(chunk: LogChunk) -> bytes:
    """One chunk as a line of an archive."""
    record: dict[str, object] = {"seq": chunk.seq, "step": chunk.step_index,
                                 "stream": chunk.stream, "ts": chunk.ts.isoformat()}
    try:
        record["text"] = chunk.data.decode()
    except UnicodeDecodeError:
        record["b64"] = base64.b64encode(chunk.data).decode()
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode_line(line: bytes) -> LogChunk:
    record = json.loads(line)
    data = record["text"].encode() if "text" in record else base64.b64decode(record["b64"])
    return LogChunk(seq=record["seq"], step_index=record["step"], stream=record["stream"],
                    ts=datetime.fromisoformat(record["ts"]), data=data)


async def _archive_chunks(blobs: BlobStore, key: str, after_seq: int) -> AsyncIterator[LogChunk]:
    """The chunks of one archive blob past `after_seq`, decompressed as they stream in."""
    inflate = zlib.decompressobj(GZIP)
    pending = [b""]  # the last piece's unfinished line

    def decode(piece: bytes) -> list[LogChunk]:
        *lines, pending[0] = (pending[0] + inflate.decompress(piece)).split(b"\n")
        return [chunk for chunk in map(decode_line, lines) if chunk.seq > after_seq]

    try:
        async for piece in blobs.read(key):
            # A thread: a big log's inflating and parsing would stall the event loop.
            for chunk in await asyncio.to_thread(decode, piece):
                yield chunk
    except BlobNotFound as exc:
        raise LogGone(f"the compacted log {key} is listed but gone from the blob store",
                             hint="its run is being deleted by retention, or the blob store "
                                  "lost it") from exc
    except BlobStoreUnavailable as exc:
        raise LogUnavailable(f"the compacted log {key} cannot be read now: {exc.message}",
                             hint="the blob store is unreachable; try again") from exc


async def read_chunks(conn: asyncpg.Connection, blobs: BlobStore | None, job_id: uuid.UUID,
                      attempt: int, after_seq: int = 0) -> list[LogChunk]:
    """Every chunk of the job's `attempt` after `after_seq`, in order, from rows and archives
    alike. Call it inside a repeatable-read transaction (`logstore.read_log` does) so that both
    are read from one snapshot."""
    archives = await conn.fetch(
        "SELECT store_key FROM log_archives WHERE job_id = $1 AND attempt = $2"
        " AND last_seq > $3 ORDER BY first_seq", job_id, attempt, after_seq)
    rows = await conn.fetch(
        "SELECT seq, step_index, stream, ts, data FROM log_chunks"
        " WHERE job_id = $1 AND attempt = $2 AND seq > $3 ORDER BY seq",
        job_id, attempt, after_seq)
    chunks: dict[int, LogChunk] = {}
    if archives and blobs is None:
        raise LogUnavailable(f"job {job_id}'s log is compacted and no blob store is configured "
                             "here to read it")
    for archive in archives:
        assert blobs is not None
        async for chunk in _archive_chunks(blobs, archive["store_key"], after_seq):
            chunks.setdefault(chunk.seq, chunk)
    for row in rows:
        chunks.setdefault(row["seq"], LogChunk(seq=row["seq"], step_index=row["step_index"],
                                               stream=row["stream"], ts=row["ts"],
                                               data=bytes(row["data"])))
    return [chunks[seq] for seq in sorted(chunks)]


@dataclass(frozen=True)
class Archived:
    """What one compaction stored."""

    key: str
    chunks: int
    data_bytes: int
    size: int


class _Raced(Exception):
    """Another compaction took some of the rows first."""


async def _pages(db: Database, job_id: uuid.UUID, attempt: int) -> AsyncIterator[list[LogChunk]]:
    last = -1
    while True:
        rows = await db.pool.fetch(
            "SELECT seq, step_index, stream, ts, data FROM log_chunks"
            " WHERE job_id = $1 AND attempt = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            job_id, attempt, last, PAGE_ROWS)
        if not rows:
            return
        yield [LogChunk(seq=r["seq"], step_index=r["step_index"], stream=r["stream"],
                        ts=r["ts"], data=bytes(r["data"])) for r in rows]
        last = rows[-1]["seq"]


async def compact(db: Database, blobs: BlobStore, job_id: uuid.UUID,
                  attempt: int) -> Archived | None:
    """Move the job attempt's log rows into one archive blob; None when there was nothing to
    move (no rows, the job deleted, or another host compacted them first). The caller makes
    sure the attempt has ended."""
    job = await db.pool.fetchrow("SELECT run_id, key FROM jobs WHERE id = $1", job_id)
    if job is None:
        return None
    pages = _pages(db, job_id, attempt)
    first = await anext(pages, None)
    if first is None:
        return None
    key = log_archive_key(job["run_id"], job["key"], attempt, first[0].seq,
                          secrets.token_hex(4))
    seqs: list[int] = []
    data_bytes = 0
    async with blobs.writer(key) as writer:
        deflate = zlib.compressobj(6, zlib.DEFLATED, GZIP)
        buffered = bytearray()
        async for chunks in _starting_with(first, pages):
            seqs += [chunk.seq for chunk in chunks]
            data_bytes += sum(len(chunk.data) for chunk in chunks)
            # A thread: compressing a big log would stall the event loop.
            buffered += await asyncio.to_thread(_deflated, deflate, chunks)
            if len(buffered) >= WRITE_BYTES:
                await writer.write(bytes(buffered))
                buffered.clear()
        buffered += deflate.flush()
        await writer.write(bytes(buffered))
        info = await writer.commit()
    archived = Archived(key=key, chunks=len(seqs), data_bytes=data_bytes, size=info.size)
    try:
        await _record(db, job_id, attempt, seqs, archived)
    except (_Raced, asyncpg.ForeignKeyViolationError):
        # Our blob alone, named by no row: the rows went to another compaction, or the job
        # to retention.
        await blobs.delete(key)
        return None
    except BaseException:
        log.warning("a compacted log blob was written but not recorded; its rows stay the log",
                    extra={"job_id": str(job_id), "attempt": attempt, "key": key})
        raise
    return archived


def _deflated(deflate: zlib._Compress, chunks: list[LogChunk]) -> bytes:
    return b"".join(deflate.compress(encode_line(chunk)) for chunk in chunks)


async def _starting_with(first: list[LogChunk], rest: AsyncIterator[list[LogChunk]]
                         ) -> AsyncIterator[list[LogChunk]]:
    yield first
    async for page in rest:
        yield page


async def _record(db: Database, job_id: uuid.UUID, attempt: int, seqs: list[int],
                  archived: Archived) -> None:
    """Delete exactly the archived rows and name the blob, in one transaction."""
    async with db.transaction() as conn:
        status = await conn.execute(
            "DELETE FROM log_chunks WHERE job_id = $1 AND attempt = $2 AND seq = ANY($3::bigint[])",
            job_id, attempt, seqs)
        if int(status.split()[-1]) != len(seqs):
            raise _Raced
        await conn.execute(
            "INSERT INTO log_archives (job_id, attempt, first_seq, last_seq, chunks, data_bytes,"
            " store_key, size) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            job_id, attempt, seqs[0], seqs[-1], archived.chunks, archived.data_bytes,
            archived.key, archived.size)
