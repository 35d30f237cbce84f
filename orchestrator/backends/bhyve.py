"""The `bhyve` backend (illumos): every job in a bhyve branded zone booted from a ZFS clone.

Per job, named after `VMSpec.name` (which carries the host prefix):

- provision: snapshot the label's golden zvol if the configured snapshot is missing; clone it
  to `<clone_parent>/<name>` (O(1)) with `volsize` from the job's disk size (never below the
  image's own size); `dladm create-vnic` over the configured link or etherstub; `zonecfg` a
  zone `<name>` (brand bhyve, exclusive IP, the VNIC, the zvol as device and `bootdisk`, `ram`,
  `vcpus`, and `cloud-init` naming the job's user-data file); `zoneadm install`.
- start: write the cloud-init user-data carrying the runner bootstrap (mode 0600), then
  `zoneadm boot`; the brand hands it to the guest on a NoCloud disk and the runner dials out.
- stop: `zoneadm halt` if the zone runs.
- destroy: halt, `zoneadm uninstall -F`, `zonecfg delete -F`, `dladm delete-vnic`,
  `zfs destroy` of the clone, removal of the job's files. Each step looks first whether its
  object exists, so destroy is idempotent and safe after a partial provision or a crash.

At start, `prepare` checks the host (clone parent, link, zone root, every label's zvol) and
takes missing golden snapshots; `wait_exit` notices a zone that halted by itself (guest power
off, bhyve exit), polling `zoneadm list` once per interval for all running jobs.

Provision creates the clone first and destroy removes it last, so a job's clone outlives its
zone and VNIC: the reaper finds every leftover through `zoneadm list -cp` and
`zfs list -H -o name -r <clone_parent>` alone.

Every command runs with a timeout and its stderr is kept (`commands.run_command`); a failure is
a `BackendError` naming the command and what it said, which ends the job `error`.

Configuration, `[orchestrator.bhyve]` (see `BhyveSettings`):

    [orchestrator.bhyve]
    clone_parent = "rpool/solstice/jobs"
    zone_root = "/zones/solstice"
    link = "solstice0"                  # an etherstub (or physical link) for the VNICs
    work_dir = "/var/lib/solstice/bhyve"

    [orchestrator.bhyve.labels.omnios]  # runs_on "omnios"
    dataset = "rpool/solstice/images/omnios-r151054"
    snapshot = "golden"
    vcpus = 2
    ram_mb = 4096
    disk_gb = 20
    attrs = { bootrom = "BHYVE_RELEASE" }
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.config import load_config
from common.observability import tracer
from orchestrator.backends.base import VM, BackendError, Resources, RunnerBootstrap, VMBackend, VMSpec
from orchestrator.backends.cloudinit import user_data
from orchestrator.backends.commands import run_command
from orchestrator.backends.zfs import DatasetExists, DatasetNotFound, Zfs, ZfsChoice, open_zfs

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

GIB = 1 << 30

# bhyve(7) (OmniOS) and OmniOS zadm's bhyve schema: the custom attributes the bhyve brand
# reads. Families with an index (cdrom0, disk1, ppt0, virtfs0) are listed by their stem.
BHYVE_ATTRIBUTES = frozenset({
    "acpi", "bootdisk", "bootnext", "bootorder", "bootrom", "cdrom", "cloud-init", "console",
    "disk", "diskif", "dns-domain", "extra", "hostbridge", "memreserve", "netif", "password",
    "priv.debug", "ram", "resolvers", "rng", "sshkey", "type", "uefivars", "uuid", "vcpus", "vga",
    "vnc", "xhci",
})
BHYVE_INDEXED_ATTRIBUTES = frozenset({"cdrom", "disk", "ppt", "virtfs"})
# Set by the backend for every job; a label may not override them.
MANAGED_ATTRIBUTES = frozenset({"bootdisk", "ram", "vcpus", "cloud-init"})

# zonecfg: ZONENAME_MAX is 64 including the NUL; names start alphanumeric, then [-_.] too.
ZONE_NAME_MAX = 63
_ZONE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# dladm(8): alphanumerics and `_`, a letter first, a number last (no leading zero), <= 31.
LINK_NAME_MAX = 31
_LINK_NAME = re.compile(r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z_])?(0|[1-9][0-9]*)")
# zfs: components of [A-Za-z0-9_.:-] (we refuse the legal but troublesome space), < 256 bytes.
_DATASET_NAME = re.compile(r"[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)*")
ZFS_NAME_MAX = 255

# zoneadm states in which the zone has a running (or half-started) virtual machine.
_HALTABLE = {"running", "ready", "shutting_down", "down"}


def bhyve_attribute_known(name: str) -> bool:
    """Whether `name` is an attribute the bhyve brand documents."""
    if name in BHYVE_ATTRIBUTES:
        return True
    stem = name.rstrip("0123456789")
    return stem != name and stem in BHYVE_INDEXED_ATTRIBUTES


def _check_dataset(value: str, what: str) -> str:
    if not _DATASET_NAME.fullmatch(value) or len(value) > ZFS_NAME_MAX:
        raise ValueError(f"{what} {value!r} is not a valid ZFS dataset name")
    return value


class LabelImage(BaseModel):
    """The golden image of one `runs_on` label and the machine size its jobs get by default."""

    model_config = ConfigDict(extra="forbid")

    dataset: str  # the golden zvol, e.g. rpool/solstice/images/omnios-r151054
    snapshot: str = Field(default="golden", pattern=r"^[A-Za-z0-9_.:-]+$")
    vcpus: int | None = Field(default=None, ge=1, le=32)
    ram_mb: int | None = Field(default=None, ge=256)
    disk_gb: int | None = Field(default=None, ge=1)
    # Further bhyve(7) attributes for this label's zones, e.g. bootrom, diskif, netif.
    attrs: dict[str, str] = Field(default_factory=dict)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        return _check_dataset(value, "dataset")

    @field_validator("attrs")
    @classmethod
    def _attrs(cls, value: dict[str, str]) -> dict[str, str]:
        for name, attr_value in value.items():
            if name in MANAGED_ATTRIBUTES:
                raise ValueError(f"attribute {name!r} is set by the backend for every job")
            if not bhyve_attribute_known(name):
                raise ValueError(f"{name!r} is not a bhyve zone attribute (see bhyve(7))")
            if '"' in attr_value or "\n" in attr_value:
                raise ValueError(f"attribute {name!r}: value may not contain quotes or newlines")
        return value


class BhyveSettings(BaseModel):
    """`[orchestrator.bhyve]`: where clones, zones and job files go, and the label images."""

    model_config = ConfigDict(extra="forbid")

    clone_parent: str  # an existing filesystem; each job's clone is <clone_parent>/<name>
    zone_root: str = "/zones/solstice"  # each job's zonepath is <zone_root>/<name>
    link: str  # physical link or etherstub the per-job VNICs are created over
    work_dir: str = "/var/lib/solstice/bhyve"  # per-job user-data and zonecfg files
    labels: dict[str, LabelImage] = Field(default_factory=dict)
    zfs: ZfsChoice = "auto"
    command_timeout_seconds: float = Field(default=60.0, gt=0)
    install_timeout_seconds: float = Field(default=300.0, gt=0)
    boot_timeout_seconds: float = Field(default=180.0, gt=0)
    halt_timeout_seconds: float = Field(default=180.0, gt=0)
    watch_interval_seconds: float = Field(default=5.0, gt=0)
    # Logs shown as the machine's console: the brand's boot log inside the zone root.
    console_logs: list[str] = Field(default_factory=lambda: ["{zonepath}/root/tmp/init.log"])
    console_log_bytes: int = Field(default=65536, ge=1024)

    @field_validator("clone_parent")
    @classmethod
    def _clone_parent(cls, value: str) -> str:
        return _check_dataset(value, "clone_parent")

    @field_validator("zone_root", "work_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must be an absolute path")
        return value.rstrip("/") or "/"

    @field_validator("link")
    @classmethod
    def _link(cls, value: str) -> str:
        match = _LINK_NAME.fullmatch(value)
        if len(value) > LINK_NAME_MAX or not match or int(match.group(1)) > 4294967294:
            raise ValueError(f"{value!r} is not a valid datalink name (dladm(8))")
        return value


class _OrchestratorSection(BaseModel):
    bhyve: BhyveSettings


def load_bhyve_settings(path: str | Path | None = None,
                        environ: Mapping[str, str] | None = None) -> BhyveSettings:
    """`[orchestrator.bhyve]` from the config file and `SOLSTICE_ORCHESTRATOR__BHYVE__*`."""
    return load_config(_OrchestratorSection, path=path, section="orchestrator", environ=environ).bhyve


@dataclass(frozen=True)
class JobNames:
    """Every host-side name of one job's machine, all derived from the VM name."""

    zone: str
    dataset: str
    vnic: str
    zonepath: str
    work: Path

    @property
    def device(self) -> str:
        return f"/dev/zvol/rdsk/{self.dataset}"

    @property
    def user_data(self) -> Path:
        return self.work / "user-data"

    @property
    def zonecfg(self) -> Path:
        return self.work / "zonecfg.cmd"


def check_vm_name(name: str) -> None:
    """Refuse a name that is not a valid zone name (it names the zone and the clone)."""
    if len(name) > ZONE_NAME_MAX or not _ZONE_NAME.fullmatch(name) or name == "global" \
            or name.startswith("SUNW"):
        raise BackendError(
            f"{name!r} cannot name a bhyve zone: zone names are at most {ZONE_NAME_MAX} characters "
            "of letters, digits, '-', '_' and '.', starting with a letter or digit "
            "('global' and 'SUNW*' are reserved)",
            hint="shorten the orchestrator's host prefix or use only those characters")


def vnic_name(name: str) -> str:
    """A dladm-valid VNIC name for machine `name`: `_` for other characters, `_0` at the end
    (a number without leading zero) and, when too long, a hash keeping it unique."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not base[0].isalpha():
        base = "v" + base
    if len(base) + 2 <= LINK_NAME_MAX:
        return base + "_0"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{base[:LINK_NAME_MAX - 11]}_{digest}_0"


def zonecfg_script(names: JobNames, *, extra_attrs: Mapping[str, str], vcpus: int,
                   ram_mb: int) -> str:
    """The `zonecfg -f` command file for a job's zone (values quoted; none contain quotes)."""
    attrs = {
        "bootdisk": names.dataset,
        "ram": f"{ram_mb}M",
        "vcpus": str(vcpus),
        "cloud-init": str(names.user_data),
        **extra_attrs,
    }
    lines = [
        "create -b",
        "set brand=bhyve",
        f'set zonepath="{names.zonepath}"',
        "set ip-type=exclusive",
        "set autoboot=false",
        "add net",
        f"set physical={names.vnic}",
        "end",
        "add device",
        f'set match="{names.device}"',
        "end",
    ]
    for attr, value in attrs.items():
        lines += ["add attr", f"set name={attr}", "set type=string", f'set value="{value}"', "end"]
    lines += ["verify", "commit"]
    return "\n".join(lines) + "\n"


def parse_zone_list(output: str) -> dict[str, str]:
    """Zone name -> state from `zoneadm list -p` lines
    (`zoneid:zonename:state:zonepath:uuid:brand:ip-type`; `:` inside a field is `\\:`)."""
    zones = {}
    for line in output.splitlines():
        fields = re.split(r"(?<!\\):", line)
        if len(fields) >= 3 and fields[1] != "global":
            zones[fields[1]] = fields[2]
    return zones


class BhyveBackend(VMBackend):
    """Jobs as bhyve branded zones on ZFS clones of per-label golden zvols (see module)."""

    name = "bhyve"

    def __init__(self, settings: BhyveSettings, *, zfs: Zfs | None = None) -> None:
        self.settings = settings
        self.zfs = zfs or open_zfs(settings.zfs, timeout=settings.command_timeout_seconds)
        self._snapshot_locks: dict[str, asyncio.Lock] = {}
        # One `zoneadm list` per watch interval serves every running job's `wait_exit`.
        self._watch_lock = asyncio.Lock()
        self._watched: tuple[float, dict[str, str]] | None = None

    @classmethod
    def from_config(cls, path: str | Path | None = None,
                    environ: Mapping[str, str] | None = None) -> BhyveBackend:
        return cls(load_bhyve_settings(path, environ))

    # -- names and config ----------------------------------------------------------------

    def names(self, name: str) -> JobNames:
        check_vm_name(name)
        dataset = f"{self.settings.clone_parent}/{name}"
        if len(dataset) > ZFS_NAME_MAX:
            raise BackendError(f"clone name {dataset!r} is longer than ZFS allows",
                               hint="shorten clone_parent or the host prefix")
        return JobNames(zone=name, dataset=dataset, vnic=vnic_name(name),
                        zonepath=f"{self.settings.zone_root}/{name}",
                        work=Path(self.settings.work_dir) / name)

    def image_for(self, spec: VMSpec) -> LabelImage:
        image = self.settings.labels.get(spec.label)
        if image is None:
            known = ", ".join(sorted(self.settings.labels)) or "none"
            raise BackendError(f"no bhyve image is configured for runs_on label {spec.label!r} "
                               f"(configured: {known})",
                               hint=f"add [orchestrator.bhyve.labels.{spec.label}] with its dataset")
        return image

    @staticmethod
    def resources_for(image: LabelImage, requested: Resources) -> Resources:
        """The job's own request where it made one, else the label's size, else the default.

        `VMSpec.resources` cannot say "unspecified": the orchestrator fills what the workflow
        left open with `Resources()`'s defaults, so a value equal to the default counts as
        unspecified and the label's configured size applies.
        """
        default = Resources()

        def pick(field: str) -> int:
            asked = getattr(requested, field)
            configured = getattr(image, field)
            return configured if asked == getattr(default, field) and configured else asked

        return Resources(vcpus=pick("vcpus"), ram_mb=pick("ram_mb"), disk_gb=pick("disk_gb"))

    # -- commands ------------------------------------------------------------------------

    async def _run(self, *argv: str, timeout: float | None = None) -> str:
        result = await run_command(argv, timeout=timeout or self.settings.command_timeout_seconds)
        return result.stdout

    async def zone_states(self) -> dict[str, str]:
        """Every non-global zone (configured or not) and its state."""
        return parse_zone_list(await self._run("zoneadm", "list", "-cp"))

    async def vnics(self) -> set[str]:
        out = await self._run("dladm", "show-vnic", "-p", "-o", "link")
        return {line.strip() for line in out.splitlines() if line.strip()}

    async def _ensure_snapshot(self, snapshot: str) -> None:
        lock = self._snapshot_locks.setdefault(snapshot, asyncio.Lock())
        async with lock:
            if await self.zfs.exists(snapshot):
                return
            log.info("taking golden snapshot %s", snapshot)
            try:
                await self.zfs.snapshot(snapshot)
            except DatasetExists:
                pass  # another orchestrator on this host took it first

    # -- VMBackend -----------------------------------------------------------------------

    async def prepare(self) -> None:
        """Check the host before the first job, naming every problem at once, and take the
        labels' missing golden snapshots now rather than in the first job."""
        settings = self.settings
        problems = []
        if not await self.zfs.exists(settings.clone_parent):
            problems.append(f"clone_parent {settings.clone_parent} does not exist "
                            f"(zfs create -p {settings.clone_parent})")
        links = (await self._run("dladm", "show-link", "-p", "-o", "link")).split()
        if settings.link not in links:
            problems.append(f"link {settings.link} does not exist (dladm create-etherstub, "
                            "or name a physical link)")
        if not await asyncio.to_thread(Path(settings.zone_root).is_dir):
            problems.append(f"zone_root {settings.zone_root} is not a directory "
                            "(create a ZFS file system mounted there)")
        for label, image in sorted(settings.labels.items()):
            try:
                await self.zfs.volsize(image.dataset)
                await self._ensure_snapshot(f"{image.dataset}@{image.snapshot}")
            except BackendError as exc:
                problems.append(f"label {label}: {exc.message}")
        if problems:
            raise BackendError("the bhyve backend is not ready: " + "; ".join(problems),
                               hint="fix [orchestrator.bhyve] or the host (images/illumos/README.md)")

    async def provision(self, spec: VMSpec) -> VM:
        names = self.names(spec.name)
        image = self.image_for(spec)
        resources = self.resources_for(image, spec.resources)
        snapshot = f"{image.dataset}@{image.snapshot}"
        with _tracer.start_as_current_span("bhyve.provision") as span:
            span.set_attribute("vm.name", spec.name)
            span.set_attribute("zfs.impl", self.zfs.name)
            image_size = await self.zfs.volsize(image.dataset)
            # Shrinking the zvol under the guest's file system would corrupt it.
            volsize = max(resources.disk_gb * GIB, image_size)
            await self._ensure_snapshot(snapshot)
            created: set[str] = set()
            try:
                await self.zfs.clone(snapshot, names.dataset, {"volsize": str(volsize)})
                created.add("dataset")
                await self._run("dladm", "create-vnic", "-l", self.settings.link, names.vnic)
                created.add("vnic")
                created.add("work")
                script = zonecfg_script(names, extra_attrs=image.attrs, vcpus=resources.vcpus,
                                        ram_mb=resources.ram_mb)
                await asyncio.to_thread(_write_private, names.zonecfg, script)
                await self._run("zonecfg", "-z", names.zone, "-f", str(names.zonecfg))
                created.add("zone")
                await self._run("zoneadm", "-z", names.zone, "install",
                                timeout=self.settings.install_timeout_seconds)
            except Exception:
                # Undo only what this call made: a same-named leftover is the reaper's.
                await self._undo(names, created)
                raise
        return VM(name=spec.name, backend=self.name, spec=spec, details={
            "zone": names.zone, "zonepath": names.zonepath, "dataset": names.dataset,
            "snapshot": snapshot, "image": snapshot, "vnic": names.vnic, "link": self.settings.link,
            "volsize": str(volsize), "vcpus": str(resources.vcpus),
            "ram_mb": str(resources.ram_mb), "zfs": self.zfs.name,
        })

    async def _undo(self, names: JobNames, created: set[str]) -> None:
        try:
            await self._teardown(names, zone="zone" in created, vnic="vnic" in created,
                                 dataset="dataset" in created, work="work" in created)
        except BackendError as exc:
            log.error("cleanup after a failed provision of %s failed; the reaper will retry: %s",
                      names.zone, exc)

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        names = self.names(vm.name)
        with _tracer.start_as_current_span("bhyve.start") as span:
            span.set_attribute("vm.name", vm.name)
            await asyncio.to_thread(_write_private, names.user_data, user_data(bootstrap))
            await self._run("zoneadm", "-z", names.zone, "boot",
                            timeout=self.settings.boot_timeout_seconds)

    async def stop(self, vm: VM) -> None:
        names = self.names(vm.name)
        if (await self.zone_states()).get(names.zone) in _HALTABLE:
            await self._run("zoneadm", "-z", names.zone, "halt",
                            timeout=self.settings.halt_timeout_seconds)

    async def destroy(self, vm: VM) -> None:
        await self.destroy_by_name(vm.name)

    async def destroy_by_name(self, name: str) -> None:
        with _tracer.start_as_current_span("bhyve.destroy") as span:
            span.set_attribute("vm.name", name)
            await self._teardown(self.names(name), zone=True, vnic=True, dataset=True, work=True)

    async def _teardown(self, names: JobNames, *, zone: bool, vnic: bool, dataset: bool,
                        work: bool) -> None:
        """Remove what exists of the job's machine, in dependency order; stops at the first
        failure (the later steps depend on it) and raises it."""
        if zone:
            state = (await self.zone_states()).get(names.zone)
            if state in _HALTABLE:
                await self._run("zoneadm", "-z", names.zone, "halt",
                                timeout=self.settings.halt_timeout_seconds)
                state = "installed"
            if state in ("installed", "incomplete"):
                await self._run("zoneadm", "-z", names.zone, "uninstall", "-F",
                                timeout=self.settings.install_timeout_seconds)
                state = "configured"
            if state is not None:
                await self._run("zonecfg", "-z", names.zone, "delete", "-F")
        if vnic and names.vnic in await self.vnics():
            await self._run("dladm", "delete-vnic", names.vnic)
        if dataset and await self.zfs.exists(names.dataset):
            try:
                await self.zfs.destroy(names.dataset)
            except DatasetNotFound:
                pass  # destroyed concurrently (a reaper on another path); the goal is met
        if work:
            await asyncio.to_thread(shutil.rmtree, names.work, ignore_errors=True)

    async def leftovers(self, prefix: str) -> list[str]:
        zones = [z for z in await self.zone_states() if z.startswith(prefix)]
        parent = self.settings.clone_parent + "/"
        clones = [d[len(parent):].split("/")[0]
                  for d in await self.zfs.list_datasets(self.settings.clone_parent)
                  if d.startswith(parent)]
        work = Path(self.settings.work_dir)
        files = await asyncio.to_thread(lambda: [p.name for p in work.iterdir()] if work.is_dir() else [])
        names = {n for n in [*zones, *clones, *files] if n.startswith(prefix)}
        return sorted(names)

    async def _watched_states(self, not_before: float) -> dict[str, str]:
        """Zone states read at or after `not_before` (loop time), shared between watchers."""
        async with self._watch_lock:
            if self._watched is None or self._watched[0] < not_before:
                read_at = asyncio.get_running_loop().time()
                self._watched = (read_at, await self.zone_states())
            return self._watched[1]

    async def wait_exit(self, vm: VM) -> str:
        """Returns once the zone stopped running by itself (guest powered off, bhyve died)."""
        names = self.names(vm.name)
        loop = asyncio.get_running_loop()
        while True:
            # Only a listing taken after this wait began can tell: an older one may predate boot.
            began = loop.time()
            await asyncio.sleep(self.settings.watch_interval_seconds)
            try:
                state = (await self._watched_states(began)).get(names.zone)
            except BackendError as exc:
                log.warning("cannot read the state of zone %s: %s", names.zone, exc)
                continue
            if state != "running":
                return f"zone {names.zone} is {state or 'gone'}"

    async def console_log(self, vm: VM) -> str:
        names = self.names(vm.name)
        limit = self.settings.console_log_bytes
        paths = [Path(t.format(zonepath=names.zonepath, zone=names.zone))
                 for t in self.settings.console_logs]
        return await asyncio.to_thread(_read_tails, paths, limit)


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by the owner only (user-data carries the job's one-time token)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror or exc}",
                           hint="check that the bhyve work_dir exists, is writable and has space") from exc


def _read_tails(paths: list[Path], limit: int) -> str:
    parts = []
    for path in paths:
        try:
            with path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - limit))
                data = fh.read().decode(errors="replace")
        except OSError:
            continue  # absent (not booted yet) or unreadable: nothing to show from this one
        if size > limit:
            data = f"[... {size - limit} earlier bytes of {path} omitted]\n" + data.split("\n", 1)[-1]
        parts.append(data)
    return "".join(parts)
