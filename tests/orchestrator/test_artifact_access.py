"""Getting a run's artifacts back as people do: `ciadm artifacts` and `ciadm download` in a
subprocess against the Admin service, and the run page's links and downloads over HTTP, from a
real job (real runner, local backend, Postgres, the filesystem blob store; and once with the
S3 store, on moto's server: the only S3 implementation that runs here)."""
from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import httpx
import pytest

from orchestrator.blobstore.filesystem import FilesystemBlobStore
from orchestrator.blobstore.s3 import S3BlobStore
from tests.ciadm.test_admin import ciadm
from tests.orchestrator.conftest import ADMIN_TOKEN, Harness
from tests.s3 import CREDENTIALS, moto_url, new_bucket  # noqa: F401  (moto_url: fixture)

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WORKFLOW = """
workflow name="art" {
    job id="build" runs_on="local" {
        step name="dirs" run="mkdir -p out/sub"
        step name="small" run="printf 'hello\\n' > out/a.txt && printf x > 'out/\u00fcn\u00ef code.txt'"
        step name="large" run="seq 1 400000 > out/sub/big.iso"
        artifacts "out/**/*"
    }
}
"""
FILES = {"out/a.txt": b"hello\n",
         "out/sub/big.iso": "".join(f"{n}\n" for n in range(1, 400001)).encode(),
         "out/ün\u00ef code.txt": b"x"}


@pytest.fixture
async def built(orchestrator_factory) -> tuple[Harness, uuid.UUID, uuid.UUID]:
    """An orchestrator with web pages, and a finished run whose job uploaded FILES."""
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    summary = await harness.run(WORKFLOW)
    [job] = summary.jobs
    assert summary.state == "success", (job.message, await harness.logs(job.job_id))
    return harness, summary.run_id, job.job_id


async def test_ciadm_lists_and_downloads_verified_files(built, tmp_path: Path) -> None:
    harness, run_id, job_id = built
    table = await ciadm(harness, "artifacts", str(run_id)[:8])
    assert table.returncode == 0, table.stderr
    assert "out/sub/big.iso" in table.stdout and "2.6 MiB" in table.stdout
    assert "3 files" in table.stdout
    listed = json.loads((await ciadm(harness, "artifacts", str(run_id), "--json")).stdout)
    assert {a["path"]: (a["size"], a["sha256"]) for a in listed} == {
        path: (len(data), hashlib.sha256(data).hexdigest()) for path, data in FILES.items()}
    assert all(a["job_key"] == "build" and a["attempt"] == 1 for a in listed)
    assert listed[0]["url"].startswith(harness.orchestrator.web.url + f"/jobs/{job_id}/artifacts/")

    everything = await ciadm(harness, "download", str(run_id), "-o", str(tmp_path / "all"))
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.count("verified") == 3
    for path, data in FILES.items():
        assert (tmp_path / "all" / "build" / path).read_bytes() == data
    one = await ciadm(harness, "download", str(run_id), "--job", "build", "out/a.txt",
                      "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    assert [p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*")
            if p.is_file()] == ["out/a.txt"]

    # An interrupted download resumes from its `.part` file.
    big = FILES["out/sub/big.iso"]
    resumed = tmp_path / "resumed" / "out" / "sub"
    resumed.mkdir(parents=True)
    (resumed / "big.iso.part").write_bytes(big[:1_000_000])
    again = await ciadm(harness, "download", str(run_id), "--job", "build", "out/sub/big.iso",
                        "-o", str(tmp_path / "resumed"))
    assert again.returncode == 0, again.stderr
    assert (resumed / "big.iso").read_bytes() == big and not (resumed / "big.iso.part").exists()

    missing = await ciadm(harness, "download", str(run_id), "nope.txt", "-o", str(tmp_path))
    assert missing.returncode == 1 and "no artifact 'nope.txt'" in missing.stderr
    no_job = await ciadm(harness, "artifacts", str(run_id), "--job", "test")
    assert no_job.returncode == 1 and "has no job 'test' (its jobs: build)" in no_job.stderr

    # The stored file is damaged behind the orchestrator's back: the download says so and
    # leaves nothing under the file's name.
    store = harness.orchestrator.blobs
    assert isinstance(store, FilesystemBlobStore)
    [record] = [info for info in await store.list(f"runs/{run_id}/") if info.key.endswith("big.iso")]
    stored = store.path(record.key)
    stored.chmod(0o644)
    stored.write_bytes(FILES["out/sub/big.iso"].replace(b"399999", b"999999"))
    damaged = await ciadm(harness, "download", str(run_id), "out/sub/big.iso",
                          "-o", str(tmp_path / "bad"))
    assert damaged.returncode == 1
    assert "out/sub/big.iso: sha256 mismatch" in damaged.stderr
    assert [p for p in (tmp_path / "bad").rglob("*") if p.is_file()] == []


async def test_the_run_page_links_downloads_that_resume(built) -> None:
    harness, run_id, job_id = built
    big = FILES["out/sub/big.iso"]
    size = len(big)
    url = f"/jobs/{job_id}/artifacts/out/sub/big.iso"
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        page = await http.get(f"/runs/{run_id}")
        assert page.status_code == 200
        assert f"href='../jobs/{job_id}/artifacts/out/sub/big.iso?attempt=1'" in page.text
        assert "2.6 MiB" in page.text and "out/ün\u00ef code.txt" in page.text

        whole = await http.get(url)
        assert whole.status_code == 200 and whole.content == big
        assert whole.headers["content-length"] == str(size)
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-disposition"] == 'attachment; filename="big.iso"; ' \
            "filename*=UTF-8''big.iso"
        etag = whole.headers["etag"]
        assert etag == f'"{hashlib.sha256(big).hexdigest()}"'

        # A download cut at 1 MiB resumes from there.
        rest = await http.get(url, headers={"Range": "bytes=1048576-", "If-Range": etag})
        assert rest.status_code == 206
        assert rest.headers["content-range"] == f"bytes 1048576-{size - 1}/{size}"
        assert rest.headers["content-length"] == str(size - 1048576)
        assert big[:1048576] + rest.content == big
        for asked, (start, end) in {"bytes=0-0": (0, 1), "bytes=10-19": (10, 20),
                                    "bytes=-5": (size - 5, size),
                                    f"bytes={size - 3}-{size + 100}": (size - 3, size)}.items():
            part = await http.get(url, headers={"Range": asked})
            assert part.status_code == 206, asked
            assert part.content == big[start:end], asked
            assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        past = await http.get(url, headers={"Range": f"bytes={size}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
        # The file changed since the first part (another ETag), several ranges, or a
        # malformed header: the whole file.
        for headers in ({"Range": "bytes=5-", "If-Range": '"other"'},
                        {"Range": "bytes=0-1,5-6"}, {"Range": "lines=1-2"}):
            full = await http.get(url, headers=headers)
            assert full.status_code == 200 and full.content == big, headers
        head = await http.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(size)
        assert head.content == b""

        unicode = await http.get(f"/jobs/{job_id}/artifacts/out/%C3%BCn%C3%AF%20code.txt")
        assert unicode.content == b"x"
        assert unicode.headers["content-disposition"] == (
            "attachment; filename=\"_n_ code.txt\"; filename*=UTF-8''%C3%BCn%C3%AF%20code.txt")
        assert (await http.get(f"/jobs/{job_id}/artifacts/out/nope")).status_code == 404
        assert (await http.get(f"{url}?attempt=2")).status_code == 404
        assert (await http.get(f"{url}?attempt=x")).status_code == 400
        assert (await http.get(f"/jobs/{uuid.uuid4()}/artifacts/out/a.txt")).status_code == 404
    # Behind the pages' gate like every page.
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url) as anonymous:
        refused = await anonymous.get(url)
        assert refused.status_code == 401 and big[:20] not in refused.content


async def test_the_s3_store_serves_the_same(orchestrator_factory, request: pytest.FixtureRequest,
                                            tmp_path: Path) -> None:
    endpoint = request.getfixturevalue("moto_url")
    harness = await orchestrator_factory(web_listen="127.0.0.1:0", blob_store={
        "kind": "s3", "bucket": await new_bucket(endpoint), "endpoint_url": endpoint,
        "region": CREDENTIALS["region_name"], "access_key_id": CREDENTIALS["aws_access_key_id"],
        "secret_access_key": CREDENTIALS["aws_secret_access_key"], "prefix": "ci/"})
    assert isinstance(harness.orchestrator.blobs, S3BlobStore)
    summary = await harness.run(WORKFLOW)
    [job] = summary.jobs
    assert summary.state == "success", job.message
    assert not (tmp_path / "state" / "blobs").exists()
    done = await ciadm(harness, "download", str(summary.run_id), "-o", str(tmp_path / "got"))
    assert done.returncode == 0, done.stderr
    for path, data in FILES.items():
        assert (tmp_path / "got" / "build" / path).read_bytes() == data
    big = FILES["out/sub/big.iso"]
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        part = await http.get(f"/jobs/{job.job_id}/artifacts/out/sub/big.iso",
                              headers={"Range": "bytes=1048570-1048589"})
        assert part.status_code == 206 and part.content == big[1048570:1048590]
