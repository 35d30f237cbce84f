"""Server-Sent Events: framing, the resume point, and the loop that follows a changing source.

An event stream is `text/event-stream`; each event may carry an `id` (here a log chunk's
sequence number) that the browser sends back as `Last-Event-ID` when it reconnects, so the
stream resumes right after the last event the page got: no gap, no repeat. A `: ping` comment
goes out when nothing else did for `ping` seconds, so proxies keep an idle stream open.
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from common.supervise import wait_event
from orchestrator.validate import INT64_MAX
from orchestrator.web.signals import Subscription

PING = b": ping\n\n"
PING_SECONDS = 15.0
# How long the page waits before reconnecting after the stream broke (the `retry` field).
RETRY_MS = 1000
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(event: str, data: Any, *, event_id: int | None = None) -> bytes:
    """One event: `data` as JSON on a single `data:` line (JSON has no raw newlines)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class BadResumePoint(ValueError):
    """`Last-Event-ID` or `after` is not a sequence number."""


def resume_point(request: Request) -> int:
    """The sequence number the stream starts after: the `Last-Event-ID` header a reconnecting
    browser sends wins over the `after` query parameter the page started with; 0 when neither."""
    given = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    try:
        value = int(given)
    except ValueError:
        raise BadResumePoint(f"the resume point must be a whole number, not {given!r}") from None
    if not 0 <= value <= INT64_MAX:
        raise BadResumePoint(f"the resume point must be from 0 to {INT64_MAX}")
    return value


@dataclass
class Batch:
    """What one look at the source produced: frames to send, and whether the stream ends."""

    frames: list[bytes] = field(default_factory=list)
    done: bool = False


async def follow(produce: Callable[[], Awaitable[Batch]], wake: Subscription, *,
                 poll: float, ping: float = PING_SECONDS) -> AsyncIterator[bytes]:
    """Frames from `produce`, called now and again whenever `wake` fires (a change on this
    host) or `poll` seconds passed (a change on another host); `: ping` after `ping` idle
    seconds. Ends after a batch marked done, or when `wake` is closed (the server stops)."""
    yield f"retry: {RETRY_MS}\n\n".encode()
    last_sent = time.monotonic()
    while True:
        wake.event.clear()  # before looking: a change during the look wakes the next wait
        batch = await produce()
        for chunk in batch.frames:
            yield chunk
        if batch.frames:
            last_sent = time.monotonic()
        if batch.done or wake.closed:
            return
        await wait_event(wake.event, min(poll, max(0.0, ping - (time.monotonic() - last_sent))))
        if wake.closed:
            return
        if time.monotonic() - last_sent >= ping:
            yield PING
            last_sent = time.monotonic()


def response(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=HEADERS)


@dataclass(frozen=True)
class Event:
    """One event as a client reads it (`read_events`)."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


async def read_events(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """The events of a stream's lines (httpx's `Response.aiter_lines()`): the client side of
    `frame`, for tests and benchmarks; comments (`: ping`) and `retry` are skipped."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield Event(fields.get("event", "message"), "\n".join(data), fields.get("id"))
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name in ("event", "id"):
            fields[name] = value
