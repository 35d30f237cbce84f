"""The `qemu` backend: every job in a throw-away QEMU machine on a Linux host.

Per job, under `<state_dir>/<name>/`:

- `overlay.qcow2`: a copy-on-write overlay on the label's golden image (`qemu-img create -f
  qcow2 -b BASE -F qcow2`), O(1) whatever the image's size; its virtual size is the job's disk
  and the guest grows its root file system to fit at boot;
- `seed.iso`: a NoCloud seed (`cidata`) whose user-data writes the runner bootstrap, built at
  `start` because that is when the one-time token exists;
- `console.log`: the serial console, for the job's infrastructure log; `qemu.log`: QEMU's own
  messages;
- `relay.sh`: what QEMU runs per guest connection to a forwarded address (below), with its
  lock files `relay.slot.N` and `relay.log`, the connections it refused.

The machine boots the image's kernel directly (`-kernel`/`-initrd`/`-append`), with KVM when
KVM really runs a guest here (probed once by booting a one-instruction boot sector) and
software emulation (TCG) otherwise. Networking is QEMU's user mode with `restrict=on`: the guest
reaches nothing, neither the host nor beyond, except one forwarded address
(`guest_orchestrator_address`, 10.0.2.100 by default) whose connections QEMU hands to a relay
(`socat`) dialling the orchestrator's Runner gRPC port, plus the `forwards` the operator
declares (typically the forge the runner clones from). The bootstrap the runner receives names
the guest-side address. The Admin listener is never forwarded: a forward naming its port is
refused (`refuse_admin_forwards`). QEMU starts one relay per guest connection, so the relays
are bounded: `relay.sh` takes one of `max_guest_connections` slots (a `flock` on
`relay.slot.N`) for as long as its connection lasts, and a connection finding every slot taken
is closed at once and written to `relay.log` (shown with the console and logged when the
machine is destroyed).

QEMU runs in its own session; `stop` ends it, `destroy` kills it together with the relays it
started (each in a session of its own) and deletes the directory. The reaper finds leftovers
by the host prefix both as directories and as QEMU processes whose disks live under
`state_dir`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import shutil
import signal
import tempfile
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import psutil
from pydantic import BaseModel, ConfigDict, Field

from common.config import load_config
from common.errors import ConfigError
from orchestrator.adminauth import is_loopback, split_address
from orchestrator.backends import cloudinit
from orchestrator.backends.base import VM, BackendError, Resources, RunnerBootstrap, VMBackend, VMSpec
from orchestrator.backends.commands import CommandTimedOut, run_command
from orchestrator.backends.seed import write_seed

log = logging.getLogger(__name__)

OVERLAY_FILE = "overlay.qcow2"
SEED_FILE = "seed.iso"
CONSOLE_FILE = "console.log"
QEMU_LOG_FILE = "qemu.log"
PID_FILE = "qemu.pid"
RELAY_SCRIPT = "relay.sh"
RELAY_LOG = "relay.log"
# flock's exit status when the slot is taken (chosen to differ from any socat status).
SLOT_TAKEN = 75
DEFAULT_APPEND = "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Host names and addresses only: the relay command goes through QEMU's `sh -c`.
HOST_RE = re.compile(r"^[A-Za-z0-9.:-]+$")
_GIB = 1024**3
MACHINE = "q35"
CPU = {"kvm": "host", "tcg": "max"}

# The KVM probe: a boot sector that writes 0x2a to the isa-debug-exit port, which makes QEMU
# exit with status (0x2a << 1) | 1. A QEMU that gets there really ran guest code under KVM,
# with the machine type and CPU model the jobs get (a host may run a plain `pc`/qemu64 guest
# under KVM yet abort on `-cpu host`, as nested setups that refuse some MSRs do).
_PROBE_CODE = bytes([0xB0, 0x2A, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])  # mov al,42; out 0xf4,al; hlt; jmp $-1
PROBE_BOOT_SECTOR = _PROBE_CODE + bytes(510 - len(_PROBE_CODE)) + b"\x55\xaa"
PROBE_EXIT_STATUS = (0x2A << 1) | 1


class QemuLimits(BaseModel):
    """The largest machine a label may have; a job asking for more fails with a clear error."""

    model_config = ConfigDict(extra="forbid")
    vcpus: int = Field(default=os.cpu_count() or 1, ge=1)
    ram_mb: int = Field(default=16384, ge=128)
    disk_gb: int = Field(default=200, ge=1)


class QemuLabel(BaseModel):
    """One `runs_on` label: the golden image and how to boot it."""

    model_config = ConfigDict(extra="forbid")
    image: Path  # qcow2 golden image, never written (jobs write to their overlays)
    kernel: Path
    initrd: Path | None = None
    append: str = DEFAULT_APPEND
    limits: QemuLimits = QemuLimits()


class GuestForward(BaseModel):
    """One more destination the guest may reach, declared by the operator: connections to
    `guest_address:guest_port` inside are relayed to `host:port` outside (typically the forge
    the runner clones from). Without any, the guest reaches the orchestrator and nothing else."""

    model_config = ConfigDict(extra="forbid")
    guest_address: str = Field(pattern=r"^10\.0\.2\.[0-9]{1,3}$")
    guest_port: int = Field(ge=1, le=65535)
    host: str = Field(pattern=HOST_RE.pattern)
    port: int = Field(ge=1, le=65535)

    def netdev_option(self, relay: str) -> str:
        """`guestfwd=...-cmd:RELAY`: QEMU runs the relay per connection, the socket as stdio."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        command = f"{relay} - TCP:{host}:{self.port}"
        return f"guestfwd=tcp:{self.guest_address}:{self.guest_port}-cmd:{_opt(command)}"


class QemuSettings(BaseModel):
    """The `[orchestrator.qemu]` table of the orchestrator's config file."""

    model_config = ConfigDict(extra="forbid")
    state_dir: Path  # per-job overlays, seeds and console logs
    labels: dict[str, QemuLabel] = Field(default_factory=dict)
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    qemu_binary: str = "qemu-system-x86_64"
    qemu_img: str = "qemu-img"
    relay: str = "socat"
    # Guest connections relayed at once per machine (over all forwarded addresses); more are
    # refused. The runner needs one (its gRPC channel) plus what its clones open.
    max_guest_connections: int = Field(default=32, ge=1)
    # Inside QEMU's user-mode network (10.0.2.0/24): where the guest dials the orchestrator.
    guest_orchestrator_address: str = Field(default="10.0.2.100",
                                            pattern=r"^10\.0\.2\.[0-9]{1,3}$")
    forwards: list[GuestForward] = Field(default_factory=list)
    command_timeout: float = Field(default=60.0, gt=0)
    kvm_probe_timeout: float = Field(default=20.0, gt=0)
    stop_grace_seconds: float = Field(default=5.0, ge=0)


class _OrchestratorSection(BaseModel):
    qemu: QemuSettings


def load_qemu_settings(path: str | Path | None = None,
                       environ: Mapping[str, str] | None = None) -> QemuSettings:
    """`[orchestrator.qemu]` from the config file and `SOLSTICE_ORCHESTRATOR__QEMU__*`."""
    return load_config(_OrchestratorSection, path=path, section="orchestrator", environ=environ).qemu


def refuse_admin_forwards(forwards: list[GuestForward], admin_listen: str) -> None:
    """A ConfigError if a declared forward could reach the Admin listener: a guest must have
    no path to administration, whatever the token."""
    admin_host, admin_port = split_address(admin_listen)
    wildcard = admin_host in ("", "0.0.0.0", "::")
    for forward in forwards:
        if forward.port == admin_port and (wildcard or is_loopback(forward.host)
                                           or forward.host == admin_host):
            raise ConfigError(
                f"[orchestrator.qemu] forwards relays {forward.guest_address}:"
                f"{forward.guest_port} to {forward.host}:{forward.port}, the Admin service "
                f"(admin_listen {admin_listen})", hint="job machines must not reach the Admin "
                "service: drop that forward, or move admin_listen to another port")


def _opt(value: str | os.PathLike[str]) -> str:
    """A value inside a QEMU `-opt key=value,...` list: commas are doubled."""
    return str(value).replace(",", ",,")


def relay_script(relay: str, directory: Path, max_connections: int) -> str:
    """`relay.sh`: QEMU runs it per guest connection with the relay's arguments (`- TCP:HOST:
    PORT`) and the connection as stdin/stdout. It holds one of `max_connections` slots while
    the relay runs; with none free it records the refusal in `relay.log` and closes."""
    slot = shlex.quote(str(directory / "relay.slot."))
    refused = shlex.quote(str(directory / RELAY_LOG))
    return textwrap.dedent(f"""\
        #!/bin/sh
        # Written by the qemu backend (orchestrator/backends/qemu.py); see relay_script.
        i=0
        while [ "$i" -lt {max_connections} ]; do
            i=$((i + 1))
            flock -n -E {SLOT_TAKEN} {slot}"$i" {shlex.quote(relay)} "$@"
            status=$?
            [ "$status" -eq {SLOT_TAKEN} ] || exit "$status"
        done
        printf '%s refused a guest connection (%s): {max_connections} already relayed\\n' \\
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >> {refused}
        exit 1
        """)


def write_relay_script(relay: str, directory: Path, max_connections: int) -> str:
    """Write `relay.sh` into the machine's directory; the relay command QEMU is given."""
    script = directory / RELAY_SCRIPT
    script.write_text(relay_script(relay, directory, max_connections))
    script.chmod(0o700)
    return f"/bin/sh {shlex.quote(str(script))}"


def qemu_argv(
    *, binary: str, name: str, accel: str, label: QemuLabel, resources: Resources,
    directory: Path, forwards: list[GuestForward], relay: str,
) -> list[str]:
    """The QEMU command line of one job's machine."""
    argv = [
        binary, "-name", name,
        "-machine", MACHINE, "-accel", accel, "-cpu", CPU[accel],
        "-smp", str(resources.vcpus), "-m", str(resources.ram_mb),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(label.kernel),
    ]
    if label.initrd is not None:
        argv += ["-initrd", str(label.initrd)]
    argv += [
        "-append", label.append,
        # cache=unsafe: the overlay dies with the job, so flushes to the host are wasted time.
        "-drive", f"file={_opt(directory / OVERLAY_FILE)},format=qcow2,if=virtio,cache=unsafe",
        "-drive", f"file={_opt(directory / SEED_FILE)},format=raw,if=virtio,readonly=on",
        # restrict=on: no route to the host or beyond; only the forwards below go anywhere.
        "-netdev", ",".join(["user,id=net0,restrict=on",
                             *(f.netdev_option(relay) for f in forwards)]),
        # romfile= : direct kernel boot needs no PXE option ROM.
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{directory / CONSOLE_FILE}",
        "-pidfile", str(directory / PID_FILE),
    ]
    return argv


def split_orchestrator_url(url: str) -> tuple[str, str, int]:
    """`host:port` or `scheme://host:port` as (scheme prefix, host, port)."""
    scheme = ""
    rest = url
    if "://" in url:
        scheme, rest = url.split("://", 1)
        scheme += "://"
    parts = urlsplit(f"//{rest}")
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    if port is None or not host or not HOST_RE.match(host) or parts.path not in ("", "/"):
        raise BackendError(f"orchestrator address {url!r} is not host:port",
                           hint="the orchestrator's advertised gRPC address must be host:port")
    return scheme, host, port


async def probe_kvm(qemu_binary: str, *, timeout: float) -> bool:
    """True when QEMU really runs guest code under KVM here (not just when /dev/kvm exists)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="solstice-kvm-probe-") as tmp:
        boot = Path(tmp) / "probe.img"
        boot.write_bytes(PROBE_BOOT_SECTOR)
        argv = [qemu_binary, "-accel", "kvm", "-machine", MACHINE, "-cpu", CPU["kvm"],
                "-m", "16", "-nodefaults",
                "-no-user-config", "-display", "none", "-serial", "none", "-no-reboot",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-drive", f"format=raw,if=ide,file={_opt(boot)}"]
        try:
            result = await run_command(argv, timeout=timeout, check=False)
        except CommandTimedOut:
            log.info("KVM probe: no result within %gs; using software emulation", timeout)
            return False
    if result.returncode != PROBE_EXIT_STATUS:
        said = result.stderr.strip().splitlines()
        log.info("KVM probe: QEMU exited with status %d (%s); using software emulation",
                 result.returncode, said[-1] if said else "no message")
        return False
    return True


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class QemuBackend(VMBackend):
    """Jobs in QEMU machines on overlays of golden images (see the module docstring)."""

    name = "qemu"

    def __init__(self, settings: QemuSettings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()  # absolute: it is matched in QEMU's argv
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._accel: asyncio.Task[str] | None = None
        self._base_sizes: dict[tuple[Path, float], int] = {}

    # -- helpers -------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise BackendError(f"invalid machine name {name!r}",
                               hint="names are letters, digits, '.', '_' and '-', at most 63")
        return self.state_dir / name

    def _label(self, spec: VMSpec) -> QemuLabel:
        label = self.settings.labels.get(spec.label)
        if label is None:
            known = ", ".join(sorted(self.settings.labels)) or "none"
            raise BackendError(f"no qemu image is configured for runs_on {spec.label!r} "
                               f"(configured: {known})",
                               hint="add an [orchestrator.qemu.labels.<label>] table with image, kernel and "
                                    "initrd; `images/linux/build.py --config` prints one")
        for what, path in (("image", label.image), ("kernel", label.kernel),
                           ("initrd", label.initrd)):
            if path is not None and not path.is_file():
                raise BackendError(f"the {what} of label {spec.label!r}, {path}, does not exist",
                                   hint="build it with images/linux/build.py and fix the path")
        limits, wanted = label.limits, spec.resources
        for field in ("vcpus", "ram_mb", "disk_gb"):
            if getattr(wanted, field) > getattr(limits, field):
                raise BackendError(
                    f"the job asks for {field}={getattr(wanted, field)} but label "
                    f"{spec.label!r} allows at most {getattr(limits, field)}",
                    hint="lower the job's resources or raise the label's limits")
        return label

    async def accelerator(self) -> str:
        """`kvm` or `tcg`: as configured, or probed once when `accel = "auto"`."""
        if self.settings.accel != "auto":
            return self.settings.accel
        if self._accel is None:
            self._accel = asyncio.ensure_future(self._probe_accel())
        return await asyncio.shield(self._accel)

    async def _probe_accel(self) -> str:
        works = await probe_kvm(self.settings.qemu_binary, timeout=self.settings.kvm_probe_timeout)
        accel = "kvm" if works else "tcg"
        log.info("qemu backend: using %s (KVM %s)", accel, "works" if works else "does not run guests")
        return accel

    async def _base_size(self, image: Path) -> int:
        key = (image, image.stat().st_mtime)
        if key not in self._base_sizes:
            info = await run_command([self.settings.qemu_img, "info", "--output=json", str(image)],
                                     timeout=self.settings.command_timeout)
            facts = json.loads(info.stdout)
            if facts.get("format") != "qcow2":
                raise BackendError(f"{image} is a {facts.get('format')} image, not qcow2",
                                   hint="convert it: qemu-img convert -O qcow2 IMAGE NEW.qcow2")
            self._base_sizes[key] = int(facts["virtual-size"])
        return self._base_sizes[key]

    # -- VMBackend -----------------------------------------------------------------------

    async def prepare(self) -> None:
        """Check the host before the first job, naming every problem at once; probe KVM now
        rather than in the first job."""
        settings = self.settings
        problems = [f"`{tool}` is not installed" for tool in
                    (settings.qemu_binary, settings.qemu_img, settings.relay, "flock")
                    if shutil.which(tool) is None]
        if not problems:
            for name, label in sorted(settings.labels.items()):
                try:
                    self._label(VMSpec(name="prepare", job_id="", label=name, image=name,
                                       resources=Resources(vcpus=1, ram_mb=128, disk_gb=1)))
                    await self._base_size(label.image)
                except BackendError as exc:
                    problems.append(f"label {name}: {exc.message}")
        if problems:
            raise BackendError("the qemu backend is not ready: " + "; ".join(problems),
                               hint="run scripts/system-packages.sh; build images with "
                                    "images/linux/build.py and fix [orchestrator.qemu.labels.*]")
        await asyncio.to_thread(self.state_dir.mkdir, parents=True, exist_ok=True)
        await self.accelerator()

    async def provision(self, spec: VMSpec) -> VM:
        directory = self._dir(spec.name)
        label = self._label(spec)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            raise BackendError(f"{directory} already exists",
                               hint="a leftover of an earlier attempt; the reaper removes it") from None
        try:
            size = max(spec.resources.disk_gb * _GIB, await self._base_size(label.image))
            await run_command([self.settings.qemu_img, "create", "-q", "-f", "qcow2",
                               "-b", str(label.image), "-F", "qcow2",
                               str(directory / OVERLAY_FILE), str(size)],
                              timeout=self.settings.command_timeout)
        except BaseException:
            await asyncio.shield(self.destroy_by_name(spec.name))
            raise
        return VM(name=spec.name, backend=self.name, spec=spec,
                  details={"dir": str(directory), "overlay": str(directory / OVERLAY_FILE),
                           "console": str(directory / CONSOLE_FILE), "image": str(label.image)})

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        directory = self._dir(vm.name)
        label = self._label(vm.spec)
        scheme, host, port = split_orchestrator_url(bootstrap.orchestrator_url)
        guest_address = self.settings.guest_orchestrator_address
        forwards = [GuestForward(guest_address=guest_address, guest_port=port, host=host,
                                 port=port), *self.settings.forwards]
        missing = [t for t in (self.settings.relay, "flock") if shutil.which(t) is None]
        if missing:
            raise BackendError(f"`{'`, `'.join(missing)}` not installed",
                               hint="the qemu backend relays the guest's connections with "
                                    "them; run scripts/system-packages.sh")
        guest = RunnerBootstrap(
            orchestrator_url=f"{scheme}{guest_address}:{port}",
            job_id=bootstrap.job_id, token=bootstrap.token)
        seed = directory / SEED_FILE
        await asyncio.to_thread(write_seed, seed, user_data=cloudinit.user_data(guest),
                                meta_data=cloudinit.meta_data(vm.name))
        relay = await asyncio.to_thread(write_relay_script, self.settings.relay, directory,
                                        self.settings.max_guest_connections)
        accel = await self.accelerator()
        argv = qemu_argv(binary=self.settings.qemu_binary, name=vm.name, accel=accel,
                         label=label, resources=vm.spec.resources, directory=directory,
                         forwards=forwards, relay=relay)
        with open(directory / QEMU_LOG_FILE, "ab") as qemu_log:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log,
                    start_new_session=True)
            except OSError as exc:
                raise BackendError(f"cannot run {self.settings.qemu_binary}: {exc.strerror or exc}",
                                   hint="run scripts/system-packages.sh (qemu-system-x86)") from exc
        self._procs[vm.name] = proc
        vm.details.update(pid=str(proc.pid), accel=accel,
                          guest_orchestrator_url=guest.orchestrator_url)
        log.info("qemu backend: %s started (pid %d, %s)", vm.name, proc.pid, accel)

    async def wait_exit(self, vm: VM) -> str:
        proc = self._procs.get(vm.name)
        if proc is None:
            return await super().wait_exit(vm)
        code = await proc.wait()
        said = self._qemu_messages(vm.name).strip()
        reason = "the machine powered off" if code == 0 else f"QEMU exited with status {code}"
        return f"{reason}: {said}" if said else reason

    async def stop(self, vm: VM) -> None:
        proc = self._procs.get(vm.name)
        if proc is None or proc.returncode is not None:
            return
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.settings.stop_grace_seconds)
        except TimeoutError:
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def destroy(self, vm: VM) -> None:
        refused = self._read(vm.name, RELAY_LOG).splitlines()
        if refused:
            log.warning("qemu backend: %s had %d guest connection(s) refused (more than %d at "
                        "once); last: %s", vm.name, len(refused),
                        self.settings.max_guest_connections, refused[-1])
        # By name first: it finds QEMU's relays (QEMU starts each in a session of its own)
        # while QEMU still is their parent.
        await self.destroy_by_name(vm.name)
        proc = self._procs.pop(vm.name, None)
        if proc is not None:
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def leftovers(self, prefix: str) -> list[str]:
        names: set[str] = set()
        if self.state_dir.is_dir():
            names.update(p.name for p in self.state_dir.iterdir()
                         if p.is_dir() and p.name.startswith(prefix))
        names.update(n for n in await asyncio.to_thread(self._running_machines)
                     if n.startswith(prefix))
        return sorted(names)

    async def destroy_by_name(self, name: str) -> None:
        directory = self._dir(name)
        await asyncio.to_thread(self._kill_machine, name)
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        if directory.exists():
            raise BackendError(f"could not remove {directory}")

    async def console_log(self, vm: VM) -> str:
        try:
            console = (self._dir(vm.name) / CONSOLE_FILE).read_text(errors="replace")
        except FileNotFoundError:
            console = ""
        said = self._qemu_messages(vm.name)
        refused = self._read(vm.name, RELAY_LOG)
        return (console + (f"\n--- qemu ---\n{said}" if said.strip() else "")
                + (f"\n--- relay ---\n{refused}" if refused.strip() else ""))

    # -- processes -----------------------------------------------------------------------

    def _qemu_messages(self, name: str) -> str:
        return self._read(name, QEMU_LOG_FILE)

    def _read(self, name: str, file: str) -> str:
        try:
            return (self._dir(name) / file).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _machine_of(self, proc: psutil.Process) -> str | None:
        """The machine name of a QEMU process whose disks live under our state_dir."""
        cmdline = proc.cmdline()
        if "-name" not in cmdline[:-1]:
            return None
        root = str(self.state_dir) + os.sep
        if not any(root in arg for arg in cmdline):
            return None
        return cmdline[cmdline.index("-name") + 1]

    def _running_machines(self) -> list[str]:
        names = []
        for proc in psutil.process_iter(["pid"]):
            try:
                name = self._machine_of(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if name is not None:
                names.append(name)
        return names

    def _kill_machine(self, name: str) -> None:
        """SIGKILL every QEMU of machine `name`, found by its command line, and its children
        (the guest's relays, each in a session of its own)."""
        victims = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if self._machine_of(proc) == name:
                    victims.append(proc)
                    victims.extend(proc.children(recursive=True))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for proc in victims:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=5)
