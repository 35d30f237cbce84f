"""The state and rules behind the fake `zfs`, `zonecfg`, `zoneadm`, `dladm` and `libzfs_core`.

Nothing in the test suite runs illumos, so these fakes stand in for the real tools. They keep
one JSON state file in the directory named by `$FAKE_ILLUMOS_STATE` (shared by every fake
executable and the fake `libzfs_core` module, serialised with `flock`) and enforce what the man
pages say, with the tools' own error texts:

- zfs(8): a clone needs an existing snapshot; a snapshot with clones cannot be destroyed; a
  dataset with snapshots cannot be destroyed without `-r`; a volume in use by a running zone is
  busy; names are `[A-Za-z0-9_.:-]` components below 256 bytes.
- zonecfg(8)/zoneadm(8): a zone is configured, then installed, then booted; uninstall needs a
  halted zone, delete needs an uninstalled one; names are at most 63 characters
  (ZONENAME_MAX is 64 with the NUL) matching `[A-Za-z0-9][A-Za-z0-9_.-]*`, `global` and
  `SUNW*` reserved; only documented resources and properties are accepted. For the bhyve
  brand the custom attributes are checked against bhyve(7): the real brand ignores unknown
  attributes silently, which would hide a bug, so the fake rejects them.
- dladm(8): link names are alphanumerics and `_`, start with a letter, end with a number
  without a leading zero, at most 31 characters; a VNIC needs an existing link or etherstub;
  a VNIC used by a running zone is busy.

`zoneadm boot` starts the real runner (`python -m workflow_runner.main`) as the "guest": it
reads the cloud-init user-data file named by the zone's `cloud-init` attribute, writes the
runner.toml it carries into a per-zone directory and starts the runner with
`SOLSTICE_RUNNER_CONFIG` pointing at it; `halt` kills it. Faults are injected through the
state's `faults` table: `{"boot": "message"}` makes every boot fail, `{"hang": ["zoneadm boot"]}`
makes that command sleep until killed, `{"install": "message"}` makes `zoneadm install` fail
leaving the zone `incomplete`.
"""
from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_ENV = "FAKE_ILLUMOS_STATE"
RUNNER_CONFIG_IN_GUEST = "/etc/solstice/runner.toml"


class ToolError(Exception):
    """A failure the tool reports on stderr with a non-zero exit status.

    `kind` classifies it for the fake `libzfs_core`, which raises pyzfs exceptions instead.
    """

    def __init__(self, message: str, *, status: int = 1, kind: str = "error", name: str = "",
                 commit: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind
        self.name = name
        self.commit = commit  # the failure changed state (a half-done operation) and is kept


# ---------------------------------------------------------------------------------------------
# State file


def state_dir() -> Path:
    try:
        return Path(os.environ[STATE_ENV])
    except KeyError:
        raise ToolError(f"fake illumos tools: ${STATE_ENV} is not set", status=2) from None


def empty_state() -> dict[str, Any]:
    return {"datasets": {}, "zones": {}, "links": {}, "faults": {}, "next_zoneid": 1}


@contextlib.contextmanager
def locked_state() -> Iterator[dict[str, Any]]:
    """The state, locked for the block; written back only if the block succeeds."""
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "state.json"
    with open(directory / "state.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text()) if path.exists() else empty_state()
        try:
            yield state
        except ToolError as exc:
            if exc.commit:
                _write(path, state)
            raise
        _write(path, state)


def _write(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_state() -> dict[str, Any]:
    with locked_state() as state:
        return state


def hang_if_asked(command: str) -> None:
    """Sleep until killed when the state asks this command to hang (tests of timeouts)."""
    if command in read_state()["faults"].get("hang", []):
        while True:
            time.sleep(3600)


# ---------------------------------------------------------------------------------------------
# ZFS

ZFS_MAX_NAME = 256  # ZFS_MAX_DATASET_NAME_LEN, including the NUL
_ZFS_COMPONENT = re.compile(r"[A-Za-z0-9_.:\- ]+")
VOLBLOCKSIZE = 8192
_SIZE_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([BKMGTP]?)B?", text.strip().upper())
    if not match:
        raise ToolError(f"bad numeric value '{text}'", status=1, kind="invalid_prop")
    return int(match.group(1)) * _SIZE_SUFFIX[match.group(2)]


def check_dataset_name(name: str, verb: str = "create") -> None:
    """The checks of zfs_namecheck.c, with libzfs's messages."""
    if len(name) >= ZFS_MAX_NAME:
        raise ToolError(f"cannot {verb} '{name}': name is too long", kind="too_long", name=name)
    fs, _, snap = name.partition("@")
    if not fs or fs.startswith("/") or fs.endswith("/") or "//" in fs:
        raise ToolError(f"cannot {verb} '{name}': leading slash or empty component in name",
                        kind="invalid_name", name=name)
    for component in fs.split("/") + ([snap] if "@" in name else []):
        if not component:
            raise ToolError(f"cannot {verb} '{name}': empty component or misplaced '@'",
                            kind="invalid_name", name=name)
        for char in component:
            if not _ZFS_COMPONENT.fullmatch(char):
                raise ToolError(f"cannot {verb} '{name}': invalid character '{char}' in name",
                                kind="invalid_name", name=name)


def _parent(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else ""


def _children(state: dict[str, Any], name: str) -> list[str]:
    """Snapshots of `name` and datasets below it."""
    return sorted(n for n in state["datasets"] if n.startswith(name + "@") or n.startswith(name + "/"))


def _clones_of(state: dict[str, Any], snapshot: str) -> list[str]:
    return sorted(n for n, d in state["datasets"].items() if d.get("origin") == snapshot)


def _volume_in_use(state: dict[str, Any], name: str) -> str | None:
    device = f"/dev/zvol/rdsk/{name}"
    for zone_name, zone in state["zones"].items():
        if zone["state"] == "running" and any(d.get("match") == device for d in zone["devices"]):
            return zone_name
    return None


def _check_volsize(name: str, raw: str) -> int:
    size = parse_size(raw)
    if size <= 0 or size % VOLBLOCKSIZE:
        raise ToolError(f"cannot create '{name}': 'volsize' must be a multiple of volume block size "
                        f"({VOLBLOCKSIZE // 1024}K)", kind="invalid_prop", name=name)
    return size


ZFS_SETTABLE = {"volsize", "compression", "refreservation", "reservation", "volblocksize",
                "sync", "primarycache", "secondarycache", "logbias", "readonly", "canmount",
                "mountpoint", "quota", "refquota", "atime", "checksum", "copies", "dedup"}


def _check_props(name: str, props: dict[str, str]) -> dict[str, str]:
    for prop in props:
        if prop not in ZFS_SETTABLE and ":" not in prop:  # user properties contain a colon
            raise ToolError(f"cannot create '{name}': invalid property '{prop}'",
                            kind="invalid_prop", name=name)
    return dict(props)


def zfs_create(state: dict[str, Any], name: str, *, volsize: str | None = None,
               parents: bool = False, props: dict[str, str] | None = None) -> None:
    check_dataset_name(name)
    if "@" in name:
        raise ToolError(f"cannot create '{name}': snapshot delimiter '@' is not expected here",
                        kind="invalid_name", name=name)
    if name in state["datasets"]:
        raise ToolError(f"cannot create '{name}': dataset already exists", kind="exists", name=name)
    props = _check_props(name, props or {})
    parent = _parent(name)
    missing = []
    while parent and parent not in state["datasets"]:
        missing.append(parent)
        parent = _parent(parent)
    if missing and not parents:
        raise ToolError(f"cannot create '{name}': parent does not exist", kind="parent_missing", name=name)
    if parent and state["datasets"][parent]["type"] == "volume":
        raise ToolError(f"cannot create '{name}': parent is not a filesystem", kind="wrong_parent", name=name)
    for ancestor in reversed(missing):
        state["datasets"][ancestor] = {"type": "filesystem", "origin": None, "props": {}}
    entry: dict[str, Any] = {"type": "filesystem", "origin": None, "props": props}
    if volsize is not None:
        entry["type"] = "volume"
        entry["props"]["volsize"] = str(_check_volsize(name, volsize))
    state["datasets"][name] = entry


def zfs_snapshot(state: dict[str, Any], name: str) -> None:
    check_dataset_name(name, "create snapshot")
    fs, sep, _ = name.partition("@")
    if not sep:
        raise ToolError(f"cannot create snapshot '{name}': missing '@' delimiter in snapshot name",
                        kind="invalid_name", name=name)
    if fs not in state["datasets"]:
        raise ToolError(f"cannot open '{fs}': dataset does not exist", kind="notfound", name=fs)
    if name in state["datasets"]:
        raise ToolError(f"cannot create snapshot '{name}': dataset already exists",
                        kind="exists", name=name)
    state["datasets"][name] = {"type": "snapshot", "origin": None,
                               "props": dict(state["datasets"][fs]["props"])}


def zfs_clone(state: dict[str, Any], snapshot: str, target: str,
              props: dict[str, str] | None = None) -> None:
    check_dataset_name(snapshot, "open")
    if "@" not in snapshot:
        raise ToolError(f"cannot open '{snapshot}': snapshot delimiter '@' is not expected here",
                        kind="invalid_name", name=snapshot)
    if snapshot not in state["datasets"]:
        raise ToolError(f"cannot open '{snapshot}': dataset does not exist", kind="notfound", name=snapshot)
    check_dataset_name(target)
    if target in state["datasets"]:
        raise ToolError(f"cannot create '{target}': dataset already exists", kind="exists", name=target)
    parent = _parent(target)
    if parent and parent not in state["datasets"]:
        raise ToolError(f"cannot create '{target}': parent does not exist",
                        kind="parent_missing", name=target)
    if target.split("/")[0] != snapshot.split("/")[0]:
        raise ToolError(f"cannot create '{target}': source and target pools differ",
                        kind="pools_differ", name=target)
    props = _check_props(target, props or {})
    origin_fs = snapshot.split("@")[0]
    kind = state["datasets"][origin_fs]["type"]
    merged = dict(state["datasets"][snapshot]["props"])
    if "volsize" in props:
        if kind != "volume":
            raise ToolError(f"cannot create '{target}': 'volsize' does not apply to datasets of this type",
                            kind="invalid_prop", name=target)
        props["volsize"] = str(_check_volsize(target, props["volsize"]))
    merged.update(props)
    state["datasets"][target] = {"type": kind, "origin": snapshot, "props": merged}


def zfs_destroy(state: dict[str, Any], name: str) -> None:
    check_dataset_name(name, "destroy")
    if name not in state["datasets"]:
        raise ToolError(f"cannot open '{name}': dataset does not exist", kind="notfound", name=name)
    entry = state["datasets"][name]
    if entry["type"] == "snapshot":
        clones = _clones_of(state, name)
        if clones:
            raise ToolError(f"cannot destroy '{name}': snapshot has dependent clones\n"
                            "use '-R' to destroy the following datasets:\n" + "\n".join(clones),
                            kind="has_clones", name=name)
    else:
        children = _children(state, name)
        if children:
            what = "volume" if entry["type"] == "volume" else "filesystem"
            raise ToolError(f"cannot destroy '{name}': {what} has children\n"
                            "use '-r' to destroy the following datasets:\n" + "\n".join(children),
                            kind="has_children", name=name)
        if entry["type"] == "volume" and _volume_in_use(state, name):
            raise ToolError(f"cannot destroy '{name}': dataset is busy", kind="busy", name=name)
    del state["datasets"][name]


def zfs_list(state: dict[str, Any], names: list[str], *, recursive: bool,
             types: set[str]) -> list[str]:
    selected: list[str] = []
    if not names:
        selected = sorted(state["datasets"])
    for name in names:
        if name not in state["datasets"]:
            raise ToolError(f"cannot open '{name}': dataset does not exist", kind="notfound", name=name)
        selected.append(name)
        if recursive:
            selected.extend(_children(state, name))
    return [n for n in dict.fromkeys(selected) if state["datasets"][n]["type"] in types]


def zfs_get(state: dict[str, Any], prop: str, name: str) -> str:
    if name not in state["datasets"]:
        raise ToolError(f"cannot open '{name}': dataset does not exist", kind="notfound", name=name)
    entry = state["datasets"][name]
    if prop == "type":
        return entry["type"]
    if prop == "origin":
        return entry["origin"] or "-"
    if prop == "volsize" and entry["type"] == "filesystem":
        return "-"
    return entry["props"].get(prop, "-")


# ---------------------------------------------------------------------------------------------
# dladm

# The ending number is the whole run of trailing digits.
_LINK_NAME = re.compile(r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z_])?(0|[1-9][0-9]*)")
LINK_MAX = 31


def check_link_name(name: str) -> None:
    """dladm(8): alphanumerics or `_`, starting with a letter, ending with a number that does
    not begin with zero (at most 4294967294), at most 31 characters."""
    match = _LINK_NAME.fullmatch(name)
    if len(name) > LINK_MAX or not match or int(match.group(1)) > 4294967294:
        raise ToolError(f"dladm: invalid link name '{name}'", kind="invalid_name", name=name)


def _link_user(state: dict[str, Any], link: str) -> str | None:
    for zone_name, zone in state["zones"].items():
        if zone["state"] == "running" and any(n.get("physical") == link for n in zone["nets"]):
            return zone_name
    return None


def dladm_create_vnic(state: dict[str, Any], over: str, vnic: str) -> None:
    check_link_name(vnic)
    if over not in state["links"] or state["links"][over]["class"] not in ("phys", "etherstub", "aggr"):
        raise ToolError(f"dladm: invalid link name '{over}'", kind="notfound", name=over)
    if vnic in state["links"]:
        raise ToolError("dladm: vnic creation failed: object already exists", kind="exists", name=vnic)
    state["links"][vnic] = {"class": "vnic", "over": over}


def dladm_delete_vnic(state: dict[str, Any], vnic: str) -> None:
    link = state["links"].get(vnic)
    if link is None or link["class"] != "vnic":
        raise ToolError(f"dladm: invalid vnic name '{vnic}': object not found", kind="notfound", name=vnic)
    if _link_user(state, vnic):
        raise ToolError("dladm: vnic deletion failed: link busy", kind="busy", name=vnic)
    if any(link.get("over") == vnic for link in state["links"].values()):
        raise ToolError("dladm: vnic deletion failed: link busy", kind="busy", name=vnic)
    del state["links"][vnic]


# dladm(8) link properties the fake knows, on VNICs: link protection and its address list.
PROTECTION_VALUES = ("mac-nospoof", "restricted", "ip-nospoof", "dhcp-nospoof")
LINK_PROPERTIES = ("protection", "allowed-ips")


def _linkprop_link(state: dict[str, Any], name: str) -> dict[str, Any]:
    link = state["links"].get(name)
    if link is None:
        raise ToolError(f"dladm: link {name} is not valid: object not found", kind="notfound",
                        name=name)
    return link


def _check_linkprop(prop: str, values: list[str]) -> None:
    """What dladm's set-linkprop says of an unknown property or a value it refuses."""
    if prop not in LINK_PROPERTIES:
        raise ToolError(f"dladm: warning: invalid link property '{prop}'")
    if prop == "protection":
        if any(v not in PROTECTION_VALUES for v in values):
            raise ToolError("dladm: warning: link property 'protection' must be one of: "
                            + ",".join(PROTECTION_VALUES))
        return
    for value in values:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError:
            raise ToolError(f"dladm: warning: invalid link property '{value}'") from None


def dladm_set_linkprop(state: dict[str, Any], name: str, props: dict[str, list[str]]) -> None:
    link = _linkprop_link(state, name)
    for prop, values in props.items():
        _check_linkprop(prop, values)
    for prop, values in props.items():
        link.setdefault("props", {})[prop] = values


def dladm_reset_linkprop(state: dict[str, Any], name: str, props: list[str]) -> None:
    link = _linkprop_link(state, name)
    for prop in props:
        if prop not in LINK_PROPERTIES:
            raise ToolError(f"dladm: warning: invalid link property '{prop}'")
    for prop in props or list(link.get("props", {})):
        link.get("props", {}).pop(prop, None)


def dladm_show_linkprop(state: dict[str, Any], name: str, props: list[str]) -> dict[str, str]:
    """Property -> its value as `show-linkprop -c -o value` prints it (empty when unset)."""
    link = _linkprop_link(state, name)
    for prop in props:
        if prop not in LINK_PROPERTIES:
            raise ToolError(f"dladm: warning: invalid link property '{prop}'")
    return {prop: ",".join(link.get("props", {}).get(prop, [])) for prop in props}


def dladm_create_etherstub(state: dict[str, Any], name: str) -> None:
    check_link_name(name)
    if name in state["links"]:
        raise ToolError("dladm: etherstub creation failed: object already exists", kind="exists")
    state["links"][name] = {"class": "etherstub", "over": ""}


# ---------------------------------------------------------------------------------------------
# zones

ZONENAME_MAX = 64  # including the terminating NUL (zone.h)
_ZONE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
BRANDS = {"bhyve", "ipkg", "lipkg", "sparse", "pkgsrc", "lx", "kvm", "illumos", "emu"}

# zonecfg(8): global properties and the properties of each resource type.
GLOBAL_PROPERTIES = {"zonename", "zonepath", "autoboot", "bootargs", "pool", "limitpriv", "brand",
                     "ip-type", "hostid", "fs-allowed", "scheduling-class", "max-lwps",
                     "max-processes", "max-shm-memory", "max-shm-ids", "max-msg-ids",
                     "max-sem-ids", "cpu-shares"}
RESOURCE_PROPERTIES = {
    "fs": {"dir", "special", "raw", "type", "options"},
    "net": {"address", "allowed-address", "defrouter", "physical", "global-nic", "mac-addr",
            "vlan-id"},
    "device": {"match"},
    "attr": {"name", "type", "value"},
    "rctl": {"name", "value"},
    "dataset": {"name"},
    "dedicated-cpu": {"ncpus", "importance"},
    "capped-cpu": {"ncpus"},
    "capped-memory": {"physical", "swap", "locked"},
    "admin": {"user", "auths"},
    "security-flags": {"lower", "default", "upper"},
}
ATTR_TYPES = {"boolean", "int", "string", "uint"}

# bhyve(7) (OmniOS) and zadm's bhyve schema: the attributes the bhyve brand reads. Indexed
# families (cdrom0, disk1, ppt0, virtfs0, ...) are matched by their stem.
BHYVE_ATTRIBUTES = {
    "acpi", "bootdisk", "bootnext", "bootorder", "bootrom", "cdrom", "cloud-init", "console",
    "disk", "diskif", "dns-domain", "extra", "hostbridge", "memreserve", "netif", "password",
    "priv.debug", "ram", "resolvers", "rng", "sshkey", "type", "uefivars", "uuid", "vcpus", "vga",
    "vnc", "xhci",
}
BHYVE_INDEXED_ATTRIBUTES = {"cdrom", "disk", "ppt", "virtfs"}


def bhyve_attribute_known(name: str) -> bool:
    if name in BHYVE_ATTRIBUTES:
        return True
    stem = name.rstrip("0123456789")
    return stem != name and stem in BHYVE_INDEXED_ATTRIBUTES


def check_zone_name(name: str) -> None:
    if (len(name) >= ZONENAME_MAX or not _ZONE_NAME.fullmatch(name) or name == "global"
            or name.startswith("SUNW")):
        raise ToolError(
            f"{name}: Bogus zone name: zone names must be at most {ZONENAME_MAX - 1} characters, "
            "begin with an alphanumeric character and contain only alphanumerics, '-', '_' and '.'; "
            "'global' and names beginning with 'SUNW' are reserved",
            kind="invalid_name", name=name)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _split_commands(text: str) -> list[str]:
    """zonecfg reads one command per line; `;` also separates commands outside quotes."""
    commands: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        current, quoted = "", False
        for char in line:
            if char == '"':
                quoted = not quoted
            if char == ";" and not quoted:
                commands.append(current.strip())
                current = ""
            else:
                current += char
        if current.strip():
            commands.append(current.strip())
    return commands


def zonecfg_apply(state: dict[str, Any], zone_name: str, text: str) -> None:
    """Run a zonecfg command file (or command-line commands) against zone `zone_name`."""
    check_zone_name(zone_name)
    existing = state["zones"].get(zone_name)
    config: dict[str, Any] | None = json.loads(json.dumps(existing)) if existing else None
    resource: dict[str, Any] | None = None
    resource_type = ""
    deleted = False
    for lineno, command in enumerate(_split_commands(text), start=1):
        words = command.split(None, 1)
        verb, rest = words[0], (words[1] if len(words) > 1 else "")
        where = f"zonecfg:{zone_name}:{lineno}"
        if verb == "create":
            if config is not None and existing is not None and "-F" not in rest.split():
                raise ToolError(f"{where}: Zone {zone_name} already exists; create not allowed.")
            # `-b` starts blank; without it zonecfg applies the default template (brand ipkg).
            config = {"zonepath": "", "brand": "" if "-b" in rest.split() else "ipkg",
                      "ip-type": "shared", "autoboot": "false", "nets": [], "devices": [],
                      "attrs": [], "fs": [], "state": "configured", "uuid": str(uuid.uuid4()),
                      "zoneid": None, "runner_pid": None, "other": {}}
        elif verb == "delete":
            if config is None or existing is None:
                raise ToolError(f"{zone_name}: No such zone configured", kind="notfound", name=zone_name)
            if existing["state"] != "configured":
                raise ToolError(f"Zone {zone_name} is {existing['state']}; delete not allowed.\n"
                                "Uninstall the zone first (zoneadm uninstall).", kind="busy", name=zone_name)
            if "-F" not in rest.split():
                raise ToolError(f"{where}: delete needs -F when not interactive")
            deleted = True
            config = None
        elif verb in ("set", "add", "end", "remove", "clear"):
            if config is None:
                raise ToolError(f"{zone_name}: No such zone configured\n"
                                "Use 'create' to begin configuring a new zone.", kind="notfound", name=zone_name)
            if verb == "add":
                if resource is not None:
                    raise ToolError(f"{where}: Cannot add a resource while another is being edited")
                kind = rest.split()[0] if rest else ""
                if kind == "options" and resource_type == "fs":
                    continue
                if kind not in RESOURCE_PROPERTIES:
                    raise ToolError(f"{where}: Unknown resource type '{kind}'.", status=1)
                resource_type, resource = kind, {}
            elif verb == "end":
                if resource is None:
                    raise ToolError(f"{where}: 'end' is only valid while editing a resource")
                _finish_resource(config, resource_type, resource, where)
                resource, resource_type = None, ""
            elif verb == "set":
                prop, sep, value = rest.partition("=")
                prop, value = prop.strip(), _unquote(value)
                if not sep:
                    raise ToolError(f"{where}: syntax error: set needs property=value")
                if resource is not None:
                    if prop not in RESOURCE_PROPERTIES[resource_type]:
                        raise ToolError(f"{where}: Unknown property '{prop}' for resource type "
                                        f"'{resource_type}'.")
                    resource[prop] = value
                else:
                    if prop not in GLOBAL_PROPERTIES:
                        raise ToolError(f"{where}: Unknown property '{prop}'.")
                    if prop == "zonename":
                        raise ToolError(f"{where}: renaming a zone is not supported by the fake")
                    if prop in ("brand", "zonepath", "ip-type", "autoboot"):
                        config[prop] = value
                    else:
                        config["other"][prop] = value
            else:
                raise ToolError(f"{where}: '{verb}' is not supported by the fake zonecfg")
        elif verb in ("commit", "verify", "exit"):
            if config is not None:
                _verify_zone(config, zone_name, where)
        elif verb == "export":
            continue
        else:
            raise ToolError(f"{where}: Unknown command '{verb}'.")
    if resource is not None:
        raise ToolError(f"zonecfg:{zone_name}: resource '{resource_type}' was not ended with 'end'")
    if deleted:
        del state["zones"][zone_name]
        return
    if config is not None:
        _verify_zone(config, zone_name, f"zonecfg:{zone_name}")
        state["zones"][zone_name] = config


def _finish_resource(config: dict[str, Any], kind: str, resource: dict[str, str], where: str) -> None:
    if kind == "net":
        if not resource.get("physical"):
            raise ToolError(f"{where}: net: physical not specified")
        config["nets"].append(resource)
    elif kind == "device":
        if not resource.get("match"):
            raise ToolError(f"{where}: device: match not specified")
        config["devices"].append(resource)
    elif kind == "attr":
        for required in ("name", "type", "value"):
            if not resource.get(required):
                raise ToolError(f"{where}: attr: {required} not specified")
        if resource["type"] not in ATTR_TYPES:
            raise ToolError(f"{where}: attr: invalid type '{resource['type']}'")
        if any(a["name"] == resource["name"] for a in config["attrs"]):
            raise ToolError(f"{where}: attr: an attribute named '{resource['name']}' already exists")
        config["attrs"].append(resource)
    elif kind == "fs":
        config["fs"].append(resource)
    else:
        config["other"].setdefault(kind, []).append(resource)


def _verify_zone(config: dict[str, Any], name: str, where: str) -> None:
    if config["brand"] not in BRANDS:
        raise ToolError(f"{where}: {config['brand'] or '(none)'}: unknown brand.")
    if not config["zonepath"].startswith("/"):
        raise ToolError(f"{where}: zonepath must be an absolute path: '{config['zonepath']}'")
    if config["ip-type"] not in ("shared", "exclusive"):
        raise ToolError(f"{where}: ip-type must be 'shared' or 'exclusive'")
    if config["autoboot"] not in ("true", "false"):
        raise ToolError(f"{where}: autoboot must be 'true' or 'false'")
    if config["brand"] == "bhyve":
        if config["ip-type"] != "exclusive":
            raise ToolError(f"{where}: bhyve zones require ip-type=exclusive")
        for attr in config["attrs"]:
            if not bhyve_attribute_known(attr["name"]):
                raise ToolError(f"{where}: attr '{attr['name']}' is not an attribute of the bhyve "
                                "brand (see bhyve(7))", kind="invalid_prop")


def zone_list_line(name: str, zone: dict[str, Any]) -> str:
    """One line of `zoneadm list -p`: zoneid:zonename:state:zonepath:uuid:brand:ip-type."""
    zoneid = str(zone["zoneid"]) if zone["state"] == "running" else "-"
    return ":".join([zoneid, name, zone["state"], zone["zonepath"], zone["uuid"], zone["brand"],
                     zone["ip-type"]])


GLOBAL_ZONE_LINE = "0:global:running:/::ipkg:shared"


def _zone(state: dict[str, Any], name: str) -> dict[str, Any]:
    zone = state["zones"].get(name)
    if zone is None:
        raise ToolError(f"zoneadm: {name}: No such zone configured", kind="notfound", name=name)
    return zone


def _invalid(name: str, operation: str, zone: dict[str, Any]) -> ToolError:
    return ToolError(f"zoneadm: zone '{name}': {operation} operation is invalid for "
                     f"{zone['state']} zones.", kind="state", name=name)


def zoneadm_install(state: dict[str, Any], name: str) -> None:
    zone = _zone(state, name)
    if zone["state"] != "configured":
        raise _invalid(name, "install", zone)
    zonepath = Path(zone["zonepath"])
    if not zonepath.parent.is_dir():
        raise ToolError(f"zoneadm: zone '{name}': zonepath's parent {zonepath.parent} does not exist")
    if zonepath.exists() and any(zonepath.iterdir()):
        raise ToolError(f"zoneadm: zone '{name}': zonepath {zonepath} exists and is not empty")
    (zonepath / "root" / "tmp").mkdir(parents=True, exist_ok=True)
    zonepath.chmod(0o700)
    fault = state["faults"].get("install")
    if fault:
        # A failed install leaves the zone `incomplete`; only uninstall -F gets it back.
        zone["state"] = "incomplete"
        raise ToolError(f"zoneadm: zone '{name}': install failed: {fault}", kind="install",
                        commit=True)
    zone["state"] = "installed"


def zoneadm_uninstall(state: dict[str, Any], name: str, force: bool) -> None:
    zone = _zone(state, name)
    if zone["state"] not in ("installed", "incomplete"):
        raise _invalid(name, "uninstall", zone)
    if not force:
        raise ToolError(f"zoneadm: zone '{name}': uninstall needs -F when not interactive")
    _remove_tree(Path(zone["zonepath"]))
    zone["state"] = "configured"


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir() and not child.is_symlink():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()


def console_log(zone: dict[str, Any]) -> Path:
    """The bhyve brand's boot log inside the zone root (what `zadm log` shows)."""
    return Path(zone["zonepath"]) / "root" / "tmp" / "init.log"


def _log(zone: dict[str, Any], line: str) -> None:
    with console_log(zone).open("a") as fh:
        fh.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line + "\n")


def zoneadm_boot(state: dict[str, Any], name: str) -> None:
    zone = _zone(state, name)
    if zone["state"] != "installed":
        if zone["state"] == "configured":
            raise ToolError(f"zoneadm: zone '{name}': must be installed before boot.", kind="state")
        raise _invalid(name, "boot", zone)
    for net in zone["nets"]:
        link = net["physical"]
        if link not in state["links"]:
            raise ToolError(f"zoneadm: zone '{name}': failed to add network device: "
                            f"could not find link '{link}'")
        user = _link_user(state, link)
        if user:
            raise ToolError(f"zoneadm: zone '{name}': link '{link}' is in use by zone '{user}'")
    for device in zone["devices"]:
        match = device["match"]
        volume = match.removeprefix("/dev/zvol/rdsk/")
        if volume == match or state["datasets"].get(volume, {}).get("type") != "volume":
            raise ToolError(f"zoneadm: zone '{name}': device '{match}' does not exist")
        user = _volume_in_use(state, volume)
        if user:
            raise ToolError(f"zoneadm: zone '{name}': device '{match}' is in use by zone '{user}'")
    attrs = {a["name"]: a["value"] for a in zone["attrs"]}
    if zone["brand"] == "bhyve":
        bootdisk = attrs.get("bootdisk", "").split(",")[0]
        if not bootdisk:
            raise ToolError(f"zoneadm: zone '{name}': boot failed: no bootdisk attribute")
        if f"/dev/zvol/rdsk/{bootdisk}" not in {d["match"] for d in zone["devices"]}:
            raise ToolError(f"zoneadm: zone '{name}': boot failed: bootdisk {bootdisk} is not "
                            "mapped into the zone with a device resource")
    fault = state["faults"].get("boot")
    if fault:
        _log(zone, f"bhyve: {fault}")
        raise ToolError(f"zoneadm: zone '{name}': call to zoneadmd failed: {fault}", kind="boot")
    zone["state"] = "running"
    zone["zoneid"] = state["next_zoneid"]
    state["next_zoneid"] += 1
    _log(zone, f"bhyve brand: booting {name} ram={attrs.get('ram', '1G')} vcpus={attrs.get('vcpus', '1')}")
    zone["runner_pid"] = _start_guest(name, zone, attrs.get("cloud-init", "off"))


def _runner_toml_from_user_data(text: str) -> str | None:
    """The content of the `write_files` entry for runner.toml in #cloud-config user-data.

    Handles the block form the orchestrator writes (`- path: ...` then `content: "<quoted>"`);
    a YAML double-quoted scalar written by json.dumps is read back with json.loads.
    """
    entries: list[dict[str, str]] = []
    in_files = False
    for line in text.splitlines():
        if not line.startswith(" ") and line.rstrip().endswith(":"):
            in_files = line.strip() == "write_files:"
            continue
        if not in_files:
            continue
        stripped = line.strip()
        if stripped.startswith("- "):
            entries.append({})
            stripped = stripped[2:]
        key, _, value = stripped.partition(":")
        if entries:
            entries[-1][key.strip()] = value.strip()
    for entry in entries:
        if entry.get("path") == RUNNER_CONFIG_IN_GUEST and "content" in entry:
            raw = entry["content"]
            return json.loads(raw) if raw.startswith('"') else raw
    return None


def _start_guest(name: str, zone: dict[str, Any], cloud_init: str) -> int | None:
    """Start the "guest": the real runner, configured from the cloud-init user-data."""
    if cloud_init in ("off", ""):
        _log(zone, "guest booted without cloud-init data; nothing to start")
        return None
    source = Path(cloud_init)
    if not source.is_file():
        _log(zone, f"cloud-init: cannot read user-data {cloud_init}")
        return None
    runner_toml = _runner_toml_from_user_data(source.read_text())
    if runner_toml is None:
        _log(zone, f"cloud-init: user-data has no write_files entry for {RUNNER_CONFIG_IN_GUEST}")
        return None
    guest = state_dir() / "guests" / name
    guest.mkdir(parents=True, exist_ok=True)
    config = guest / "runner.toml"
    config.write_text(runner_toml)
    config.chmod(0o600)
    env = dict(os.environ)
    env.pop(STATE_ENV, None)  # the guest does not see the host's tools
    env["SOLSTICE_RUNNER_CONFIG"] = str(config)
    log = console_log(zone).open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "workflow_runner.main"],
        cwd=guest, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        start_new_session=True, close_fds=True,
    )
    _log(zone, f"guest: solstice-runner started (pid {process.pid})")
    return process.pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def kill_guest(pid: int | None) -> None:
    if not pid:
        return
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)


def zoneadm_halt(state: dict[str, Any], name: str) -> None:
    zone = _zone(state, name)
    if zone["state"] != "running":
        raise _invalid(name, "halt", zone)
    kill_guest(zone.get("runner_pid"))
    _log(zone, "zone halted")
    zone["state"] = "installed"
    zone["zoneid"] = None
    zone["runner_pid"] = None


def run_main(tool: str, handler: Any) -> None:
    """Run a fake tool's `handler(argv)`, turning ToolError into stderr + exit status."""
    try:
        output = handler(sys.argv[1:])
    except ToolError as exc:
        print(exc.message, file=sys.stderr)
        sys.exit(exc.status)
    if output:
        sys.stdout.write(output if output.endswith("\n") else output + "\n")
    sys.exit(0)
