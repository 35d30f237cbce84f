"""ZFS for the bhyve backend: one interface, two ways in.

`ZfsLibzfsCore` calls OpenZFS's `libzfs_core` Python bindings (pyzfs) where they import:
no process per operation and typed errors. `ZfsCommand` runs the `zfs` command, which every
illumos host has. `open_zfs` picks the bindings when `import libzfs_core` works, else the
command.

libzfs_core has no committed interface to list datasets or read properties (pyzfs marks
`lzc_list`/`lzc_get_props` uncommitted and they are missing from illumos), so both
implementations read those through `zfs list` / `zfs get`; the reaper's listing is the same
`zfs list -H -o name -r` either way.

Names are `str` here; the bindings get `bytes`, as pyzfs requires.
"""
from __future__ import annotations

import abc
import asyncio
import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Literal, TypeVar

from orchestrator.backends.base import BackendError
from orchestrator.backends.commands import CommandFailed, run_command

T = TypeVar("T")

ZfsChoice = Literal["auto", "libzfs_core", "command"]


class ZfsError(BackendError):
    """A ZFS operation failed."""


class DatasetNotFound(ZfsError):
    """The dataset or snapshot does not exist."""


class DatasetExists(ZfsError):
    """The dataset or snapshot to create exists already."""


class SnapshotHasClones(ZfsError):
    """The snapshot cannot be destroyed while clones depend on it."""


class Zfs(abc.ABC):
    """The ZFS operations the bhyve backend needs. Every call is bounded by `timeout` seconds."""

    name: str

    def __init__(self, *, timeout: float, command: str = "zfs") -> None:
        self.timeout = timeout
        self.command = command

    @abc.abstractmethod
    async def exists(self, name: str) -> bool:
        """Whether the filesystem, volume or snapshot `name` exists."""

    @abc.abstractmethod
    async def snapshot(self, name: str) -> None:
        """Create snapshot `name` (`pool/ds@snap`); `DatasetExists` if it is there already."""

    @abc.abstractmethod
    async def clone(self, snapshot: str, target: str, properties: Mapping[str, str]) -> None:
        """Clone `snapshot` to the new dataset `target` with `properties` set at creation."""

    @abc.abstractmethod
    async def destroy(self, name: str) -> None:
        """Destroy a dataset or snapshot; `DatasetNotFound` if absent, `SnapshotHasClones`
        for a snapshot that still has clones."""

    async def _zfs(self, *args: str) -> str:
        return (await run_command([self.command, *args], timeout=self.timeout)).stdout

    async def list_datasets(self, parent: str) -> list[str]:
        """`parent` and every filesystem and volume below it; empty if `parent` is absent."""
        argv = [self.command, "list", "-H", "-o", "name", "-r", "-t", "filesystem,volume", parent]
        result = await run_command(argv, timeout=self.timeout, check=False)
        if result.returncode != 0:
            if "dataset does not exist" in result.stderr:
                return []
            raise CommandFailed(result)
        return [line for line in result.stdout.splitlines() if line]

    async def get_property(self, name: str, prop: str) -> str:
        """The parsable value of `prop` on `name` (`-` where it does not apply)."""
        try:
            out = await self._zfs("get", "-H", "-p", "-o", "value", prop, name)
        except CommandFailed as exc:
            raise _classify(exc) from exc
        return out.strip()

    async def volsize(self, name: str) -> int:
        """The size in bytes of volume (or volume snapshot) `name`."""
        value = await self.get_property(name, "volsize")
        if not value.isdigit():
            raise ZfsError(f"{name} is not a ZFS volume (volsize is {value!r})",
                           hint="a bhyve golden image must be a zvol (zfs create -V)")
        return int(value)


def _classify(exc: CommandFailed) -> ZfsError:
    """The typed error for what `zfs` printed; the message stays the command's."""
    stderr = exc.result.stderr
    if "dataset does not exist" in stderr:
        cls: type[ZfsError] = DatasetNotFound
    elif "dataset already exists" in stderr:
        cls = DatasetExists
    elif "has dependent clones" in stderr:
        cls = SnapshotHasClones
    else:
        cls = ZfsError
    return cls(exc.message, hint=exc.hint)


class ZfsCommand(Zfs):
    """ZFS through the `zfs` command."""

    name = "command"

    async def _checked(self, *args: str) -> None:
        try:
            await self._zfs(*args)
        except CommandFailed as exc:
            raise _classify(exc) from exc

    async def exists(self, name: str) -> bool:
        argv = [self.command, "list", "-H", "-o", "name", "-t", "all", name]
        result = await run_command(argv, timeout=self.timeout, check=False)
        if result.returncode == 0:
            return True
        if "dataset does not exist" in result.stderr:
            return False
        raise CommandFailed(result)

    async def snapshot(self, name: str) -> None:
        await self._checked("snapshot", name)

    async def clone(self, snapshot: str, target: str, properties: Mapping[str, str]) -> None:
        options = [arg for key, value in properties.items() for arg in ("-o", f"{key}={value}")]
        await self._checked("clone", *options, snapshot, target)

    async def destroy(self, name: str) -> None:
        await self._checked("destroy", name)


class ZfsLibzfsCore(Zfs):
    """ZFS through pyzfs's `libzfs_core` module (passed in, so tests can hand a fake).

    The calls are blocking ioctls, so they run in a worker thread; a call that outlives the
    timeout is reported as an error (the thread cannot be killed, but the job does not hang).
    """

    name = "libzfs_core"

    def __init__(self, lzc: ModuleType, *, timeout: float, command: str = "zfs") -> None:
        super().__init__(timeout=timeout, command=command)
        self.lzc = lzc
        self.errors = importlib.import_module(f"{lzc.__name__}.exceptions")

    async def _call(self, describe: str, function: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(function, *args), self.timeout)
        except TimeoutError:
            raise ZfsError(f"libzfs_core {describe} did not finish within {self.timeout:g}s",
                           hint="the pool may be suspended or overloaded; check `zpool status`") from None

    def _error(self, describe: str, exc: Exception) -> ZfsError:
        errors = self.errors
        detail = str(exc)
        if isinstance(exc, errors.MultipleOperationsFailure):
            detail = "; ".join(str(e) for e in exc.errors) or detail
            inner = exc.errors[0] if exc.errors else exc
        else:
            inner = exc
        if isinstance(inner, errors.SnapshotIsCloned):
            cls: type[ZfsError] = SnapshotHasClones
        elif isinstance(inner, errors.DatasetExists):
            cls = DatasetExists
        elif isinstance(inner, errors.DatasetNotFound):
            cls = DatasetNotFound
        else:
            cls = ZfsError
        return cls(f"libzfs_core {describe} failed: {detail}",
                   hint="see the ZFS error above; `zfs list -t all` shows what exists")

    async def exists(self, name: str) -> bool:
        return bool(await self._call(f"lzc_exists({name})", self.lzc.lzc_exists, name.encode()))

    async def snapshot(self, name: str) -> None:
        describe = f"lzc_snapshot({name})"
        try:
            await self._call(describe, self.lzc.lzc_snapshot, [name.encode()])
        except self.errors.ZFSError as exc:
            raise self._error(describe, exc) from exc

    async def clone(self, snapshot: str, target: str, properties: Mapping[str, str]) -> None:
        # Numeric properties travel as uint64 in the nvlist, as `zfs clone -o` would parse them.
        props = {k.encode(): int(v) if v.isdigit() else v.encode() for k, v in properties.items()}
        describe = f"lzc_clone({snapshot} -> {target})"
        try:
            await self._call(describe, self.lzc.lzc_clone, target.encode(), snapshot.encode(), props)
        except self.errors.ZFSError as exc:
            raise self._error(describe, exc) from exc

    async def destroy(self, name: str) -> None:
        if "@" in name:
            describe = f"lzc_destroy_snaps({name})"
            # lzc_destroy_snaps silently ignores a missing snapshot; the interface reports it.
            if not await self.exists(name):
                raise DatasetNotFound(f"{describe} failed: snapshot does not exist")
            call: tuple[Callable[..., Any], tuple[Any, ...]] = (
                self.lzc.lzc_destroy_snaps, ([name.encode()], False))
        else:
            describe = f"lzc_destroy({name})"
            call = (self.lzc.lzc_destroy, (name.encode(),))
        try:
            await self._call(describe, call[0], *call[1])
        except self.errors.ZFSError as exc:
            raise self._error(describe, exc) from exc


def open_zfs(choice: ZfsChoice = "auto", *, timeout: float, command: str = "zfs") -> Zfs:
    """The ZFS implementation to use: libzfs_core when it imports (or when asked), else `zfs`."""
    if choice == "command":
        return ZfsCommand(timeout=timeout, command=command)
    try:
        lzc = importlib.import_module("libzfs_core")
    except ImportError as exc:
        if choice == "libzfs_core":
            raise BackendError(f"cannot import libzfs_core (pyzfs): {exc}",
                               hint="install OpenZFS's pyzfs, or set zfs = \"command\" or \"auto\"") from exc
        return ZfsCommand(timeout=timeout, command=command)
    return ZfsLibzfsCore(lzc, timeout=timeout, command=command)
