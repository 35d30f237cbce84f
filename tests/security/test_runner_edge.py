"""The runner channel under attack: a job's steps can read the runner's token, so everything a
runner sends is hostile input. Driven through a real orchestrator (real gRPC server, Postgres,
log writer) with real job tokens; the qemu relay cap with real processes and a real listener."""
from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from common.messages import JobState
from orchestrator.backends.base import VM, RunnerBootstrap
from orchestrator.backends.local import LocalBackend
from orchestrator.backends.qemu import GuestForward, write_relay_script
from orchestrator.config import OrchestratorConfig
from orchestrator.sessions import LogQuota, LogQuotaExceeded
from orchestrator.standalone import private_admin, running
from protos import admin_pb2, admin_pb2_grpc, runner_pb2, runner_pb2_grpc
from tests.orchestrator.conftest import ADMIN_TOKEN, Factory, Harness, run_request

WORKFLOW = '''
workflow {
    job id="a" runs_on="local" { step name="x" run="true"; }
    job id="b" runs_on="local" { step name="x" run="true"; }
}'''
ONE_JOB = 'workflow { job id="a" runs_on="local" { step name="x" run="true"; }; }'
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class PlayerBackend(LocalBackend):
    """Starts no runner: the test plays each job's runner with the bootstrap kept here."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.bootstraps: list[RunnerBootstrap] = []

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        self.bootstraps.append(bootstrap)


@dataclass
class Runner:
    """One job's runner as the test plays it: the stub, the job id, the token."""

    stub: runner_pb2_grpc.RunnerStub
    job_id: str
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def chunk(self, seq: int, data: bytes = b"line\n", **fields: Any) -> runner_pb2.LogChunk:
        values: dict[str, Any] = dict(job_id=self.job_id, seq=seq, step_index=0,
                                      stream=runner_pb2.STDOUT, data=data,
                                      timestamp_unix_ms=int(time.time() * 1000))
        values.update(fields)
        return runner_pb2.LogChunk(**values)

    async def stream(self, *chunks: runner_pb2.LogChunk) -> int:
        return (await self.stub.StreamLogs(iter(chunks), metadata=self.metadata)).last_seq


async def runners(harness: Harness, channel: grpc.aio.Channel, count: int) -> list[Runner]:
    """The first `count` jobs' runners, each having fetched its job (its token is live)."""
    backend = harness.backend
    assert isinstance(backend, PlayerBackend)
    async with asyncio.timeout(30):
        while len(backend.bootstraps) < count:
            await asyncio.sleep(0.01)
    stub = runner_pb2_grpc.RunnerStub(channel)
    found = []
    for boot in backend.bootstraps[:count]:
        await stub.GetJob(runner_pb2.GetJobRequest(job_id=boot.job_id, token=boot.token))
        found.append(Runner(stub, boot.job_id, boot.token))
    return found


async def refused(call: Any, code: grpc.StatusCode = INVALID) -> str:
    """The details of the error `call` ends with, which must be `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


async def stored(harness: Harness, job_id: str) -> bytes:
    return await harness.logs(uuid.UUID(job_id))


async def test_hostile_runner_messages_get_invalid_argument_and_logs_keep_flowing(
        orchestrator_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    harness = await orchestrator_factory(backend_class=PlayerBackend)
    run_id = await harness.submit(WORKFLOW)
    async with grpc.aio.insecure_channel(harness.orchestrator.grpc_url) as channel:
        a, b = await runners(harness, channel, 2)
        stub = a.stub
        caplog.clear()

        for request in (runner_pb2.GetJobRequest(job_id="not-a-uuid", token=a.token),
                        runner_pb2.GetJobRequest(job_id=a.job_id + "\x00", token=a.token),
                        runner_pb2.GetJobRequest(job_id=a.job_id, token="t" * 10_000),
                        runner_pb2.GetJobRequest(job_id=a.job_id, token="t\x00")):
            await refused(stub.GetJob(request))

        hostile_chunks = {
            "seq": [0, 2**63, 2**64 - 1], "stream": [40000, runner_pb2.STREAM_UNSPECIFIED],
            "timestamp_unix_ms": [2**62, -1], "step_index": [-2, 1, 2**31 - 1],
            "job_id": ["", "x" * 36, b.job_id]}
        for field, values in hostile_chunks.items():
            for value in values:
                chunk = a.chunk(1)
                setattr(chunk, field, value)
                details = await refused(a.stream(chunk))
                assert field.split("_")[0] in details, (field, value, details)

        step = dict(job_id=a.job_id, step_index=0, state=runner_pb2.STEP_SUCCESS,
                    duration_ms=5, timestamp_unix_ms=int(time.time() * 1000))
        for field, value in (("duration_ms", 2**63), ("duration_ms", 2**64 - 1),
                             ("timestamp_unix_ms", 2**62), ("step_index", -1),
                             ("state", 99), ("state", 0), ("job_id", "\x00")):
            await refused(stub.ReportStep(runner_pb2.StepReport(**{**step, field: value}),
                                          metadata=a.metadata))

        result = dict(job_id=a.job_id, outcome=runner_pb2.JOB_SUCCESS, message="ok")
        for field, value in (("message", "nul \x00 inside"), ("message", "m" * 70_000),
                             ("outcome", 42), ("last_log_seq", 2**64 - 1)):
            await refused(stub.ReportResult(runner_pb2.JobResult(**{**result, field: value}),
                                            metadata=a.metadata))

        for ping in (runner_pb2.HeartbeatPing(job_id=a.job_id, current_step=-5),
                     runner_pb2.HeartbeatPing(job_id="zzz"),
                     runner_pb2.HeartbeatPing(job_id=b.job_id)):
            call = stub.Heartbeat(metadata=a.metadata)
            await call.write(ping)
            assert await call.code() == INVALID, await call.details()

        digest = "0" * 64
        for chunks in ([dict(path="a\x00b", last=True, sha256=digest)],
                       [dict(path="/etc/passwd", last=True, sha256=digest)],
                       [dict(path="../outside", last=True, sha256=digest)],
                       [dict(path="", last=True, sha256=digest)],
                       [dict(path="p" * 5000, last=True, sha256=digest)],
                       [dict(path="f", last=True, sha256="XYZ")],
                       [dict(path="f", sha256=digest)],
                       [dict(path="f", last=True, sha256=digest, size=2**64 - 1)],
                       [dict(path="f"), dict(path="g", last=True, sha256=digest)]):
            await refused(stub.UploadArtifact(
                iter([runner_pb2.ArtifactChunk(job_id=a.job_id, **c) for c in chunks]),
                metadata=a.metadata))

        # Nothing reached the database or the log writer: no traceback anywhere.
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert harness.orchestrator.logs.failure is None
        # The writer lives: both jobs' logs are stored and acknowledged.
        assert await b.stream(b.chunk(1, b"b one\n"), b.chunk(2, b"b two\n")) == 2
        assert await a.stream(a.chunk(1, b"a one\n")) == 1
        for runner in (a, b):
            await runner.stub.ReportResult(runner_pb2.JobResult(
                job_id=runner.job_id, outcome=runner_pb2.JOB_SUCCESS, message="done",
                last_log_seq=2 if runner is b else 1), metadata=runner.metadata)
    summary = await harness.api.wait(run_id)
    assert [j.state for j in summary.jobs] == [JobState.SUCCESS, JobState.SUCCESS]
    assert await stored(harness, b.job_id) == b"b one\nb two\n"
    assert await stored(harness, a.job_id) == b"a one\n"


async def test_the_real_runner_passes_the_edge(orchestrator_factory: Factory) -> None:
    """What our own runner sends (logs of every stream, step reports, multi-chunk and empty
    artifacts, the result) is all inside the bounds."""
    harness = await orchestrator_factory()
    summary = await harness.run('''
workflow {
    job id="a" runs_on="local" {
        artifacts "out/*"
        step name="files" run="mkdir out && head -c 600000 /dev/zero > out/big && : > out/empty"
        step name="talk" run="echo made && echo warned >&2"
    }
}''')
    [job] = summary.jobs
    assert job.state == JobState.SUCCESS, job.message
    text = await harness.logs(job.job_id)
    assert b"made\n" in text and b"warned\n" in text
    assert b"uploaded 2 artifact files (600000 bytes)" in text


async def test_admin_inputs_are_validated(harness: Harness) -> None:
    auth = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    async with grpc.aio.insecure_channel(harness.orchestrator.admin_url) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        # LIKE wildcards would match any run; NUL would reach Postgres as an error.
        for ref in ("%%%%", "____", "abcd\x00", "ab", "0" * 37):
            await refused(admin.GetRun(admin_pb2.RunRef(run_id=ref), metadata=auth))
            await refused(admin.CancelRun(admin_pb2.RunRef(run_id=ref), metadata=auth))
            await refused(admin.TailLogs(admin_pb2.TailLogsRequest(job_id=ref), metadata=auth).read())
        for request in (admin_pb2.ListRunsRequest(limit=1_000_000),
                        admin_pb2.ListRunsRequest(state="running\x00"),
                        admin_pb2.ListRunsRequest(state="x" * 1000)):
            await refused(admin.ListRuns(request, metadata=auth))
        assert (await admin.ListRuns(admin_pb2.ListRunsRequest(limit=1000), metadata=auth)).runs == []


async def test_a_batch_the_database_refuses_costs_only_its_bad_records(
        orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(backend_class=PlayerBackend)
    await harness.submit(ONE_JOB)
    async with grpc.aio.insecure_channel(harness.orchestrator.grpc_url) as channel:
        [a] = await runners(harness, channel, 1)
        job_id = uuid.UUID(a.job_id)
        logs = harness.orchestrator.logs
        now = datetime.now(UTC)
        # Past the edge (as a bug would let them through): one batch, two bad records.
        logs.add((job_id, 1, 1, 0, 1, now, b"good one\n"))
        logs.add((job_id, 1, 2**63, 0, 1, now, b"seq overflows bigint\n"))
        logs.add((job_id, 1, 3, 0, 40000, now, b"stream overflows smallint\n"))
        logs.add((job_id, 1, 4, 0, 1, now, b"good four\n"))
        await asyncio.wait_for(logs.sync(), 30)
        assert logs.failure is None
        assert await stored(harness, a.job_id) == b"good one\ngood four\n"
        # And the writer goes on storing.
        assert await a.stream(a.chunk(1, b"resent\n"), a.chunk(2, b"two\n")) == 2
        assert await stored(harness, a.job_id) == b"good one\ntwo\ngood four\n"
        await a.stub.ReportResult(runner_pb2.JobResult(
            job_id=a.job_id, outcome=runner_pb2.JOB_SUCCESS, last_log_seq=2),
            metadata=a.metadata)


async def test_web_log_after_outside_bigint_is_400(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    summary = await harness.run(ONE_JOB)
    job_id = summary.jobs[0].job_id
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        for after in ("99999999999999999999", str(2**63), "-1", "x"):
            answer = await http.get(f"/jobs/{job_id}/log.txt", params={"after": after})
            assert answer.status_code == 400, (after, answer.text)
            assert "whole number" in answer.text
        answer = await http.get(f"/jobs/{job_id}/log.txt", params={"after": str(2**63 - 1)})
        assert answer.status_code == 200 and answer.content == b""


async def test_log_quota_closes_the_log_with_a_marker_and_fails_the_job(
        orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(backend_class=PlayerBackend, log_quota_bytes=100,
                                         log_reorder_window=8)
    run_id = await harness.submit(WORKFLOW)
    async with grpc.aio.insecure_channel(harness.orchestrator.grpc_url) as channel:
        chatty, scattered = await runners(harness, channel, 2)
        chatty_session = harness.orchestrator.sessions.get(uuid.UUID(chatty.job_id))
        assert chatty_session is not None
        # Bytes: the chunk that would pass 100 bytes closes the log.
        assert await chatty.stream(chatty.chunk(1, b"x" * 59 + b"\n")) == 1
        details = await refused(chatty.stream(chatty.chunk(2, b"y" * 59 + b"\n")),
                                grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "exceeded its quota of 100 bytes" in details
        # Closed for good (the job ends at once, so its token dies too).
        with pytest.raises(LogQuotaExceeded):
            chatty_session.accept_chunk(2, 1, LogQuota(max_bytes=100, window=8))

        # Out of order: 10,000 chunks that never fill the gap at seq 1.
        session = harness.orchestrator.sessions.get(uuid.UUID(scattered.job_id))
        assert session is not None
        details = await refused(scattered.stream(
            *(scattered.chunk(seq, b"s\n") for seq in range(2, 10_002))),
            grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "more than 8 chunks after" in details
        assert len(session.ahead) <= 8
    summary = await harness.api.wait(run_id)
    # Which runner got which job is up to the scheduler: look jobs up by id, not by key.
    by_id = {str(j.job_id): j for j in summary.jobs}
    assert by_id[chatty.job_id].state == by_id[scattered.job_id].state == JobState.FAILURE
    assert "exceeded its quota of 100 bytes" in by_id[chatty.job_id].message
    assert "more than 8 chunks after" in by_id[scattered.job_id].message
    chatty_log = await stored(harness, chatty.job_id)
    assert chatty_log.startswith(b"x" * 59 + b"\nsolstice: the job's log exceeded its quota")
    assert chatty_log.endswith(b"the rest of this job's log was dropped\n")
    scattered_log = await stored(harness, scattered.job_id)
    assert scattered_log.startswith(b"s\n" * 7 + b"solstice: log chunk 9 arrived more than 8")


async def test_a_log_writer_that_dies_fails_the_service_instead_of_hanging(
        pg_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = OrchestratorConfig(
        host_name=f"test-{uuid.uuid4().hex[:8]}", state_dir=tmp_path / "state",
        database_url=pg_dsn, grpc_listen="127.0.0.1:0", capacity={"local": 2},
        allow_local_backend=True, drain_timeout=600, **private_admin())
    backend = PlayerBackend(tmp_path / "machines")
    source = tmp_path / "src"
    source.mkdir()

    async def broken_store(batch: list[Any]) -> None:
        raise RuntimeError("injected writer fault")

    async with asyncio.timeout(60):
        async with running(config, backend=backend, grace=600, hand_back=True) as orchestrator:
            orchestrator.logs._store = broken_store  # type: ignore[method-assign]
            await orchestrator.api.submit(run_request(ONE_JOB, source))
            harness = Harness(orchestrator, backend, source, tmp_path / "machines")
            async with grpc.aio.insecure_channel(orchestrator.grpc_url) as channel:
                [a] = await runners(harness, channel, 1)
                details = await refused(a.stream(a.chunk(1)), grpc.StatusCode.UNAVAILABLE)
                assert "log writer stopped unexpectedly" in details
                # Later calls are refused at once, not left waiting.
                await refused(a.stream(a.chunk(2)), grpc.StatusCode.UNAVAILABLE)
            failure = orchestrator.supervisor.failure
            assert failure is not None and "log-writer" in str(failure)
        # ...and the stop above did not wait out the 600 s drain for a host that failed.
    [critical] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert critical.exc_info is not None and "injected writer fault" in str(critical.exc_info[1])


BROKEN_WRITER = textwrap.dedent("""\
    import asyncio, sys
    from orchestrator.logstore import LogStore

    async def broken(self):
        await asyncio.sleep(0.5)
        raise RuntimeError("injected writer fault")

    LogStore._writer = broken
    from orchestrator.main import main
    sys.exit(main(sys.argv[1:]))
""")


def test_the_orchestrator_process_exits_non_zero_when_its_writer_dies(
        pg_dsn: str, amqp_url: str, broker_prefix: str, tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_WRITER, "--database-url", pg_dsn, "--amqp-url", amqp_url,
         "--broker-prefix", broker_prefix, "--allow-local-backend", "--insecure-admin-no-auth",
         "--admin-listen", "127.0.0.1:0", "--state-dir", str(tmp_path),
         "--blob-store-path", str(tmp_path / "blobs"), "--grpc-listen", "127.0.0.1:0", "--host-name",
         f"test-{uuid.uuid4().hex[:8]}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "log writer stopped unexpectedly" in result.stderr
    assert "Traceback" in result.stderr and "injected writer fault" in result.stderr
    assert time.monotonic() - started < 60


async def test_qemu_relays_beyond_the_cap_are_refused_and_logged(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    accepted: list[asyncio.StreamWriter] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay = write_relay_script("socat", tmp_path, 2)
    forward = GuestForward(guest_address="10.0.2.100", guest_port=7700, host="127.0.0.1",
                           port=port)
    # What QEMU's slirp runs per guest connection: `sh -c CMD` on the connection's socket.
    command = forward.netdev_option(relay).split("-cmd:", 1)[1].replace(",,", ",")
    processes: list[asyncio.subprocess.Process] = []

    async def guest_connects() -> socket.socket:
        guest, host_end = socket.socketpair()
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=host_end, stdout=host_end, start_new_session=True)
        host_end.close()
        guest.setblocking(False)
        processes.append(proc)
        return guest

    async def echoes(guest: socket.socket, text: bytes) -> None:
        await loop.sock_sendall(guest, text)
        assert await asyncio.wait_for(loop.sock_recv(guest, 1024), 10) == text

    try:
        first, second = await guest_connects(), await guest_connects()
        await echoes(first, b"one")
        await echoes(second, b"two")
        third = await guest_connects()
        assert await asyncio.wait_for(processes[2].wait(), 10) == 1
        assert await asyncio.wait_for(loop.sock_recv(third, 1024), 10) == b""  # closed
        assert len(accepted) == 2
        [line] = (tmp_path / "relay.log").read_text().splitlines()
        assert "refused a guest connection" in line and f"TCP:127.0.0.1:{port}" in line
        # A connection that ends frees its slot for the next.
        first.close()
        await asyncio.wait_for(processes[0].wait(), 10)
        fourth = await guest_connects()
        await echoes(fourth, b"four")
        assert len(accepted) == 3
        for guest in (second, third, fourth):
            guest.close()
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), 10)
    finally:
        for proc in processes:
            if proc.returncode is None:
                proc.kill()
        server.close()
