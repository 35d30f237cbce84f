"""Host registry: registration, heartbeats, staleness, fencing, one process per name."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from orchestrator.db import Database
from orchestrator.hosts import HostNameTaken, HostRegistry


async def test_register_and_list(db: Database) -> None:
    host = HostRegistry(db, "alpha", {"illumos": 4, "linux": 2}, interval=0.1, stale_after=0.5)
    await host.register()
    (info,) = await host.hosts()
    assert (info.name, info.capacity, info.state, info.alive, info.active_jobs) == \
        ("alpha", {"illumos": 4, "linux": 2}, "running", True, 0)


async def test_live_name_is_refused_until_stale(db: Database) -> None:
    first = HostRegistry(db, "same", {"a": 1}, interval=0.1, stale_after=0.6)
    await first.register()
    second = HostRegistry(db, "same", {"a": 1}, interval=0.1, stale_after=0.6)
    # The holder is this very process (alive), so the name is not free.
    with pytest.raises(HostNameTaken, match="is alive"):
        await second.register()
    await asyncio.sleep(0.8)
    assert await first.stale_hosts() == ["same"]
    await second.register()
    # The first instance is fenced at its next heartbeat.
    fenced: list[bool] = []
    await asyncio.wait_for(first.run(on_fenced=lambda: fenced.append(True)), 2)
    assert fenced == [True] and first.fenced.is_set()


async def test_dead_predecessor_on_this_machine_is_replaced_at_once(db: Database) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    await db.pool.execute(
        "INSERT INTO hosts (name, capacity, instance, machine, pid) VALUES"
        " ('phoenix', '{}', gen_random_uuid(), $1, $2)",
        HostRegistry(db, "x", {}).machine, int(dead.stdout))
    await HostRegistry(db, "phoenix", {"a": 2}, stale_after=60).register()


async def test_heartbeats_keep_a_host_alive_and_clean_stop_is_not_stale(db: Database) -> None:
    host = HostRegistry(db, "beat", {"a": 1}, interval=0.1, stale_after=0.4)
    await host.register()
    beating = asyncio.create_task(host.run())
    await asyncio.sleep(0.8)
    assert await host.stale_hosts() == []
    beating.cancel()
    await host.set_state("draining")
    assert (await host.hosts())[0].state == "draining"
    await host.set_state("stopped")
    await asyncio.sleep(0.6)
    assert await host.stale_hosts() == []
    assert (await host.hosts())[0].alive is False


def test_stale_must_exceed_interval(db: Database) -> None:
    with pytest.raises(ValueError):
        HostRegistry(db, "x", {}, interval=5, stale_after=5)
