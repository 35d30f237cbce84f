"""The Runner service as a runner sees it: log sequence numbers, resends, masking on the
server side, and a JobRequest delivered twice."""
from __future__ import annotations

import asyncio
import uuid

import grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from common.masking import SecretMasker
from common.messages import JobRequest, JobState
from orchestrator.backends.base import VM, RunnerBootstrap
from orchestrator.backends.local import LocalBackend
from orchestrator.updates import LogUpdate, StepUpdate
from protos import runner_pb2, runner_pb2_grpc
from tests.orchestrator.conftest import Factory, Harness

SECRET = "hunter2-but-longer"
WORKFLOW = '''
workflow {
    job id="j" runs_on="local" {
        secrets "TOKEN"
        step name="x" run="true"
    }
}'''


class PlayerBackend(LocalBackend):
    """Starts no runner: the test plays the runner with the bootstrap it keeps."""

    bootstraps: list[RunnerBootstrap] = []

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        type(self).bootstraps.append(bootstrap)


async def play(harness: Harness) -> tuple[runner_pb2_grpc.RunnerStub, RunnerBootstrap,
                                          grpc.aio.Channel]:
    while not PlayerBackend.bootstraps:
        await asyncio.sleep(0.01)
    boot = PlayerBackend.bootstraps[0]
    channel = grpc.aio.insecure_channel(harness.orchestrator.grpc_url)
    stub = runner_pb2_grpc.RunnerStub(channel)
    job = await stub.GetJob(runner_pb2.GetJobRequest(job_id=boot.job_id, token=boot.token))
    assert job.secrets["TOKEN"] == SECRET
    return stub, boot, channel


def chunk(boot: RunnerBootstrap, seq: int, data: bytes) -> runner_pb2.LogChunk:
    return runner_pb2.LogChunk(job_id=boot.job_id, seq=seq, step_index=0,
                               stream=runner_pb2.STDOUT, data=data)


async def stream(stub, boot, chunks) -> int:
    ack = await stub.StreamLogs(iter(chunks),
                                metadata=(("authorization", f"Bearer {boot.token}"),))
    return ack.last_seq


async def test_resends_gaps_and_server_side_masking(orchestrator_factory: Factory) -> None:
    PlayerBackend.bootstraps = []
    harness = await orchestrator_factory(backend_class=PlayerBackend, secrets={"TOKEN": SECRET})
    live: list[bytes] = []
    with harness.api.watch(kinds=(LogUpdate,)) as watch:
        run_id = await harness.submit(WORKFLOW)
        stub, boot, channel = await play(harness)
        async with channel:
            # A runner that failed to mask: the orchestrator masks again before storing.
            assert await stream(stub, boot, [chunk(boot, 1, f"one {SECRET}\n".encode()),
                                             chunk(boot, 2, b"two\n")]) == 2
            # A resend after a lost ack, with a gap: duplicates dropped, ack stops at the gap.
            assert await stream(stub, boot, [chunk(boot, 2, b"two again\n"),
                                             chunk(boot, 4, b"four\n")]) == 2
            assert await stream(stub, boot, [chunk(boot, 3, b"three\n"),
                                             chunk(boot, 4, b"four again\n")]) == 4
            metadata = (("authorization", f"Bearer {boot.token}"),)
            await stub.ReportStep(runner_pb2.StepReport(
                job_id=boot.job_id, step_index=0, state=runner_pb2.STEP_RUNNING), metadata=metadata)
            await stub.ReportStep(runner_pb2.StepReport(
                job_id=boot.job_id, step_index=0, state=runner_pb2.STEP_SUCCESS, duration_ms=5),
                metadata=metadata)
            await stub.ReportResult(runner_pb2.JobResult(
                job_id=boot.job_id, outcome=runner_pb2.JOB_SUCCESS, message="done",
                last_log_seq=4), metadata=metadata)
        summary = await harness.api.wait(run_id)
        while not watch.queue.empty():
            live.append(watch.queue.get_nowait().data)
    [job] = summary.jobs
    assert job.state == JobState.SUCCESS and job.message == "done"
    assert job.steps[0].state == "success" and job.steps[0].duration_ms == 5
    stored = await harness.logs(job.job_id)
    assert stored == b"one ***\ntwo\nthree\nfour\n"  # in seq order, each chunk once
    assert b"".join(live) == b"one ***\ntwo\nfour\nthree\n"  # live: as they arrived
    assert SECRET.encode() not in stored


async def test_a_job_request_delivered_twice_runs_once(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory()
    steps: list[StepUpdate] = []
    with harness.api.watch(kinds=(StepUpdate,)) as watch:
        run_id = await harness.submit('workflow { job id="j" runs_on="local" {'
                                      ' step name="x" run="sleep 1"; }; }')
        first = await harness.wait_step(watch, "running")
        summary = await harness.api.summary(run_id)
        assert summary is not None
        [job] = summary.jobs
        await harness.orchestrator.broker.publish_job(JobRequest(
            run_id=run_id, job_id=job.job_id, job_key="j", runs_on="local"))
        summary = await harness.api.wait(run_id)
        while not watch.queue.empty():
            steps.append(watch.queue.get_nowait())
    assert summary.jobs[0].state == JobState.SUCCESS
    assert summary.jobs[0].attempt == 1
    assert first.job_id == job.job_id
    assert [s.state for s in steps] == ["success"]  # no second start
    machines = await harness.orchestrator.db.pool.fetchval(
        "SELECT count(*) FROM jobs WHERE lease_host IS NOT NULL")
    assert machines == 1


async def test_a_step_whose_if_is_false_is_skipped(harness: Harness) -> None:
    summary = await harness.run('''
workflow {
    job id="j" runs_on="local" {
        step name="always" run="echo always"
        step name="tags only" run="echo tagged" if="tag"
        step name="main only" run="echo on main" if="branch == 'main'"
    }
}''')
    [job] = summary.jobs
    assert job.state == JobState.SUCCESS
    assert [s.state for s in job.steps] == ["success", "skipped", "success"]
    logs = await harness.logs(job.job_id)
    assert b"tagged" not in logs and b"on main" in logs


def fuzz_cases() -> list[tuple[list[bytes], list[int]]]:
    """Lines built around the secret (and pieces of it), and where chunks split them."""
    cases: list[tuple[list[bytes], list[int]]] = []
    piece = st.sampled_from([SECRET, SECRET[:5], SECRET[5:], "x", " ", "***", "hunter"])
    line = st.lists(piece, max_size=6).map(lambda parts: ("".join(parts) + "\n").encode())

    @settings(max_examples=40, deadline=None, database=None)
    @given(lines=st.lists(line, min_size=1, max_size=12),
           cuts=st.lists(st.integers(min_value=1, max_value=12), max_size=6))
    def collect(lines: list[bytes], cuts: list[int]) -> None:
        cases.append((lines, cuts))

    collect()
    return cases


async def test_server_masks_any_chunking_of_whole_lines(orchestrator_factory: Factory) -> None:
    """Hypothesis picks the lines and the chunk boundaries (chunks hold whole lines, as the
    protocol says); a runner that sent the secret unmasked never gets it stored."""
    PlayerBackend.bootstraps = []
    harness = await orchestrator_factory(backend_class=PlayerBackend, secrets={"TOKEN": SECRET})
    await harness.submit(WORKFLOW)
    stub, boot, channel = await play(harness)
    masker = SecretMasker([SECRET, boot.token])
    seq = 0
    expected = b""
    async with channel:
        for lines, cuts in fuzz_cases():
            bounds = sorted({c for c in cuts if c < len(lines)} | {0, len(lines)})
            chunks = []
            for start, end in zip(bounds, bounds[1:], strict=False):
                seq += 1
                chunks.append(chunk(boot, seq, b"".join(lines[start:end])))
            assert await stream(stub, boot, chunks) == seq
            expected += b"".join(masker.mask(line) for line in lines)
    stored = await harness.logs(uuid.UUID(boot.job_id))
    assert stored == expected
    assert SECRET.encode() not in stored
