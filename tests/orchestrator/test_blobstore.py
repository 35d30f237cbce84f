"""Both blob stores against the same contract: the filesystem one on a real directory, the S3
one over real HTTP against moto's standalone server (`tests/s3.py`: `moto_server` started per
module on a free port). moto is the only S3 implementation that runs here; the store speaks
nothing to it that a real S3 service would not accept.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.artifact_paths import job_directory
from orchestrator.blobstore import (
    BlobExists,
    BlobKeyError,
    BlobNotFound,
    BlobStore,
    BlobStoreConfig,
    BlobStoreUnavailable,
    open_blob_store,
)
from orchestrator.blobstore.filesystem import FilesystemBlobStore
from orchestrator.blobstore.keys import artifact_key
from orchestrator.blobstore.s3 import MIN_PART_BYTES, S3BlobStore, S3Settings
from tests.s3 import free_port, moto_url, new_bucket  # noqa: F401  (moto_url: fixture)

MIB = 1024 * 1024


def s3_settings(url: str, bucket: str) -> S3Settings:
    return S3Settings(bucket=bucket, prefix="ci/", endpoint_url=url, region="us-east-1",
                      access_key_id="testing", secret_access_key="testing",
                      part_bytes=MIN_PART_BYTES)


@pytest.fixture(params=["filesystem", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "filesystem":
        opened: BlobStore = await FilesystemBlobStore.open(tmp_path / "blobs")
    else:
        url = request.getfixturevalue("moto_url")
        opened = await S3BlobStore.open(s3_settings(url, await new_bucket(url)))
    yield opened
    await opened.close()


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def put(store: BlobStore, key: str, data: bytes, piece: int = 256 * 1024) -> None:
    async with store.writer(key) as writer:
        for start in range(0, len(data), piece):
            await writer.write(data[start:start + piece])
        await writer.commit()


async def fetch(store: BlobStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([piece async for piece in store.read(key, start, end)])


async def test_round_trip_is_byte_exact(store: BlobStore) -> None:
    # Larger than an S3 part and a filesystem write unit, and not a multiple of either.
    files = {"runs/r/a/empty": b"", "runs/r/a/one": b"\x00",
             "runs/r/a/big.iso": random_bytes(1, 2 * MIN_PART_BYTES + 12345),
             "runs/r/a/ünï code.txt": "ü\n".encode()}
    for key, data in files.items():
        await put(store, key, data)
    for key, data in files.items():
        read = await fetch(store, key)
        assert hashlib.sha256(read).hexdigest() == hashlib.sha256(data).hexdigest(), key
        assert (await store.stat(key)).size == len(data)
    assert [info.key for info in await store.list("runs/r/")] == sorted(files)


async def test_ranges_read_exactly_the_bytes_asked(store: BlobStore) -> None:
    data = random_bytes(2, 3 * MIB + 7)
    await put(store, "k", data)
    for start, end in [(0, 1), (5, 5), (MIB - 1, MIB + 1), (3 * MIB, None), (len(data), None),
                       (10, len(data) + 100)]:
        assert await fetch(store, "k", start, end) == data[start:end], (start, end)


async def test_nothing_is_visible_before_commit_and_abort_leaves_nothing(store: BlobStore) -> None:
    writer = store.writer("runs/r/half")
    await writer.write(random_bytes(3, 2 * MIN_PART_BYTES))  # parts already sent to S3
    assert await store.list("runs/") == []
    with pytest.raises(BlobNotFound):
        await store.stat("runs/r/half")
    await writer.abort()
    assert await store.list("runs/") == []
    # A block that raises aborts too.
    with pytest.raises(RuntimeError):
        async with store.writer("runs/r/raised") as writer:
            await writer.write(b"x" * 100)
            raise RuntimeError("the upload broke")
    assert await store.list("runs/") == []


async def test_a_blob_is_never_replaced(store: BlobStore) -> None:
    await put(store, "runs/r/once", b"first")
    with pytest.raises(BlobExists):
        await put(store, "runs/r/once", b"second")
    with pytest.raises(BlobExists):
        await put(store, "runs/r/once", random_bytes(4, MIN_PART_BYTES + 1))  # multipart too
    assert await fetch(store, "runs/r/once") == b"first"


async def test_missing_keys_and_bad_keys(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        await store.stat("nope")
    with pytest.raises(BlobNotFound):
        await fetch(store, "nope")
    for key in ["", "/abs", "a/../b", "a//b", "./a", "a/", "nul\x00", "new\nline", "back\\slash",
                "x" * (store.max_key_bytes + 1)]:
        with pytest.raises(BlobKeyError):
            store.writer(key)
    assert not await store.delete("nope")


async def test_delete_prefix_takes_only_its_prefix(store: BlobStore) -> None:
    for key in ["runs/1/a", "runs/1/b/c", "runs/10/a", "runs/2/a"]:
        await put(store, key, key.encode())
    assert await store.delete_prefix("runs/1/") == 2
    assert [info.key for info in await store.list("runs/")] == ["runs/10/a", "runs/2/a"]
    assert await store.delete("runs/2/a")
    assert [info.key for info in await store.list("")] == ["runs/10/a"]
    with pytest.raises(BlobKeyError):
        await store.delete_prefix("")
    # A deleted key can be written anew.
    await put(store, "runs/1/a", b"again")
    assert await fetch(store, "runs/1/a") == b"again"


async def test_filesystem_keeps_writes_out_of_sight_and_refuses_crossing_names(
        tmp_path: Path) -> None:
    store = await FilesystemBlobStore.open(tmp_path / "blobs")
    writer = store.writer("runs/r/f")
    await writer.write(random_bytes(5, 5 * MIB))  # past one write unit: on disk in tmp/
    assert [p.name for p in (tmp_path / "blobs" / "tmp").iterdir()]
    assert not (tmp_path / "blobs" / "objects" / "runs").exists()
    await writer.commit()
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    with pytest.raises(BlobExists, match="one of its directories"):
        await put(store, "runs/r/f/g", b"under a file")
    # A writer killed mid-file leaves a temporary file only, swept once it is old.
    stale = tmp_path / "blobs" / "tmp" / "dead.part"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    await FilesystemBlobStore.open(tmp_path / "blobs")
    assert not stale.exists()


async def test_s3_unreachable_is_unavailable() -> None:
    settings = s3_settings(f"http://127.0.0.1:{free_port()}", "none")
    with pytest.raises(BlobStoreUnavailable, match="could not be reached"):
        await S3BlobStore.open(dataclasses.replace(settings, max_attempts=1))


async def test_the_configured_s3_store_opens(request: pytest.FixtureRequest,
                                             tmp_path: Path) -> None:
    moto = request.getfixturevalue("moto_url")
    bucket = await new_bucket(moto)
    config = BlobStoreConfig(kind="s3", bucket=bucket, endpoint_url=moto, region="us-east-1",
                             access_key_id="testing", secret_access_key="testing", prefix="p/")
    store = await open_blob_store(config, state_dir=tmp_path, multi_host=True)
    try:
        assert isinstance(store, S3BlobStore) and store.bucket == bucket
        await put(store, "runs/x/a", b"via config")
        assert await fetch(store, "runs/x/a") == b"via config"
    finally:
        await store.close()
    with pytest.raises(ValueError, match="needs a bucket"):
        BlobStoreConfig(kind="s3")


async def test_multi_host_needs_a_shared_path(tmp_path: Path) -> None:
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="every host mounts"):
        await open_blob_store(BlobStoreConfig(), state_dir=tmp_path, multi_host=True)
    store = await open_blob_store(BlobStoreConfig(), state_dir=tmp_path, multi_host=False)
    assert isinstance(store, FilesystemBlobStore) and store.root == tmp_path / "blobs"


def test_keys_keep_a_job_key_in_one_component() -> None:
    run = uuid.UUID(int=1)
    assert artifact_key(run, "build[os=omnios,rust=stable]", 2, "out/a.txt") == (
        f"runs/{run}/jobs/build[os=omnios,rust=stable]/attempt-2/out/a.txt")
    assert job_directory("b[os=r151046/lts]") == "b[os=r151046%2Flts]"
    assert job_directory("..") == "%2E%2E"
    long = job_directory("j[" + "x" * 400 + "]")
    assert len(long) == 200 and "/" not in long
    assert long != job_directory("j[" + "x" * 399 + "y]")


async def test_a_cancelled_write_finishes_before_its_abort_closes_the_file(tmp_path: Path) -> None:
    store = await FilesystemBlobStore.open(tmp_path / "blobs")
    writer = store.writer("runs/r/cancelled")
    # Past a write unit: the bytes go to a worker thread, which a cancel does not stop.
    task = asyncio.ensure_future(writer.write(random_bytes(6, 8 * MIB)))
    await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.abort()
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert await store.list("runs/") == []
