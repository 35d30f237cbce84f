"""Live view lag: how long a printed log line takes to reach the job page's event stream.

1. A one-step job on the local backend prints its clock (`time.time_ns()`) every 10 ms for
   10 s; an SSE client (httpx, in this process) follows `/jobs/<id>/events` from before the
   step starts and notes, for each line, received - printed. The path measured: the step's
   stdout -> the runner -> gRPC -> masking -> the batched COPY into PostgreSQL -> the stream's
   wake-up -> the read back -> ANSI to HTML -> SSE over HTTP -> the client.
2. The same client reading a bare SSE endpoint (Starlette, same process) that replays
   pre-stored lines, one every 10 ms, each stamped as it is sent: the floor set by HTTP,
   SSE framing and this process's event loop.
Goal: p99 < 250 ms for the job page.

Standalone by default (embedded PostgreSQL under a temporary state directory);
`--database-url` uses a server (in a private schema, dropped afterwards).
Run: .venv/bin/python bench/live.py [--seconds 10] [--database-url URL]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common.http import running as serving
from common.messages import EventKind, Repo, RunRequest
from orchestrator.backends.local import LocalBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.standalone import private_admin, running
from orchestrator.web import sse
from orchestrator.web.ansi import to_html

GOAL_P99_MS = 250
INTERVAL = 0.01  # seconds between lines


def printer(count: int) -> str:
    """A shell command printing `count` clock readings, one every INTERVAL seconds."""
    code = (f"import time;t=time.time();[(time.sleep(max(0,t+i*{INTERVAL}-time.time())),"
            f"print(time.time_ns(),flush=True)) for i in range({count})]")
    return f"python3 -c '{code}'"


async def lags(url: str, count: int, headers: dict[str, str] | None = None) -> list[float]:
    """Milliseconds from each line's stamp to its arrival, for the first `count` stamped
    lines of the stream at `url`."""
    found: list[float] = []
    async with httpx.AsyncClient(timeout=None, headers=headers) as http, \
            http.stream("GET", url) as response:
        response.raise_for_status()
        async for event in sse.read_events(response.aiter_lines()):
            now = time.time_ns()
            if event.event == "log":
                found += [(now - int(line)) / 1e6 for line in event.json()["lines"]
                          if line.isdigit()]
            if len(found) >= count or event.event == "end":
                return found
    return found


def bare_app(count: int) -> Starlette:
    """Replays `count` pre-stored lines as the job page's stream frames them, stamped as sent."""
    stored = [f"{i:019d}" for i in range(count)]

    async def replay() -> AsyncIterator[bytes]:
        started = time.time()
        for seq, _line in enumerate(stored, 1):
            await asyncio.sleep(max(0.0, started + seq * INTERVAL - time.time()))
            yield sse.frame("log", {"step": 0, "lines": to_html(f"{time.time_ns()}\n")},
                            event_id=seq)

    async def events(request: Request) -> Response:
        return sse.response(replay())

    return Starlette(routes=[Route("/events", events)])


def request(workflow: str, source: Path) -> RunRequest:
    return RunRequest(
        request_id=str(uuid.uuid4()),
        repo=Repo(forge="local", owner="bench", name="src", clone_url=f"file://{source}"),
        commit_sha="0" * 40, ref="refs/heads/main", event=EventKind.PUSH,
        workflow_source=workflow)


def summary(name: str, values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=100)
    return (f"  {name:38} p50 {cuts[49]:7.1f} ms  p99 {cuts[98]:7.1f} ms  "
            f"max {max(values):7.1f} ms  ({len(values)} lines)")


async def bench(args: argparse.Namespace, state: Path) -> None:
    count = int(args.seconds / INTERVAL)
    source = state / "src"
    source.mkdir()
    admin = private_admin()
    config = OrchestratorConfig(
        host_name=f"bench-{uuid.uuid4().hex[:6]}", state_dir=state,
        database_url=args.database_url, grpc_listen="127.0.0.1:0", capacity={"local": 1},
        allow_local_backend=True, log_level="warning", web_listen="127.0.0.1:0", **admin)
    schema = f"bench_{uuid.uuid4().hex[:8]}" if args.database_url else None
    workflow = (f'workflow {{ job id="tick" runs_on="local" {{ step name="tick" '
                f'run="{printer(count)}"; }}; }}')
    async with running(config, backend=LocalBackend(state / "machines"),
                       schema=schema) as orchestrator:
        run_id = await orchestrator.api.submit(request(workflow, source))
        job_id = (await orchestrator.api.summary(run_id)).jobs[0].job_id
        page = await lags(f"{orchestrator.web.url}/jobs/{job_id}/events?after=0", count,
                          headers={"Authorization": f"Bearer {admin['admin_token']}"})
        final = await orchestrator.api.wait(run_id)
        if final.state != "success":
            raise SystemExit(f"the bench job ended {final.state}: {final.message}")
    async with serving(bare_app(count)) as url:
        bare = await lags(f"{url}/events", count)
    if len(page) != count or len(bare) != count:
        raise SystemExit(f"expected {count} lines, the job page gave {len(page)}, "
                         f"the bare stream {len(bare)}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"live view lag: {count} lines {INTERVAL * 1000:.0f} ms apart; {os.cpu_count()} CPUs, "
          f"load average {load}")
    print(summary("job page stream (print -> received)", page))
    print(summary("bare SSE replay (send -> received)", bare))
    p99 = statistics.quantiles(page, n=100)[98]
    print(f"  goal p99 < {GOAL_P99_MS} ms for the job page: {'met' if p99 < GOAL_P99_MS else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="solstice-bench-"))
    try:
        asyncio.run(bench(args, state))
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
