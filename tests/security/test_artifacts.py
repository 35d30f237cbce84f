"""Artifact uploads as a hostile or careless runner meets them: a real orchestrator (real
Postgres, the real gRPC server) and a real job token, the test playing the runner.

Memory stays bounded whatever the files' size, the per-file and per-job caps hold across
concurrent calls, refused names, a second upload of a path and damaged files leave nothing
stored, and what is stored reads back byte-exact.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from common.messages import JobState
from orchestrator.artifact_records import find_artifact, list_artifacts
from orchestrator.backends.base import VM, RunnerBootstrap
from orchestrator.backends.local import LocalBackend
from orchestrator.blobstore.keys import attempt_prefix
from orchestrator.config import OrchestratorConfig
from orchestrator.service import Orchestrator
from orchestrator.standalone import private_admin, running
from protos import runner_pb2, runner_pb2_grpc
from tests.joblog import stored_log
from tests.orchestrator.conftest import run_request
from workflow_runner import artifacts as runner_artifacts
from workflow_runner.client import RunnerClient

MIB = 1024 * 1024
BLOCK = 256 * 1024  # what the runner sends per message
WORKFLOW = 'workflow { job id="j" runs_on="local" { step name="x" run="true"; }; }'


class PlayerBackend(LocalBackend):
    """Starts no runner: the test plays it, or starts it, with the bootstrap and workspace
    kept here."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bootstraps: asyncio.Queue[tuple[RunnerBootstrap, Path]] = asyncio.Queue()

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        self.bootstraps.put_nowait((bootstrap, Path(vm.details["workspace"])))


@dataclass
class Runner:
    """A job's runner as the test plays it: the stub, the bootstrap, the orchestrator."""

    orchestrator: Orchestrator
    channel: grpc.aio.Channel
    stub: runner_pb2_grpc.RunnerStub
    boot: RunnerBootstrap
    attempt: int
    run_id: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.boot.token}"),)

    async def upload(self, path: str, blocks: Iterable[bytes], *, sha256: str | None = None,
                     size: int | None = None) -> runner_pb2.ArtifactAck:
        """One file in one call, as the runner sends it; the true size and sha256 unless
        given. Raises the call's `AioRpcError` when refused."""
        call = self.stub.UploadArtifact(metadata=self.metadata)
        digest, sent, first = hashlib.sha256(), 0, True
        try:
            for block, last in _with_last(blocks):
                digest.update(block)
                sent += len(block)
                await call.write(runner_pb2.ArtifactChunk(
                    job_id=self.boot.job_id, path=path if first else "", data=block, last=last,
                    sha256=(sha256 or digest.hexdigest()) if last else "",
                    size=(sent if size is None else size) if last else 0))
                first = False
            await call.done_writing()
        except asyncio.InvalidStateError:
            pass  # refused before the end: awaiting the call raises its status
        return await call

    async def refused(self, path: str, blocks: Iterable[bytes], **kwargs: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await self.upload(path, blocks, **kwargs)
        return refusal.value

    async def stored(self, path: str) -> bytes:
        record = await find_artifact(self.orchestrator.db, uuid.UUID(self.boot.job_id), path,
                                     self.attempt)
        assert record is not None, f"{path} is not stored"
        return b"".join([piece async for piece in self.orchestrator.blobs.read(record.store_key)])

    async def blobs(self) -> list[tuple[str, int]]:
        """What the blob store holds but the run's compacted logs (keys relative to the
        attempt's prefix, sizes)."""
        prefix = attempt_prefix(uuid.UUID(self.run_id), "j", self.attempt)
        logs = f"runs/{self.run_id}/logs/"
        return [(info.key.removeprefix(prefix), info.size)
                for info in await self.orchestrator.blobs.list("runs/")
                if not info.key.startswith(logs)]

    async def paths(self) -> list[str]:
        rows = await self.orchestrator.db.pool.fetch(
            "SELECT path FROM artifacts WHERE job_id = $1 ORDER BY path",
            uuid.UUID(self.boot.job_id))
        return [r["path"] for r in rows]


def _with_last(blocks: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    iterator = iter(blocks)
    current = next(iterator, b"")
    for following in iterator:
        yield current, False
        current = following
    yield current, True


def random_blocks(seed: int, total: int) -> Iterator[bytes]:
    """`total` reproducible pseudo-random bytes in runner-sized blocks."""
    rng = random.Random(seed)
    for offset in range(0, total, BLOCK):
        yield rng.randbytes(min(BLOCK, total - offset))


def sha256_of(blocks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for block in blocks:
        digest.update(block)
    return digest.hexdigest()


Launch = Callable[..., Awaitable[Orchestrator]]
StartRunner = Callable[..., Awaitable[Runner]]


@pytest.fixture
async def launch(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Launch]:
    """`await launch(backend, **config)`: a started orchestrator on a fresh database, its
    jobs' machines under `tmp_path/machines`."""
    contexts: list[Any] = []

    async def start(backend: LocalBackend, **overrides: Any) -> Orchestrator:
        config = OrchestratorConfig(**{
            "host_name": f"test-{uuid.uuid4().hex[:8]}", "state_dir": tmp_path / "state",
            "database_url": pg_dsn, "grpc_listen": "127.0.0.1:0", "capacity": {"local": 1},
            "allow_local_backend": True, "boot_timeout": 30, "heartbeat_timeout": 60,
            **private_admin(), **overrides})
        context = running(config, backend=backend)
        orchestrator = await context.__aenter__()
        contexts.append(context)
        return orchestrator

    yield start
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)


@pytest.fixture
async def start_runner(launch: Launch, tmp_path: Path) -> AsyncIterator[StartRunner]:
    """`await start_runner(**config)`: an orchestrator on `config`, one job submitted to it,
    and its runner (the test) holding the job after `GetJob`."""
    channels: list[grpc.aio.Channel] = []
    source = tmp_path / "src"
    source.mkdir()

    async def start(**overrides: Any) -> Runner:
        backend = PlayerBackend(tmp_path / "machines")
        orchestrator = await launch(backend, **overrides)
        await orchestrator.api.submit(run_request(WORKFLOW, source))
        boot, _ = await asyncio.wait_for(backend.bootstraps.get(), 10)
        channel = grpc.aio.insecure_channel(orchestrator.grpc_url)
        channels.append(channel)
        stub = runner_pb2_grpc.RunnerStub(channel)
        job = await stub.GetJob(runner_pb2.GetJobRequest(job_id=boot.job_id, token=boot.token))
        return Runner(orchestrator, channel, stub, boot, job.attempt, job.run_id)

    yield start
    for channel in channels:
        await channel.close()


class PeakRss:
    """The process's peak resident memory above its level at entry, sampled by a thread."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.base = self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self) -> PeakRss:
        self.base = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


async def test_concurrent_large_uploads_stream_with_bounded_memory(start_runner: StartRunner,
                                                                   ) -> None:
    runner = await start_runner()
    size = 64 * MIB
    # Warm up first (three upload connections, grpc's and asyncpg's buffers): only what the
    # uploads hold is measured.
    await asyncio.gather(*(runner.upload(f"warm-up/{n}", random_blocks(0, 4 * MIB))
                           for n in range(3)))
    with PeakRss() as rss:
        acks = await asyncio.gather(*(runner.upload(f"big/{n}.bin", random_blocks(n, size))
                                      for n in (1, 2, 3)))
    assert [ack.bytes for ack in acks] == [size] * 3
    # Buffered whole, three 64 MiB files took the orchestrator from 63 to 1,432 MB; streamed,
    # each upload holds about one chunk row, and the growth (~25-30 MiB here, the same for
    # 16 or 128 MiB files) stays below even one of the files.
    assert rss.growth < size, f"resident memory grew {rss.growth / MIB:.0f} MiB"
    for n in (1, 2, 3):
        digest, stored = hashlib.sha256(), 0
        record = await find_artifact(runner.orchestrator.db, uuid.UUID(runner.boot.job_id),
                                     f"big/{n}.bin")
        assert record is not None
        async for chunk in runner.orchestrator.blobs.read(record.store_key):
            digest.update(chunk)
            stored += len(chunk)
        assert stored == size and digest.hexdigest() == sha256_of(random_blocks(n, size))
    row = await runner.orchestrator.db.pool.fetchrow(
        "SELECT size, sha256 FROM artifacts WHERE path = 'big/2.bin'")
    assert (row["size"], row["sha256"]) == (size, sha256_of(random_blocks(2, size)))


async def test_small_files_read_back_byte_exact(start_runner: StartRunner) -> None:
    runner = await start_runner()
    files = {"empty": b"", "one/byte": b"\x00", "dir/ünïcode name.txt": "ü\n".encode(),
             "odd.bin": b"".join(random_blocks(7, BLOCK * 3 + 17))}
    for path, data in files.items():
        blocks = [data[i:i + BLOCK] for i in range(0, len(data), BLOCK)] or [b""]
        ack = await runner.upload(path, blocks)
        assert (ack.files, ack.bytes) == (1, len(data))
    for path, data in files.items():
        assert await runner.stored(path) == data


async def test_the_job_cap_counts_every_call_even_concurrent_ones(start_runner: StartRunner,
                                                                  ) -> None:
    runner = await start_runner(max_artifact_file_bytes=9 * MIB,
                                max_artifact_job_bytes=10 * MIB)
    # Three concurrent 8 MiB files under a 10 MiB cap: one fits, the others are refused.
    results = await asyncio.gather(*(runner.upload(f"part{n}", random_blocks(n, 8 * MIB))
                                     for n in range(3)), return_exceptions=True)
    refusals = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refusals) == 2, results
    assert {r.code() for r in refusals} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "10485760 bytes of artifacts per job" in refusals[0].details()
    # Later calls count what is stored: 8 + 3 MiB is too much, 8 + 1 MiB fits.
    refusal = await runner.refused("late", random_blocks(9, 3 * MIB))
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await runner.upload("small", random_blocks(10, MIB))
    # Nothing of a refused file is visible or left behind.
    [winner] = [f"part{n}" for n, r in enumerate(results) if not isinstance(r, BaseException)]
    assert await runner.paths() == sorted([winner, "small"])
    pool = runner.orchestrator.db.pool
    assert await pool.fetchval("SELECT sum(size) FROM artifacts") == 9 * MIB
    assert sorted(await runner.blobs()) == sorted([(winner, 8 * MIB), ("small", MIB)])


async def test_a_file_over_the_per_file_cap_is_refused(start_runner: StartRunner) -> None:
    runner = await start_runner(max_artifact_file_bytes=2 * MIB)
    refusal = await runner.refused("huge", random_blocks(11, 2 * MIB + 1))
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2097152 bytes per file" in refusal.details()
    await runner.upload("fits", random_blocks(11, 2 * MIB))
    assert await runner.paths() == ["fits"]


HOSTILE_PATHS = [
    "", ".", "./a", "a/.", "..", "../escape", "a/../../b", "/etc/passwd", "a//b", "a/",
    "..\\..\\evil.txt", "C:\\x", "C:/x", "c:x", "a\\b", "nul\x00byte", "new\nline", "tab\there",
    "del\x7f", "c1\x85ctl", "\u202egnp.exe", "iso\u2066late", "mark\u200f", "x" * 1025,
    "y" * 256 + "/z",
]


async def test_hostile_paths_are_refused_with_invalid_argument(start_runner: StartRunner,
                                                               caplog: pytest.LogCaptureFixture,
                                                               ) -> None:
    runner = await start_runner()
    for path in HOSTILE_PATHS:
        refusal = await runner.refused(path, [b"payload"])
        assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, refusal)
        assert "refused" in refusal.details()
    assert await runner.paths() == []
    refused = [r for r in caplog.records if r.getMessage() == "artifact upload refused"]
    assert len(refused) == len(HOSTILE_PATHS)
    # Long but within the limits is fine.
    fine = "/".join(["d" * 255] * 3) + "/" + "f" * 255
    assert len(fine.encode()) == 1023
    await runner.upload(fine, [b"ok"])
    assert await runner.stored(fine) == b"ok"


async def test_a_second_upload_of_a_path_is_refused(start_runner: StartRunner) -> None:
    runner = await start_runner()
    await runner.upload("out/app", [b"first"])
    refusal = await runner.refused("out/app", [b"second"])
    assert refusal.code() == grpc.StatusCode.ALREADY_EXISTS
    # Two at once: the second waits for the first and is refused once it committed.
    results = await asyncio.gather(runner.upload("out/race", random_blocks(1, 4 * MIB)),
                                   runner.upload("out/race", random_blocks(2, 4 * MIB)),
                                   return_exceptions=True)
    codes = sorted(r.code().name if isinstance(r, grpc.aio.AioRpcError) else "OK"
                   for r in results)
    assert codes == ["ALREADY_EXISTS", "OK"]
    assert await runner.stored("out/app") == b"first"
    assert len(await runner.stored("out/race")) == 4 * MIB


async def test_damaged_and_malformed_uploads_store_nothing(start_runner: StartRunner) -> None:
    runner = await start_runner()
    data = b"".join(random_blocks(3, MIB))
    refusal = await runner.refused("wrong-sha", [data], sha256=hashlib.sha256(b"x").hexdigest())
    assert refusal.code() == grpc.StatusCode.DATA_LOSS
    refusal = await runner.refused("wrong-size", [data], size=len(data) - 1)
    assert refusal.code() == grpc.StatusCode.DATA_LOSS
    # A stream that ends in the middle of a file.
    call = runner.stub.UploadArtifact(metadata=runner.metadata)
    await call.write(runner_pb2.ArtifactChunk(job_id=runner.boot.job_id, path="cut", data=data))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await call
    assert cut.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A chunk naming another job than the token's.
    call = runner.stub.UploadArtifact(metadata=runner.metadata)
    await call.write(runner_pb2.ArtifactChunk(job_id=str(uuid.uuid4()), path="other",
                                              data=b"x", last=True, size=1,
                                              sha256=hashlib.sha256(b"x").hexdigest()))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await call
    assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await runner.paths() == []
    assert await runner.blobs() == []
    # After all that, the same paths still upload.
    await runner.upload("wrong-sha", [data])
    assert await runner.stored("wrong-sha") == data


MAKE_ARTIFACTS = r"""
mkdir out
echo small > out/a.txt
head -c 2097152 /dev/zero > out/big.bin
touch "out/$(printf 'new\nline')" "out/$(printf '\u202e')txt.exe"
ln -s /etc/passwd out/passwd
"""


async def test_the_real_runner_skips_hostile_names_and_reports_a_refusal_in_the_log(
        launch: Launch, tmp_path: Path) -> None:
    """The runner skips what the orchestrator would refuse (saying why in the job's log),
    and a file over the job's cap fails the job with the orchestrator's reason in its log."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "make.sh").write_text(MAKE_ARTIFACTS)
    backend = PlayerBackend(tmp_path / "machines")
    orchestrator = await launch(backend, max_artifact_job_bytes=MIB)
    run_id = await orchestrator.api.submit(run_request(
        'workflow { job id="j" runs_on="local" { step name="make" run="bash make.sh"; '
        'artifacts "out/*"; }; }', source))
    boot, workspace = await asyncio.wait_for(backend.bootstraps.get(), 10)
    # This tree's runner (the local backend would start the installed one).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLSTICE_", "OTEL_"))}
    env.update(SOLSTICE_ORCHESTRATOR_URL=boot.orchestrator_url, SOLSTICE_JOB_ID=boot.job_id,
               SOLSTICE_TOKEN=boot.token, SOLSTICE_WORKSPACE=str(workspace))
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workflow_runner.main", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        _, stderr = await runner.communicate()
    assert runner.returncode == 0, stderr.decode()
    [job] = (await orchestrator.api.wait(run_id)).jobs
    log = (await stored_log(orchestrator, job.job_id)).decode()
    assert job.state == JobState.FAILURE, (job.message, log)
    assert "artifact upload refused: RESOURCE_EXHAUSTED" in job.message
    assert "artifact 'out/big.bin' goes past the limit of 1048576 bytes" in log
    assert ("solstice: artifact 'out/big.bin' goes past the limit of 1048576 bytes of "
            "artifacts per job; the job fails") in log
    assert "out/passwd skipped: it links outside the workspace" in log
    assert "'out/new\\nline' refused: it contains the control character U+000A" in log
    assert "bidirectional control U+202E" in log
    stored = await orchestrator.db.pool.fetch("SELECT path, size FROM artifacts")
    assert [(r["path"], r["size"]) for r in stored] == [("out/a.txt", 6)]


async def test_the_runner_does_not_follow_a_symlink_swapped_in_after_collection(
        start_runner: StartRunner, tmp_path: Path) -> None:
    runner = await start_runner()
    workspace = tmp_path / "ws"
    (workspace / "out").mkdir(parents=True)
    (workspace / "out" / "a.txt").write_text("mine\n")
    (workspace / "out" / "b.txt").write_text("also mine\n")
    collected = runner_artifacts.collect(workspace, ["out/*"])
    assert [a.path for a in collected.files] == ["out/a.txt", "out/b.txt"]
    # A process the job left behind replaces a collected file with a link to the machine's.
    (workspace / "out" / "b.txt").unlink()
    (workspace / "out" / "b.txt").symlink_to("/etc/passwd")
    client = RunnerClient(runner.channel, runner.boot.job_id, runner.boot.token, 10)
    with pytest.raises(OSError):
        await runner_artifacts.upload(client, collected.files)
    assert await runner.paths() == ["out/a.txt"]


async def test_a_runner_ignoring_a_cap_refusal_still_fails_its_job(start_runner: StartRunner,
                                                                   ) -> None:
    runner = await start_runner(max_artifact_job_bytes=MIB)
    refusal = await runner.refused("too-big", random_blocks(12, 2 * MIB))
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A hostile runner reports success regardless.
    await runner.stub.ReportResult(runner_pb2.JobResult(
        job_id=runner.boot.job_id, outcome=runner_pb2.JOB_SUCCESS, message="all good"),
        metadata=runner.metadata)
    [job] = (await runner.orchestrator.api.wait(uuid.UUID(runner.run_id))).jobs
    assert job.state == JobState.FAILURE
    assert job.message.startswith("artifact 'too-big' goes past the limit of 1048576 bytes")
    assert (await stored_log(runner.orchestrator, job.job_id)).decode() == (
        "solstice: artifact 'too-big' goes past the limit of 1048576 bytes of artifacts per "
        "job; the job fails\n")
    assert await runner.paths() == [] and await runner.blobs() == []


async def test_an_upload_cut_mid_file_publishes_nothing(start_runner: StartRunner,
                                                        tmp_path: Path) -> None:
    runner = await start_runner()
    await runner.upload("kept", [b"committed"])
    session = runner.orchestrator.sessions.get(uuid.UUID(runner.boot.job_id))
    assert session is not None
    call = runner.stub.UploadArtifact(metadata=runner.metadata)
    first = True
    for block in random_blocks(13, 12 * MIB):
        await call.write(runner_pb2.ArtifactChunk(job_id=runner.boot.job_id,
                                                  path="cut/mid.bin" if first else "",
                                                  data=block))
        first = False
    temp = tmp_path / "state" / "blobs" / "tmp"
    async with asyncio.timeout(10):
        while not any(temp.iterdir()) or session.artifact_bytes < 12 * MIB:
            await asyncio.sleep(0.01)
    # Mid-file: bytes on disk in the store's tmp/, nothing listed anywhere.
    assert await runner.paths() == ["kept"]
    assert await runner.blobs() == [("kept", 9)]
    call.cancel()  # the runner (or its machine) is gone mid-file
    async with asyncio.timeout(10):
        while session.artifact_bytes != len(b"committed"):
            await asyncio.sleep(0.01)
    assert await runner.paths() == ["kept"]
    assert await runner.blobs() == [("kept", 9)]
    assert list(temp.iterdir()) == []
    # The path was never stored, so it may be uploaded whole now.
    await runner.upload("cut/mid.bin", random_blocks(13, MIB))
    assert await runner.stored("cut/mid.bin") == b"".join(random_blocks(13, MIB))


async def test_a_later_attempt_never_touches_an_earlier_attempts_files(
        start_runner: StartRunner) -> None:
    runner = await start_runner()
    await runner.upload("out/app", [b"attempt one"])
    orchestrator = runner.orchestrator
    job_id = uuid.UUID(runner.boot.job_id)
    # The job leased again (its first host died and it came back here) under attempt 2.
    await orchestrator.db.pool.execute("UPDATE jobs SET attempt = 2 WHERE id = $1", job_id)
    session = orchestrator.sessions.get(job_id)
    assert session is not None
    second = dataclasses.replace(session, attempt=2, artifact_bytes=0)

    async def chunks() -> AsyncIterator[runner_pb2.ArtifactChunk]:
        data = b"attempt two"
        yield runner_pb2.ArtifactChunk(job_id=str(job_id), path="out/app", data=data, last=True,
                                       size=len(data), sha256=hashlib.sha256(data).hexdigest())

    received = await orchestrator.artifacts.receive(second, chunks())
    assert (received.files, received.bytes) == (1, len(b"attempt two"))
    first = await find_artifact(orchestrator.db, job_id, "out/app", 1)
    latest = await find_artifact(orchestrator.db, job_id, "out/app")
    assert first is not None and latest is not None
    assert (first.attempt, latest.attempt) == (1, 2) and first.store_key != latest.store_key
    assert b"".join([p async for p in orchestrator.blobs.read(first.store_key)]) == b"attempt one"
    assert b"".join([p async for p in orchestrator.blobs.read(latest.store_key)]) == b"attempt two"
    assert [r.attempt for r in await list_artifacts(orchestrator.db, uuid.UUID(runner.run_id))] == [2]
