"""Dispatch latency: 200 one-step `true` jobs on the local backend.

Prints p50/p99 from a job being queued (its row committed) to its first step running (the
runner's ReportStep recorded), goal p50 < 100 ms and p99 < 500 ms. Jobs are submitted by
`--concurrency` clients in a closed loop (each submits a one-job run and waits for it), so a
free slot is waiting for every job and the figure is dispatch, not queueing behind capacity.
The default concurrency is the CPU count: every job in flight is a runner process and
orchestrator work, so more than that measures waiting for a CPU (try --concurrency 4 on a
2-CPU machine: throughput stays the same and latency grows).

Standalone by default (embedded PostgreSQL under a temporary state directory, in-process
queue); `--database-url` / `--amqp-url` measure the multi-host pair instead, and
`--beside-standalone` runs both in one go and prints the multi-host figures beside the
standalone ones (URLs default to the servers on 127.0.0.1).
Run: .venv/bin/python bench/dispatch.py [--jobs 200] [--database-url URL] [--amqp-url URL]
     [--beside-standalone]
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
from pathlib import Path

from common.messages import EventKind, Repo, RunRequest
from orchestrator.backends.local import LocalBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.standalone import private_admin, running

WORKFLOW = 'workflow { job id="j" runs_on="local" { step name="true" run="true"; }; }'
GOAL_P50_MS = 100.0
GOAL_P99_MS = 500.0
LOCAL_DATABASE = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def request(source: Path) -> RunRequest:
    return RunRequest(
        request_id=str(uuid.uuid4()),
        repo=Repo(forge="local", owner="bench", name="src", clone_url=f"file://{source}"),
        commit_sha="0" * 40, ref="refs/heads/main", event=EventKind.PUSH, branch="main",
        workflow_source=WORKFLOW)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def bench(args: argparse.Namespace, state: Path) -> tuple[float, float]:
    """Run the bench in the mode `args` names, print it, and return (p50, p99) in ms."""
    source = state / "src"
    source.mkdir()
    (source / "README").write_text("bench\n")
    config = OrchestratorConfig(
        host_name=f"bench-{uuid.uuid4().hex[:6]}", state_dir=state,
        database_url=args.database_url, amqp_url=args.amqp_url,
        broker_prefix=f"bench-{uuid.uuid4().hex[:6]}", grpc_listen="127.0.0.1:0",
        capacity={"local": args.concurrency}, allow_local_backend=True, log_level="warning",
        **private_admin())
    backend = LocalBackend(state / "machines")
    # On a given server, a private schema keeps the bench's tables out of everyone's way.
    schema = f"bench_{uuid.uuid4().hex[:8]}" if args.database_url else None
    async with running(config, backend=backend, schema=schema) as orchestrator:
        api = orchestrator.api
        await api.wait(await api.submit(request(source)))  # warm-up, not counted
        run_ids: list[uuid.UUID] = []
        remaining = args.jobs
        started = time.monotonic()

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                run_id = await api.submit(request(source))
                run_ids.append(run_id)
                summary = await api.wait(run_id)
                if summary.state != "success":
                    raise SystemExit(f"a bench job did not succeed: {summary}")

        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
        rows = await orchestrator.db.pool.fetch(
            "SELECT extract(epoch FROM s.started_at - j.created_at) * 1000 AS dispatch_ms,"
            " extract(epoch FROM j.leased_at - j.created_at) * 1000 AS lease_ms,"
            " extract(epoch FROM j.started_at - j.created_at) * 1000 AS fetch_ms"
            " FROM jobs j JOIN steps s ON s.job_id = j.id AND s.index = 0"
            " WHERE j.run_id = ANY($1)", run_ids)
    mode = "multi-host (PostgreSQL + RabbitMQ)" if args.amqp_url else (
        "standalone (in-process queue, " + ("PostgreSQL server)" if args.database_url
                                            else "embedded PostgreSQL)"))
    dispatch = [float(r["dispatch_ms"]) for r in rows]
    lease = [float(r["lease_ms"]) for r in rows]
    fetch = [float(r["fetch_ms"]) for r in rows]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"dispatch bench: {len(rows)} jobs, {mode}, {args.concurrency} concurrent clients, "
          f"{os.cpu_count()} CPUs, load average {load} (other work on the machine slows it)")
    print(f"  queued -> leased            p50 {percentile(lease, 50):7.1f} ms   "
          f"p99 {percentile(lease, 99):7.1f} ms")
    print(f"  queued -> runner fetched    p50 {percentile(fetch, 50):7.1f} ms   "
          f"p99 {percentile(fetch, 99):7.1f} ms")
    p50, p99 = percentile(dispatch, 50), percentile(dispatch, 99)
    print(f"  queued -> first step runs   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   "
          f"(goal p50 < {GOAL_P50_MS:.0f} ms, p99 < {GOAL_P99_MS:.0f} ms: "
          f"{'met' if p50 < GOAL_P50_MS and p99 < GOAL_P99_MS else 'NOT met'})")
    print(f"  mean {statistics.fmean(dispatch):.1f} ms; {len(rows) / elapsed:.1f} jobs/s end to end")
    return p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--database-url")
    parser.add_argument("--amqp-url")
    parser.add_argument("--beside-standalone", action="store_true",
                        help="run standalone, then over PostgreSQL + RabbitMQ, print both")
    args = parser.parse_args()
    if not args.beside_standalone:
        _run(args)
        return
    standalone = _run(argparse.Namespace(**{**vars(args), "database_url": None, "amqp_url": None}))
    multi = _run(argparse.Namespace(**{
        **vars(args), "database_url": args.database_url or LOCAL_DATABASE,
        "amqp_url": args.amqp_url or LOCAL_AMQP}))
    print(f"multi-host beside standalone: p50 {multi[0]:.1f} vs {standalone[0]:.1f} ms "
          f"({multi[0] / standalone[0]:.2f}x), p99 {multi[1]:.1f} vs {standalone[1]:.1f} ms "
          f"({multi[1] / standalone[1]:.2f}x)")


def _run(args: argparse.Namespace) -> tuple[float, float]:
    state = Path(tempfile.mkdtemp(prefix="solstice-bench-"))
    try:
        return asyncio.run(bench(args, state))
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
