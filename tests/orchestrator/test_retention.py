"""The retention sweeper as operators meet it: `ciadm prune --dry-run` and `ciadm prune` in a
subprocess against an orchestrator (real PostgreSQL, the filesystem blob store), the ages of
feature-branch, default-branch, tag and per-repository runs; a crash between the rows and the
blobs; two sweepers at once."""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import asyncpg
import pytest

from common.config import load_config
from common.errors import ConfigError
from orchestrator.blobstore import BlobStoreUnavailable
from orchestrator.config import OrchestratorConfig
from orchestrator.retention import LOCK, RetentionPolicy, RetentionSweeper
from tests.ciadm.test_admin import ciadm
from tests.orchestrator.conftest import Harness

POLICY = dict(retention_days=30, retention_days_default_branch=180,
              retention_repositories={"acme/long": 400, "acme/forever": 0})
WORKFLOW = """
workflow name="old" {
    job id="build" runs_on="local" {
        step name="make" run="mkdir -p out && seq 1 5000 > out/list.txt && echo built"
        artifacts "out/*"
    }
}
"""
# name: (repository, default branch, ref, days since it ended or None: still running)
RUNS = {
    "feature-31": ("acme/app", "main", "refs/heads/feature", 31),
    "feature-29": ("acme/app", "main", "refs/heads/feature", 29),
    "main-100": ("acme/app", "main", "refs/heads/main", 100),
    "main-181": ("acme/app", "main", "refs/heads/main", 181),
    "tag-100": ("acme/app", "main", "refs/tags/v1.0", 100),
    "not-default-31": ("acme/trunk", "trunk", "refs/heads/main", 31),
    "long-300": ("acme/long", "main", "refs/heads/x", 300),
    "long-401": ("acme/long", "main", "refs/heads/x", 401),
    "forever-1000": ("acme/forever", "main", "refs/heads/main", 1000),
    "running": ("acme/app", "main", "refs/heads/feature", None),
}
EXPIRED = {"feature-31", "main-181", "not-default-31", "long-401", "real"}


async def _add_run(harness: Harness, repository: str, default_branch: str, ref: str,
                   days: int | None) -> uuid.UUID:
    """A run row ended `days` ago, and a blob under its prefix."""
    run_id = uuid.uuid4()
    owner, name = repository.split("/")
    repo = {"forge": "forgejo", "owner": owner, "name": name, "default_branch": default_branch,
            "clone_url": f"https://forge.example/{repository}.git"}
    await harness.orchestrator.db.pool.execute(
        "INSERT INTO runs (id, request_id, repo, commit_sha, ref, event, workflow_path, trusted,"
        " request, state, created_at, finished_at) VALUES ($1, $2, $3, $4, $5, 'push',"
        " '.solstice/workflow.kdl', true, $8, $6, now() - interval '1000 days', $7)",
        run_id, str(run_id), repo, "0" * 40, ref,
        "running" if days is None else "success",
        None if days is None else await _ago(harness, days), {})
    async with harness.orchestrator.blobs.writer(f"runs/{run_id}/jobs/j/attempt-1/f") as writer:
        await writer.write(b"x" * 100)
        await writer.commit()
    return run_id


async def _ago(harness: Harness, days: int):
    return await harness.orchestrator.db.pool.fetchval("SELECT now()") - timedelta(days=days)


@pytest.fixture
async def aged(orchestrator_factory) -> tuple[Harness, dict[str, uuid.UUID]]:
    """An orchestrator with POLICY, the RUNS, and one real run (a job with a compacted log and
    an artifact) of a feature branch that ended 31 days ago."""
    harness = await orchestrator_factory(**POLICY)
    async with asyncio.timeout(20):  # its first sweep, at start, is over
        while harness.orchestrator.retention.last_report is None:
            await asyncio.sleep(0.05)
    runs = {name: await _add_run(harness, *spec) for name, spec in RUNS.items()}
    summary = await harness.run(WORKFLOW, ref="refs/heads/feature", branch="feature")
    assert summary.state == "success", summary.message
    db = harness.orchestrator.db
    async with asyncio.timeout(20):
        while not await db.pool.fetchval("SELECT count(*) FROM log_archives"):
            await asyncio.sleep(0.05)
    await db.pool.execute("UPDATE runs SET finished_at = $2 WHERE id = $1", summary.run_id,
                          await _ago(harness, 31))
    runs["real"] = summary.run_id
    return harness, runs


async def _state(harness: Harness) -> tuple[set[uuid.UUID], list[str]]:
    db, store = harness.orchestrator.db, harness.orchestrator.blobs
    return ({r["id"] for r in await db.pool.fetch("SELECT id FROM runs")},
            [b.key for b in await store.list("runs/")])


async def test_prune_dry_run_then_prune(aged) -> None:
    harness, runs = aged
    db = harness.orchestrator.db
    before = await _state(harness)
    real_bytes = await db.pool.fetchval(
        "SELECT (SELECT sum(size) FROM artifacts) + (SELECT sum(size) FROM log_archives)")

    dry = await ciadm(harness, "prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    names = {v: k for k, v in runs.items()}
    assert listed["dry_run"] is True
    assert {names[uuid.UUID(r["run_id"])] for r in listed["runs"]} == EXPIRED
    by_name = {names[uuid.UUID(r["run_id"])]: r for r in listed["runs"]}
    assert by_name["real"]["bytes"] == real_bytes > 20000
    assert listed["bytes"] == real_bytes
    assert (by_name["main-181"]["keep_days"], by_name["long-401"]["keep_days"],
            by_name["feature-31"]["keep_days"]) == (180, 400, 30)
    table = await ciadm(harness, "prune", "--dry-run")
    assert table.returncode == 0, table.stderr
    assert f"would delete {len(EXPIRED)} runs" in table.stdout
    assert str(runs["long-401"]) in table.stdout and "acme/long" in table.stdout
    assert await _state(harness) == before  # the dry run changed nothing

    done = await ciadm(harness, "prune")
    assert done.returncode == 0, done.stderr
    assert f"deleted {len(EXPIRED)} runs" in done.stdout
    ids, keys = await _state(harness)
    assert ids == {runs[n] for n in runs if n not in EXPIRED}
    assert sorted(keys) == sorted(f"runs/{runs[n]}/jobs/j/attempt-1/f" for n in runs
                                  if n not in EXPIRED)
    for table_name in ("jobs", "log_archives", "artifacts", "log_chunks", "blob_deletions"):
        assert await db.pool.fetchval(f"SELECT count(*) FROM {table_name}") == 0, table_name
    again = await ciadm(harness, "prune")
    assert "deleted 0 runs" in again.stdout


async def test_a_crash_between_the_rows_and_the_blobs_is_finished_by_the_next_sweep(
        aged, monkeypatch: pytest.MonkeyPatch) -> None:
    harness, runs = aged
    orchestrator = harness.orchestrator
    sweeper = RetentionSweeper(orchestrator.db, orchestrator.blobs,
                               RetentionPolicy(30, 180, POLICY["retention_repositories"]),
                               interval=3600)

    async def unreachable(prefix: str) -> int:
        raise BlobStoreUnavailable("the blob store went away")

    with monkeypatch.context() as patch:
        patch.setattr(orchestrator.blobs, "delete_prefix", unreachable)
        with pytest.raises(BlobStoreUnavailable):
            await sweeper.sweep()
    ids, keys = await _state(harness)
    gone = {runs[n] for n in EXPIRED}
    assert not ids & gone  # no row names the blobs any more ...
    assert {uuid.UUID(k.split("/")[1]) for k in keys} >= gone  # ... which are still there
    pending = await orchestrator.db.pool.fetch("SELECT prefix FROM blob_deletions")
    assert len(pending) == len(EXPIRED)  # recorded with the rows, in one transaction

    report = await sweeper.sweep()
    assert report.runs == []
    _, keys = await _state(harness)
    assert not {uuid.UUID(k.split("/")[1]) for k in keys} & gone
    assert await orchestrator.db.pool.fetchval("SELECT count(*) FROM blob_deletions") == 0


async def test_two_sweepers_at_once_delete_each_run_once(aged, pg_dsn: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    harness, runs = aged
    orchestrator = harness.orchestrator
    policy = RetentionPolicy(30, 180, POLICY["retention_repositories"])
    sweepers = [RetentionSweeper(orchestrator.db, orchestrator.blobs, policy, interval=3600)
                for _ in range(2)]
    deleting = orchestrator.blobs.delete_prefix

    async def slow(prefix: str) -> int:
        await asyncio.sleep(0.2)  # the first sweep still runs when the second starts
        return await deleting(prefix)

    monkeypatch.setattr(orchestrator.blobs, "delete_prefix", slow)
    reports = await asyncio.gather(*(s.sweep() for s in sweepers))
    assert sorted(r.swept for r in reports) == [False, True]
    deleted = [r.run_id for report in reports for r in report.runs]
    assert sorted(deleted) == sorted(runs[n] for n in EXPIRED)

    # While another host holds the sweep, `ciadm prune` says so and deletes nothing.
    await _add_run(harness, "acme/app", "main", "refs/heads/feature", 40)
    holder = await asyncpg.connect(pg_dsn)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                     LOCK)
        busy = await ciadm(harness, "prune")
        assert busy.returncode == 1
        assert "another orchestrator host is sweeping right now" in busy.stderr
        assert len(json.loads((await ciadm(harness, "prune", "--dry-run", "--json")).stdout)[
            "runs"]) == 1
    finally:
        await holder.close()
    assert "deleted 1 runs" in (await ciadm(harness, "prune")).stdout


def test_retention_settings_from_toml_and_environment(tmp_path) -> None:
    toml = tmp_path / "solstice.toml"
    toml.write_text('[orchestrator]\nretention_days = 14\n'
                    'retention_repositories = { "illumos/illumos-gate" = 365 }\n')
    from_file = load_config(OrchestratorConfig, path=toml, section="orchestrator", environ={})
    assert (from_file.retention_days, from_file.retention_days_default_branch,
            from_file.retention_repositories) == (14, 365, {"illumos/illumos-gate": 365})
    from_env = load_config(OrchestratorConfig, path=toml, section="orchestrator", environ={
        "SOLSTICE_ORCHESTRATOR__RETENTION_REPOSITORIES": "me/scratch=7, a/b=0",
        "SOLSTICE_ORCHESTRATOR__RETENTION_DAYS_DEFAULT_BRANCH": "0"})
    assert from_env.retention_repositories == {"me/scratch": 7, "a/b": 0}
    assert from_env.retention_days_default_branch == 0
    for wrong in ("scratch=7", "me/scratch=-1", "me/scratch=soon"):
        with pytest.raises(ConfigError):
            load_config(OrchestratorConfig, section="orchestrator", environ={
                "SOLSTICE_ORCHESTRATOR__RETENTION_REPOSITORIES": wrong})


async def test_zero_keeps_for_ever(aged) -> None:
    harness, runs = aged
    names = {v: k for k, v in runs.items()}

    async def expired(policy: RetentionPolicy) -> set[str]:
        sweeper = RetentionSweeper(harness.orchestrator.db, harness.orchestrator.blobs, policy,
                                   interval=3600)
        return {names[r.run_id] for r in await sweeper.expired()}

    assert await expired(RetentionPolicy(0, 0, {})) == set()
    assert await expired(RetentionPolicy(0, 365, {"acme/long": 400})) == {"long-401"}
    assert await expired(RetentionPolicy(30, 0, {})) == EXPIRED - {"main-181"} | {"long-300"}
