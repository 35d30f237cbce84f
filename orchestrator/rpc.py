"""The Runner gRPC service: what the agent inside a job's machine calls.

Authentication: GetJob carries the job's one-time token in the request; it is valid once, for
this job and attempt, before it expires, and only while this host holds the job's lease
(checked in one conditional UPDATE). Every other call carries the same token as
`authorization: Bearer <token>` metadata and is accepted only while the job's session is open
on this host. Anything else gets UNAUTHENTICATED and nothing more.

Every field of every message is checked (`orchestrator.validate`) before it is used: a value
the protocol or the database does not allow gets INVALID_ARGUMENT. A job's log is bounded by
its `LogQuota`; the first chunk past it closes the log with a line saying so, fails the job
and gets RESOURCE_EXHAUSTED.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from common.broker import Broker
from common.messages import JobState
from common.metrics import RUNNER_LOG_BYTES, RUNNER_LOG_LINES
from common.observability import tracer
from common.tracing import context_from, metadata_context
from orchestrator import inputs, tokens, validate
from orchestrator.artifacts import ArtifactRefused, ArtifactStore, ArtifactTooLarge
from orchestrator.db import TRANSIENT_ERRORS
from orchestrator.effects import Effects
from orchestrator.holds import Holds
from orchestrator.logstore import LogStore, LogStoreFailed
from orchestrator.sessions import JobSession, LogQuota, LogQuotaExceeded, Sessions
from orchestrator.store import Store
from orchestrator.updates import Hub, LogUpdate, StepUpdate
from protos import runner_pb2, runner_pb2_grpc

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

STEP_STATES = {
    runner_pb2.STEP_PENDING: "pending", runner_pb2.STEP_RUNNING: "running",
    runner_pb2.STEP_SUCCESS: "success", runner_pb2.STEP_FAILURE: "failure",
    runner_pb2.STEP_SKIPPED: "skipped", runner_pb2.STEP_CANCELLED: "cancelled",
    runner_pb2.STEP_TIMED_OUT: "timed_out",
}
OUTCOMES = {
    runner_pb2.JOB_SUCCESS: JobState.SUCCESS, runner_pb2.JOB_FAILURE: JobState.FAILURE,
    runner_pb2.JOB_ERROR: JobState.ERROR, runner_pb2.JOB_CANCELLED: JobState.CANCELLED,
    runner_pb2.JOB_TIMED_OUT: JobState.TIMED_OUT,
}
REFUSED = "invalid job token (wrong, already used, expired, or the job ended)"
# How long ReportResult waits for the executor to say whether the machine is held.
HOLD_DECISION_TIMEOUT = 10.0


def build_job(session: JobSession) -> runner_pb2.Job:
    """The `Job` message for a runner, from the planned spec stored at intake."""
    spec = session.spec
    credential = session.checkout
    return runner_pb2.Job(
        job_id=str(session.job_id), run_id=str(session.run_id), job_key=session.key,
        attempt=session.attempt,
        checkout=runner_pb2.Checkout(repo_url=session.repo.clone_url, commit=session.commit_sha,
                                     ref=session.ref, preloaded=session.preloaded,
                                     username=credential.username if credential else "",
                                     password=credential.password if credential else ""),
        env=spec["env"], secrets=session.secrets, setup_script=spec.get("setup") or "",
        steps=[runner_pb2.StepSpec(index=i, name=s["name"], run=s["run"],
                                   timeout_seconds=s.get("timeout") or 0, enabled=s["enabled"])
               for i, s in enumerate(spec["steps"])],
        timeout_seconds=spec["timeout"], artifact_patterns=spec.get("artifacts", []),
        matrix=spec.get("matrix", {}), has_inputs=bool(spec.get("needs")),
        traceparent=session.traceparent or "")


def mask_chunk(session: JobSession, chunk: runner_pb2.LogChunk) -> bytes:
    """A chunk's data as stored: masked again here, with the masks the job added at run time,
    the ones its runner reported and the `::add-mask::` lines in the data itself (so a runner
    that failed to mask is still caught)."""
    for value in chunk.added_masks:
        session.masker.add(value)
    return session.masker.mask(session.masker.take_commands(chunk.data))


def _span_parent(context: grpc.aio.ServicerContext, session: JobSession) -> tuple[Context | None, bool]:
    """The parent of a runner call's span: the `traceparent` the runner sent (the job span's,
    given in `GetJob`), else the job span itself; and whether the runner sent it."""
    sent = metadata_context(context.invocation_metadata())
    return (sent, True) if sent is not None else (context_from(session.traceparent), False)


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


class RunnerService(runner_pb2_grpc.RunnerServicer):
    def __init__(self, *, store: Store, sessions: Sessions, logs: LogStore, hub: Hub,
                 effects: Effects, broker: Broker, artifacts: ArtifactStore,
                 log_drain_timeout: float, log_quota: LogQuota,
                 holds: Holds | None = None) -> None:
        self.store = store
        self.sessions = sessions
        self.logs = logs
        self.hub = hub
        self.effects = effects
        self.broker = broker
        self.artifacts = artifacts
        self.log_drain_timeout = log_drain_timeout
        self.log_quota = log_quota
        self.holds = holds if holds is not None else Holds()

    async def _session(self, context: grpc.aio.ServicerContext, job_id: str) -> JobSession:
        """The open session the bearer token belongs to; aborts UNAUTHENTICATED otherwise."""
        token = _bearer(context)
        session = self.sessions.by_token(tokens.digest(token)) if token else None
        if session is None or not session.started.is_set() or (
                job_id and job_id != str(session.job_id)):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)
        assert session is not None
        session.touch()
        return session

    async def GetJob(self, request: runner_pb2.GetJobRequest,
                     context: grpc.aio.ServicerContext) -> runner_pb2.Job:
        await validate.require(context, validate.get_job_request, request)
        token_hash = tokens.digest(request.token)
        session = self.sessions.by_token(token_hash)
        if session is None or request.job_id != str(session.job_id):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)
        assert session is not None
        with _tracer.start_as_current_span("runner.GetJob", context=context_from(session.traceparent),
                                           kind=SpanKind.SERVER):
            started, changes = await self.store.claim_token(session.job_id, token_hash)
        if started is None or started.attempt != session.attempt:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)
        session.mark_started()
        self.effects.apply(changes)
        log.info("runner fetched its job", extra={"job_id": request.job_id,
                                                  "attempt": session.attempt})
        return build_job(session)

    async def StreamLogs(self, request_iterator: Any,
                         context: grpc.aio.ServicerContext) -> runner_pb2.LogAck:
        session = await self._session(context, "")
        job_id = str(session.job_id)
        steps = len(session.spec["steps"])
        label = session.spec.get("runs_on", "")
        try:
            async for chunk in request_iterator:
                await validate.require(context, validate.log_chunk, chunk)
                if chunk.job_id != job_id:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        "a log chunk names another job than the token's")
                if chunk.step_index >= steps:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"step_index: the job has {steps} steps")
                try:
                    if not session.accept_chunk(chunk.seq, len(chunk.data), self.log_quota):
                        continue
                except LogQuotaExceeded as exc:
                    if exc.first:
                        await self._close_log(session, exc)
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                RUNNER_LOG_LINES.labels(label).inc(chunk.data.count(b"\n"))
                RUNNER_LOG_BYTES.labels(label).inc(len(chunk.data))
                await self._store_chunk(session, chunk.seq, chunk.step_index, chunk.stream,
                                        chunk.timestamp_unix_ms, mask_chunk(session, chunk))
            session.touch()
            await self.logs.sync()
        except LogStoreFailed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        async with session.logs_progress:
            session.logs_progress.notify_all()
        return runner_pb2.LogAck(last_seq=session.contiguous)

    async def _store_chunk(self, session: JobSession, seq: int, step_index: int, stream: int,
                           timestamp_ms: int, data: bytes) -> None:
        """Hand one (masked) chunk to the log store, the live watchers and the broker."""
        ts = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        self.logs.add((session.job_id, session.attempt, seq, step_index, stream, ts, data))
        if self.hub.watching_logs:
            self.hub.publish(LogUpdate(session.run_id, session.job_id, session.key, step_index,
                                       stream, data, timestamp_ms))
        await self.broker.publish_log(str(session.job_id), data)

    async def _close_log(self, session: JobSession, exc: LogQuotaExceeded) -> None:
        """The first chunk past the quota: end the log with a line saying why, fail the job."""
        log.warning("job log quota exceeded; the job fails",
                    extra={"job_id": str(session.job_id), "reason": session.log_closed})
        line = f"solstice: {session.log_closed}; the rest of this job's log was dropped\n"
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        await self._store_chunk(session, session.next_free_seq, validate.NO_STEP,
                                runner_pb2.SYSTEM, now_ms, line.encode())
        session.set_result(JobState.FAILURE, exc.message)
        await self.logs.sync()

    async def ReportStep(self, request: runner_pb2.StepReport,
                         context: grpc.aio.ServicerContext) -> runner_pb2.Ack:
        await validate.require(context, validate.step_report, request)
        session = await self._session(context, request.job_id)
        state = STEP_STATES.get(request.state)
        if state is None or state == "pending":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"step state {request.state} cannot be reported")
        assert state is not None
        # Only a step that ran has an exit code and a duration.
        final = state not in ("running", "skipped")
        name = await self.store.record_step(
            session.job_id, session.attempt, request.step_index, state,
            request.exit_code if final else None, request.duration_ms if final else None)
        if name is None:
            # A retried report that already landed, or one for a step that does not exist.
            log.warning("step report refused", extra={"job_id": request.job_id,
                                                      "step": request.step_index, "state": state})
            return runner_pb2.Ack()
        self._step_span(context, session, request, name, state)
        self.hub.publish(StepUpdate(session.run_id, session.job_id, session.key,
                                    request.step_index, name, state,
                                    request.exit_code if final else None,
                                    request.duration_ms if final else None,
                                    request.timestamp_unix_ms))
        return runner_pb2.Ack()

    @staticmethod
    def _step_span(context: grpc.aio.ServicerContext, session: JobSession,
                   request: runner_pb2.StepReport, name: str, state: str) -> None:
        """A span per step that ran, from its `running` report to its final one."""
        now = time.time_ns()
        if state == "running":
            session.step_started_ns[request.step_index] = now
            return
        parent, from_runner = _span_parent(context, session)
        _tracer.start_span(f"step {name}", context=parent, kind=SpanKind.SERVER,
                           start_time=session.step_started_ns.pop(request.step_index, now),
                           attributes={"solstice.step.index": request.step_index,
                                       "solstice.step.state": state,
                                       "solstice.step.exit_code": request.exit_code,
                                       "solstice.trace.from_runner": from_runner}).end(now)

    async def ReportResult(self, request: runner_pb2.JobResult,
                           context: grpc.aio.ServicerContext) -> runner_pb2.Ack:
        await validate.require(context, validate.job_result, request)
        session = await self._session(context, request.job_id)
        parent, from_runner = _span_parent(context, session)
        with _tracer.start_as_current_span("runner.ReportResult", context=parent,
                                           kind=SpanKind.SERVER, attributes={
                                               "solstice.trace.from_runner": from_runner}):
            return await self._report_result(request, session)

    async def _report_result(self, request: runner_pb2.JobResult,
                             session: JobSession) -> runner_pb2.Ack:
        state = OUTCOMES.get(request.outcome)
        message = request.message
        if state is None:
            state, message = JobState.ERROR, f"the runner reported no outcome ({message})"
        try:
            # asyncio.timeout, not wait_for, which can swallow a cancel (CPython gh-86296).
            async with asyncio.timeout(self.log_drain_timeout), session.logs_progress:
                await session.logs_progress.wait_for(
                    lambda: session.contiguous >= request.last_log_seq)
        except TimeoutError:
            log.warning("result reported before all its logs arrived",
                        extra={"job_id": request.job_id, "have": session.contiguous,
                               "expected": request.last_log_seq})
        if session.artifact_refusal:
            state, message = await self._fail_for_artifacts(session, state, message)
        session.set_result(state, message)
        try:
            async with asyncio.timeout(HOLD_DECISION_TIMEOUT):
                hold = await asyncio.shield(session.hold)
        except TimeoutError:
            hold = 0
        return runner_pb2.Ack(hold_seconds=hold)

    async def _fail_for_artifacts(self, session: JobSession, state: JobState,
                                  message: str) -> tuple[JobState, str]:
        """An upload went past an artifact cap: the job fails (whatever a runner that ignored
        the refusal reports), with a line saying why after the runner's last log line."""
        line = f"solstice: {session.artifact_refusal}; the job fails\n"
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        await self._store_chunk(session, session.next_free_seq, validate.NO_STEP,
                                runner_pb2.SYSTEM, now_ms, line.encode())
        await self.logs.sync()
        if state == JobState.SUCCESS:
            return JobState.FAILURE, session.artifact_refusal
        return state, message

    async def Heartbeat(self, request_iterator: Any,
                        context: grpc.aio.ServicerContext) -> None:
        session = await self._session(context, "")
        cancelled = asyncio.ensure_future(session.cancel.wait())
        told = False
        try:
            while True:
                ping = asyncio.ensure_future(context.read())
                await asyncio.wait({ping, cancelled}, return_when=asyncio.FIRST_COMPLETED)
                if session.cancel.is_set() and not told:
                    told = True
                    await context.write(runner_pb2.Control(action=runner_pb2.Control.CANCEL,
                                                           reason=session.cancel_reason))
                message = await ping
                if message is grpc.aio.EOF:
                    return
                await validate.require(context, validate.heartbeat_ping, message)
                if message.job_id not in ("", str(session.job_id)):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        "a heartbeat names another job than the token's")
                session.touch()
                if not session.cancel.is_set():
                    await context.write(runner_pb2.Control(action=runner_pb2.Control.CONTINUE))
        finally:
            cancelled.cancel()

    async def UploadArtifact(self, request_iterator: Any,
                             context: grpc.aio.ServicerContext) -> runner_pb2.ArtifactAck:
        session = await self._session(context, "")
        try:
            received = await self.artifacts.receive(session, request_iterator)
        except ArtifactRefused as exc:
            log.warning("artifact upload refused", extra={
                "job_id": str(session.job_id), "attempt": session.attempt,
                "code": exc.code.name, "error": exc.message})
            if isinstance(exc, ArtifactTooLarge) and not session.artifact_refusal:
                session.artifact_refusal = exc.message
            await context.abort(exc.code, str(exc))
        return runner_pb2.ArtifactAck(files=received.files, bytes=received.bytes)

    async def FetchInputs(self, request: runner_pb2.FetchInputsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[runner_pb2.InputChunk]:
        session = await self._session(context, request.job_id)
        async for chunk in inputs.stream(self.store.db, self.artifacts, session):
            yield chunk

    async def DebugSessions(self, request_iterator: Any,
                            context: grpc.aio.ServicerContext) -> None:
        session = await self._session(context, "")
        held = self.holds.get(session.job_id)
        if held is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "the job's machine is not held")
        assert held is not None
        await held.attach_runner(context)


class DatabaseUnavailable(grpc.aio.ServerInterceptor):
    """A database restart inside any RPC answers UNAVAILABLE, which the runner retries with
    backoff; as an unexpected exception it would reach the runner as UNKNOWN, which is final."""

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: _unavailable_on_database_errors(behavior)})
        return handler


async def _abort_unavailable(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    log.warning("database unavailable during an RPC; the caller will retry",
                extra={"error": repr(exc)})
    await context.abort(grpc.StatusCode.UNAVAILABLE,
                        "the orchestrator's database is unavailable; retry")


def _unavailable_on_database_errors(behavior: Callable[..., Any]) -> Callable[..., Any]:
    # Streaming handlers may be async generators (the Admin service's log tail): wrap them as
    # generators, the others as coroutines.
    if inspect.isasyncgenfunction(behavior):
        async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for response in behavior(request, context):
                    yield response
            except TRANSIENT_ERRORS as exc:
                await _abort_unavailable(context, exc)

        return guarded_stream

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except TRANSIENT_ERRORS as exc:
            await _abort_unavailable(context, exc)

    return guarded
