"""The interface every VM backend implements, and what crosses it.

A backend turns a job into a throw-away machine running the runner agent: `provision` makes
the copy-on-write clone, `start` boots it with the runner's bootstrap, `stop` halts it and
`destroy` removes everything the job had. `leftovers` lists what this host's prefix owns on
the machine, so the reaper can destroy what no live job claims.
"""
from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import SolsticeError


class BackendError(SolsticeError):
    """An infrastructure fault; the job ends `error` with this message."""


@dataclass(frozen=True)
class Resources:
    vcpus: int = 2
    ram_mb: int = 2048
    disk_gb: int = 20


@dataclass(frozen=True)
class RunnerBootstrap:
    """What the runner needs to call home; delivered by cloud-init, env or a file."""

    orchestrator_url: str  # host:port of the Runner gRPC service, as seen from the VM
    job_id: str
    token: str


@dataclass(frozen=True)
class VMSpec:
    """One job's machine. `name` carries the host prefix (`<prefix>-<short job id>`)."""

    name: str
    job_id: str
    label: str
    image: str
    resources: Resources = Resources()
    source_dir: Path | None = None  # local backend: the tree to copy into the workspace


@dataclass
class VM:
    """A provisioned machine; `details` holds backend-specific facts for logs and teardown
    (`image`, where the backend has one, names what the machine booted, for the run record)."""

    name: str
    backend: str
    spec: VMSpec
    details: dict[str, str] = field(default_factory=dict)


class VMBackend(abc.ABC):
    name: str

    @abc.abstractmethod
    async def provision(self, spec: VMSpec) -> VM:
        """Create the job's clone and machine definition; nothing runs yet."""

    @abc.abstractmethod
    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        """Boot the machine; the runner inside dials the orchestrator with `bootstrap`."""

    @abc.abstractmethod
    async def stop(self, vm: VM) -> None:
        """Halt the machine (idempotent)."""

    @abc.abstractmethod
    async def destroy(self, vm: VM) -> None:
        """Remove the machine and its clone (idempotent; safe after a partial provision)."""

    @abc.abstractmethod
    async def leftovers(self, prefix: str) -> list[str]:
        """Names of machines/clones on this host that start with `prefix`."""

    @abc.abstractmethod
    async def destroy_by_name(self, name: str) -> None:
        """Destroy a leftover found by `leftovers` (idempotent)."""

    async def wait_exit(self, vm: VM) -> str:
        """Return a reason once the machine stopped by itself (e.g. the runner crashed).

        Backends that cannot watch their machines keep the default, which never returns: the
        orchestrator then notices a dead runner by its missing heartbeats.
        """
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def prepare(self) -> None:
        """Called once when the orchestrator starts, before the first job (warm caches, checks)."""

    async def close(self) -> None:
        """Release what the backend holds for itself (not the jobs' machines)."""

    async def console_log(self, vm: VM) -> str:
        """The machine's console output so far, for the job's infrastructure log."""
        return ""
