"""The qemu backend's fast parts: real `qemu-img` overlays, the seed, the QEMU command line, the
KVM probe's fallback, teardown and leftovers.

The machine itself is a stand-in QEMU here (a script that behaves like one from the outside:
writes its pidfile and console, spawns a relay-like child, runs until killed or exits by
itself); `tests/vm/` boots the real one.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pycdlib
import pytest

from orchestrator.backends.base import BackendError, Resources, RunnerBootstrap, VMSpec
from orchestrator.backends.cloudinit import RUNNER_CONFIG_PATH
from orchestrator.backends.qemu import (
    PROBE_EXIT_STATUS,
    GuestForward,
    QemuBackend,
    QemuLabel,
    QemuLimits,
    QemuSettings,
    load_qemu_settings,
    probe_kvm,
    qemu_argv,
    split_orchestrator_url,
)
from orchestrator.backends.seed import write_seed

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img missing: run scripts/system-packages.sh")

FAKE_QEMU = textwrap.dedent("""\
    #!{python}
    # Stand-in for qemu-system-x86_64: the parts of its behaviour the backend relies on.
    import os, subprocess, sys, time
    argv = sys.argv[1:]
    opt = lambda name: argv[argv.index(name) + 1]
    with open(opt("-pidfile"), "w") as fh:
        fh.write(str(os.getpid()))
    with open(opt("-serial").removeprefix("file:"), "w") as fh:
        fh.write("fake console: booted\\n")
    print("fake qemu: started", file=sys.stderr, flush=True)
    # Like a guestfwd relay: QEMU's slirp starts each in a session of its own.
    subprocess.Popen(["sleep", "300"], start_new_session=True)
    if os.environ.get("FAKE_QEMU_EXIT"):
        print("fake qemu: guest crashed", file=sys.stderr, flush=True)
        sys.exit(int(os.environ["FAKE_QEMU_EXIT"]))
    time.sleep(300)
""")


@pytest.fixture
def base_image(tmp_path: Path) -> Path:
    image = tmp_path / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    return image


@pytest.fixture
def label(tmp_path: Path, base_image: Path) -> QemuLabel:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not really a kernel")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"not really an initrd")
    return QemuLabel(image=base_image, kernel=kernel, initrd=initrd,
                     limits=QemuLimits(vcpus=4, ram_mb=4096, disk_gb=30))


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Path:
    path = tmp_path / "fake-qemu"
    path.write_text(FAKE_QEMU.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def settings(tmp_path: Path, label: QemuLabel, fake_qemu: Path) -> QemuSettings:
    return QemuSettings(state_dir=tmp_path / "state", labels={"linux": label}, accel="tcg",
                        qemu_binary=str(fake_qemu), stop_grace_seconds=2)


@pytest.fixture
async def backend(settings: QemuSettings):
    backend = QemuBackend(settings)
    yield backend
    for name in await backend.leftovers(""):
        await backend.destroy_by_name(name)
    await backend.close()


def spec(name: str = "h1-job", **resources: int) -> VMSpec:
    return VMSpec(name=name, job_id="job", label="linux", image="linux",
                  resources=Resources(**{"vcpus": 2, "ram_mb": 1024, "disk_gb": 4, **resources}))


BOOT = RunnerBootstrap(orchestrator_url="127.0.0.1:7700", job_id="job-1", token="t0k3n")
TO_ORCHESTRATOR = GuestForward(guest_address="10.0.2.100", guest_port=7700, host="127.0.0.1",
                               port=7700)


def qemu_info(path: Path) -> dict:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def read_iso(path: Path) -> dict[str, str]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        files = {}
        for name in ("user-data", "meta-data"):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue().decode()
        files["label"] = iso.pvd.volume_identifier.decode().strip()
        return files
    finally:
        iso.close()


# -- overlays ----------------------------------------------------------------------------


async def test_provision_makes_an_overlay_on_the_golden_image(backend: QemuBackend,
                                                             base_image: Path) -> None:
    vm = await backend.provision(spec(disk_gb=4))
    info = qemu_info(Path(vm.details["overlay"]))
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(base_image)
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 4 * 1024**3  # the job's disk, grown by the guest at boot
    assert os.path.getsize(vm.details["overlay"]) < 1024**2  # O(1): no data copied
    assert qemu_info(base_image)["virtual-size"] == 64 * 1024**2  # the golden image untouched


async def test_overlay_is_never_smaller_than_the_image(backend: QemuBackend,
                                                       settings: QemuSettings, tmp_path: Path) -> None:
    big = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "6G"], check=True)
    settings.labels["linux"] = settings.labels["linux"].model_copy(update={"image": big})
    vm = await backend.provision(spec(disk_gb=1))
    assert qemu_info(Path(vm.details["overlay"]))["virtual-size"] == 6 * 1024**3


async def test_unknown_label_is_a_clear_error(backend: QemuBackend) -> None:
    with pytest.raises(BackendError, match="no qemu image is configured for runs_on 'bsd'"):
        await backend.provision(VMSpec(name="h1-x", job_id="j", label="bsd", image="bsd"))
    assert await backend.leftovers("") == []


async def test_missing_image_file_is_a_clear_error(backend: QemuBackend, base_image: Path) -> None:
    base_image.unlink()
    with pytest.raises(BackendError, match=r"the image of label 'linux', .* does not exist"):
        await backend.provision(spec())
    assert await backend.leftovers("") == []


async def test_resources_beyond_the_label_limits_are_refused(backend: QemuBackend) -> None:
    with pytest.raises(BackendError, match="ram_mb=8192 but label 'linux' allows at most 4096"):
        await backend.provision(spec(ram_mb=8192))
    assert await backend.leftovers("") == []


async def test_failed_overlay_creation_leaves_nothing(settings: QemuSettings, base_image: Path) -> None:
    base_image.write_bytes(b"this is no qcow2 image")
    backend = QemuBackend(settings)
    with pytest.raises(BackendError, match="is a raw image, not qcow2"):
        await backend.provision(spec())
    assert not (settings.state_dir / "h1-job").exists()


async def test_qemu_img_failing_is_a_clear_error_and_leaves_nothing(settings: QemuSettings,
                                                                    tmp_path: Path) -> None:
    wrapper = tmp_path / "qemu-img"
    wrapper.write_text('#!/bin/sh\nif [ "$1" = create ]; then\n'
                       '  echo "qemu-img: overlay: No space left on device" >&2; exit 1\nfi\n'
                       'exec qemu-img "$@"\n')
    wrapper.chmod(0o755)
    settings.qemu_img = str(wrapper)
    with pytest.raises(BackendError) as info:
        await QemuBackend(settings).provision(spec())
    assert "create -q -f qcow2 -b" in str(info.value)
    assert "No space left on device" in str(info.value)
    assert list(settings.state_dir.iterdir()) == []


async def test_bad_machine_names_are_refused(backend: QemuBackend) -> None:
    for name in ("../escape", "", "a" * 64, "-flag", "sp ace"):
        with pytest.raises(BackendError, match="invalid machine name"):
            await backend.provision(spec(name))


async def test_provision_twice_is_refused(backend: QemuBackend) -> None:
    await backend.provision(spec())
    with pytest.raises(BackendError, match="already exists"):
        await backend.provision(spec())


# -- seed --------------------------------------------------------------------------------


def test_seed_is_a_nocloud_iso(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    write_seed(seed, user_data="#cloud-config\nruncmd: []\n", meta_data="instance-id: i-1\n")
    files = read_iso(seed)
    assert files == {"user-data": "#cloud-config\nruncmd: []\n",
                     "meta-data": "instance-id: i-1\n", "label": "cidata"}
    if shutil.which("blkid"):  # what the guest (and cloud-init) look for
        label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(seed)],
                               capture_output=True, text=True).stdout.strip()
        kind = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", str(seed)],
                              capture_output=True, text=True).stdout.strip()
        assert (label, kind) == ("cidata", "iso9660")


async def test_start_writes_the_seed_with_the_guest_side_bootstrap(backend: QemuBackend) -> None:
    vm = await backend.provision(spec())
    await backend.start(vm, BOOT)
    seed = Path(vm.details["dir"]) / "seed.iso"
    assert Path(vm.details["dir"]).stat().st_mode & 0o077 == 0  # the token is in the seed
    files = read_iso(seed)
    assert files["meta-data"] == "instance-id: h1-job\nlocal-hostname: h1-job\n"
    user_data = files["user-data"]
    assert user_data.startswith("#cloud-config\n")
    assert RUNNER_CONFIG_PATH in user_data
    # The runner dials the forwarded address inside the guest, not the host's loopback.
    assert 'orchestrator_url = \\"10.0.2.100:7700\\"' in user_data
    assert "127.0.0.1" not in user_data
    assert 'token = \\"t0k3n\\"' in user_data
    assert vm.details["guest_orchestrator_url"] == "10.0.2.100:7700"


# -- command line ------------------------------------------------------------------------


def test_argv_boots_the_image_kernel_with_restricted_networking(label: QemuLabel, tmp_path: Path) -> None:
    argv = qemu_argv(binary="qemu-system-x86_64", name="h1-job", accel="tcg", label=label,
                     resources=Resources(vcpus=3, ram_mb=1536, disk_gb=4), directory=tmp_path,
                     forwards=[TO_ORCHESTRATOR], relay="socat")
    joined = " ".join(argv)
    def after(flag: str) -> str:
        return argv[argv.index(flag) + 1]
    assert after("-accel") == "tcg" and after("-cpu") == "max"
    assert after("-smp") == "3" and after("-m") == "1536"
    assert after("-kernel") == str(label.kernel) and after("-initrd") == str(label.initrd)
    assert after("-append") == label.append
    assert f"file={tmp_path}/overlay.qcow2,format=qcow2,if=virtio" in joined
    assert f"file={tmp_path}/seed.iso,format=raw,if=virtio,readonly=on" in joined
    assert after("-netdev") == ("user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:7700-cmd:"
                                "socat - TCP:127.0.0.1:7700")
    assert after("-serial") == f"file:{tmp_path}/console.log"
    assert after("-pidfile") == f"{tmp_path}/qemu.pid"
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_argv_uses_the_host_cpu_under_kvm_and_escapes_commas(label: QemuLabel, tmp_path: Path) -> None:
    directory = tmp_path / "odd,dir"
    argv = qemu_argv(binary="qemu", name="n", accel="kvm", label=label.model_copy(update={"initrd": None}),
                     resources=Resources(), directory=directory,
                     forwards=[TO_ORCHESTRATOR.model_copy(update={"host": "::1"}),
                               GuestForward(guest_address="10.0.2.101", guest_port=9418,
                                            host="git.example.org", port=9418)],
                     relay="socat")
    assert argv[argv.index("-cpu") + 1] == "host"
    assert "-initrd" not in argv
    assert any(a.startswith(f"file={tmp_path}/odd,,dir/overlay.qcow2,") for a in argv)
    assert argv[argv.index("-netdev") + 1] == (
        "user,id=net0,restrict=on,"
        "guestfwd=tcp:10.0.2.100:7700-cmd:socat - TCP:[::1]:7700,"
        "guestfwd=tcp:10.0.2.101:9418-cmd:socat - TCP:git.example.org:9418")


def test_argv_is_accepted_by_real_qemu(label: QemuLabel, tmp_path: Path) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 missing: run scripts/system-packages.sh")
    argv = qemu_argv(binary=qemu, name="n", accel="tcg", label=label, resources=Resources(),
                     directory=tmp_path, forwards=[TO_ORCHESTRATOR],
                     relay="socat")
    # QEMU 7.2 must accept restrict=on together with guestfwd ... -cmd: (it sets the netdev
    # up at start, so a daemonized, paused QEMU without a machine has parsed and created it).
    result = subprocess.run([qemu, "-nodefaults", "-display", "none", "-machine", "none",
                             "-netdev", argv[argv.index("-netdev") + 1], "-S", "-daemonize",
                             "-pidfile", str(tmp_path / "probe.pid")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    pid = int((tmp_path / "probe.pid").read_text())
    os.kill(pid, 9)


@pytest.mark.parametrize("url, expected", [
    ("127.0.0.1:7700", ("", "127.0.0.1", 7700)),
    ("grpcs://ci.example.org:443", ("grpcs://", "ci.example.org", 443)),
    ("[::1]:50051", ("", "::1", 50051)),
])
def test_orchestrator_url_is_split(url: str, expected: tuple[str, str, int]) -> None:
    assert split_orchestrator_url(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1", "host:port", ":7700", "h;rm -rf /:7700",
                                 "a b:1", "host:7700/path", "host:99999"])
def test_bad_orchestrator_urls_are_refused(url: str) -> None:
    with pytest.raises(BackendError, match="is not host:port"):
        split_orchestrator_url(url)


def test_settings_load_from_the_config_file(tmp_path: Path, base_image: Path) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text(textwrap.dedent(f"""\
        [orchestrator.qemu]
        state_dir = "{tmp_path}/vms"
        [orchestrator.qemu.labels.linux]
        image = "{base_image}"
        kernel = "/boot/vmlinuz"
        [[orchestrator.qemu.forwards]]
        guest_address = "10.0.2.101"
        guest_port = 9418
        host = "git.example.org"
        port = 9418
        """))
    settings = load_qemu_settings(config, environ={"SOLSTICE_ORCHESTRATOR__QEMU__ACCEL": "tcg"})
    assert settings.accel == "tcg"
    assert settings.labels["linux"].image == base_image
    assert settings.forwards == [GuestForward(guest_address="10.0.2.101", guest_port=9418,
                                              host="git.example.org", port=9418)]
    config.write_text('[orchestrator.qemu]\nstate_dir = "/x"\n[[orchestrator.qemu.forwards]]\n'
                      'guest_address = "8.8.8.8"\n'
                      'guest_port = 1\nhost = "a;b"\nport = 1\n')
    with pytest.raises(Exception, match="forwards.0.guest_address.*forwards.0.host"):
        load_qemu_settings(config, environ={})


# -- KVM detection -----------------------------------------------------------------------


def fake_probe_qemu(tmp_path: Path, body: str) -> str:
    path = tmp_path / "probe-qemu"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


async def test_kvm_probe_needs_the_guest_to_really_run(tmp_path: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert not await probe_kvm(fake_probe_qemu(tmp_path, f"exit {PROBE_EXIT_STATUS}"), timeout=5)
        return
    assert await probe_kvm(fake_probe_qemu(tmp_path, f"exit {PROBE_EXIT_STATUS}"), timeout=5)
    # QEMU refusing KVM, or KVM hanging instead of running the guest: software emulation.
    assert not await probe_kvm(fake_probe_qemu(tmp_path, "echo 'failed to initialize kvm' >&2; exit 1"),
                               timeout=5)
    assert not await probe_kvm(fake_probe_qemu(tmp_path, "sleep 30"), timeout=1)


async def test_auto_accel_probes_once_and_falls_back_to_tcg(settings: QemuSettings, tmp_path: Path) -> None:
    count = tmp_path / "probes"
    settings.qemu_binary = fake_probe_qemu(tmp_path, f"echo x >> {count}; exit 1")
    settings.accel = "auto"
    backend = QemuBackend(settings)
    assert await asyncio.gather(backend.accelerator(), backend.accelerator()) == ["tcg", "tcg"]
    assert await backend.accelerator() == "tcg"
    probes = count.read_text().count("x") if count.exists() else 0
    assert probes == (1 if os.access("/dev/kvm", os.R_OK | os.W_OK) else 0)


async def test_forced_accel_does_not_probe(settings: QemuSettings, tmp_path: Path) -> None:
    settings.qemu_binary = fake_probe_qemu(tmp_path, "exit 99")
    settings.accel = "kvm"
    assert await QemuBackend(settings).accelerator() == "kvm"


# -- lifecycle and teardown --------------------------------------------------------------


def machine_processes(state_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(state_dir) in arg for arg in cmdline):
            found.append(proc)
    return found


async def test_destroy_kills_qemu_and_its_relays_and_deletes_everything(
        backend: QemuBackend, settings: QemuSettings) -> None:
    vm = await backend.provision(spec())
    await backend.start(vm, BOOT)
    pid = int(vm.details["pid"])
    for _ in range(100):
        if (Path(vm.details["dir"]) / "qemu.pid").exists() and psutil.Process(pid).children():
            break
        await asyncio.sleep(0.05)
    relay = psutil.Process(pid).children()[0]
    assert "fake console: booted" in await backend.console_log(vm)
    await backend.destroy(vm)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not relay.is_running() or relay.status() == psutil.STATUS_ZOMBIE
    assert not settings.state_dir.joinpath(vm.name).exists()
    assert machine_processes(settings.state_dir) == []
    assert await backend.leftovers("") == []
    await backend.destroy(vm)  # idempotent


async def test_stop_then_destroy(backend: QemuBackend, settings: QemuSettings) -> None:
    vm = await backend.provision(spec())
    await backend.start(vm, BOOT)
    await backend.stop(vm)
    assert "QEMU exited" in await asyncio.wait_for(backend.wait_exit(vm), 5)
    await backend.stop(vm)
    await backend.destroy(vm)
    assert list(settings.state_dir.iterdir()) == []


async def test_wait_exit_reports_what_qemu_said(backend: QemuBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_EXIT", "1")
    vm = await backend.provision(spec())
    await backend.start(vm, BOOT)
    reason = await asyncio.wait_for(backend.wait_exit(vm), 10)
    assert reason.startswith("QEMU exited with status 1")
    assert "fake qemu: guest crashed" in reason
    assert "guest crashed" in await backend.console_log(vm)
    await backend.destroy(vm)


async def test_real_qemu_failing_to_start_is_reported(settings: QemuSettings, backend: QemuBackend) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 missing: run scripts/system-packages.sh")
    settings.qemu_binary = qemu
    vm = await backend.provision(spec())
    await backend.start(vm, BOOT)  # the "kernel" is a text file: QEMU refuses it
    reason = await asyncio.wait_for(backend.wait_exit(vm), 30)
    assert reason.startswith("QEMU exited with status 1"), reason
    assert "kernel" in reason.lower()
    await backend.destroy(vm)
    assert list(settings.state_dir.iterdir()) == []


async def test_leftovers_by_prefix_and_reaped_after_a_restart(settings: QemuSettings) -> None:
    first = QemuBackend(settings)
    mine = [await first.provision(spec("h1-a")), await first.provision(spec("h1-b"))]
    other = await first.provision(spec("h2-c"))
    await first.start(mine[0], BOOT)
    # The orchestrator restarts: a new backend owns no process handle, only what it finds.
    second = QemuBackend(settings)
    assert await second.leftovers("h1-") == ["h1-a", "h1-b"]
    for name in await second.leftovers("h1-"):
        await second.destroy_by_name(name)
    assert await second.leftovers("h1-") == []
    assert await second.leftovers("") == ["h2-c"]
    assert [p for p in machine_processes(settings.state_dir) if "h1-a" in " ".join(p.cmdline())] == []
    await second.destroy_by_name(other.name)
    await first.destroy(mine[0])  # the first backend's handle: already dead, still fine
    assert list(settings.state_dir.iterdir()) == []


async def test_a_qemu_whose_directory_vanished_is_still_a_leftover(settings: QemuSettings) -> None:
    backend = QemuBackend(settings)
    vm = await backend.provision(spec("h1-orphan"))
    await backend.start(vm, BOOT)
    for _ in range(100):
        if (Path(vm.details["dir"]) / "qemu.pid").exists():
            break
        await asyncio.sleep(0.05)
    shutil.rmtree(vm.details["dir"])
    assert await QemuBackend(settings).leftovers("h1-") == ["h1-orphan"]
    await QemuBackend(settings).destroy_by_name("h1-orphan")
    assert await backend.leftovers("") == []
    await backend.destroy(vm)


# -- prepare -----------------------------------------------------------------------------


async def test_prepare_checks_tools_and_every_label(settings: QemuSettings, label: QemuLabel,
                                                    tmp_path: Path) -> None:
    settings.labels["other"] = label.model_copy(update={"image": tmp_path / "nope.qcow2"})
    broken = tmp_path / "broken.qcow2"
    broken.write_bytes(b"not an image")
    settings.labels["third"] = label.model_copy(update={"image": broken})
    with pytest.raises(BackendError) as info:
        await QemuBackend(settings).prepare()
    message = str(info.value)
    assert "label other: the image of label 'other'" in message and "does not exist" in message
    assert f"label third: {broken} is a raw image, not qcow2" in message
    assert "label linux" not in message


async def test_prepare_names_missing_tools(settings: QemuSettings) -> None:
    settings.relay = "no-such-relay-tool"
    with pytest.raises(BackendError, match="`no-such-relay-tool` is not installed"):
        await QemuBackend(settings).prepare()


async def test_prepare_on_a_good_host_probes_the_accelerator(settings: QemuSettings) -> None:
    backend = QemuBackend(settings)
    await backend.prepare()
    assert backend.state_dir.is_dir()
    assert await backend.accelerator() == "tcg"
