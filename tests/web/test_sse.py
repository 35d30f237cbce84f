"""The event streams: framing, the resume point, pings, and a job's log stream resuming after
a reconnect with no gap and no repeat (against a real orchestrator)."""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from starlette.requests import Request

from common.http import running as serving
from orchestrator.web import build_app, sse
from orchestrator.web.signals import LiveSignals
from tests.orchestrator.conftest import ADMIN_TOKEN

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def request(query: str = "", last_event_id: str | None = None) -> Request:
    headers = [] if last_event_id is None else [(b"last-event-id", last_event_id.encode())]
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query.encode(),
                    "headers": headers})


def test_the_resume_point_is_last_event_id_then_after() -> None:
    assert sse.resume_point(request()) == 0
    assert sse.resume_point(request("after=7")) == 7
    assert sse.resume_point(request("after=7", last_event_id="12")) == 12
    for bad in ("x", "-1", str(2**63)):
        with pytest.raises(sse.BadResumePoint):
            sse.resume_point(request(last_event_id=bad))


async def lines_of(frames: list[bytes]):
    for line in b"".join(frames).decode().split("\n"):
        yield line


async def test_frames_read_back_as_events() -> None:
    frames = [sse.frame("log", {"lines": ["a\nb", "<c>"]}, event_id=5), sse.PING,
              sse.frame("end", {"state": "success"})]
    events = [e async for e in sse.read_events(lines_of(frames))]
    assert [(e.event, e.id) for e in events] == [("log", "5"), ("end", None)]
    assert events[0].json() == {"lines": ["a\nb", "<c>"]}
    assert b"\n" not in frames[0].split(b"data: ")[1][:-2]  # one data line


async def test_follow_wakes_at_once_pings_when_idle_and_ends_on_close() -> None:
    signals, key, looks = LiveSignals(), uuid.uuid4(), []

    async def look() -> sse.Batch:
        looks.append(time.monotonic())
        return sse.Batch([sse.frame("n", len(looks))] if len(looks) == 2 else [])

    got: list[bytes] = []

    async def consume() -> None:
        with signals.subscribe(key) as wake:
            async for chunk in sse.follow(look, wake, poll=30, ping=0.2):
                got.append(chunk)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    signals.notify([uuid.uuid4()])  # someone else's change
    await asyncio.sleep(0.05)
    assert len(looks) == 1
    woken = time.monotonic()
    signals.notify([key])
    await asyncio.sleep(0.05)
    assert len(looks) == 2 and looks[1] - woken < 0.05
    await asyncio.sleep(0.35)  # idle: pings keep the stream open, no looks without a wake
    assert got[0].startswith(b"retry: ") and sse.frame("n", 2) in got and sse.PING in got
    assert len(looks) <= 4
    signals.close()
    await asyncio.wait_for(task, 1)


async def events(http: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None,
                 until: str = "end", timeout: float = 20) -> list[sse.Event]:
    got = []
    async with asyncio.timeout(timeout), http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in sse.read_events(response.aiter_lines()):
            got.append(event)
            if event.event == until:
                break
    return got


def log_ids(got: list[sse.Event]) -> list[int]:
    return [int(e.id) for e in got if e.event == "log"]


async def test_a_job_stream_resumes_after_last_event_id(orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    summary = await harness.run('workflow { job id="j" runs_on="local" { step name="s"'
                                ' run="for i in 1 2 3 4 5; do echo line $i; sleep 0.1; done"; }; }')
    job_id = summary.jobs[0].job_id
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        whole = await events(http, f"/jobs/{job_id}/events")
        ids = log_ids(whole)
        assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 3
        assert whole[-1].event == "end" and whole[-1].json()["state"] == "success"
        text = [line for e in whole if e.event == "log" for line in e.json()["lines"]]
        assert [line for line in text if line.startswith("line")] == [
            f"line {i}" for i in range(1, 6)]

        # A reconnect: the header the browser sends wins over the page's `after`.
        resumed = await events(http, f"/jobs/{job_id}/events?after=1",
                               headers={"Last-Event-ID": str(ids[1])})
        assert log_ids(resumed) == ids[2:]
        assert [e.json() for e in resumed if e.event == "log"] == \
            [e.json() for e in whole if e.event == "log"][2:]

        bad = await http.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "x"})
        assert bad.status_code == 400
        assert (await http.get(f"/jobs/{uuid.uuid4()}/events")).status_code == 404


async def test_a_running_job_stream_never_skips_a_chunk_stored_late(orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    run_id = await harness.submit('workflow { job id="j" runs_on="local" { step name="s"'
                                  ' run="echo first; sleep 2; echo second"; }; }')
    db = harness.orchestrator.db
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        while b"first" not in await harness.logs((await harness.api.summary(run_id)).jobs[0].job_id):
            await asyncio.sleep(0.05)
        job = (await harness.api.summary(run_id)).jobs[0]
        # A chunk far ahead, as if those between were still on their way.
        await db.pool.execute(
            "INSERT INTO log_chunks (job_id, attempt, seq, step_index, stream, ts, data)"
            " VALUES ($1, $2, 1000, 0, 1, $3, 'late\n')", job.job_id, job.attempt,
            datetime.now(UTC))
        got = await events(http, f"/jobs/{job.job_id}/events?after=0")
    ids = log_ids(got)
    assert ids[-1] == 1000 and ids[:-1] == list(range(1, len(ids)))
    assert any("second" in line for e in got if e.event == "log" for line in e.json()["lines"])


async def test_a_stream_opened_before_the_job_started_follows_its_first_attempt(
        orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    run_id = await harness.submit('workflow { job id="j" runs_on="local" { step name="s"'
                                  ' run="echo hello"; }; }', trusted=False, needs_approval=True)
    job = (await harness.api.summary(run_id)).jobs[0]
    assert job.state == "awaiting_approval" and job.attempt == 0
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        stream = asyncio.create_task(events(http, f"/jobs/{job.job_id}/events?attempt=0&after=0"))
        await asyncio.sleep(0.5)
        assert await harness.api.approve_run(run_id, "tester")
        got = await stream
    assert [e.event for e in got if e.event == "attempt"] == []
    assert got[-1].event == "end" and got[-1].json()["state"] == "success"
    assert any(line == "hello" for e in got if e.event == "log" for line in e.json()["lines"])


async def test_this_hosts_changes_wake_the_stream_without_polling(orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    orchestrator = harness.orchestrator
    # The orchestrator's own signals (fed by its log writer and its state changes), and a poll
    # too slow to deliver anything in this test.
    app = build_app(orchestrator.db, policy=None, signals=orchestrator.live, poll=60)
    run_id = await harness.submit('workflow { job id="j" runs_on="local" { step name="s"'
                                  ' run="echo a; sleep 1; echo b"; }; }')
    job_id = (await harness.api.summary(run_id)).jobs[0].job_id
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        started = time.monotonic()
        got = await events(http, f"/jobs/{job_id}/events?attempt=0", timeout=15)
    assert time.monotonic() - started < 10
    lines = [line for e in got if e.event == "log" for line in e.json()["lines"]]
    assert "a" in lines and "b" in lines
    assert [e.json()["state"] for e in got if e.event in ("steps", "end")][-1] == "success"
