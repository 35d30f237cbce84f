"""The host registry: each orchestrator process registers its name and capacity in Postgres and
heartbeats; a host whose heartbeat is older than `stale_after` is dead to the others.

Postgres' clock (`now()`) is the only clock compared, so hosts with skewed clocks still agree
on who is stale. A name is held by one process at a time (`instance`): a second process with
the same name is refused while the first one heartbeats (unless the first was a process of
this machine that no longer exists), and a process that finds its name taken over (it was
stale, another instance registered) is fenced and must stop taking jobs.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from common.errors import SolsticeError
from common.postgres import DATABASE_ERRORS
from orchestrator.db import Database

log = logging.getLogger(__name__)

ACTIVE_JOB_STATES = ["provisioning", "running"]


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HostNameTaken(SolsticeError):
    """Another live orchestrator process holds this host name."""


@dataclass(frozen=True)
class HostInfo:
    """One row of the registry, as `ciadm hosts` shows it."""

    name: str
    capacity: dict[str, int]
    state: str  # running | draining | stopped
    started_at: datetime
    last_heartbeat: datetime
    alive: bool
    active_jobs: int
    drained: bool = False  # `ciadm drain`: takes no new jobs
    held_jobs: int = 0  # failed jobs' machines kept for debugging; they take slots too


class HostRegistry:
    """This process's entry in the registry, and the queries about everyone's."""

    def __init__(self, db: Database, name: str, capacity: dict[str, int], *,
                 interval: float = 5.0, stale_after: float = 30.0) -> None:
        if stale_after <= interval:
            raise ValueError("stale_after must be longer than the heartbeat interval")
        self.db = db
        self.name = name
        self.capacity = dict(capacity)
        self.interval = interval
        self.stale_after = stale_after
        self.instance = uuid.uuid4()
        self.machine = socket.gethostname()
        self.fenced = asyncio.Event()
        # `ciadm drain` asked this host to take no new jobs (read back with each heartbeat).
        self.drained = False

    async def register(self) -> None:
        """Take the name (new, stopped, stale, or left by a dead process of this machine).

        Raises `HostNameTaken` while another live process holds it.
        """
        taken = await self._claim(None)
        if taken is not None and taken["machine"] == self.machine and not _pid_alive(taken["pid"]):
            # Our own predecessor on this machine, killed without a chance to deregister:
            # no need to wait until it goes stale.
            taken = await self._claim(taken["instance"])
        if taken is not None:
            raise HostNameTaken(
                f"another orchestrator registered as host {self.name!r} is alive "
                f"(pid {taken['pid']} on {taken['machine']})",
                hint="give each orchestrator process its own host_name (--host-name), or stop "
                     f"the other one; a dead one is forgotten after {self.stale_after:.0f}s")
        log.info("host registered", extra={"host": self.name, "capacity": self.capacity})

    async def _claim(self, predecessor: uuid.UUID | None) -> asyncpg.Record | None:
        """Upsert our row; None if we hold the name now, else the holder's row."""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "INSERT INTO hosts AS h (name, capacity, instance, machine, pid, state,"
                " started_at, last_heartbeat, stopped_at)"
                " VALUES ($1, $2, $3, $4, $5, 'running', now(), now(), NULL)"
                " ON CONFLICT (name) DO UPDATE SET capacity = EXCLUDED.capacity,"
                " instance = EXCLUDED.instance, machine = EXCLUDED.machine, pid = EXCLUDED.pid,"
                " state = 'running', started_at = now(), last_heartbeat = now(), stopped_at = NULL"
                " WHERE h.state = 'stopped' OR h.last_heartbeat < now() - $6::interval"
                " OR h.instance = $7 RETURNING name",
                self.name, self.capacity, self.instance, self.machine, os.getpid(),
                timedelta(seconds=self.stale_after), predecessor)
            if row is not None:
                return None
            return await conn.fetchrow("SELECT instance, machine, pid FROM hosts WHERE name = $1",
                                       self.name)

    async def heartbeat(self) -> bool:
        """Refresh this host's heartbeat (and read back `drained`); False once another
        instance took the name over."""
        drained = await self.db.pool.fetchval(
            "UPDATE hosts SET last_heartbeat = now() WHERE name = $1 AND instance = $2"
            " RETURNING drained", self.name, self.instance)
        if drained is None:
            return False
        self.drained = drained
        return True

    async def run(self, on_fenced: Callable[[], None] | None = None,
                  on_drain: Callable[[bool], None] | None = None) -> None:
        """Heartbeat every `interval` until cancelled; survive database restarts.

        When fenced, set `fenced`, call `on_fenced` and stop: this process's leases are void.
        `on_drain(drained)` is called when an operator drains or undrains this host.
        """
        reported = False
        while True:
            try:
                alive = await self.heartbeat()
                if alive and self.drained != reported and on_drain is not None:
                    reported = self.drained
                    log.info("host drained: taking no new jobs" if reported
                             else "host undrained: taking jobs again", extra={"host": self.name})
                    on_drain(reported)
                if not alive:
                    log.error("host name taken over by another instance; fenced",
                              extra={"host": self.name})
                    self.fenced.set()
                    if on_fenced is not None:
                        on_fenced()
                    return
            except DATABASE_ERRORS as exc:
                # A restarting server fails statements in many ways (closed connection, admin
                # shutdown, cannot-connect-now); a heartbeat tries again next interval.
                log.warning("heartbeat failed; retrying", extra={"host": self.name,
                                                                 "error": str(exc)})
            await asyncio.sleep(self.interval)

    async def set_state(self, state: str) -> None:
        """`draining` while finishing jobs on SIGTERM; `stopped` at a clean exit."""
        await self.db.pool.execute(
            "UPDATE hosts SET state = $3, stopped_at = CASE WHEN $3 = 'stopped' THEN now() END"
            " WHERE name = $1 AND instance = $2", self.name, self.instance, state)

    async def stale_hosts(self) -> list[str]:
        """Hosts that did not stop cleanly and have not heartbeated within `stale_after`."""
        rows = await self.db.pool.fetch(
            "SELECT name FROM hosts WHERE state <> 'stopped'"
            " AND last_heartbeat < now() - $1::interval ORDER BY name",
            timedelta(seconds=self.stale_after))
        return [r["name"] for r in rows]

    async def hosts(self) -> list[HostInfo]:
        """Every registered host with its liveness and how many jobs it holds leases on."""
        rows = await self.db.pool.fetch(
            "SELECT h.name, h.capacity, h.state, h.started_at, h.last_heartbeat, h.drained,"
            " h.state <> 'stopped' AND h.last_heartbeat >= now() - $1::interval AS alive,"
            " (SELECT count(*) FROM jobs j WHERE j.lease_host = h.name"
            "  AND j.state = ANY($2)) AS active_jobs,"
            " (SELECT count(*) FROM jobs j WHERE j.held_host = h.name"
            "  AND j.held_until > now()) AS held_jobs"
            " FROM hosts h ORDER BY h.name",
            timedelta(seconds=self.stale_after), ACTIVE_JOB_STATES)
        return [HostInfo(name=r["name"], capacity=dict(r["capacity"]), state=r["state"],
                         started_at=r["started_at"], last_heartbeat=r["last_heartbeat"],
                         alive=r["alive"], active_jobs=r["active_jobs"], drained=r["drained"],
                         held_jobs=r["held_jobs"]) for r in rows]
