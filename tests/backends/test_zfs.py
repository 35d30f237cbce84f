"""The ZFS layer: the `zfs` command path and the libzfs_core path obey the same rules.

Both run against the same fake state (the fake `zfs` executable and the fake pyzfs module share
`fakeillumos`), so every test runs once per path.
"""
from __future__ import annotations

import sys
import time
from types import ModuleType

import pytest

from orchestrator.backends.base import BackendError
from orchestrator.backends.commands import CommandTimedOut
from orchestrator.backends.zfs import (
    DatasetExists,
    DatasetNotFound,
    SnapshotHasClones,
    Zfs,
    ZfsCommand,
    ZfsError,
    ZfsLibzfsCore,
    open_zfs,
)
from tests.fakes.illumos.fixtures import CLONE_PARENT, IMAGE, IMAGE_SIZE, FakeIllumos

SNAP = f"{IMAGE}@golden"


@pytest.fixture(params=["command", "libzfs_core"])
def zfs(request: pytest.FixtureRequest, fake_illumos: FakeIllumos) -> Zfs:
    if request.param == "command":
        return ZfsCommand(timeout=10)
    lzc = request.getfixturevalue("fake_libzfs_core")
    return ZfsLibzfsCore(lzc, timeout=10)


async def test_snapshot_clone_destroy(zfs: Zfs, fake_illumos: FakeIllumos) -> None:
    assert not await zfs.exists(SNAP)
    await zfs.snapshot(SNAP)
    assert await zfs.exists(SNAP)
    await zfs.clone(SNAP, f"{CLONE_PARENT}/job1", {"volsize": str(20 << 30)})
    entry = fake_illumos.state()["datasets"][f"{CLONE_PARENT}/job1"]
    assert entry["type"] == "volume"
    assert entry["origin"] == SNAP
    assert entry["props"]["volsize"] == str(20 << 30)
    assert await zfs.volsize(f"{CLONE_PARENT}/job1") == 20 << 30
    assert await zfs.list_datasets(CLONE_PARENT) == [CLONE_PARENT, f"{CLONE_PARENT}/job1"]
    await zfs.destroy(f"{CLONE_PARENT}/job1")
    assert not await zfs.exists(f"{CLONE_PARENT}/job1")
    await zfs.destroy(SNAP)
    assert not await zfs.exists(SNAP)


async def test_clone_needs_existing_snapshot(zfs: Zfs) -> None:
    with pytest.raises(DatasetNotFound):
        await zfs.clone(SNAP, f"{CLONE_PARENT}/job1", {})
    assert not await zfs.exists(f"{CLONE_PARENT}/job1")


async def test_clone_onto_existing_dataset(zfs: Zfs) -> None:
    await zfs.snapshot(SNAP)
    await zfs.clone(SNAP, f"{CLONE_PARENT}/job1", {})
    with pytest.raises(DatasetExists):
        await zfs.clone(SNAP, f"{CLONE_PARENT}/job1", {})


async def test_snapshot_twice_is_dataset_exists(zfs: Zfs) -> None:
    await zfs.snapshot(SNAP)
    with pytest.raises(DatasetExists):
        await zfs.snapshot(SNAP)


async def test_snapshot_with_clones_cannot_be_destroyed(zfs: Zfs) -> None:
    await zfs.snapshot(SNAP)
    await zfs.clone(SNAP, f"{CLONE_PARENT}/job1", {})
    with pytest.raises(SnapshotHasClones) as info:
        await zfs.destroy(SNAP)
    assert SNAP in str(info.value)
    assert await zfs.exists(SNAP)


async def test_destroy_missing_is_not_found(zfs: Zfs) -> None:
    with pytest.raises(DatasetNotFound):
        await zfs.destroy(f"{CLONE_PARENT}/nothing")
    with pytest.raises(DatasetNotFound):
        await zfs.destroy(f"{IMAGE}@nothing")


async def test_volume_with_snapshot_cannot_be_destroyed(zfs: Zfs) -> None:
    await zfs.snapshot(SNAP)
    with pytest.raises(ZfsError):
        await zfs.destroy(IMAGE)
    assert await zfs.exists(IMAGE)


async def test_invalid_volsize_is_refused(zfs: Zfs) -> None:
    await zfs.snapshot(SNAP)
    with pytest.raises(ZfsError) as info:
        await zfs.clone(SNAP, f"{CLONE_PARENT}/job1", {"volsize": "1000"})
    assert not isinstance(info.value, (DatasetExists, DatasetNotFound))
    assert not await zfs.exists(f"{CLONE_PARENT}/job1")


async def test_volsize_of_image_and_filesystem(zfs: Zfs) -> None:
    assert await zfs.volsize(IMAGE) == IMAGE_SIZE
    with pytest.raises(ZfsError, match="not a ZFS volume"):
        await zfs.volsize(CLONE_PARENT)
    with pytest.raises(DatasetNotFound):
        await zfs.volsize("tank/nothing")


async def test_list_missing_parent_is_empty(zfs: Zfs) -> None:
    assert await zfs.list_datasets("tank/nothing") == []


async def test_command_errors_keep_the_tools_message(fake_illumos: FakeIllumos) -> None:
    zfs = ZfsCommand(timeout=10)
    with pytest.raises(DatasetNotFound) as info:
        await zfs.clone(SNAP, f"{CLONE_PARENT}/job1", {})
    assert f"cannot open '{SNAP}': dataset does not exist" in str(info.value)
    assert "zfs clone" in str(info.value)


async def test_lzc_errors_name_the_call(fake_libzfs_core: ModuleType) -> None:
    zfs = ZfsLibzfsCore(fake_libzfs_core, timeout=10)
    await zfs.snapshot(SNAP)
    await zfs.clone(SNAP, f"{CLONE_PARENT}/job1", {})
    with pytest.raises(SnapshotHasClones) as info:
        await zfs.destroy(SNAP)
    assert "lzc_destroy_snaps" in str(info.value)
    assert "Snapshot is cloned" in str(info.value)


async def test_lzc_requires_bytes(fake_libzfs_core: ModuleType) -> None:
    # The fake is as strict as cffi: the implementation must pass bytes.
    with pytest.raises(TypeError):
        fake_libzfs_core.lzc_exists(IMAGE)
    assert fake_libzfs_core.lzc_exists(IMAGE.encode())


async def test_command_timeout_is_an_error_not_a_hang(fake_illumos: FakeIllumos) -> None:
    fake_illumos.update(hang=["zfs snapshot"])
    began = time.monotonic()
    with pytest.raises(CommandTimedOut) as info:
        await ZfsCommand(timeout=1).snapshot(SNAP)
    assert time.monotonic() - began < 5
    assert "zfs snapshot" in str(info.value)


async def test_lzc_timeout_is_an_error_not_a_hang(fake_libzfs_core: ModuleType,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_libzfs_core, "lzc_snapshot", lambda snaps, props=None: time.sleep(1.5))
    with pytest.raises(ZfsError, match="did not finish within 0.3s"):
        await ZfsLibzfsCore(fake_libzfs_core, timeout=0.3).snapshot(SNAP)


def test_open_zfs_prefers_libzfs_core(fake_libzfs_core: ModuleType) -> None:
    assert isinstance(open_zfs("auto", timeout=5), ZfsLibzfsCore)
    assert isinstance(open_zfs("command", timeout=5), ZfsCommand)


def test_open_zfs_falls_back_to_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "libzfs_core", None)  # makes the import fail
    assert isinstance(open_zfs("auto", timeout=5), ZfsCommand)
    with pytest.raises(BackendError, match="cannot import libzfs_core"):
        open_zfs("libzfs_core", timeout=5)


async def test_both_paths_share_one_world(fake_illumos: FakeIllumos,
                                          fake_libzfs_core: ModuleType) -> None:
    command, lzc = ZfsCommand(timeout=10), ZfsLibzfsCore(fake_libzfs_core, timeout=10)
    await lzc.snapshot(SNAP)
    await command.clone(SNAP, f"{CLONE_PARENT}/job1", {})
    with pytest.raises(SnapshotHasClones):
        await lzc.destroy(SNAP)
    await lzc.destroy(f"{CLONE_PARENT}/job1")
    await command.destroy(SNAP)
    assert not await lzc.exists(SNAP)
