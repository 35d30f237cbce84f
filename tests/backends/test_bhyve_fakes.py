"""The fake illumos tools model the man pages: their rules, formats and error texts."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.backends.base import RunnerBootstrap
from orchestrator.backends.cloudinit import user_data
from tests.fakes.illumos import fakeillumos
from tests.fakes.illumos.fixtures import CLONE_PARENT, ETHERSTUB, IMAGE, LINK, FakeIllumos

SNAP = f"{IMAGE}@golden"
CLONE = f"{CLONE_PARENT}/job1"
LIST_LINE = re.compile(r"^(\d+|-):[^:]+:(configured|incomplete|installed|ready|running):[^:]*:"
                       r"[0-9a-f-]*:[a-z]+:(shared|exclusive)$")


def ok(fake: FakeIllumos, *argv: str) -> str:
    result = fake.run(*argv)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(fake: FakeIllumos, *argv: str) -> str:
    result = fake.run(*argv)
    assert result.returncode != 0, f"{argv} succeeded"
    assert result.stdout == ""
    return result.stderr


def zone_file(fake: FakeIllumos, tmp_path: Path, name: str, *, extra: str = "",
              cloud_init: str | None = None) -> Path:
    attrs = [("bootdisk", CLONE)] + ([("cloud-init", cloud_init)] if cloud_init else [])
    lines = ["create -b", "set brand=bhyve", f"set zonepath={fake.zone_root / name}",
             "set ip-type=exclusive", "set autoboot=false",
             "add net", "set physical=job1_0", "end",
             "add device", f"set match=/dev/zvol/rdsk/{CLONE}", "end"]
    for attr, value in attrs:
        lines += ["add attr", f"set name={attr}", "set type=string", f'set value="{value}"', "end"]
    path = tmp_path / f"{name}.cfg"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def machine(fake: FakeIllumos, tmp_path: Path, name: str = "job1", **kwargs: str) -> None:
    """A clone, a VNIC and a configured zone, the way the backend makes them."""
    ok(fake, "zfs", "snapshot", SNAP)
    ok(fake, "zfs", "clone", SNAP, CLONE)
    ok(fake, "dladm", "create-vnic", "-l", LINK, "job1_0")
    ok(fake, "zonecfg", "-z", name, "-f", str(zone_file(fake, tmp_path, name, **kwargs)))


# -- zfs ---------------------------------------------------------------------------------------


def test_clone_needs_an_existing_snapshot(fake_illumos: FakeIllumos) -> None:
    assert fails(fake_illumos, "zfs", "clone", SNAP, CLONE) == \
        f"cannot open '{SNAP}': dataset does not exist\n"
    ok(fake_illumos, "zfs", "snapshot", SNAP)
    ok(fake_illumos, "zfs", "clone", SNAP, CLONE)
    assert fails(fake_illumos, "zfs", "clone", SNAP, CLONE) == \
        f"cannot create '{CLONE}': dataset already exists\n"
    assert "parent does not exist" in fails(fake_illumos, "zfs", "clone", SNAP, "tank/none/x")


def test_snapshot_with_clones_cannot_be_destroyed(fake_illumos: FakeIllumos) -> None:
    ok(fake_illumos, "zfs", "snapshot", SNAP)
    ok(fake_illumos, "zfs", "clone", SNAP, CLONE)
    assert fails(fake_illumos, "zfs", "destroy", SNAP) == (
        f"cannot destroy '{SNAP}': snapshot has dependent clones\n"
        "use '-R' to destroy the following datasets:\n"
        f"{CLONE}\n")
    assert "volume has children" in fails(fake_illumos, "zfs", "destroy", IMAGE)
    ok(fake_illumos, "zfs", "destroy", CLONE)
    ok(fake_illumos, "zfs", "destroy", SNAP)
    assert fails(fake_illumos, "zfs", "destroy", SNAP) == f"cannot open '{SNAP}': dataset does not exist\n"


def test_snapshot_rules(fake_illumos: FakeIllumos) -> None:
    ok(fake_illumos, "zfs", "snapshot", SNAP)
    assert "dataset already exists" in fails(fake_illumos, "zfs", "snapshot", SNAP)
    assert "cannot open 'tank/none': dataset does not exist" in \
        fails(fake_illumos, "zfs", "snapshot", "tank/none@s")


def test_dataset_names_are_checked(fake_illumos: FakeIllumos) -> None:
    assert "invalid character '!'" in fails(fake_illumos, "zfs", "create", "tank/bad!name")
    assert "name is too long" in fails(fake_illumos, "zfs", "create", "tank/" + "x" * 251)
    ok(fake_illumos, "zfs", "create", "tank/" + "x" * 250)


def test_list_and_get(fake_illumos: FakeIllumos) -> None:
    ok(fake_illumos, "zfs", "snapshot", SNAP)
    ok(fake_illumos, "zfs", "clone", "-o", "volsize=16G", SNAP, CLONE)
    assert ok(fake_illumos, "zfs", "list", "-H", "-o", "name", "-r", CLONE_PARENT) == \
        f"{CLONE_PARENT}\n{CLONE}\n"
    assert ok(fake_illumos, "zfs", "list", "-H", "-o", "name,origin", CLONE) == f"{CLONE}\t{SNAP}\n"
    assert SNAP not in ok(fake_illumos, "zfs", "list", "-H", "-o", "name", "-r", "tank")
    assert SNAP in ok(fake_illumos, "zfs", "list", "-H", "-o", "name", "-t", "all", "-r", "tank")
    assert ok(fake_illumos, "zfs", "get", "-H", "-p", "-o", "value", "volsize", CLONE) == f"{16 << 30}\n"
    assert "dataset does not exist" in fails(fake_illumos, "zfs", "list", "-H", "-o", "name", "tank/x")


def test_a_volume_used_by_a_running_zone_is_busy(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    machine(fake_illumos, tmp_path)
    ok(fake_illumos, "zoneadm", "-z", "job1", "install")
    ok(fake_illumos, "zoneadm", "-z", "job1", "boot")
    assert fails(fake_illumos, "zfs", "destroy", CLONE) == f"cannot destroy '{CLONE}': dataset is busy\n"
    assert fails(fake_illumos, "dladm", "delete-vnic", "job1_0") == "dladm: vnic deletion failed: link busy\n"
    ok(fake_illumos, "zoneadm", "-z", "job1", "halt")
    ok(fake_illumos, "zfs", "destroy", CLONE)


# -- dladm -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vnic", "vnic01", "1vnic0", "vn-ic0", "x" * 31 + "0", "vnic4294967295"])
def test_bad_link_names(fake_illumos: FakeIllumos, name: str) -> None:
    assert fails(fake_illumos, "dladm", "create-vnic", "-l", LINK, name) == \
        f"dladm: invalid link name '{name}'\n"


def test_vnic_rules(fake_illumos: FakeIllumos) -> None:
    ok(fake_illumos, "dladm", "create-vnic", "-l", LINK, "job_a_0")
    ok(fake_illumos, "dladm", "create-vnic", "-l", ETHERSTUB, "x" * 30 + "9")
    assert "object already exists" in fails(fake_illumos, "dladm", "create-vnic", "-l", LINK, "job_a_0")
    assert "invalid link name 'net7'" in fails(fake_illumos, "dladm", "create-vnic", "-l", "net7", "v0")
    assert ok(fake_illumos, "dladm", "show-vnic", "-p", "-o", "link,over") == \
        f"job_a_0:{LINK}\n{'x' * 30}9:{ETHERSTUB}\n"
    ok(fake_illumos, "dladm", "delete-vnic", "job_a_0")
    assert "object not found" in fails(fake_illumos, "dladm", "delete-vnic", "job_a_0")


# -- zonecfg / zoneadm -------------------------------------------------------------------------


def test_zone_lifecycle_order(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    assert fails(fake_illumos, "zoneadm", "-z", "job1", "install") == \
        "zoneadm: job1: No such zone configured\n"
    machine(fake_illumos, tmp_path)
    assert fails(fake_illumos, "zoneadm", "-z", "job1", "boot") == \
        "zoneadm: zone 'job1': must be installed before boot.\n"
    assert "uninstall operation is invalid for configured zones" in \
        fails(fake_illumos, "zoneadm", "-z", "job1", "uninstall", "-F")
    ok(fake_illumos, "zoneadm", "-z", "job1", "install")
    assert "install operation is invalid for installed zones" in \
        fails(fake_illumos, "zoneadm", "-z", "job1", "install")
    assert "halt operation is invalid for installed zones" in \
        fails(fake_illumos, "zoneadm", "-z", "job1", "halt")
    assert "Zone job1 is installed; delete not allowed" in \
        fails(fake_illumos, "zonecfg", "-z", "job1", "delete", "-F")
    ok(fake_illumos, "zoneadm", "-z", "job1", "boot")
    assert "uninstall operation is invalid for running zones" in \
        fails(fake_illumos, "zoneadm", "-z", "job1", "uninstall", "-F")
    ok(fake_illumos, "zoneadm", "-z", "job1", "halt")
    ok(fake_illumos, "zoneadm", "-z", "job1", "uninstall", "-F")
    assert not (fake_illumos.zone_root / "job1").exists()
    ok(fake_illumos, "zonecfg", "-z", "job1", "delete", "-F")
    assert fake_illumos.state()["zones"] == {}


def test_zoneadm_list_format(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    machine(fake_illumos, tmp_path)
    assert ok(fake_illumos, "zoneadm", "list", "-p") == "0:global:running:/::ipkg:shared\n"
    lines = ok(fake_illumos, "zoneadm", "list", "-cp").splitlines()
    assert len(lines) == 2 and all(LIST_LINE.match(line) for line in lines), lines
    zoneid, name, state, zonepath, _uuid, brand, iptype = lines[1].split(":")
    assert (zoneid, name, state, brand, iptype) == ("-", "job1", "configured", "bhyve", "exclusive")
    assert zonepath == str(fake_illumos.zone_root / "job1")
    ok(fake_illumos, "zoneadm", "-z", "job1", "install")
    ok(fake_illumos, "zoneadm", "-z", "job1", "boot")
    line = ok(fake_illumos, "zoneadm", "-z", "job1", "list", "-p").strip()
    assert LIST_LINE.match(line) and line.split(":")[2] == "running" and line.split(":")[0] != "-"
    assert len(ok(fake_illumos, "zoneadm", "list", "-p").splitlines()) == 2
    ok(fake_illumos, "zoneadm", "-z", "job1", "halt")


@pytest.mark.parametrize("name,valid", [
    ("a" * 63, True), ("a" * 64, False), ("job.1_x-y", True), ("-job", False), ("job 1", False),
    ("global", False), ("SUNWjob", False), ("0job", True),
])
def test_zone_name_limits(fake_illumos: FakeIllumos, tmp_path: Path, name: str, valid: bool) -> None:
    result = fake_illumos.run("zonecfg", "-z", name, "-f", str(zone_file(fake_illumos, tmp_path, "z")))
    assert (result.returncode == 0) == valid, result.stderr
    if not valid:
        assert "Bogus zone name" in result.stderr


@pytest.mark.parametrize("extra,message", [
    ("set frobnicate=1\n", "Unknown property 'frobnicate'"),
    ("add widget\nend\n", "Unknown resource type 'widget'"),
    ("add net\nset speed=10\nend\n", "Unknown property 'speed' for resource type 'net'"),
    ('add attr\nset name=bogus\nset type=string\nset value="1"\nend\n',
     "'bogus' is not an attribute of the bhyve brand"),
    ('add attr\nset name=ram\nset type=float\nset value="1"\nend\n', "invalid type 'float'"),
    ('add attr\nset name=bootdisk\nset type=string\nset value="x"\nend\n', "already exists"),
    ("set ip-type=shared\n", "bhyve zones require ip-type=exclusive"),
    ("set brand=frob\n", "frob: unknown brand"),
    ("add net\n", "was not ended"),
])
def test_zonecfg_rejects_what_zonecfg_and_bhyve_do_not_know(fake_illumos: FakeIllumos, tmp_path: Path,
                                                            extra: str, message: str) -> None:
    cfg = zone_file(fake_illumos, tmp_path, "job1", extra=extra)
    assert message in fails(fake_illumos, "zonecfg", "-z", "job1", "-f", str(cfg))
    assert fake_illumos.state()["zones"] == {}


def test_zonecfg_accepts_documented_bhyve_attributes(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    extra = "".join(f'add attr\nset name={a}\nset type=string\nset value="x"\nend\n'
                    for a in ("bootrom", "diskif", "netif", "vnc", "xhci", "cdrom0", "disk1",
                              "hostbridge", "uuid", "acpi", "priv.debug", "memreserve"))
    ok(fake_illumos, "zonecfg", "-z", "job1", "-f", str(zone_file(fake_illumos, tmp_path, "job1", extra=extra)))
    assert "already exists; create not allowed" in fails(
        fake_illumos, "zonecfg", "-z", "job1", "-f", str(zone_file(fake_illumos, tmp_path, "job1")))


def test_boot_checks_links_and_devices(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    ok(fake_illumos, "zfs", "snapshot", SNAP)
    ok(fake_illumos, "zonecfg", "-z", "job1", "-f", str(zone_file(fake_illumos, tmp_path, "job1")))
    ok(fake_illumos, "zoneadm", "-z", "job1", "install")
    assert "could not find link 'job1_0'" in fails(fake_illumos, "zoneadm", "-z", "job1", "boot")
    ok(fake_illumos, "dladm", "create-vnic", "-l", LINK, "job1_0")
    assert f"device '/dev/zvol/rdsk/{CLONE}' does not exist" in \
        fails(fake_illumos, "zoneadm", "-z", "job1", "boot")


def test_boot_starts_the_runner_from_cloud_init_and_halt_kills_it(fake_illumos: FakeIllumos,
                                                                    tmp_path: Path) -> None:
    bootstrap = RunnerBootstrap(orchestrator_url="127.0.0.1:9", job_id="j-1", token="tok")
    seed = tmp_path / "user-data"
    seed.write_text(user_data(bootstrap))
    machine(fake_illumos, tmp_path, cloud_init=str(seed))
    ok(fake_illumos, "zoneadm", "-z", "job1", "install")
    ok(fake_illumos, "zoneadm", "-z", "job1", "boot")
    pid = fake_illumos.state()["zones"]["job1"]["runner_pid"]
    assert fakeillumos._alive(pid)
    config = fake_illumos.state_dir / "guests" / "job1" / "runner.toml"
    assert 'token = "tok"' in config.read_text()
    log = (fake_illumos.zone_root / "job1" / "root" / "tmp" / "init.log").read_text()
    assert f"solstice-runner started (pid {pid})" in log
    ok(fake_illumos, "zoneadm", "-z", "job1", "halt")
    assert not fakeillumos._alive(pid)
    assert fake_illumos.state()["zones"]["job1"]["runner_pid"] is None


def test_injected_boot_failure(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    machine(fake_illumos, tmp_path)
    ok(fake_illumos, "zoneadm", "-z", "job1", "install")
    fake_illumos.update(boot="vm_create failed")
    assert "vm_create failed" in fails(fake_illumos, "zoneadm", "-z", "job1", "boot")
    assert fake_illumos.state()["zones"]["job1"]["state"] == "installed"
    fake_illumos.update(boot=None)
    ok(fake_illumos, "zoneadm", "-z", "job1", "boot")
    ok(fake_illumos, "zoneadm", "-z", "job1", "halt")


def test_injected_install_failure_leaves_an_incomplete_zone(fake_illumos: FakeIllumos,
                                                           tmp_path: Path) -> None:
    machine(fake_illumos, tmp_path)
    fake_illumos.update(install="no space")
    assert "install failed: no space" in fails(fake_illumos, "zoneadm", "-z", "job1", "install")
    assert ":job1:incomplete:" in ok(fake_illumos, "zoneadm", "list", "-cp")
    assert "boot operation is invalid for incomplete zones" in \
        fails(fake_illumos, "zoneadm", "-z", "job1", "boot")
    assert "delete not allowed" in fails(fake_illumos, "zonecfg", "-z", "job1", "delete", "-F")
    ok(fake_illumos, "zoneadm", "-z", "job1", "uninstall", "-F")
    ok(fake_illumos, "zonecfg", "-z", "job1", "delete", "-F")


def test_injected_hang(fake_illumos: FakeIllumos) -> None:
    fake_illumos.update(hang=["zoneadm list"])
    began = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(["zoneadm", "list", "-cp"], env=fake_illumos.env, timeout=1)
    assert time.monotonic() - began < 3
    ok(fake_illumos, "zfs", "list", "-H", "-o", "name")  # other commands unaffected


def test_fake_libzfs_core_snapshot_is_all_or_nothing(fake_illumos: FakeIllumos) -> None:
    from tests.fakes.illumos.pyzfs import libzfs_core

    with pytest.raises(libzfs_core.exceptions.SnapshotFailure) as info:
        libzfs_core.lzc_snapshot([SNAP.encode(), b"tank/none@s"])
    assert isinstance(info.value.errors[0], libzfs_core.exceptions.FilesystemNotFound)
    assert not libzfs_core.lzc_exists(SNAP.encode())
