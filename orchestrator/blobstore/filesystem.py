"""The blob store on a local or shared filesystem (the default; in multi-host mode a path every
host mounts, such as an NFS-shared ZFS dataset).

Layout under the root: `objects/<key>` holds published blobs, `tmp/` the ones being written.
A writer fills `tmp/<random>.part` and `commit()` fsyncs it and hard-links it to its key
(`link(2)` fails when the name exists, so nothing is ever replaced, also between hosts), then
removes the temporary name. A process killed mid-write leaves only a `tmp/` file, which no key
names; `sweep_temporary` removes those older than a day. `tmp/` and `objects/` must be on one
filesystem (they are, under one root).

File I/O runs in worker threads, a few MiB at a time, so the event loop serving gRPC and the
web pages never waits on the disk.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

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

# Bytes handed to one write(2): large enough for the disk, small per upload.
WRITE_BYTES = 4 * 1024 * 1024
# A temporary file untouched this long belongs to a writer that died.
TEMP_MAX_AGE = 24 * 3600.0
# Linux's PATH_MAX less room for the root.
MAX_KEY_BYTES = 3072


def _unavailable(action: str, exc: OSError) -> BlobStoreUnavailable:
    return BlobStoreUnavailable(f"the blob store could not {action}: {exc.strerror or exc}",
                                hint="check the blob store's filesystem (space, permissions, "
                                     "the mount in multi-host mode)")


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _FileWriter(BlobWriter):
    def __init__(self, store: FilesystemBlobStore, key: str) -> None:
        super().__init__(key)
        self._store = store
        self._temp = store.temp_dir / f"{uuid.uuid4().hex}.part"
        self._fd: int | None = None
        self._buffer = bytearray()
        # The worker thread's write or publish in progress: a cancelled caller stops waiting
        # for it, not the thread, so `abort` waits for it before closing the descriptor.
        self._busy: asyncio.Future[None] | None = None

    async def write(self, data: bytes | bytearray) -> None:
        self.size += len(data)
        if not self._buffer and len(data) >= WRITE_BYTES:
            await self._write(data)  # a whole write unit already: no copy into the buffer
            return
        self._buffer += data
        if len(self._buffer) >= WRITE_BYTES:
            await self._flush()

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               0o640)
        return self._fd

    async def _in_thread(self, work: Callable[[], None]) -> None:
        self._busy = asyncio.ensure_future(asyncio.to_thread(work))
        await asyncio.shield(self._busy)

    async def _flush(self) -> None:
        data, self._buffer = self._buffer, bytearray()
        await self._write(data)

    async def _write(self, data: bytes | bytearray) -> None:
        try:
            await self._in_thread(lambda: _write_all(self._open(), data))
        except OSError as exc:
            raise _unavailable(f"write {self.key!r}", exc) from exc

    async def commit(self) -> BlobInfo:
        try:
            await self._flush()
            await self._in_thread(self._publish)
        except OSError as exc:
            raise _unavailable(f"publish {self.key!r}", exc) from exc
        finally:
            await self.abort()
        return BlobInfo(self.key, self.size)

    def _publish(self) -> None:
        fd = self._open()
        os.fsync(fd)
        target = self._store.path(self.key)
        for _ in range(3):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                raise BlobExists(f"blob {self.key!r} cannot be stored: a blob holds the name of "
                                 "one of its directories") from exc
            try:
                os.link(self._temp, target)
                break
            except FileExistsError as exc:
                raise BlobExists(f"blob {self.key!r} exists already; it is never replaced") from exc
            except FileNotFoundError:
                continue  # a delete removed the emptied directory between mkdir and link
        else:
            raise OSError(errno.ENOENT, f"the directory of {target} keeps disappearing")
        _fsync_directory(target.parent)
        self.done = True

    async def abort(self) -> None:
        self.done = True
        self._buffer = bytearray()
        if self._busy is not None and not self._busy.done():
            await asyncio.wait({self._busy})
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemBlobStore(BlobStore):
    """Blobs as files under `root` (created if missing)."""

    kind = "filesystem"
    max_key_bytes = MAX_KEY_BYTES

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.temp_dir = root / "tmp"

    @classmethod
    async def open(cls, root: Path) -> FilesystemBlobStore:
        """The store under `root`, its directories made, stale temporary files removed."""
        store = cls(root)
        try:
            await asyncio.to_thread(store._prepare)
        except OSError as exc:
            raise _unavailable(f"use {root}", exc) from exc
        return store

    def _prepare(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.sweep_temporary(TEMP_MAX_AGE)

    def sweep_temporary(self, older_than: float) -> int:
        """Remove temporary files not written to for `older_than` seconds; how many."""
        cutoff = time.time() - older_than
        removed = 0
        for entry in os.scandir(self.temp_dir):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("removed abandoned temporary blobs", extra={"count": removed,
                                                                 "root": str(self.root)})
        return removed

    def path(self, key: str) -> Path:
        """The file holding `key` (whether or not it exists)."""
        return self.objects / check_key(key, self.max_key_bytes)

    def writer(self, key: str) -> BlobWriter:
        self.path(key)
        return _FileWriter(self, key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self.path(key)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise BlobNotFound(f"no blob {key!r}") from exc
        except OSError as exc:
            raise _unavailable(f"read {key!r}", exc) from exc
        try:
            size = os.fstat(fd).st_size
            position, stop = start, size if end is None else min(end, size)
            while position < stop:
                try:
                    data = await asyncio.to_thread(os.pread, fd, min(READ_BYTES, stop - position),
                                                   position)
                except OSError as exc:
                    raise _unavailable(f"read {key!r}", exc) from exc
                if not data:
                    return
                position += len(data)
                yield data
        finally:
            os.close(fd)

    async def stat(self, key: str) -> BlobInfo:
        path = self.path(key)
        try:
            result = await asyncio.to_thread(os.stat, path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise BlobNotFound(f"no blob {key!r}") from exc
        except OSError as exc:
            raise _unavailable(f"stat {key!r}", exc) from exc
        if not stat.S_ISREG(result.st_mode):
            raise BlobNotFound(f"no blob {key!r}")
        return BlobInfo(key, result.st_size)

    async def list(self, prefix: str) -> list[BlobInfo]:
        try:
            return await asyncio.to_thread(self._list, prefix)
        except OSError as exc:
            raise _unavailable(f"list {prefix!r}", exc) from exc

    def _list(self, prefix: str) -> list[BlobInfo]:
        # Walk only the deepest directory the prefix names whole.
        base = self.objects / prefix.rpartition("/")[0] if "/" in prefix else self.objects
        found = []
        for directory, _, files in os.walk(base):
            for name in files:
                path = Path(directory, name)
                key = path.relative_to(self.objects).as_posix()
                if key.startswith(prefix):
                    try:
                        found.append(BlobInfo(key, path.stat(follow_symlinks=False).st_size))
                    except FileNotFoundError:
                        continue
        return sorted(found, key=lambda info: info.key)

    async def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            return await asyncio.to_thread(self._delete, path)
        except OSError as exc:
            raise _unavailable(f"delete {key!r}", exc) from exc

    def _delete(self, path: Path) -> bool:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        # Empty directories go with their last blob (a writer racing this retries its link).
        parent = path.parent
        while parent != self.objects:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    async def delete_prefix(self, prefix: str) -> int:
        require_prefix(prefix)
        deleted = 0
        for info in await self.list(prefix):
            deleted += await self.delete(info.key)
        return deleted
