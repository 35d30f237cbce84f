"""Network isolation of the bhyve backend's jobs, `[orchestrator.bhyve.network]`.

- Link protection: every job's VNIC gets `protection=mac-nospoof,ip-nospoof` (dladm(8)): the
  guest cannot send with another MAC address, nor from an IP address other than its own.
- Addresses: with `addresses` (a range on the job network), each job gets one address of its
  own, claimed as a file `<work_dir>/addresses/<address>` (created exclusively, so two jobs,
  or two processes, never share one; removed with the job's machine). It is the VNIC's
  `allowed-ips` and the zone's `allowed-address` with `defrouter`, which the bhyve brand hands
  to the guest. Without `addresses` the guests use DHCP and ip-nospoof is not set (no address
  is known to allow): only mac-nospoof.
- Egress: `ipf_rules()` is the ipf.conf(5) rule set that lets the job network reach the
  orchestrator's Runner port and the listed destinations (the forge, a package mirror, DNS)
  and nothing else. With `ipf_rules_file` the backend writes it at start; the operator loads
  it into the host's ipfilter policy (docs/config.md).
"""
from __future__ import annotations

import errno
import ipaddress
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.backends.base import BackendError

PROTECTION_STATIC = "mac-nospoof,ip-nospoof"
PROTECTION_DHCP = "mac-nospoof"
ADDRESSES_DIR = "addresses"
RULES_HEADER = "# Solstice CI: egress of the bhyve job network (generated at start; do not edit)"


class Destination(BaseModel):
    """One place the jobs may reach: `ADDRESS[/BITS]:PORT`, optionally `udp:` in front."""

    model_config = ConfigDict(frozen=True)

    network: ipaddress.IPv4Network
    port: int
    protocol: str = "tcp"

    @classmethod
    def parse(cls, text: str) -> Destination:
        protocol, rest = ("udp", text[len("udp:"):]) if text.startswith("udp:") else ("tcp", text)
        address, _, port = rest.rpartition(":")
        try:
            number = int(port)
            if not 0 < number < 65536:
                raise ValueError(port)
            return cls(network=ipaddress.IPv4Network(address, strict=False), port=number,
                       protocol=protocol)
        except ValueError:
            raise ValueError(f"{text!r} is not [udp:]ADDRESS[/BITS]:PORT (IPv4), e.g. "
                             "10.77.0.1:50051 or udp:10.77.0.1:53") from None


class BhyveNetwork(BaseModel):
    """`[orchestrator.bhyve.network]`: link protection and the job network's egress rules."""

    model_config = ConfigDict(extra="forbid")

    protection: bool = True
    # `FIRST-LAST` on the job network: each job gets one, fixed (allowed-ips). Unset: DHCP.
    addresses: str | None = None
    prefix_length: int = Field(default=24, ge=8, le=30)
    gateway: str | None = None  # the guests' default router (the host's address on the network)
    # The host's IP interface on the job network (the VNIC on the etherstub), for ipf rules.
    interface: str | None = None
    # Where jobs may connect: the orchestrator's Runner port first, then the forge, mirrors, DNS.
    egress: list[str] = Field(default_factory=list)
    ipf_rules_file: str | None = None

    @field_validator("egress")
    @classmethod
    def _egress(cls, value: list[str]) -> list[str]:
        for entry in value:
            Destination.parse(entry)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BhyveNetwork:
        if self.addresses is not None:
            self.pool()
            if self.gateway is None:
                raise ValueError("network.addresses needs network.gateway (the guests' router)")
        if self.ipf_rules_file is not None:
            if not self.interface or not self.egress:
                raise ValueError("network.ipf_rules_file needs network.interface (the host's "
                                 "interface on the job network) and network.egress")
            if not self.ipf_rules_file.startswith("/"):
                raise ValueError("network.ipf_rules_file must be an absolute path")
        return self

    def pool(self) -> list[ipaddress.IPv4Address]:
        """Every address of `addresses`, in order."""
        first, sep, last = (self.addresses or "").partition("-")
        try:
            low, high = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address(last.strip())
        except ValueError:
            raise ValueError(f"network.addresses {self.addresses!r} is not FIRST-LAST "
                             "(IPv4), e.g. 10.77.0.10-10.77.0.200") from None
        if not sep or high < low:
            raise ValueError(f"network.addresses {self.addresses!r}: LAST is before FIRST")
        return [ipaddress.IPv4Address(n) for n in range(int(low), int(high) + 1)]

    def subnet(self) -> ipaddress.IPv4Network:
        """The job network: the gateway's network of `prefix_length` bits."""
        anchor = self.gateway or (self.addresses or "").partition("-")[0]
        return ipaddress.ip_network(f"{anchor}/{self.prefix_length}", strict=False)  # type: ignore[return-value]


def ipf_rules(network: BhyveNetwork) -> str:
    """ipf.conf(5) rules for the host: traffic from the job network may go to the `egress`
    destinations only (replies are let back by `keep state`); the rest is blocked and logged."""
    subnet = network.subnet()
    lines = [RULES_HEADER, f"# jobs: {subnet} on {network.interface}"]
    for entry in network.egress:
        where = Destination.parse(entry)
        lines.append(f"pass in quick on {network.interface} proto {where.protocol} from {subnet}"
                     f" to {where.network} port = {where.port} keep state")
    lines.append(f"block in log quick on {network.interface} from {subnet} to any")
    return "\n".join(lines) + "\n"


class AddressPool:
    """Claims of the job network's addresses, one file per claimed address under `root`."""

    def __init__(self, root: Path, addresses: list[ipaddress.IPv4Address]) -> None:
        self.root = root
        self.addresses = addresses

    def claim(self, machine: str) -> ipaddress.IPv4Address:
        """The first free address, now `machine`'s; BackendError when every one is taken."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for address in self.addresses:
            try:
                fd = os.open(self.root / str(address), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(machine)
            return address
        raise BackendError(f"every job address ({len(self.addresses)} in network.addresses) is "
                           "taken", hint="widen [orchestrator.bhyve.network] addresses, or lower "
                                         "the host's capacity")

    def release(self, machine: str) -> None:
        """Give back whatever `machine` claimed (nothing, after a partial provision)."""
        try:
            claims = list(self.root.iterdir())
        except FileNotFoundError:
            return
        for claim in claims:
            try:
                if claim.read_text() == machine:
                    claim.unlink()
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise BackendError(f"cannot release the job address {claim.name}: "
                                       f"{exc.strerror}") from exc
