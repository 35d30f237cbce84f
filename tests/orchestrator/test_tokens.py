"""The runner token: one-time, bound to its job and attempt, dead when the job ends."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from common.messages import JobState
from orchestrator.backends.base import VM, RunnerBootstrap
from orchestrator.backends.local import LocalBackend
from orchestrator.tokens import random_token
from protos import runner_pb2, runner_pb2_grpc
from tests.orchestrator.conftest import Factory

WORKFLOW = '''
workflow {
    job id="j" runs_on="local" { step name="x" run="sleep 2"; }
}'''


class RecordingBackend(LocalBackend):
    """The local backend, remembering each bootstrap it handed to a runner."""

    bootstraps: list[RunnerBootstrap] = []

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        type(self).bootstraps.append(bootstrap)
        await super().start(vm, bootstrap)


async def expect_unauthenticated(call) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "token" in raised.value.details()


async def test_wrong_reused_and_dead_tokens_are_refused(orchestrator_factory: Factory) -> None:
    RecordingBackend.bootstraps = []
    harness = await orchestrator_factory(backend_class=RecordingBackend)
    with harness.api.watch() as watch:
        run_id = await harness.submit(WORKFLOW)
        await harness.wait_step(watch, "running")
    [boot] = RecordingBackend.bootstraps
    async with grpc.aio.insecure_channel(harness.orchestrator.grpc_url) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        # Wrong token for the right job.
        await expect_unauthenticated(stub.GetJob(
            runner_pb2.GetJobRequest(job_id=boot.job_id, token="not-the-token")))
        # The right token again: it was used once by the runner already.
        await expect_unauthenticated(stub.GetJob(
            runner_pb2.GetJobRequest(job_id=boot.job_id, token=boot.token)))
        # The right token for another job id.
        await expect_unauthenticated(stub.GetJob(runner_pb2.GetJobRequest(
            job_id="00000000-0000-0000-0000-000000000000", token=boot.token)))
        # A bearer call with a wrong token.
        await expect_unauthenticated(stub.ReportStep(
            runner_pb2.StepReport(job_id=boot.job_id, step_index=0, state=runner_pb2.STEP_SUCCESS),
            metadata=(("authorization", "Bearer nope"),)))
        summary = await harness.api.wait(run_id)
        assert summary.jobs[0].state == JobState.SUCCESS
        # The job ended: its token is dead for every call.
        await expect_unauthenticated(stub.ReportResult(
            runner_pb2.JobResult(job_id=boot.job_id, outcome=runner_pb2.JOB_FAILURE),
            metadata=(("authorization", f"Bearer {boot.token}"),)))
        await expect_unauthenticated(stub.StreamLogs(
            iter([runner_pb2.LogChunk(job_id=boot.job_id, seq=99, data=b"late\n")]),
            metadata=(("authorization", f"Bearer {boot.token}"),)))
    # The late calls changed nothing.
    after = await harness.api.summary(run_id)
    assert after is not None and after.jobs[0].state == JobState.SUCCESS
    assert b"late" not in await harness.logs(after.jobs[0].job_id)


class SilentBackend(RecordingBackend):
    """Provisions, but never starts a runner: the machine that never calls in."""

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        type(self).bootstraps.append(bootstrap)


async def test_expired_token_and_boot_timeout(orchestrator_factory: Factory) -> None:
    RecordingBackend.bootstraps = []
    harness = await orchestrator_factory(backend_class=SilentBackend, boot_timeout=1)
    summary = await harness.run(WORKFLOW)
    [job] = summary.jobs
    assert job.state == JobState.ERROR
    assert "did not call in" in job.message
    [boot] = RecordingBackend.bootstraps
    async with grpc.aio.insecure_channel(harness.orchestrator.grpc_url) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        await expect_unauthenticated(stub.GetJob(
            runner_pb2.GetJobRequest(job_id=boot.job_id, token=boot.token)))


async def test_cancel_before_the_runner_called_in(orchestrator_factory: Factory) -> None:
    RecordingBackend.bootstraps = []
    harness = await orchestrator_factory(backend_class=SilentBackend, cancel_grace=60)
    run_id = await harness.submit(WORKFLOW)
    while not RecordingBackend.bootstraps:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await harness.api.cancel_run(run_id, "not needed any more")
    summary = await harness.api.wait(run_id)
    assert time.monotonic() - started < 5  # not the cancel grace: there is no runner to wait for
    [job] = summary.jobs
    assert job.state == JobState.CANCELLED and job.message == "not needed any more"
    [boot] = RecordingBackend.bootstraps
    async with grpc.aio.insecure_channel(harness.orchestrator.grpc_url) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        await expect_unauthenticated(stub.GetJob(
            runner_pb2.GetJobRequest(job_id=boot.job_id, token=boot.token)))


def test_no_token_starts_with_a_dash() -> None:
    """`ciadm --token TOKEN` must take every token: argparse reads `--token -x...` as a missing
    value (one token in 64 began with `-` and failed so, seen in CI)."""
    assert not [t for t in (random_token() for _ in range(2000)) if t.startswith("-")]
    assert len({random_token() for _ in range(100)}) == 100
