"""Re-runs at the store level: a re-run job's infrastructure retries count from the re-run,
and each earlier attempt is kept."""
from __future__ import annotations

from common.messages import JobState
from orchestrator import steering
from orchestrator.store import Store, hand_back
from tests.orchestrator.conftest import Harness

# No host serves this label: only the test's own "ghost" host leases the job.
STRANDED = 'workflow name="w" { job id="build" runs_on="ghost-only" { step name="s" run="true" } }'


async def test_retries_after_a_rerun_count_from_the_rerun(harness: Harness) -> None:
    db = harness.orchestrator.db
    run_id = await harness.submit(STRANDED)
    [job] = (await harness.api.summary(run_id)).jobs
    ghost = Store(db, "ghost")
    lease, _ = await ghost.lease(job.job_id, ttl=60, token_hash=b"h" * 32, token_ttl=60)
    assert lease is not None and lease.attempt == 1
    assert await ghost.finish(job.job_id, 1, JobState.FAILURE, "boom") is not None

    keys, _ = await steering.rerun(db, run_id, failed_only=True, by="tester")
    assert keys == ["build"]
    lease, _ = await ghost.lease(job.job_id, ttl=60, token_hash=b"h" * 32, token_ttl=60)
    assert lease is not None and lease.attempt == 2
    # One infrastructure retry allowed: attempt 2 is the re-run's first, so it is re-queued.
    state, _ = await hand_back(db, job.job_id, 2, "ghost", "host died", max_retries=1)
    assert state == JobState.QUEUED
    history = await db.pool.fetch("SELECT attempt, state, message, host, rerun_by"
                                  " FROM job_attempts WHERE job_id = $1", job.job_id)
    assert [tuple(r) for r in history] == [(1, "failure", "boom", "ghost", "tester")]
    await harness.api.cancel_run(run_id)
