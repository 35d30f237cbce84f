"""The blob store on any S3-compatible service (AWS S3, MinIO, Ceph RGW, Garage), through
`aiobotocore` (the `s3` extra: `pip install 'solstice-ci[s3]'`).

Keys live under `prefix` in `bucket`. A writer sends a blob of one part with one `PutObject`,
a larger one as a multipart upload of `part_bytes` parts; either becomes visible only when it
completes, with `If-None-Match: *` so an existing object is never replaced. An aborted writer
aborts its multipart upload; one whose process died leaves an incomplete multipart upload that
no listing shows (give the bucket a lifecycle rule aborting incomplete uploads after a day).

botocore's errors are classified here, once: a missing key is `BlobNotFound`, a failed
precondition `BlobExists`, anything else the service or the network does
`BlobStoreUnavailable`.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError
from orchestrator.blobstore.base import (
    READ_BYTES,
    BlobExists,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobStoreUnavailable,
    BlobWriter,
    check_key,
    require_prefix,
)

log = logging.getLogger(__name__)

# S3's own limits: a key of 1024 bytes, parts of 5 MiB at least (but the last).
S3_MAX_KEY_BYTES = 1024
MIN_PART_BYTES = 5 * 1024 * 1024
DELETE_BATCH = 1000
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
EXISTS = frozenset({"412", "PreconditionFailed", "ConditionalRequestConflict"})
_session: Any = None


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    part_bytes: int = 8 * 1024 * 1024
    max_attempts: int = 5  # per request, transient errors retried by botocore


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _classified(action: str, key: str) -> Iterator[None]:
    """botocore's exceptions for `action` on `key` as the store's."""
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        yield
    except ClientError as exc:
        code = _code(exc)
        if code in NOT_FOUND:
            raise BlobNotFound(f"no blob {key!r}") from exc
        if code in EXISTS:
            raise BlobExists(f"blob {key!r} exists already; it is never replaced") from exc
        raise BlobStoreUnavailable(f"S3 refused to {action} {key!r}: {code} {exc}",
                                   hint="check the bucket, the credentials and the endpoint "
                                        "([orchestrator.blob_store])") from exc
    except (BotoCoreError, OSError) as exc:
        raise BlobStoreUnavailable(f"S3 could not be reached to {action} {key!r}: {exc}",
                                   hint="check endpoint_url and the network") from exc


class _S3Writer(BlobWriter):
    def __init__(self, store: S3BlobStore, key: str) -> None:
        super().__init__(key)
        self._store = store
        self._object = store.object_key(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    async def write(self, data: bytes | bytearray) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= self._store.part_bytes:
            await self._send_part()

    async def _send_part(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        with _classified("write", self.key):
            if self._upload_id is None:
                created = await client.create_multipart_upload(Bucket=bucket, Key=self._object)
                self._upload_id = created["UploadId"]
            data, self._buffer = bytes(self._buffer), bytearray()
            number = len(self._parts) + 1
            sent = await client.upload_part(Bucket=bucket, Key=self._object, PartNumber=number,
                                            UploadId=self._upload_id, Body=data)
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    async def commit(self) -> BlobInfo:
        client, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                with _classified("write", self.key):
                    await client.put_object(Bucket=bucket, Key=self._object,
                                            Body=bytes(self._buffer), IfNoneMatch="*")
            else:
                if self._buffer:
                    await self._send_part()
                with _classified("publish", self.key):
                    await client.complete_multipart_upload(
                        Bucket=bucket, Key=self._object, UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts}, IfNoneMatch="*")
                self._upload_id = None
        finally:
            await self.abort()
        return BlobInfo(self.key, self.size)

    async def abort(self) -> None:
        self.done = True
        self._buffer = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            try:
                with _classified("abort the upload of", self.key):
                    await self._store.client.abort_multipart_upload(
                        Bucket=self._store.bucket, Key=self._object, UploadId=upload_id)
            except BlobStoreUnavailable as exc:
                # Invisible either way; the bucket's lifecycle rule collects it.
                log.warning("could not abort a multipart upload", extra={
                    "key": self.key, "error": exc.message})


class S3BlobStore(BlobStore):
    """Blobs as objects of one bucket, under a key prefix."""

    kind = "s3"

    def __init__(self, client: Any, stack: AsyncExitStack, settings: S3Settings) -> None:
        self.client = client
        self._stack = stack
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.part_bytes = max(settings.part_bytes, MIN_PART_BYTES)
        self.max_key_bytes = S3_MAX_KEY_BYTES - len(settings.prefix.encode())

    @classmethod
    async def open(cls, settings: S3Settings) -> S3BlobStore:
        """A client for `settings.bucket`, checked to be reachable."""
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError as exc:
            raise ConfigError("the s3 blob store needs aiobotocore, which is not installed",
                              hint="pip install 'solstice-ci[s3]', or use the filesystem "
                                   "blob store") from exc
        global _session
        # One session for every store: it caches botocore's service models (a second a load).
        _session = _session or get_session()
        stack = AsyncExitStack()
        client = await stack.enter_async_context(_session.create_client(
            "s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            config=AioConfig(retries={"max_attempts": settings.max_attempts, "mode": "standard"},
                             connect_timeout=10, read_timeout=60)))
        store = cls(client, stack, settings)
        try:
            with _classified("reach the bucket of", settings.bucket):
                await client.head_bucket(Bucket=settings.bucket)
        except BaseException:
            await stack.aclose()
            raise
        return store

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key, self.max_key_bytes)

    def writer(self, key: str) -> BlobWriter:
        return _S3Writer(self, key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        if end is not None and start >= end:
            return
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(key)}
        if start or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        from botocore.exceptions import ClientError
        try:
            with _classified("read", key):
                response = await self.client.get_object(**request)
        except BlobStoreUnavailable as exc:
            if isinstance(exc.__cause__, ClientError) and _code(exc.__cause__) == "InvalidRange":
                return  # `start` at the blob's end: nothing to read
            raise
        async with response["Body"] as body:
            while True:
                with _classified("read", key):
                    data = await body.read(READ_BYTES)
                if not data:
                    return
                yield data

    async def stat(self, key: str) -> BlobInfo:
        with _classified("stat", key):
            head = await self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        return BlobInfo(key, int(head["ContentLength"]))

    async def list(self, prefix: str) -> list[BlobInfo]:
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        with _classified("list", prefix):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    found.append(BlobInfo(item["Key"][len(self.prefix):], int(item["Size"])))
        return sorted(found, key=lambda info: info.key)

    async def delete(self, key: str) -> bool:
        try:
            await self.stat(key)
        except BlobNotFound:
            return False
        with _classified("delete", key):
            await self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        return True

    async def delete_prefix(self, prefix: str) -> int:
        require_prefix(prefix)
        keys = [info.key for info in await self.list(prefix)]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            with _classified("delete", prefix):
                await self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self.prefix + key} for key in batch], "Quiet": True})
        return len(keys)

    async def close(self) -> None:
        await self._stack.aclose()
