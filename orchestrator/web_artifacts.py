"""Artifacts on the web pages: the download route and the list the run page shows.

- `/jobs/{job_id}/artifacts/{path}` (`?attempt=N`; default the job's current attempt): the
  file as an attachment (`Content-Disposition` with its name, UTF-8 names too), with its
  `Content-Length`, a strong `ETag` (its sha256) and single HTTP byte ranges: `Range:
  bytes=A-B`, `A-` or `-N` answers 206 with `Content-Range`, a range past the end 416 with
  `Content-Range: bytes */SIZE`, so an interrupted download of a large image resumes
  (`curl -C -`, browsers). `If-Range` with another ETag, several ranges or a malformed header
  get the whole file (200), as RFC 9110 allows.

Served behind the pages' access gate (`webauth`) like every other page; the bytes come from the
blob store, streamed, whatever their size.
"""
from __future__ import annotations

import html
import re
import uuid
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from common.text import byte_size
from orchestrator.artifact_records import ArtifactRecord, download_path, find_artifact
from orchestrator.blobstore import BlobNotFound, BlobStore, BlobStoreUnavailable
from orchestrator.bundle import ArtifactReader, stream_bundle
from orchestrator.db import Database
from orchestrator.validate import INT32_MAX

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Unsatisfiable(Exception):
    """A range that starts past the file's end."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The one byte range `header` asks of a file of `size` bytes, as (start, end exclusive);
    None to send the whole file (no header, several ranges, or one that is malformed);
    `Unsatisfiable` for a range that starts at or past the end."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(size - suffix, 0), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(end, size)


def content_disposition(path: str) -> str:
    """`attachment` named after the file's last component, in ASCII and (RFC 6266) UTF-8."""
    name = path.rsplit("/", 1)[-1]
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                       for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def artifacts_section(records: list[ArtifactRecord], base: str, run_id: uuid.UUID,
                      ended: bool) -> str:
    """The run page's table of its jobs' artifacts, and the link to the whole record once the
    run ended (empty when there is nothing to show)."""
    bundle = (f"<p><a href='{base}/runs/{run_id}/bundle.tar.gz' download>the run's record "
              "(manifest.json and every artifact, .tar.gz)</a></p>" if ended else "")
    if not records:
        return f"<h2>Artifacts</h2>{bundle}" if bundle else ""
    rows = "".join(
        f"<tr><td>{html.escape(r.job_key)}</td>"
        f"<td><a href='{base}{html.escape(download_path(r))}' download>{html.escape(r.path)}</a></td>"
        f"<td>{byte_size(r.size)}</td><td><code>{r.sha256[:16]}</code></td></tr>"
        for r in records)
    return ("<h2>Artifacts</h2><table><tr><th>job</th><th>file</th><th>size</th>"
            f"<th>sha256</th></tr>{rows}</table>{bundle}")


def bundle_route(db: Database, read: ArtifactReader) -> Route:
    """`/runs/{run_id}/bundle.tar.gz`: the ended run's record, streamed (`orchestrator.bundle`)."""

    async def bundle(request: Request) -> Response:
        try:
            run_id = uuid.UUID(request.path_params["run_id"])
        except ValueError:
            return PlainTextResponse("give the run's full id", status_code=404)
        manifest = await db.pool.fetchval("SELECT manifest FROM runs WHERE id = $1", run_id)
        if manifest is None:
            return PlainTextResponse("no ended run with this id: the record is written when "
                                     "the run ends", status_code=404)
        jobs = {r["key"]: r["id"] for r in await db.pool.fetch(
            "SELECT key, id FROM jobs WHERE run_id = $1", run_id)}
        return StreamingResponse(stream_bundle(manifest, jobs, read), media_type="application/gzip",
                                 headers={"Content-Disposition": content_disposition(
                                     f"run-{run_id}.tar.gz"), "X-Content-Type-Options": "nosniff"})

    return Route("/runs/{run_id}/bundle.tar.gz", bundle)


def artifact_routes(db: Database, blobs: BlobStore) -> list[Route]:
    """The download route, reading `db`'s records and `blobs`' bytes."""

    async def download(request: Request) -> Response:
        record = await _record(db, request)
        if isinstance(record, Response):
            return record
        try:
            await blobs.stat(record.store_key)
        except BlobNotFound:
            return PlainTextResponse(f"artifact {record.path!r} is listed but its bytes are "
                                     "gone from the blob store", status_code=410)
        except BlobStoreUnavailable as exc:
            return PlainTextResponse(f"the blob store is unavailable: {exc.message}; retry",
                                     status_code=503, headers={"Retry-After": "10"})
        etag = f'"{record.sha256}"'
        headers = {"Accept-Ranges": "bytes", "ETag": etag,
                   "Content-Disposition": content_disposition(record.path),
                   "Cache-Control": "private, max-age=3600",
                   "X-Content-Type-Options": "nosniff"}
        wanted = request.headers.get("range", "")
        if_range = request.headers.get("if-range")
        try:
            span = parse_range(wanted, record.size) if if_range in (None, etag) else None
        except Unsatisfiable:
            return Response(status_code=416, headers={
                **headers, "Content-Range": f"bytes */{record.size}"})
        start, end = span or (0, record.size)
        headers["Content-Length"] = str(end - start)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{record.size}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers,
                            media_type="application/octet-stream")
        return StreamingResponse(blobs.read(record.store_key, start, end), status_code=status,
                                 headers=headers, media_type="application/octet-stream")

    return [Route("/jobs/{job_id}/artifacts/{path:path}", download, methods=["GET", "HEAD"])]


async def _record(db: Database, request: Request) -> ArtifactRecord | Response:
    """The artifact a download URL names, or the answer saying why there is none."""
    try:
        job_id = uuid.UUID(request.path_params["job_id"])
    except ValueError:
        return PlainTextResponse("give the job's full id", status_code=404)
    attempt_text = request.query_params.get("attempt")
    attempt = None
    if attempt_text is not None:
        if not attempt_text.isdigit() or not 0 < int(attempt_text) <= INT32_MAX:
            return PlainTextResponse("`attempt` must be a whole number from 1", status_code=400)
        attempt = int(attempt_text)
    path = request.path_params["path"]
    record = await find_artifact(db, job_id, path, attempt) if "\x00" not in path else None
    if record is None:
        return PlainTextResponse(f"job {job_id} has no artifact {path!r}", status_code=404)
    return record
