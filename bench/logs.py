"""Log throughput: one runner emitting 1M short lines, runner -> stored in PostgreSQL.

1. End to end: a one-step job (`seq 1 N`) on the local backend through the real orchestrator;
   lines/s from the step starting to the job's result (which the orchestrator accepts only
   once every chunk is stored). This includes the step writing and the runner reading,
   masking and batching its output.
2. The same chunks, sent by one client stream (as the runner would) to the orchestrator's real
   Runner service (token check, masking, batched COPY into PostgreSQL, ack after storing), and
   to a bare grpc.aio server on loopback that only counts them; both rates and the ratio.
Goal: >= 100k lines/s end to end, and the stored stream >= 0.5x the bare one.

Standalone by default (embedded PostgreSQL under a temporary state directory);
`--database-url` uses a server (in a private schema, dropped afterwards).
Run: .venv/bin/python bench/logs.py [--lines 1000000] [--database-url URL]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from common.messages import EventKind, JobState, Repo, RunRequest
from orchestrator.backends.base import VM, RunnerBootstrap
from orchestrator.backends.local import LocalBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.logstore import read_log
from orchestrator.standalone import private_admin, running
from orchestrator.updates import JobUpdate, StepUpdate
from protos import runner_pb2, runner_pb2_grpc

GOAL_LINES_PER_S = 100_000
GOAL_RATIO = 0.5


class CountingRunner(runner_pb2_grpc.RunnerServicer):
    """A Runner service whose StreamLogs only counts what arrives."""

    def __init__(self) -> None:
        self.lines = 0

    async def StreamLogs(self, request_iterator, context) -> runner_pb2.LogAck:
        last = 0
        async for chunk in request_iterator:
            self.lines += chunk.data.count(b"\n")
            last = chunk.seq
        return runner_pb2.LogAck(last_seq=last)


async def bare_stream(chunks: list[runner_pb2.LogChunk]) -> float:
    """Seconds to send `chunks` over one client stream to a counting server on loopback."""
    server = grpc.aio.server()
    counter = CountingRunner()
    runner_pb2_grpc.add_RunnerServicer_to_server(counter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = runner_pb2_grpc.RunnerStub(channel)
            await channel.channel_ready()
            return await send(stub, chunks)
    finally:
        await server.stop(None)


class SilentBackend(LocalBackend):
    """Provisions, keeps the bootstrap, starts nothing: the bench plays the runner itself."""

    bootstraps: list[RunnerBootstrap] = []

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        self.bootstraps.append(bootstrap)


async def send(stub: runner_pb2_grpc.RunnerStub, chunks: list[runner_pb2.LogChunk],
               metadata: tuple[tuple[str, str], ...] = ()) -> float:
    """Seconds to stream `chunks` on one call until its ack (the runner's way to send)."""
    started = time.monotonic()
    call = stub.StreamLogs(metadata=metadata)
    for chunk in chunks:
        await call.write(chunk)
    await call.done_writing()
    ack = await call
    if ack.last_seq != chunks[-1].seq:
        raise SystemExit(f"acked up to {ack.last_seq}, sent up to {chunks[-1].seq}")
    return time.monotonic() - started


async def stored_stream(args: argparse.Namespace, state: Path,
                        chunks: list[runner_pb2.LogChunk]) -> float:
    """Seconds for the real Runner service to take `chunks` into PostgreSQL, acked."""
    config = OrchestratorConfig(
        host_name=f"bench-{uuid.uuid4().hex[:6]}", state_dir=state,
        database_url=args.database_url, grpc_listen="127.0.0.1:0", capacity={"local": 1},
        allow_local_backend=True, boot_timeout=120, log_level="warning", **private_admin())
    schema = f"bench_{uuid.uuid4().hex[:8]}" if args.database_url else None
    backend = SilentBackend(state / "silent")
    workflow = 'workflow { job id="replay" runs_on="local" { step name="x" run="true"; }; }'
    async with running(config, backend=backend, schema=schema) as orchestrator:
        run_id = await orchestrator.api.submit(request(workflow, state / "src"))
        while not backend.bootstraps:
            await asyncio.sleep(0.01)
        boot = backend.bootstraps[0]
        async with grpc.aio.insecure_channel(orchestrator.grpc_url) as channel:
            stub = runner_pb2_grpc.RunnerStub(channel)
            await stub.GetJob(runner_pb2.GetJobRequest(job_id=boot.job_id, token=boot.token))
            replay = [runner_pb2.LogChunk(job_id=boot.job_id, step_index=c.step_index,
                                          seq=i, stream=c.stream,
                                          timestamp_unix_ms=c.timestamp_unix_ms, data=c.data)
                      for i, c in enumerate(chunks, 1)]
            metadata = (("authorization", f"Bearer {boot.token}"),)
            seconds = await send(stub, replay, metadata)
            await stub.ReportResult(runner_pb2.JobResult(
                job_id=boot.job_id, outcome=runner_pb2.JOB_SUCCESS, last_log_seq=replay[-1].seq),
                metadata=metadata)
        await orchestrator.api.wait(run_id)
        log = await read_log(orchestrator.db, orchestrator.blobs, uuid.UUID(boot.job_id))
        stored = len(log.chunks) if log is not None else 0
        if stored != len(chunks):
            raise SystemExit(f"stored {stored} chunks of {len(chunks)}")
    return seconds


def request(workflow: str, source: Path) -> RunRequest:
    return RunRequest(
        request_id=str(uuid.uuid4()),
        repo=Repo(forge="local", owner="bench", name="src", clone_url=f"file://{source}"),
        commit_sha="0" * 40, ref="refs/heads/main", event=EventKind.PUSH,
        workflow_source=workflow)


async def bench(args: argparse.Namespace, state: Path) -> None:
    source = state / "src"
    source.mkdir()
    config = OrchestratorConfig(
        host_name=f"bench-{uuid.uuid4().hex[:6]}", state_dir=state,
        database_url=args.database_url, grpc_listen="127.0.0.1:0", capacity={"local": 1},
        allow_local_backend=True, log_level="warning", **private_admin())
    schema = f"bench_{uuid.uuid4().hex[:8]}" if args.database_url else None
    workflow = (f'workflow {{ job id="logs" runs_on="local" {{ step name="emit" '
                f'run="seq 1 {args.lines}"; }}; }}')
    async with running(config, backend=LocalBackend(state / "machines"),
                       schema=schema) as orchestrator:
        api = orchestrator.api
        with api.watch(kinds=(StepUpdate, JobUpdate)) as watch:
            run_id = await api.submit(request(workflow, source))
            step_started = finished = 0.0
            async for update in watch:
                if isinstance(update, StepUpdate) and update.state == "running":
                    step_started = time.monotonic()
                if isinstance(update, JobUpdate) and update.state.final:
                    finished = time.monotonic()
                    if update.state != JobState.SUCCESS:
                        raise SystemExit(f"the bench job ended {update.state}: {update.message}")
                    break
        summary = await api.wait(run_id)
        job_id = summary.jobs[0].job_id
        log = await read_log(orchestrator.db, orchestrator.blobs, job_id)
        assert log is not None
        rows = log.chunks
    stored_lines = sum(r.data.count(b"\n") for r in rows if r.step_index == 0)
    if stored_lines != args.lines:
        raise SystemExit(f"stored {stored_lines} lines of the step, expected {args.lines}")
    chunks = [runner_pb2.LogChunk(job_id=str(job_id), step_index=r.step_index, seq=r.seq,
                                  stream=r.stream, timestamp_unix_ms=int(r.ts.timestamp() * 1000),
                                  data=r.data) for r in rows]
    end_to_end = args.lines / (finished - step_started)
    # The stream comparison sends the chunks `rounds` times (fresh seqs) so that it lasts long
    # enough to measure; a single pass over loopback takes only tens of milliseconds.
    chunks = [runner_pb2.LogChunk(job_id=c.job_id, step_index=c.step_index, seq=i,
                                  stream=c.stream, timestamp_unix_ms=c.timestamp_unix_ms,
                                  data=c.data)
              for i, c in enumerate((c for _ in range(args.rounds) for c in chunks), 1)]
    total_lines = sum(c.data.count(b"\n") for c in chunks)
    stored_rate = total_lines / await stored_stream(args, state, chunks)
    bare_rate = total_lines / await bare_stream(chunks)
    ratio = stored_rate / bare_rate
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    size = sum(len(c.data) for c in chunks)
    print(f"log bench: {args.lines} lines; streams: {args.rounds} x the same {len(rows)} chunks "
          f"({size / 1e6:.1f} MB); {os.cpu_count()} CPUs, load average {load}")
    print(f"  end to end, step -> stored       {end_to_end:12,.0f} lines/s")
    print(f"  same chunks -> Runner service    {stored_rate:12,.0f} lines/s  (stored, acked)")
    print(f"  same chunks -> bare grpc.aio     {bare_rate:12,.0f} lines/s  (counted only)")
    met = end_to_end >= GOAL_LINES_PER_S and ratio >= GOAL_RATIO
    print(f"  ratio stored/bare {ratio:.2f}x  (goal >= {GOAL_LINES_PER_S:,} lines/s end to end "
          f"and >= {GOAL_RATIO}x: {'met' if met else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=10,
                        help="times the chunks are replayed in the stream comparison")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="solstice-bench-"))
    try:
        asyncio.run(bench(args, state))
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
