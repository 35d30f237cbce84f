"""The orchestrator's gauges, read when `/metrics` is scraped (`common.metrics`).

The queue, the jobs not yet ended and the outbox backlog come from the shared database, so
every host reports the same cluster-wide values (aggregate them with `max`, not `sum`); the
capacity and the running jobs are this host's own.
"""
from __future__ import annotations

from collections.abc import Callable

from common.metrics import (
    HOST_CAPACITY,
    HOST_RUNNING,
    JOBS,
    QUEUE_DEPTH,
    QUEUE_OLDEST_WAIT,
    Refresher,
    outbox_backlog,
)
from orchestrator.db import Database
from orchestrator.executor import Executor

# Jobs counted by `solstice_jobs`: those that have not ended (the ended ones only grow).
OPEN_STATES = ["awaiting_approval", "queued", "provisioning", "running"]


def refreshers(db: Database, host: str, capacity: dict[str, int],
               executor: Callable[[], Executor | None]) -> list[Refresher]:
    """What `/metrics` refreshes on this host; `executor` is asked per scrape (it starts after
    the web server)."""
    async def queue() -> None:
        rows = await db.pool.fetch(
            "SELECT runs_on, count(*) AS depth,"
            " extract(epoch FROM now() - min(coalesce(queued_at, created_at))) AS oldest"
            " FROM jobs WHERE state = 'queued' AND released AND NOT cancel_requested"
            " GROUP BY runs_on")
        QUEUE_DEPTH.clear()
        QUEUE_OLDEST_WAIT.clear()
        for label in capacity:  # a label this host serves shows 0, not nothing
            QUEUE_DEPTH.labels(label).set(0)
            QUEUE_OLDEST_WAIT.labels(label).set(0)
        for row in rows:
            QUEUE_DEPTH.labels(row["runs_on"]).set(row["depth"])
            QUEUE_OLDEST_WAIT.labels(row["runs_on"]).set(float(row["oldest"]))

    async def jobs() -> None:
        rows = await db.pool.fetch("SELECT state, count(*) AS n FROM jobs WHERE state = ANY($1)"
                                   " GROUP BY state", OPEN_STATES)
        counts = {r["state"]: r["n"] for r in rows}
        for state in OPEN_STATES:
            JOBS.labels(state).set(counts.get(state, 0))

    async def this_host() -> None:
        running = executor()
        drained = running is None or running.drained
        active = running.active_by_label() if running is not None else {}
        for label, slots in capacity.items():
            HOST_CAPACITY.labels(host, label).set(0 if drained else slots)
            HOST_RUNNING.labels(host, label).set(active.get(label, 0))

    async def unpublished() -> int:
        return await db.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")

    return [queue, jobs, this_host, outbox_backlog("orchestrator", unpublished)]
