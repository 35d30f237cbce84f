"""The orchestrator's blob store: one interface (`base.BlobStore`), two implementations
(`filesystem`, the default, and `s3`), the key layout of a run's files (`keys`), and
`open_blob_store`, which opens the one `[orchestrator.blob_store]` configures.

    store = await open_blob_store(config.blob_store, state_dir=..., multi_host=...)
    async with store.writer("runs/<id>/manifest.json") as writer:
        await writer.write(data)
        await writer.commit()            # visible now, whole; never replaces a blob
    async for piece in store.read(key, start, end): ...
    await store.delete_prefix(keys.run_prefix(run_id))
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from common.errors import ConfigError
from orchestrator.blobstore.base import (
    BlobExists,
    BlobInfo,
    BlobKeyError,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    BlobStoreUnavailable,
    BlobWriter,
)

__all__ = ["BlobExists", "BlobInfo", "BlobKeyError", "BlobNotFound", "BlobStore",
           "BlobStoreConfig", "BlobStoreError", "BlobStoreUnavailable", "BlobWriter",
           "filesystem_root", "open_blob_store"]

MIB = 1024 * 1024


class BlobStoreConfig(BaseModel):
    """`[orchestrator.blob_store]`: where artifacts (and later the run's other files) go."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["filesystem", "s3"] = "filesystem"
    # filesystem: the root directory. Default `<state_dir>/blobs`, standalone only: in
    # multi-host mode every host must name the same shared path.
    path: Path | None = None
    # s3: the bucket (required), a key prefix, and where and how to reach it; credentials
    # unset fall back to botocore's own chain (AWS_* variables, ~/.aws, instance roles).
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    part_bytes: int = Field(default=8 * MIB, ge=5 * MIB)

    @model_validator(mode="after")
    def _complete(self) -> BlobStoreConfig:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("the s3 blob store needs a bucket")
        return self


async def open_blob_store(config: BlobStoreConfig, *, state_dir: Path,
                          multi_host: bool) -> BlobStore:
    """The configured store, opened (and reachable). `ConfigError` for a filesystem store
    without a path in multi-host mode: each host would keep its own files."""
    if config.kind == "s3":
        from orchestrator.blobstore.s3 import S3BlobStore, S3Settings

        assert config.bucket is not None
        secret = config.secret_access_key
        return await S3BlobStore.open(S3Settings(
            bucket=config.bucket, prefix=config.prefix, endpoint_url=config.endpoint_url,
            region=config.region, access_key_id=config.access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            part_bytes=config.part_bytes))
    from orchestrator.blobstore.filesystem import FilesystemBlobStore

    return await FilesystemBlobStore.open(filesystem_root(config, state_dir=state_dir,
                                                          multi_host=multi_host))


def filesystem_root(config: BlobStoreConfig, *, state_dir: Path, multi_host: bool) -> Path:
    """The filesystem store's root: `path`, else `<state_dir>/blobs` in standalone mode only
    (`ConfigError` in multi-host mode: each host would keep its own files)."""
    if config.path is not None:
        return config.path
    if multi_host:
        raise ConfigError("in multi-host mode the filesystem blob store needs a path every "
                          "host mounts", hint="set [orchestrator.blob_store] path (e.g. an "
                          "NFS-shared dataset) or kind = \"s3\"; environment: "
                          "SOLSTICE_ORCHESTRATOR__BLOB_STORE__PATH")
    return state_dir / "blobs"
