"""A finished job's log moves from `log_chunks` rows into one blob, and everyone who reads a log
(the job page, its `log.txt`, `ciadm logs` in a subprocess) gets the same bytes before and after;
a compaction that dies between the blob and the rows, two compactions at once and chunks that
come late lose nothing. Real runner, local backend, PostgreSQL, the filesystem blob store."""
from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import uuid

import httpx
import pytest

from orchestrator import logarchive
from orchestrator.blobstore.s3 import S3BlobStore
from orchestrator.compaction import LogCompactor
from orchestrator.logarchive import compact
from tests.orchestrator.conftest import ADMIN_TOKEN, Harness
from tests.s3 import CREDENTIALS, moto_url, new_bucket  # noqa: F401  (moto_url: fixture)

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Several steps, both streams, lines that are not UTF-8, and enough of them for many chunks.
WORKFLOW = r"""
workflow name="logs" {
    job id="build" runs_on="local" {
        step name="count" run="seq 1 30000"
        step name="mixed" run="printf 'caf\\303\\251 \\377\\376 raw\\n'; echo to-stderr >&2"
        step name="fails" run="echo last words; exit 3"
    }
}
"""


@pytest.fixture
def release(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The compaction a job's end starts waits until the test sets this event, so the test can
    read the log as rows first."""
    gate = asyncio.Event()
    original = LogCompactor.compact_job

    async def gated(self: LogCompactor, job_id: uuid.UUID) -> int:
        await gate.wait()
        return await original(self, job_id)

    monkeypatch.setattr(LogCompactor, "compact_job", gated)
    return gate


@pytest.fixture
async def ended(orchestrator_factory, release) -> tuple[Harness, uuid.UUID]:
    """A harness with web pages and a job that failed in its third step, its log still rows."""
    harness = await orchestrator_factory(web_listen="127.0.0.1:0",
                                         log_compaction_interval=3600)
    summary = await harness.run(WORKFLOW)
    [job] = summary.jobs
    assert job.state == "failure", job.message
    assert await _rows(harness, job.job_id) > 4
    return harness, job.job_id


async def _rows(harness: Harness, job_id: uuid.UUID) -> int:
    return await harness.orchestrator.db.pool.fetchval(
        "SELECT count(*) FROM log_chunks WHERE job_id = $1", job_id)


async def _archives(harness: Harness, job_id: uuid.UUID) -> list[dict]:
    return [dict(r) for r in await harness.orchestrator.db.pool.fetch(
        "SELECT * FROM log_archives WHERE job_id = $1 ORDER BY first_seq", job_id)]


async def _ciadm_logs(harness: Harness, job_id: uuid.UUID) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ciadm.main", "--orchestrator", harness.orchestrator.admin_url,
        "--token", ADMIN_TOKEN, "logs", str(job_id),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    return subprocess.CompletedProcess([], proc.returncode or 0, out, err)


async def _views(harness: Harness, job_id: uuid.UUID) -> dict[str, object]:
    """The log as each reader shows it."""
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        page = await http.get(f"/jobs/{job_id}")
        whole = await http.get(f"/jobs/{job_id}/log.txt")
        rest = await http.get(f"/jobs/{job_id}/log.txt?after=3")
    cli = await _ciadm_logs(harness, job_id)
    for response in (page, whole, rest):
        assert response.status_code == 200, response.text
    assert cli.returncode == 0, cli.stderr
    return {"page": page.text, "log.txt": whole.content,
            "headers": (whole.headers["x-solstice-last-seq"], whole.headers["x-solstice-done"]),
            "after 3": rest.content, "after 3 last": rest.headers["x-solstice-last-seq"],
            "ciadm logs": cli.stdout}


async def _wait_compacted(harness: Harness, job_id: uuid.UUID) -> None:
    async with asyncio.timeout(20):
        while await _rows(harness, job_id) or not await _archives(harness, job_id):
            await asyncio.sleep(0.05)


async def test_a_finished_jobs_log_is_compacted_and_reads_byte_identical(ended, release) -> None:
    harness, job_id = ended
    before = await _views(harness, job_id)
    assert b"30000\ncaf\xc3\xa9 \xff\xfe raw\n" in before["log.txt"]
    assert b"to-stderr\n" in before["ciadm logs"] and b"last words\n" in before["ciadm logs"]
    assert before["headers"][1] == "1"

    release.set()
    await _wait_compacted(harness, job_id)
    assert await _views(harness, job_id) == before

    [archive] = await _archives(harness, job_id)
    store = harness.orchestrator.blobs
    run_id = await harness.orchestrator.db.pool.fetchval(
        "SELECT run_id FROM jobs WHERE id = $1", job_id)
    assert archive["store_key"].startswith(f"runs/{run_id}/logs/build/attempt-1/1-")
    assert [b.key for b in await store.list(f"runs/{run_id}/logs/")] == [archive["store_key"]]
    # The blob is plain gzip'd JSON lines, one per chunk, with what readers resume by.
    blob = b"".join([piece async for piece in store.read(archive["store_key"])])
    assert len(blob) == archive["size"] < archive["data_bytes"] / 2
    lines = [json.loads(line) for line in gzip.decompress(blob).splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, archive["chunks"] + 1))
    assert archive["last_seq"] == archive["chunks"] == len(lines)
    assert {"seq", "step", "stream", "ts"} <= set(lines[0])
    assert any("b64" in line for line in lines)  # the bytes that are not UTF-8


async def test_a_crash_between_the_blob_and_the_rows_leaves_a_readable_log(
        ended, monkeypatch: pytest.MonkeyPatch) -> None:
    harness, job_id = ended
    before = await _views(harness, job_id)
    orchestrator = harness.orchestrator

    async def dies(*args: object) -> None:
        raise RuntimeError("killed after the blob was committed")

    with monkeypatch.context() as patch:
        patch.setattr(logarchive, "_record", dies)
        with pytest.raises(RuntimeError):
            await compact(orchestrator.db, orchestrator.blobs, job_id, 1)
    run_id = await orchestrator.db.pool.fetchval("SELECT run_id FROM jobs WHERE id = $1", job_id)
    [orphan] = await orchestrator.blobs.list(f"runs/{run_id}/logs/")
    assert await _rows(harness, job_id) > 4 and await _archives(harness, job_id) == []
    assert await _views(harness, job_id) == before

    # The next compaction writes a blob of its own and records it; the orphan is named by no
    # row (it goes with its run).
    archived = await compact(orchestrator.db, orchestrator.blobs, job_id, 1)
    assert archived is not None and archived.key != orphan.key
    assert [a["store_key"] for a in await _archives(harness, job_id)] == [archived.key]
    assert await _rows(harness, job_id) == 0
    assert await _views(harness, job_id) == before


async def test_two_compactions_at_once_record_one_archive(ended) -> None:
    harness, job_id = ended
    before = await _views(harness, job_id)
    orchestrator = harness.orchestrator
    results = await asyncio.gather(*(compact(orchestrator.db, orchestrator.blobs, job_id, 1)
                                     for _ in range(3)))
    [won] = [r for r in results if r is not None]
    run_id = await orchestrator.db.pool.fetchval("SELECT run_id FROM jobs WHERE id = $1", job_id)
    # The losers deleted their own blobs.
    assert [b.key for b in await orchestrator.blobs.list(f"runs/{run_id}/logs/")] == [won.key]
    assert [a["store_key"] for a in await _archives(harness, job_id)] == [won.key]
    assert await _views(harness, job_id) == before


async def test_chunks_stored_after_a_compaction_become_a_later_segment(ended, release) -> None:
    harness, job_id = ended
    release.set()
    await _wait_compacted(harness, job_id)
    compacted = await _views(harness, job_id)
    [first] = await _archives(harness, job_id)
    late = first["last_seq"] + 1
    # A runner resending after its host lost the job: one chunk already archived, one new.
    db = harness.orchestrator.db
    for seq, data in ((first["last_seq"], b"resent\n"), (late, b"late line\n")):
        await db.pool.execute(
            "INSERT INTO log_chunks (job_id, attempt, seq, step_index, stream, ts, data)"
            " VALUES ($1, 1, $2, 2, 1, now(), $3)", job_id, seq, data)
    with_late = await _views(harness, job_id)
    assert with_late["log.txt"] == compacted["log.txt"] + b"late line\n"
    assert with_late["ciadm logs"] == compacted["ciadm logs"] + b"late line\n"

    compactor = LogCompactor(db, harness.orchestrator.blobs, harness.orchestrator.logs,
                             harness.orchestrator.hub, interval=3600)
    assert await compactor.sweep() == 1
    assert await _rows(harness, job_id) == 0
    assert [(a["first_seq"], a["last_seq"]) for a in await _archives(harness, job_id)] == [
        (1, first["last_seq"]), (first["last_seq"], late)]
    assert await _views(harness, job_id) == with_late


async def test_a_compacted_log_whose_blob_is_gone_says_so(ended, release) -> None:
    harness, job_id = ended
    release.set()
    await _wait_compacted(harness, job_id)
    [archive] = await _archives(harness, job_id)
    await harness.orchestrator.blobs.delete(archive["store_key"])
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        page = await http.get(f"/jobs/{job_id}")
        text = await http.get(f"/jobs/{job_id}/log.txt")
    for response in (page, text):
        assert response.status_code == 410
        assert f"the compacted log {archive['store_key']} is listed but gone" in response.text
    cli = await _ciadm_logs(harness, job_id)
    assert cli.returncode == 1
    assert b"is listed but gone from the blob store" in cli.stderr


async def test_on_the_s3_store_the_log_reads_the_same_and_goes_with_its_run(
        orchestrator_factory, release, request: pytest.FixtureRequest) -> None:
    """moto's server over HTTP (the only S3 implementation that runs here)."""
    endpoint = request.getfixturevalue("moto_url")
    harness = await orchestrator_factory(
        web_listen="127.0.0.1:0", log_compaction_interval=3600, retention_days=1,
        blob_store={"kind": "s3", "bucket": await new_bucket(endpoint), "endpoint_url": endpoint,
                    "region": CREDENTIALS["region_name"],
                    "access_key_id": CREDENTIALS["aws_access_key_id"],
                    "secret_access_key": CREDENTIALS["aws_secret_access_key"], "prefix": "ci/"})
    assert isinstance(harness.orchestrator.blobs, S3BlobStore)
    summary = await harness.run(WORKFLOW, ref="refs/heads/topic", branch="topic")
    [job] = summary.jobs
    before = await _views(harness, job.job_id)
    release.set()
    await _wait_compacted(harness, job.job_id)
    assert await _views(harness, job.job_id) == before
    [archive] = await _archives(harness, job.job_id)
    store = harness.orchestrator.blobs
    assert [b.key for b in await store.list(f"runs/{summary.run_id}/")] == [archive["store_key"]]

    db = harness.orchestrator.db
    await db.pool.execute("UPDATE runs SET finished_at = now() - interval '2 days'")
    report = await harness.orchestrator.retention.sweep()
    assert [r.run_id for r in report.runs] == [summary.run_id]
    assert report.bytes == archive["size"]
    assert await store.list("runs/") == []
    assert await db.pool.fetchval("SELECT count(*) FROM log_archives") == 0


async def test_a_job_ended_while_its_host_was_down_is_compacted_by_another_hosts_sweep(
        ended) -> None:
    harness, job_id = ended  # its host's compaction at the job's end never comes
    before = await _views(harness, job_id)
    orchestrator = harness.orchestrator
    other_host = LogCompactor(orchestrator.db, orchestrator.blobs, orchestrator.logs,
                              orchestrator.hub, interval=3600)
    assert await other_host.sweep() == 1
    assert await _rows(harness, job_id) == 0 and len(await _archives(harness, job_id)) == 1
    assert await _views(harness, job_id) == before
    assert await other_host.sweep() == 0


async def test_ciadm_logs_follow_reads_on_across_the_compaction(orchestrator_factory) -> None:
    harness = await orchestrator_factory()
    with harness.api.watch() as watch:
        run_id = await harness.submit(r"""
workflow {
    job id="slow" runs_on="local" {
        step name="drip" run="for i in $(seq 1 30); do echo line-$i; sleep 0.05; done"
    }
}""")
        started = await harness.wait_step(watch, "running")
    following = asyncio.create_task(_ciadm_follow(harness, started.job_id))
    summary = await harness.api.wait(run_id)
    assert summary.state == "success"
    await _wait_compacted(harness, started.job_id)
    followed = await asyncio.wait_for(following, 30)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == (await _ciadm_logs(harness, started.job_id)).stdout
    assert followed.stdout.count(b"line-") == 30


async def _ciadm_follow(harness: Harness,
                        job_id: uuid.UUID) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ciadm.main", "--orchestrator", harness.orchestrator.admin_url,
        "--token", ADMIN_TOKEN, "logs", "--follow", str(job_id),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    return subprocess.CompletedProcess([], proc.returncode or 0, out, err)
