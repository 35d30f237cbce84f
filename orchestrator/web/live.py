"""The event streams that keep the job and run pages current.

`/jobs/{id}/events?attempt=A&after=SEQ`: `log` events (id = the chunk's sequence number, data
`{"step": index, "lines": [html, ...]}`), `steps` when the job's or a step's state changed,
`attempt` when another attempt started (the page reloads; a queued job starting its first
is followed on), `end` once the job ended and its
whole log was sent. While the job runs, chunks go out only in an unbroken sequence from the
resume point, so a chunk stored late cannot be skipped (one the database refused holds the
rest back until the job ends, when everything stored goes out).

`/runs/{id}/events`: `run` events with the live part of the run page (HTML), `end` when the
run ended.
"""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from orchestrator.blobstore import BlobStore
from orchestrator.db import Database
from orchestrator.logstore import read_log
from orchestrator.validate import INT32_MAX
from orchestrator.web import sse
from orchestrator.web.ansi import to_html
from orchestrator.web.data import job_status, run_detail
from orchestrator.web.pages import Pages, not_found, path_uuid
from orchestrator.web.signals import LiveSignals

# How often a stream looks for changes made on other hosts (this host's wake it at once).
POLL_SECONDS = 1.0


class JobLogFeed:
    """One job page's stream: what is new since the last look."""

    def __init__(self, db: Database, blobs: BlobStore | None, job_id: uuid.UUID, attempt: int,
                 after: int) -> None:
        self.db = db
        self.blobs = blobs
        self.job_id = job_id
        self.attempt = attempt
        self.after = after
        self._status: dict[str, Any] | None = None

    async def next(self) -> sse.Batch:
        log = await read_log(self.db, self.blobs, self.job_id, after_seq=self.after)
        if log is None:
            return sse.Batch([sse.frame("end", {"state": "deleted", "steps": []})], done=True)
        if log.attempt != self.attempt:
            if self.attempt != 0 or self.after != 0:
                return sse.Batch([sse.frame("attempt", {"attempt": log.attempt})], done=True)
            self.attempt = log.attempt  # the job was queued and has just started its first
        batch = sse.Batch()
        for chunk in log.chunks:
            if not log.done and chunk.seq != self.after + 1:
                break  # a gap: the missing chunk is still on its way
            self.after = chunk.seq
            batch.frames.append(sse.frame("log", {
                "step": chunk.step_index,
                "lines": to_html(chunk.data.decode(errors="replace"))},
                event_id=chunk.seq))
        status = await job_status(self.db, self.job_id)
        if log.done and not log.chunks:
            batch.frames.append(sse.frame("end", status))
            batch.done = True
        elif status != self._status:
            batch.frames.append(sse.frame("steps", status))
        self._status = status
        return batch


class LiveStreams:
    """The stream endpoints; `signals` wakes them on this host's changes."""

    def __init__(self, db: Database, pages: Pages, signals: LiveSignals, *,
                 poll: float = POLL_SECONDS) -> None:
        self.db = db
        self.pages = pages
        self.signals = signals
        self.poll = poll

    async def job_events(self, request: Request) -> Response:
        job_id = path_uuid(request, "job_id")
        if job_id is None:
            return not_found("job")
        try:
            after = sse.resume_point(request)
            attempt = int(request.query_params.get("attempt", "0"))
        except ValueError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        if not 0 <= attempt <= INT32_MAX:
            return PlainTextResponse(f"`attempt` must be from 0 to {INT32_MAX}\n", status_code=400)
        current = await self.db.pool.fetchval("SELECT attempt FROM jobs WHERE id = $1", job_id)
        if current is None:
            return not_found("job")
        feed = JobLogFeed(self.db, self.pages.blobs, job_id, attempt or current, after)
        return sse.response(self._stream(feed.next, job_id))

    async def run_events(self, request: Request) -> Response:
        run_id = path_uuid(request, "run_id")
        if run_id is None:
            return not_found("run")
        if await self.db.pool.fetchval("SELECT 1 FROM runs WHERE id = $1", run_id) is None:
            return not_found("run")
        sent = ""

        async def look() -> sse.Batch:
            nonlocal sent
            detail = await run_detail(self.db, run_id)
            if detail is None:
                return sse.Batch(done=True)
            part = self.pages.run_live_part(detail)
            if detail.summary.final:
                return sse.Batch([sse.frame("end", {"html": part})], done=True)
            frames = [] if part == sent else [sse.frame("run", {"html": part})]
            sent = part
            return sse.Batch(frames)

        return sse.response(self._stream(look, run_id))

    async def _stream(self, look: Callable[[], Awaitable[sse.Batch]],
                      key: uuid.UUID) -> AsyncIterator[bytes]:
        with self.signals.subscribe(key) as wake:
            async for chunk in sse.follow(look, wake, poll=self.poll):
                yield chunk
