"""Reaper: jobs of dead hosts go back to the queue (or end `error` past the retry limit),
machines no live job owns are destroyed, and a fenced host's late writes are refused."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from common.messages import EventKind, JobState, Repo, RunRequest
from orchestrator.backends.local import LocalBackend
from orchestrator.db import Database
from orchestrator.effects import Effects
from orchestrator.hosts import HostRegistry
from orchestrator.intake import Intake
from orchestrator.reaper import Reaper
from orchestrator.sessions import Sessions
from orchestrator.store import Store, hand_back
from orchestrator.updates import Hub

WORKFLOW = """
workflow name="reap" {
    job id="first" runs_on="local" { step name="s" run="true" }
    job id="second" runs_on="local" { needs "first"; step name="s" run="true" }
}
"""


async def _run(db: Database) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A run whose `first` job is queued and released; returns (run, first, second)."""
    request = RunRequest(
        request_id=uuid.uuid4().hex, repo=Repo(forge="local", owner="o", name="r", clone_url="file:///x"),
        commit_sha="c" * 40, ref="refs/heads/main", event=EventKind.PUSH, branch="main",
        workflow_source=WORKFLOW)
    run_id = await Intake(db, Effects(Hub(), Sessions()), default_job_timeout=60).accept(request)
    jobs = {r["key"]: r["id"] for r in await db.pool.fetch(
        "SELECT key, id FROM jobs WHERE run_id = $1", run_id)}
    return run_id, jobs["first"], jobs["second"]


async def _lease(db: Database, host: str, job_id: uuid.UUID, ttl: float = 60.0) -> int:
    lease, _ = await Store(db, host).lease(job_id, ttl=ttl, token_hash=b"h" * 32, token_ttl=60)
    assert lease is not None
    return lease.attempt


async def _job(db: Database, job_id: uuid.UUID) -> dict:
    return dict(await db.pool.fetchrow("SELECT state, attempt, lease_host, message FROM jobs"
                                       " WHERE id = $1", job_id))


async def _requests(db: Database, job_id: uuid.UUID) -> list[int]:
    rows = await db.pool.fetch("SELECT payload FROM outbox WHERE kind = 'job_request'"
                               " AND payload->>'job_id' = $1 ORDER BY id", str(job_id))
    return [r["payload"]["attempt"] for r in rows]


def _reaper(db: Database, host: str, root: Path, *, stale_after: float = 30.0,
            max_retries: int = 2) -> Reaper:
    registry = HostRegistry(db, host, {"local": 1}, interval=0.1, stale_after=stale_after)
    return Reaper(db=db, backend=LocalBackend(root), registry=registry,
                  machine_prefix=f"solstice-{host}", apply=lambda _c: None,
                  max_retries=max_retries, interval=0.1)


async def test_restart_hands_back_own_jobs_and_destroys_own_leftovers(db: Database, tmp_path: Path) -> None:
    _, first, _ = await _run(db)
    attempt = await _lease(db, "h1", first)
    mine = tmp_path / f"solstice-h1-{first.hex[:12]}-{attempt}"
    other_host = tmp_path / f"solstice-h10-{first.hex[:12]}-{attempt}"
    unrelated = tmp_path / "keep-me"
    for directory in (mine, other_host, unrelated):
        (directory / "workspace").mkdir(parents=True)
    reaper = _reaper(db, "h1", tmp_path)
    await reaper.registry.register()
    report = await reaper.at_start()
    assert report.requeued == [first] and report.destroyed == [mine.name]
    job = await _job(db, first)
    assert (job["state"], job["lease_host"]) == ("queued", None)
    assert "h1 restarted" in job["message"]
    assert await _requests(db, first) == [1, 2]
    assert not mine.exists() and other_host.exists() and unrelated.exists()


async def test_expired_lease_is_requeued_and_dead_host_is_fenced(db: Database, tmp_path: Path) -> None:
    _, first, _ = await _run(db)
    attempt = await _lease(db, "dead", first, ttl=0.2)
    await asyncio.sleep(0.4)
    report = await _reaper(db, "alive", tmp_path).reap_once()
    assert report.requeued == [first]
    assert (await _job(db, first))["state"] == "queued"
    # The dead host wakes up: every write about its attempt is refused.
    assert await Store(db, "dead").renew_lease(first, attempt, 60) is None
    assert await Store(db, "dead").finish(first, attempt, JobState.SUCCESS, "late") is None
    # Another host takes the re-queued job with the next attempt number.
    assert await _lease(db, "alive", first) == attempt + 1


async def test_stale_host_loses_jobs_before_lease_expiry(db: Database, tmp_path: Path) -> None:
    _, first, _ = await _run(db)
    silent = HostRegistry(db, "silent", {"local": 1}, interval=0.1, stale_after=0.3)
    await silent.register()
    await _lease(db, "silent", first, ttl=3600)
    reaper = _reaper(db, "watcher", tmp_path, stale_after=0.3)
    assert (await reaper.reap_once()).requeued == []
    await asyncio.sleep(0.5)
    report = await reaper.reap_once()
    assert report.requeued == [first]
    assert "stopped sending heartbeats" in (await _job(db, first))["message"]


async def test_live_lease_and_its_machine_are_left_alone(db: Database, tmp_path: Path) -> None:
    _, first, _ = await _run(db)
    attempt = await _lease(db, "busy", first)
    machine = tmp_path / f"solstice-busy-{first.hex[:12]}-{attempt}"
    stale_machine = tmp_path / f"solstice-busy-{first.hex[:12]}-{attempt + 1}"
    machine.mkdir()
    stale_machine.mkdir()
    report = await _reaper(db, "busy", tmp_path).reap_once()
    assert report.requeued == [] and report.destroyed == [stale_machine.name]
    assert machine.exists()
    assert (await _job(db, first))["state"] == "provisioning"


async def test_past_retry_limit_ends_error_and_skips_dependents(db: Database, tmp_path: Path) -> None:
    run_id, first, second = await _run(db)
    reaper = _reaper(db, "survivor", tmp_path, max_retries=2)
    outcomes = []
    for _ in range(3):
        await _lease(db, "crashy", first, ttl=0.1)
        await asyncio.sleep(0.25)
        report = await reaper.reap_once()
        outcomes.append("requeued" if report.requeued else "errored" if report.errored else "-")
    assert outcomes == ["requeued", "requeued", "errored"]
    job = await _job(db, first)
    assert (job["state"], job["attempt"]) == ("error", 3)
    assert "gave up after 3 attempts" in job["message"]
    assert (await _job(db, second))["state"] == "skipped"
    assert await db.pool.fetchval("SELECT state FROM runs WHERE id = $1", run_id) == "error"
    assert await _requests(db, first) == [1, 2, 3]


async def test_racing_reapers_hand_back_once(db: Database, tmp_path: Path) -> None:
    _, first, _ = await _run(db)
    await _lease(db, "gone", first, ttl=0.1)
    await asyncio.sleep(0.25)
    reapers = [_reaper(db, f"r{n}", tmp_path) for n in range(4)]
    reports = await asyncio.gather(*(r.reap_once() for r in reapers))
    assert sum(len(r.requeued) for r in reports) == 1
    assert await _requests(db, first) == [1, 2]


async def test_hand_back_refuses_a_renewed_lease(db: Database) -> None:
    _, first, _ = await _run(db)
    attempt = await _lease(db, "slow", first, ttl=60)
    state, _ = await hand_back(db, first, attempt, "slow", "test", only_if_dead=[])
    assert state is None
    assert (await _job(db, first))["state"] == "provisioning"


async def test_zero_retries_errors_at_first_death(db: Database, tmp_path: Path) -> None:
    _, first, _ = await _run(db)
    await _lease(db, "once", first, ttl=0.1)
    await asyncio.sleep(0.25)
    report = await _reaper(db, "other", tmp_path, max_retries=0).reap_once()
    assert report.errored == [first]
