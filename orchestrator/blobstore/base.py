"""The blob store interface: where the orchestrator keeps a run's files (artifacts today; the
run's manifest, bundles and compacted logs can follow under the same run prefix).

A blob is named by a key: `/`-separated components, none empty, `.` or `..`, no control
character (`check_key`). Keys are the orchestrator's own (see `keys.py`); nothing a runner
sends becomes a key without `common.artifact_paths` having accepted it first.

Writing is all or nothing: `writer(key)` streams bytes to a place no reader sees (a temporary
file, an S3 multipart upload) and `commit()` publishes them under `key` in one step, refusing
to replace a blob already there (`BlobExists`). A writer that is aborted, or whose process dies
before `commit()`, leaves nothing under any key. Only the orchestrator writes the store.

Errors of the service behind a store (disk full, S3 unreachable) are raised as
`BlobStoreUnavailable`, classified once in each implementation.
"""
from __future__ import annotations

import abc
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

from common.errors import SolsticeError

# What one read yields at most, and what a writer hands its backing store at once (bigger
# writes for the disk, without holding much per upload).
READ_BYTES = 1024 * 1024


class BlobStoreError(SolsticeError):
    """A blob store operation that cannot be done; the message says which key and why."""


class BlobKeyError(BlobStoreError):
    """A key the store cannot hold (malformed, or longer than the store allows)."""


class BlobNotFound(BlobStoreError):
    """No blob under the key."""


class BlobExists(BlobStoreError):
    """A commit would replace a blob (or, on a filesystem, cross one: `a` is a blob and the
    key is `a/b`); nothing was replaced."""


class BlobStoreUnavailable(BlobStoreError):
    """The service behind the store failed (disk full, S3 unreachable or refusing); retryable."""


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int


def check_key(key: str, max_bytes: int) -> str:
    """Return `key` if a store may hold it under `max_bytes` bytes (UTF-8), else raise
    `BlobKeyError`."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise BlobKeyError(f"blob key {key!r} must be relative and name a file")
    if len(key.encode()) > max_bytes:
        raise BlobKeyError(f"blob key {key[:80]!r}... is longer than the {max_bytes} bytes this "
                           "store allows")
    for char in key:
        if unicodedata.category(char) == "Cc" or char == "\\":
            raise BlobKeyError(f"blob key {key!r} contains U+{ord(char):04X}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise BlobKeyError(f"blob key {key!r} has an empty, '.' or '..' component")
    return key


class BlobWriter(abc.ABC):
    """One blob being written: `write` chunks in order, then `commit` (or `abort`). As an
    `async with` block it aborts when the block raises or ends without a commit."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.size = 0
        self.done = False

    @abc.abstractmethod
    async def write(self, data: bytes | bytearray) -> None:
        """Append `data`; it may be buffered until the store's next write unit fills."""

    @abc.abstractmethod
    async def commit(self) -> BlobInfo:
        """Publish what was written under the key, whole, in one step. `BlobExists` when a
        blob is there already (the written bytes are then dropped)."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Drop what was written; nothing becomes visible. Idempotent."""

    async def __aenter__(self) -> BlobWriter:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if not self.done:
            await self.abort()


class BlobStore(abc.ABC):
    """Keys to immutable byte strings. Open with the implementation's `open`, close with
    `close()`."""

    #: `filesystem` or `s3`, for logs and messages.
    kind: str
    #: The longest key (UTF-8 bytes) this store holds.
    max_key_bytes: int

    @abc.abstractmethod
    def writer(self, key: str) -> BlobWriter:
        """A writer for a new blob under `key` (`BlobKeyError` if the key is not allowed)."""

    @abc.abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes from `start` up to `end` (exclusive; None: its end), in pieces of
        at most `READ_BYTES`. `BlobNotFound` on the first iteration when there is none."""

    @abc.abstractmethod
    async def stat(self, key: str) -> BlobInfo:
        """The blob's size; `BlobNotFound` when there is none."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> list[BlobInfo]:
        """Every blob whose key starts with `prefix` (a string prefix, as in S3), by key."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete one blob; whether there was one."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with `prefix`; how many. `prefix` must not be
        empty (deleting the whole store is not an accident this call makes)."""

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""


def require_prefix(prefix: str) -> None:
    if not prefix:
        raise BlobKeyError("an empty prefix names the whole store; give one")
