"""The bhyve backend against the stateful fakes of zfs, zonecfg, zoneadm and dladm.

Every lifecycle ends with the fake host empty: no zone, VNIC, clone, zonepath or guest left.
"""
from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest

from common.errors import ConfigError
from orchestrator.backends.base import VM, BackendError, Resources, RunnerBootstrap, VMSpec
from orchestrator.backends.bhyve import (
    BhyveBackend,
    BhyveSettings,
    JobNames,
    LabelImage,
    load_bhyve_settings,
    parse_zone_list,
    vnic_name,
    zonecfg_script,
)
from orchestrator.backends.cloudinit import runner_toml
from orchestrator.backends.commands import CommandTimedOut
from orchestrator.backends.zfs import ZfsCommand, ZfsLibzfsCore
from tests.fakes.illumos import fakeillumos
from tests.fakes.illumos.fixtures import CLONE_PARENT, ETHERSTUB, IMAGE, IMAGE_SIZE, LINK, FakeIllumos

GIB = 1 << 30
BOOTSTRAP = RunnerBootstrap(orchestrator_url="127.0.0.1:9", job_id="job-1", token="t0ken-s3cret")


def make_settings(fake: FakeIllumos, tmp_path: Path, **overrides: object) -> BhyveSettings:
    values: dict[str, object] = {
        "clone_parent": CLONE_PARENT,
        "zone_root": str(fake.zone_root),
        "link": LINK,
        "work_dir": str(tmp_path / "work"),
        "labels": {"omnios": LabelImage(dataset=IMAGE, vcpus=2, ram_mb=2048, disk_gb=20,
                                        attrs={"bootrom": "BHYVE_RELEASE"})},
        "command_timeout_seconds": 10,
        "watch_interval_seconds": 0.1,
    }
    values.update(overrides)
    return BhyveSettings.model_validate(values)


@pytest.fixture(params=["command", "libzfs_core"])
def backend(request: pytest.FixtureRequest, fake_illumos: FakeIllumos, tmp_path: Path) -> BhyveBackend:
    settings = make_settings(fake_illumos, tmp_path, zfs=request.param)
    if request.param == "libzfs_core":
        request.getfixturevalue("fake_libzfs_core")
    return BhyveBackend(settings)


@pytest.fixture
def command_backend(fake_illumos: FakeIllumos, tmp_path: Path) -> BhyveBackend:
    """For tests where the ZFS path does not matter."""
    return BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command"))


def spec(name: str = "hosta-0001", label: str = "omnios", **kwargs: object) -> VMSpec:
    return VMSpec(name=name, job_id="job-1", label=label, image=label, **kwargs)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    return fakeillumos._alive(pid)


async def test_full_lifecycle(backend: BhyveBackend, fake_illumos: FakeIllumos) -> None:
    expected_impl = ZfsLibzfsCore if backend.settings.zfs == "libzfs_core" else ZfsCommand
    assert isinstance(backend.zfs, expected_impl)
    vm = await backend.provision(spec())
    state = fake_illumos.state()
    # The golden snapshot was missing, so it was taken; the clone hangs off it.
    assert f"{IMAGE}@golden" in state["datasets"]
    clone = state["datasets"][f"{CLONE_PARENT}/hosta-0001"]
    assert clone["origin"] == f"{IMAGE}@golden"
    assert clone["props"]["volsize"] == str(20 * GIB)
    # Addressed by DHCP (no network.addresses): protected against MAC spoofing.
    assert state["links"]["hosta_0001_0"] == {"class": "vnic", "over": LINK,
                                              "props": {"protection": ["mac-nospoof"]}}
    zone = state["zones"]["hosta-0001"]
    assert zone["state"] == "installed"
    assert zone["brand"] == "bhyve" and zone["ip-type"] == "exclusive"
    assert zone["autoboot"] == "false"
    assert zone["zonepath"] == str(fake_illumos.zone_root / "hosta-0001")
    assert zone["nets"] == [{"physical": "hosta_0001_0"}]
    assert zone["devices"] == [{"match": f"/dev/zvol/rdsk/{CLONE_PARENT}/hosta-0001"}]
    attrs = {a["name"]: a["value"] for a in zone["attrs"]}
    assert attrs["bootdisk"] == f"{CLONE_PARENT}/hosta-0001"
    assert attrs["ram"] == "2048M" and attrs["vcpus"] == "2"
    assert attrs["bootrom"] == "BHYVE_RELEASE"
    assert vm.details["zone"] == "hosta-0001" and vm.details["zfs"] == backend.zfs.name

    await backend.start(vm, BOOTSTRAP)
    user_data = Path(attrs["cloud-init"])
    assert user_data.stat().st_mode & 0o777 == 0o600
    zone = fake_illumos.state()["zones"]["hosta-0001"]
    assert zone["state"] == "running"
    pid = zone["runner_pid"]
    assert alive(pid)
    # The guest is the real runner, configured from the cloud-init user-data we wrote.
    guest_config = fake_illumos.state_dir / "guests" / "hosta-0001" / "runner.toml"
    assert guest_config.read_text() == runner_toml(BOOTSTRAP)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"SOLSTICE_RUNNER_CONFIG={guest_config}".encode() in environ
    assert "workflow_runner.main" in Path(f"/proc/{pid}/cmdline").read_text()
    assert "booting hosta-0001" in await backend.console_log(vm)

    await backend.stop(vm)
    assert fake_illumos.state()["zones"]["hosta-0001"]["state"] == "installed"
    assert not alive(pid)
    await backend.stop(vm)  # idempotent

    await backend.destroy(vm)
    fake_illumos.assert_empty()
    assert not user_data.parent.exists()
    await backend.destroy(vm)  # idempotent
    # The golden snapshot stays for the next job.
    assert f"{IMAGE}@golden" in fake_illumos.state()["datasets"]


async def test_destroy_halts_a_running_zone(command_backend: BhyveBackend,
                                            fake_illumos: FakeIllumos) -> None:
    vm = await command_backend.provision(spec())
    await command_backend.start(vm, BOOTSTRAP)
    pid = fake_illumos.state()["zones"]["hosta-0001"]["runner_pid"]
    await command_backend.destroy(vm)
    fake_illumos.assert_empty()
    assert not alive(pid)


async def test_existing_snapshot_is_reused(backend: BhyveBackend, fake_illumos: FakeIllumos) -> None:
    assert fake_illumos.run("zfs", "snapshot", f"{IMAGE}@golden").returncode == 0
    vm = await backend.provision(spec())
    assert fake_illumos.state()["datasets"][f"{CLONE_PARENT}/hosta-0001"]["origin"] == f"{IMAGE}@golden"
    await backend.destroy(vm)
    fake_illumos.assert_empty()


async def test_concurrent_provisions_share_one_snapshot(command_backend: BhyveBackend,
                                                        fake_illumos: FakeIllumos) -> None:
    vms = await asyncio.gather(*(command_backend.provision(spec(f"hosta-{i:04}")) for i in range(3)))
    assert len(fake_illumos.state()["zones"]) == 3
    await asyncio.gather(*(command_backend.destroy(vm) for vm in vms))
    fake_illumos.assert_empty()


async def test_volsize_never_shrinks_the_image(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command", labels={
        "small": LabelImage(dataset=IMAGE)}))
    vm = await backend.provision(spec(label="small", resources=Resources(disk_gb=4, vcpus=1, ram_mb=512)))
    state = fake_illumos.state()
    assert state["datasets"][f"{CLONE_PARENT}/hosta-0001"]["props"]["volsize"] == str(IMAGE_SIZE)
    attrs = {a["name"]: a["value"] for a in state["zones"]["hosta-0001"]["attrs"]}
    # Without label sizes, the job's requested resources apply.
    assert attrs["vcpus"] == "1" and attrs["ram"] == "512M"
    await backend.destroy(vm)
    fake_illumos.assert_empty()


def test_resources_job_request_wins_over_label_size() -> None:
    image = LabelImage(dataset=IMAGE, vcpus=4, ram_mb=8192)
    pick = BhyveBackend.resources_for
    # Nothing asked (the interface's defaults): the label's size, the default disk.
    assert pick(image, Resources()) == Resources(vcpus=4, ram_mb=8192, disk_gb=20)
    # The workflow asked for more CPUs and disk: it gets them; RAM stays the label's.
    assert pick(image, Resources(vcpus=8, disk_gb=40)) == Resources(vcpus=8, ram_mb=8192, disk_gb=40)
    assert pick(LabelImage(dataset=IMAGE), Resources(vcpus=1)) == Resources(vcpus=1)


async def test_vnic_over_an_etherstub(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command", link=ETHERSTUB))
    vm = await backend.provision(spec())
    assert fake_illumos.state()["links"]["hosta_0001_0"]["over"] == ETHERSTUB
    await backend.destroy(vm)
    fake_illumos.assert_empty()


async def test_unknown_label_is_refused_before_any_command(command_backend: BhyveBackend,
                                                           fake_illumos: FakeIllumos) -> None:
    with pytest.raises(BackendError, match="no bhyve image is configured for runs_on label 'linux'"):
        await command_backend.provision(spec(label="linux"))
    fake_illumos.assert_empty()


async def test_prepare_checks_the_host_and_takes_snapshots(backend: BhyveBackend,
                                                            fake_illumos: FakeIllumos) -> None:
    await backend.prepare()
    assert f"{IMAGE}@golden" in fake_illumos.state()["datasets"]
    await backend.prepare()  # idempotent


async def test_prepare_names_every_problem(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    backend = BhyveBackend(make_settings(
        fake_illumos, tmp_path, zfs="command", clone_parent="tank/none", link="net7",
        zone_root=str(tmp_path / "absent"),
        labels={"a": LabelImage(dataset="tank/images/none"), "b": LabelImage(dataset=CLONE_PARENT)}))
    with pytest.raises(BackendError) as info:
        await backend.prepare()
    message = str(info.value)
    for expected in ("clone_parent tank/none does not exist", "link net7 does not exist",
                     "is not a directory", "label a:", "dataset does not exist",
                     "label b: tank/jobs is not a ZFS volume"):
        assert expected in message
    fake_illumos.assert_empty()


# -- partial failures ------------------------------------------------------------------------


async def test_vnic_failure_removes_the_clone(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command", link="net9"))
    with pytest.raises(BackendError) as info:
        await backend.provision(spec())
    assert "dladm create-vnic -l net9 hosta_0001_0" in str(info.value)
    assert "invalid link name 'net9'" in str(info.value)
    fake_illumos.assert_empty()


async def test_install_failure_removes_zone_vnic_and_clone(fake_illumos: FakeIllumos,
                                                           tmp_path: Path) -> None:
    # The zonepath's parent does not exist, so zoneadm install fails.
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command",
                                         zone_root=str(tmp_path / "missing")))
    with pytest.raises(BackendError) as info:
        await backend.provision(spec())
    assert "zoneadm -z hosta-0001 install" in str(info.value)
    assert "does not exist" in str(info.value)
    fake_illumos.assert_empty()


async def test_incomplete_install_is_cleaned_up(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    fake_illumos.update(install="cannot create zonepath dataset: out of space")
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command"))
    with pytest.raises(BackendError, match="out of space"):
        await backend.provision(spec())
    fake_illumos.assert_empty()


async def test_install_timeout_is_an_error_and_cleaned_up(fake_illumos: FakeIllumos,
                                                          tmp_path: Path) -> None:
    fake_illumos.update(hang=["zoneadm install"])
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command",
                                         install_timeout_seconds=1))
    began = time.monotonic()
    with pytest.raises(CommandTimedOut, match="zoneadm -z hosta-0001 install"):
        await backend.provision(spec())
    assert time.monotonic() - began < 10
    fake_illumos.assert_empty()


async def test_clone_of_a_same_named_leftover_is_not_destroyed(fake_illumos: FakeIllumos,
                                                               tmp_path: Path) -> None:
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command"))
    first = await backend.provision(spec())
    with pytest.raises(BackendError, match="dataset already exists"):
        await backend.provision(spec())
    # The failed second provision made nothing, so it removed nothing of the first.
    assert fake_illumos.state()["zones"]["hosta-0001"]["state"] == "installed"
    await backend.destroy(first)
    fake_illumos.assert_empty()


async def test_boot_failure_is_an_error_then_destroy_cleans(command_backend: BhyveBackend,
                                                            fake_illumos: FakeIllumos) -> None:
    fake_illumos.update(boot="vm_create failed: Not enough memory")
    vm = await command_backend.provision(spec())
    with pytest.raises(BackendError) as info:
        await command_backend.start(vm, BOOTSTRAP)
    assert "zoneadm -z hosta-0001 boot" in str(info.value)
    assert "Not enough memory" in str(info.value)
    assert "Not enough memory" in await command_backend.console_log(vm)
    await command_backend.destroy(vm)
    fake_illumos.assert_empty()


async def test_hung_zoneadm_list_times_out(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command",
                                         command_timeout_seconds=1))
    vm = await backend.provision(spec())
    fake_illumos.update(hang=["zoneadm list"])
    began = time.monotonic()
    with pytest.raises(CommandTimedOut, match="zoneadm list -cp"):
        await backend.stop(vm)
    assert time.monotonic() - began < 5
    fake_illumos.update(hang=None)
    await backend.destroy(vm)
    fake_illumos.assert_empty()


# -- names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "-lead", "has space", "slash/in", "global", "SUNWzone",
                                  "x" * 64, "semi;colon"])
async def test_bad_names_are_refused_before_any_command(command_backend: BhyveBackend,
                                                        fake_illumos: FakeIllumos, name: str) -> None:
    with pytest.raises(BackendError, match="cannot name a bhyve zone"):
        await command_backend.provision(spec(name))
    with pytest.raises(BackendError, match="cannot name a bhyve zone"):
        await command_backend.destroy_by_name(name)
    fake_illumos.assert_empty()


async def test_longest_zone_name_works(command_backend: BhyveBackend,
                                      fake_illumos: FakeIllumos) -> None:
    name = "h" * 50 + "-0123456789ab"
    assert len(name) == 63
    vm = await command_backend.provision(spec(name))
    vnic = vm.details["vnic"]
    assert len(vnic) <= 31
    fakeillumos.check_link_name(vnic)
    await command_backend.destroy(vm)
    fake_illumos.assert_empty()


@pytest.mark.parametrize("name", ["a", "hosta-0001", "1st-job", "host.example-00a1", "A_b-c.d",
                                  "x" * 63, "0" * 63, "prefix-with-many-parts-and-digits-99"])
def test_vnic_names_are_valid_for_dladm(name: str) -> None:
    vnic = vnic_name(name)
    fakeillumos.check_link_name(vnic)  # raises on an invalid name
    assert vnic == vnic_name(name)


def test_vnic_names_stay_distinct_when_hashed() -> None:
    names = [f"{'h' * 40}-{i:020}" for i in range(200)]
    vnics = {vnic_name(n) for n in names}
    assert len(vnics) == len(names)


# -- the zonecfg command file -----------------------------------------------------------------


def _script_attrs(script: str) -> dict[str, str]:
    blocks = re.findall(r"add attr\nset name=(\S+)\nset type=(\S+)\nset value=\"([^\"]*)\"\nend", script)
    assert script.count("add attr") == len(blocks)
    assert all(t == "string" for _, t, _ in blocks)
    return {n: v for n, _, v in blocks}


def test_zonecfg_attributes_are_all_documented() -> None:
    names = JobNames(zone="hosta-1", dataset="tank/jobs/hosta-1", vnic="hosta_1_0",
                     zonepath="/zones/hosta-1", work=Path("/var/lib/solstice/bhyve/hosta-1"))
    extra = {"bootrom": "BHYVE_RELEASE", "diskif": "virtio", "netif": "virtio", "xhci": "off",
             "cdrom0": "/iso/x.iso", "hostbridge": "q35", "memreserve": "on", "rng": "on"}
    script = zonecfg_script(names, extra_attrs=extra, vcpus=4, ram_mb=8192)
    attrs = _script_attrs(script)
    # fakeillumos.BHYVE_ATTRIBUTES is the bhyve(7) list the fake enforces (independent of the
    # backend's own copy): an attribute outside it is a bug.
    unknown = [a for a in attrs if not fakeillumos.bhyve_attribute_known(a)]
    assert unknown == []
    assert attrs["bootdisk"] == "tank/jobs/hosta-1"
    assert attrs["ram"] == "8192M" and attrs["vcpus"] == "4"
    assert attrs["cloud-init"] == "/var/lib/solstice/bhyve/hosta-1/user-data"
    assert script.startswith("create -b\nset brand=bhyve\n")
    assert "set ip-type=exclusive" in script and "set autoboot=false" in script
    assert 'set match="/dev/zvol/rdsk/tank/jobs/hosta-1"' in script
    assert "add net\nset physical=hosta_1_0\nend" in script


def test_label_attributes_are_checked() -> None:
    with pytest.raises(ValueError, match="not a bhyve zone attribute"):
        LabelImage(dataset=IMAGE, attrs={"frobnicate": "1"})
    with pytest.raises(ValueError, match="set by the backend"):
        LabelImage(dataset=IMAGE, attrs={"ram": "64G"})
    with pytest.raises(ValueError, match="quotes"):
        LabelImage(dataset=IMAGE, attrs={"extra": 'a"b'})
    assert LabelImage(dataset=IMAGE, attrs={"disk1": "tank/d1", "ppt0": "on"}).attrs


def test_parse_zone_list() -> None:
    out = ("0:global:running:/::ipkg:shared\n"
           "3:job-1:running:/zones/job-1:7c2e:bhyve:exclusive\n"
           "-:job-2:installed:/zones/a\\:b:8d3f:bhyve:exclusive\n")
    assert parse_zone_list(out) == {"job-1": "running", "job-2": "installed"}


# -- leftovers and the reaper -------------------------------------------------------------------


async def test_leftovers_and_reaping_after_a_crash(backend: BhyveBackend,
                                                   fake_illumos: FakeIllumos) -> None:
    mine = [await backend.provision(spec(f"hosta-{i:04}")) for i in range(2)]
    other = await backend.provision(spec("hostb-0001"))
    await backend.start(mine[0], BOOTSTRAP)
    # The orchestrator "crashes": the VM objects are lost; only the prefix is known.
    assert await backend.leftovers("hosta-") == ["hosta-0000", "hosta-0001"]
    for name in await backend.leftovers("hosta-"):
        await backend.destroy_by_name(name)
    assert await backend.leftovers("hosta-") == []
    assert await backend.leftovers("hostb-") == ["hostb-0001"]
    await backend.destroy(other)
    fake_illumos.assert_empty()


async def test_reaper_finds_a_half_provisioned_job(command_backend: BhyveBackend,
                                                   fake_illumos: FakeIllumos) -> None:
    # A crash between `dladm create-vnic` and `zonecfg`: a clone and a VNIC, no zone.
    assert fake_illumos.run("zfs", "snapshot", f"{IMAGE}@golden").returncode == 0
    assert fake_illumos.run("zfs", "clone", f"{IMAGE}@golden", f"{CLONE_PARENT}/hosta-0007").returncode == 0
    assert fake_illumos.run("dladm", "create-vnic", "-l", LINK, "hosta_0007_0").returncode == 0
    assert await command_backend.leftovers("hosta-") == ["hosta-0007"]
    await command_backend.destroy_by_name("hosta-0007")
    fake_illumos.assert_empty()


async def test_reaper_finds_a_zone_stuck_configured(command_backend: BhyveBackend,
                                                    fake_illumos: FakeIllumos) -> None:
    vm = await command_backend.provision(spec("hosta-0003"))
    assert fake_illumos.run("zoneadm", "-z", "hosta-0003", "uninstall", "-F").returncode == 0
    assert await command_backend.leftovers("hosta-") == ["hosta-0003"]
    await command_backend.destroy_by_name(vm.name)
    fake_illumos.assert_empty()


async def test_wait_exit_reports_a_zone_that_stopped(command_backend: BhyveBackend,
                                                     fake_illumos: FakeIllumos) -> None:
    vm = await command_backend.provision(spec())
    await command_backend.start(vm, BOOTSTRAP)
    watcher = asyncio.create_task(command_backend.wait_exit(vm))
    await asyncio.sleep(0.3)
    assert not watcher.done()
    # The guest powers off: the zone halts by itself.
    assert fake_illumos.run("zoneadm", "-z", "hosta-0001", "halt").returncode == 0
    assert await asyncio.wait_for(watcher, 5) == "zone hosta-0001 is installed"
    await command_backend.destroy(vm)
    fake_illumos.assert_empty()


async def test_unwritable_work_dir_is_a_backend_error(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command", work_dir=str(blocker)))
    with pytest.raises(BackendError, match="cannot write"):
        await backend.provision(spec())
    fake_illumos.assert_empty()


async def test_watchers_share_one_zone_listing(command_backend: BhyveBackend,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    listings = 0

    async def zone_states() -> dict[str, str]:
        nonlocal listings
        listings += 1
        await asyncio.sleep(0.05)
        return {f"hosta-{i:04}": "running" for i in range(5)}

    monkeypatch.setattr(command_backend, "zone_states", zone_states)
    vms = [VM(name=f"hosta-{i:04}", backend="bhyve", spec=spec(f"hosta-{i:04}")) for i in range(5)]
    watchers = [asyncio.create_task(command_backend.wait_exit(vm)) for vm in vms]
    await asyncio.sleep(1.05)  # about ten watch intervals of 0.1 s
    for watcher in watchers:
        assert not watcher.done()
        watcher.cancel()
    assert 3 <= listings <= 12  # one per interval for all five, not five per interval


async def test_console_log_tail_is_bounded(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command", console_log_bytes=1024))
    vm = VM(name="hosta-0001", backend="bhyve", spec=spec())
    assert await backend.console_log(vm) == ""
    log = fake_illumos.zone_root / "hosta-0001" / "root" / "tmp" / "init.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    text = await backend.console_log(vm)
    assert "earlier bytes" in text and text.endswith("line 999\n")
    assert len(text) < 1200
    os.remove(log)


# -- configuration -------------------------------------------------------------------------------


def test_settings_from_config_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "solstice.toml"
    path.write_text(
        '[orchestrator]\ncapacity = 4\n\n'
        '[orchestrator.bhyve]\nclone_parent = "rpool/solstice/jobs"\nlink = "solstice0"\n\n'
        '[orchestrator.bhyve.labels.omnios]\ndataset = "rpool/images/omnios"\nram_mb = 4096\n'
        'attrs = { bootrom = "BHYVE_RELEASE" }\n')
    settings = load_bhyve_settings(path, environ={"SOLSTICE_ORCHESTRATOR__BHYVE__ZONE_ROOT": "/z"})
    assert settings.clone_parent == "rpool/solstice/jobs"
    assert settings.zone_root == "/z"
    assert settings.labels["omnios"].ram_mb == 4096
    assert settings.labels["omnios"].snapshot == "golden"


@pytest.mark.parametrize("bad", [
    'clone_parent = "rpool/jobs"\nlink = "bad-link"',
    'clone_parent = "rpool/jobs"\nlink = "net01"',
    'clone_parent = "/rpool/jobs"\nlink = "net0"',
    'clone_parent = "rpool/jobs"\nlink = "net0"\nzone_root = "relative"',
    'clone_parent = "rpool/jobs"\nlink = "net0"\nunknown_key = 1',
    'link = "net0"',
])
def test_bad_settings_are_config_errors(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "solstice.toml"
    path.write_text(f"[orchestrator.bhyve]\n{bad}\n")
    with pytest.raises(ConfigError):
        load_bhyve_settings(path, environ={})
