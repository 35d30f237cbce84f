"""A recording Runner servicer: the orchestrator's side of the protocol, reduced to its state.

It serves one job over a real grpc.aio server on loopback, checks the one-time token like the
real service (wrong or reused token -> UNAUTHENTICATED), stores log chunks idempotently by
seq (as the protocol requires of the orchestrator) and records every report and artifact.
Knobs let a test cancel the job, drop the log stream once, or restart the whole server.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos import runner_pb2, runner_pb2_grpc

TOKEN = "tok-0123456789abcdef"
JOB_ID = "job-1"


def make_job(*steps: tuple, **fields) -> runner_pb2.Job:
    """A job of `steps` given as (name, run[, timeout_seconds[, enabled]])."""
    specs = []
    for index, step in enumerate(steps):
        name, run, timeout, enabled = step + (0, True)[len(step) - 2:]
        specs.append(runner_pb2.StepSpec(index=index, name=name, run=run,
                                         timeout_seconds=timeout, enabled=enabled))
    fields.setdefault("checkout", runner_pb2.Checkout(preloaded=True, commit="0" * 40,
                                                      ref="refs/heads/main"))
    return runner_pb2.Job(job_id=JOB_ID, run_id="run-1", job_key="build", attempt=1,
                          steps=specs, **fields)


@dataclass
class Artifact:
    data: bytes = b""
    sha256: str = ""
    size: int = 0


class RecordingRunner(runner_pb2_grpc.RunnerServicer):
    def __init__(self, job: runner_pb2.Job, token: str = TOKEN) -> None:
        self.job = job
        self.token = token
        self.token_used = False
        self.chunks: list[runner_pb2.LogChunk] = []
        self.resent = 0  # chunks received again after a reconnect (dropped, as required)
        self.gaps: list[tuple[int, int]] = []
        self.steps: list[runner_pb2.StepReport] = []
        self.result: runner_pb2.JobResult | None = None
        self.result_received = asyncio.Event()
        self.artifacts: dict[str, Artifact] = {}
        self.cancel_reason = ""
        self.drop_log_stream_after: int | None = None  # abort StreamLogs once at this count
        self.forget_on_drop = 0  # ... and lose this many unacknowledged chunks (a crash)
        self.refused: list[str] = []
        self.silent_heartbeats = 0  # heartbeat calls to read without ever answering
        self.heartbeat_calls = 0
        self.changed = asyncio.Event()

    # -- helpers for tests -------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        return self.chunks[-1].seq if self.chunks else 0

    def output(self, step_index: int | None = None, stream: int | None = None) -> bytes:
        return b"".join(c.data for c in self.chunks
                        if (step_index is None or c.step_index == step_index)
                        and (stream is None or c.stream == stream))

    def states(self) -> dict[int, list[str]]:
        states: dict[int, list[str]] = {}
        for report in self.steps:
            states.setdefault(report.step_index, []).append(
                runner_pb2.StepState.Name(report.state))
        return states

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def _touch(self) -> None:
        self.changed.set()

    async def _auth(self, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {self.token}":
            self.refused.append("metadata")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")

    # -- the service ---------------------------------------------------------------------
    async def GetJob(self, request, context):
        if request.job_id != self.job.job_id or request.token != self.token or self.token_used:
            self.refused.append("GetJob")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or used token")
        self.token_used = True
        return self.job

    async def StreamLogs(self, request_iterator, context):
        await self._auth(context)
        async for chunk in request_iterator:
            if chunk.seq <= self.last_seq:
                self.resent += 1
                continue
            if chunk.seq != self.last_seq + 1:
                self.gaps.append((self.last_seq, chunk.seq))
                continue
            self.chunks.append(chunk)
            self._touch()
            if self.drop_log_stream_after is not None and len(self.chunks) >= self.drop_log_stream_after:
                self.drop_log_stream_after = None
                del self.chunks[len(self.chunks) - self.forget_on_drop:]
                await context.abort(grpc.StatusCode.UNAVAILABLE, "log store restarting")
        return runner_pb2.LogAck(last_seq=self.last_seq)

    async def ReportStep(self, request, context):
        await self._auth(context)
        self.steps.append(request)
        self._touch()
        return runner_pb2.Ack()

    async def ReportResult(self, request, context):
        await self._auth(context)
        self.result = request
        self.result_received.set()
        self._touch()
        return runner_pb2.Ack()

    async def Heartbeat(self, request_iterator, context):
        await self._auth(context)
        self.heartbeat_calls += 1
        self._touch()
        if self.silent_heartbeats:
            self.silent_heartbeats -= 1
            async for _ping in request_iterator:
                pass  # a dead connection: pings vanish, nothing comes back
            return
        async for _ping in request_iterator:
            await self._auth(context)  # a token may die while the job runs
            if self.cancel_reason:
                yield runner_pb2.Control(action=runner_pb2.Control.CANCEL, reason=self.cancel_reason)
            else:
                yield runner_pb2.Control(action=runner_pb2.Control.CONTINUE)

    async def UploadArtifact(self, request_iterator, context):
        await self._auth(context)
        current: Artifact | None = None
        files = size = 0
        async for chunk in request_iterator:
            if chunk.path:
                current = self.artifacts[chunk.path] = Artifact()
            assert current is not None
            current.data += chunk.data
            if chunk.last:
                current.sha256, current.size = chunk.sha256, chunk.size
                files += 1
                size += chunk.size
        self._touch()
        return runner_pb2.ArtifactAck(files=files, bytes=size)


class Harness:
    """A real grpc.aio server for a `RecordingRunner`, restartable on the same port."""

    def __init__(self, servicer: RecordingRunner) -> None:
        self.servicer = servicer
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server()
        runner_pb2_grpc.add_RunnerServicer_to_server(self.servicer, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    def runner_env(self, workspace: Path, token: str = TOKEN, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLSTICE_", "OTEL_"))}
        env.update(SOLSTICE_ORCHESTRATOR_URL=f"127.0.0.1:{self.port}", SOLSTICE_JOB_ID=JOB_ID,
                   SOLSTICE_TOKEN=token, SOLSTICE_WORKSPACE=str(workspace),
                   SOLSTICE_HEARTBEAT_SECONDS="0.2", SOLSTICE_KILL_GRACE_SECONDS="1")
        env.update(extra)
        return env

    async def start_runner(self, workspace: Path, *, env: Mapping[str, str] | None = None,
                           **extra: str) -> asyncio.subprocess.Process:
        workspace.mkdir(parents=True, exist_ok=True)
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workflow_runner.main",
            env=dict(env) if env is not None else self.runner_env(workspace, **extra),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def run_runner(self, workspace: Path, *, timeout: float = 20,
                         **extra: str) -> tuple[int, str]:
        """Run the real runner to its end; its exit code and stderr."""
        proc = await self.start_runner(workspace, **extra)
        try:
            async with asyncio.timeout(timeout):
                _, stderr = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return proc.returncode, stderr.decode(errors="replace")


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
