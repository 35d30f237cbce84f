"""The runner's side of the Runner gRPC service: channel, auth metadata, error classes.

Every RPC error is sorted once, here: `UNAUTHENTICATED` is final (`RunnerAuthError`), codes a
restarting or overloaded orchestrator answers with are transient (`TransientRpcError`, retried
with backoff for up to `unreachable_timeout`), anything else is a protocol fault
(`OrchestratorError`).
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from common.errors import SolsticeError
from common.retry import Backoff, retry_async
from protos import runner_pb2, runner_pb2_grpc

T = TypeVar("T")

TRANSIENT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
})
RETRY_BACKOFF = Backoff(initial=0.05, maximum=2.0)
# Reconnect quickly after an orchestrator restart instead of grpc's default (up to 120 s).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class RunnerAuthError(SolsticeError):
    """The orchestrator refused the job token; nothing the runner can retry."""


class OrchestratorError(SolsticeError):
    """The orchestrator answered with an error the runner cannot recover from."""


class OrchestratorUnreachable(SolsticeError):
    """The orchestrator stayed unreachable past the runner's patience."""


class TransientRpcError(Exception):
    """A call failed in a way a retry may fix (orchestrator restarting, network blip)."""


def classify(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    """Turn a gRPC error into one of the runner's error classes."""
    code = exc.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return RunnerAuthError(
            f"the orchestrator refused this runner's token (UNAUTHENTICATED on {what}: "
            f"{exc.details()})",
            hint="the token is one-time and dies with the job; the job was probably "
                 "reassigned or ended. This runner stops.")
    if code in TRANSIENT_CODES:
        return TransientRpcError(f"{what}: {code.name} {exc.details()}")
    return OrchestratorError(f"{what} failed: {code.name} {exc.details()}")


def make_channel(url: str) -> grpc.aio.Channel:
    """A channel to `host:port` (plaintext) or `grpcs://host:port` (TLS, system roots)."""
    for scheme in ("grpcs://", "https://"):
        if url.startswith(scheme):
            return grpc.aio.secure_channel(url[len(scheme):], grpc.ssl_channel_credentials(),
                                           options=CHANNEL_OPTIONS)
    for scheme in ("grpc://", "http://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS)


class RunnerClient:
    """The Runner stub with the job's token attached and retries built in."""

    def __init__(self, channel: grpc.aio.Channel, job_id: str, token: str,
                 unreachable_timeout: float) -> None:
        self.stub = runner_pb2_grpc.RunnerStub(channel)
        self.job_id = job_id
        self._token = token
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.unreachable_timeout = unreachable_timeout
        self._last_contact = time.monotonic()

    def touch(self) -> None:
        """Record that the orchestrator answered; the unreachable clock starts again."""
        self._last_contact = time.monotonic()

    async def with_retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """Run `operation`, retrying transient failures; raise the final error class.

        The runner gives up (`OrchestratorUnreachable`) once nothing was heard from the
        orchestrator for `unreachable_timeout` seconds, on any call.
        """
        async def attempt() -> T:
            try:
                result = await operation()
            except (grpc.aio.AioRpcError, TransientRpcError) as exc:
                error = classify(exc, what) if isinstance(exc, grpc.aio.AioRpcError) else exc
                silent = time.monotonic() - self._last_contact
                if isinstance(error, TransientRpcError) and silent > self.unreachable_timeout:
                    raise OrchestratorUnreachable(
                        f"the orchestrator stayed unreachable for {silent:.0f} s ({what}: "
                        f"{error})", hint="check the orchestrator address and that it runs"
                    ) from exc
                raise error from exc
            self.touch()
            return result

        return await retry_async(attempt, retry_on=(TransientRpcError,),
                                 backoff=RETRY_BACKOFF, describe=what)

    async def get_job(self) -> runner_pb2.Job:
        """The job; every later call carries its trace context as `traceparent` metadata, so
        the orchestrator's spans for them join the run's trace."""
        request = runner_pb2.GetJobRequest(job_id=self.job_id, token=self._token)
        job = await self.with_retry(lambda: self.stub.GetJob(request), "GetJob")
        if job.traceparent:
            self.metadata = (*self.metadata, ("traceparent", job.traceparent))
        return job

    async def report_step(self, report: runner_pb2.StepReport) -> None:
        await self.with_retry(lambda: self.stub.ReportStep(report, metadata=self.metadata),
                              "ReportStep")

    async def report_result(self, result: runner_pb2.JobResult) -> runner_pb2.Ack:
        """Report the result; the ack says whether the machine is held (`hold_seconds`)."""
        return await self.with_retry(
            lambda: self.stub.ReportResult(result, metadata=self.metadata), "ReportResult")
