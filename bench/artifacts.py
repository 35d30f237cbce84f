"""Artifact upload: a 1 GiB file runner -> orchestrator -> blob store, beside plain file I/O.

1. Plain file I/O: the file copied to the same disk with read/write in 4 MiB blocks and one
   fsync (what any tool writing the file would do), timed.
2. The upload: the runner's own upload code (`workflow_runner.artifacts`: 256 KiB chunks,
   sha256, one `UploadArtifact` call) in a child process, to the real orchestrator's Runner
   service, which checks every chunk, hashes the file, writes it to the filesystem blob store
   on the same disk, fsyncs and publishes it, and commits its row in PostgreSQL; timed from
   the first byte sent to the ack.
3. The orchestrator's peak resident memory above its level before the upload (sampled every
   2 ms), for a 256 MiB and a 1 GiB file: streaming keeps it independent of the size.
Rounds (`--rounds`, default 2) alternate 1 and 2; the best time of each and the largest memory
growth are printed.

Goal: the upload at >= 0.5x plain file I/O; the memory the same at both sizes.

Standalone by default (embedded PostgreSQL under the bench directory); `--database-url` uses a
server (in a private schema, dropped afterwards). The files go under `--dir` (default
/var/tmp: a disk, where /tmp may be memory).
Run: .venv/bin/python bench/artifacts.py [--size-mib 1024] [--dir /var/tmp] [--rounds 2]
     [--database-url URL]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

from common.messages import EventKind, Repo, RunRequest
from orchestrator.artifact_records import find_artifact
from orchestrator.backends.base import VM, RunnerBootstrap
from orchestrator.backends.local import LocalBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.service import Orchestrator
from orchestrator.standalone import private_admin, running

MIB = 1024 * 1024
BLOCK = 4 * MIB
GOAL_RATIO = 0.5
WORKFLOW = 'workflow { job id="upload" runs_on="local" { step name="x" run="true"; }; }'
# The child process: the runner's upload code, timed from its first byte to the ack.
CHILD = """
import asyncio, sys, time
from pathlib import Path
from protos import runner_pb2
from workflow_runner import artifacts
from workflow_runner.client import RunnerClient, make_channel

async def main(url, job_id, token, path):
    async with make_channel(url) as channel:
        client = RunnerClient(channel, job_id, token, 60)
        await client.get_job()
        started = time.monotonic()
        sent = await artifacts.upload(client, [artifacts.Artifact("out/image.iso", Path(path))])
        seconds = time.monotonic() - started
        await client.report_result(runner_pb2.JobResult(job_id=job_id,
                                                        outcome=runner_pb2.JOB_SUCCESS))
        print(sent.bytes, seconds)

asyncio.run(main(*sys.argv[1:]))
"""


class SilentBackend(LocalBackend):
    """Provisions, keeps the bootstrap, starts nothing: the bench starts the runner."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bootstraps: asyncio.Queue[RunnerBootstrap] = asyncio.Queue()

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        self.bootstraps.put_nowait(bootstrap)


class PeakRss:
    """This process's peak resident memory above its level at entry, sampled by a thread."""

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


def make_file(path: Path, size: int) -> str:
    """`size` random bytes at `path`; their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for offset in range(0, size, BLOCK):
            block = os.urandom(min(BLOCK, size - offset))
            digest.update(block)
            fh.write(block)
        # On disk before anything is timed: its write-back must not slow the measured writes.
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest()


def plain_copy(source: Path, target: Path) -> float:
    """Seconds to copy `source` to `target` with read/write and one fsync."""
    started = time.monotonic()
    with source.open("rb", buffering=0) as src, target.open("wb", buffering=0) as dst:
        while block := src.read(BLOCK):
            dst.write(block)
        os.fsync(dst.fileno())
    return time.monotonic() - started


def request(source: Path) -> RunRequest:
    return RunRequest(
        request_id=str(uuid.uuid4()),
        repo=Repo(forge="local", owner="bench", name="src", clone_url=f"file://{source}"),
        commit_sha="0" * 40, ref="refs/heads/main", event=EventKind.PUSH,
        workflow_source=WORKFLOW)


async def upload(orchestrator: Orchestrator, backend: SilentBackend, work: Path, file: Path,
                 sha256: str) -> tuple[float, int]:
    """Seconds the runner's upload of `file` took, and the orchestrator's peak memory growth."""
    await orchestrator.api.submit(request(work / "src"))
    boot = await asyncio.wait_for(backend.bootstraps.get(), 60)
    with PeakRss() as rss:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, boot.orchestrator_url, boot.job_id, boot.token,
            str(file), stdout=asyncio.subprocess.PIPE)
        out, _ = await child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"the runner's upload failed (exit {child.returncode})")
    sent, seconds = out.split()
    record = await find_artifact(orchestrator.db, uuid.UUID(boot.job_id), "out/image.iso")
    if record is None or record.sha256 != sha256 or int(sent) != file.stat().st_size:
        raise SystemExit("the stored artifact is not the file sent")
    return float(seconds), rss.growth


async def bench(args: argparse.Namespace, work: Path) -> None:
    (work / "src").mkdir()
    sizes = sorted({256 * MIB, args.size_mib * MIB})
    files = {size: (work / f"data-{size // MIB}.bin", make_file(work / f"data-{size // MIB}.bin",
                                                                 size))
             for size in sizes}
    largest, (large_file, _) = sizes[-1], files[sizes[-1]]
    config = OrchestratorConfig(
        host_name=f"bench-{uuid.uuid4().hex[:6]}", state_dir=work / "state",
        database_url=args.database_url, grpc_listen="127.0.0.1:0", capacity={"local": 1},
        allow_local_backend=True, boot_timeout=120, heartbeat_timeout=600,
        log_level="warning", **private_admin())
    schema = f"bench_{uuid.uuid4().hex[:8]}" if args.database_url else None
    backend = SilentBackend(work / "machines")
    plain: list[float] = []
    uploads: dict[int, list[tuple[float, int]]] = {size: [] for size in sizes}
    async with running(config, backend=backend, schema=schema) as orchestrator:
        # A small upload first, so the measured ones find the connections and buffers warm.
        await upload(orchestrator, backend, work, *files[sizes[0]])
        # Rounds alternate the two ways of writing, so a busy machine slows both alike; the
        # best of each is compared.
        for _ in range(args.rounds):
            plain.append(plain_copy(large_file, work / "plain-copy.bin"))
            (work / "plain-copy.bin").unlink()
            for size in sizes:
                uploads[size].append(await upload(orchestrator, backend, work, *files[size]))
    plain_seconds = min(plain)
    results = {size: (min(s for s, _ in runs), max(g for _, g in runs))
               for size, runs in uploads.items()}

    upload_seconds = results[largest][0]
    plain_rate = largest / plain_seconds / MIB
    upload_rate = largest / upload_seconds / MIB
    ratio = upload_rate / plain_rate
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"artifact bench: {largest // MIB} MiB file, best of {args.rounds} rounds; "
          f"{os.cpu_count()} CPUs, load average {load}")
    print(f"  plain file I/O (read/write, fsync)      {plain_rate:8.0f} MiB/s  {plain_seconds:6.2f} s")
    print(f"  runner -> orchestrator -> blob store    {upload_rate:8.0f} MiB/s  {upload_seconds:6.2f} s"
          f"  ({ratio:.2f}x plain; goal >= {GOAL_RATIO}x)")
    for size in sizes:
        print(f"  orchestrator peak memory, {size // MIB:5d} MiB upload   "
              f"+{results[size][1] / MIB:6.1f} MiB resident")
    growths = [results[size][1] for size in sizes]
    flat = max(growths) <= 2 * max(min(growths), 16 * MIB)
    print(f"  goals: ratio {'met' if ratio >= GOAL_RATIO else 'NOT met'}, memory independent "
          f"of size {'met' if flat else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="solstice-artifact-bench-", dir=args.dir))
    try:
        asyncio.run(bench(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
