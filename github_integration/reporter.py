"""Apply job events to GitHub check runs, remembering each job's check run in Postgres.

A job's first event creates its check run (POST); later events update it (PATCH by id), so the
id is stored per job. Events must arrive in `sequence` order per job (the outbox that calls
`deliver` guarantees it); `deliver` may be called again with the same event after a failure,
and then resumes where it stopped: the check run is not created twice and annotation batches
already appended are not appended again.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import asyncpg

from common.messages import JobEvent, JobState
from common.observability import tracer
from github_integration.api import GitHubApi
from github_integration.checks import check_run_requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckRunState:
    """The check run of a job: its id, whether it is completed, and the last event applied
    (`sequence`) with how many of that event's extra annotation batches went out."""

    check_run_id: int
    completed: bool
    sequence: int
    batches_sent: int


class CheckRunStore:
    """`github_check_runs` (see `github_integration/migrations`): job id -> its check run."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, job_id: uuid.UUID) -> CheckRunState | None:
        row = await self._pool.fetchrow(
            "SELECT check_run_id, completed, sequence, batches_sent FROM github_check_runs"
            " WHERE job_id = $1", job_id)
        return CheckRunState(**dict(row)) if row else None

    async def put(self, job_id: uuid.UUID, state: CheckRunState) -> None:
        await self._pool.execute(
            "INSERT INTO github_check_runs (job_id, check_run_id, completed, sequence, batches_sent)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id) DO UPDATE SET"
            " check_run_id = $2, completed = $3, sequence = $4, batches_sent = $5,"
            " updated_at = now()",
            job_id, state.check_run_id, state.completed, state.sequence, state.batches_sent)


class CheckRunReporter:
    """Brings a job's check run on GitHub to the state of each `JobEvent` it is given."""

    def __init__(self, api: GitHubApi, store: CheckRunStore) -> None:
        self._api = api
        self._store = store

    async def deliver(self, event: JobEvent) -> None:
        """Apply `event`; raises `GitHubApiError` (see `.retryable`) if GitHub refused it."""
        if event.repo.installation_id is None:
            log.warning("job event without a GitHub installation; no check run",
                        extra={"job_id": str(event.job_id), "repo": event.repo.full_name})
            return
        with tracer(__name__).start_as_current_span("github.check_run") as span:
            span.set_attribute("solstice.job_id", str(event.job_id))
            span.set_attribute("solstice.job_state", event.state.value)
            await self._deliver(event)

    async def _deliver(self, event: JobEvent) -> None:
        known = await self._store.get(event.job_id)
        if known is not None and known.sequence > event.sequence:
            return  # older than what GitHub already shows
        if known is not None and known.sequence == event.sequence:
            state = known  # a retry: the first body went through before
            requests = check_run_requests(event, create=False)
        else:
            # A completed check run is never reopened: once a job completed (or waited for
            # approval, which GitHub shows as completed/action_required), its next life gets
            # a fresh check run, as GitHub's own re-runs do.
            create = known is None or (known.completed and not (
                event.state.final or event.state is JobState.AWAITING_APPROVAL))
            requests = check_run_requests(event, create=create)
            completed = "conclusion" in requests.first
            if create or known is None:
                check_run_id = await self._api.create_check_run(event.repo, requests.first)
            else:
                check_run_id = known.check_run_id
                await self._api.update_check_run(event.repo, check_run_id, requests.first)
            state = CheckRunState(check_run_id, completed, event.sequence, 0)
            await self._store.put(event.job_id, state)
        for index in range(state.batches_sent, len(requests.more)):
            await self._api.update_check_run(event.repo, state.check_run_id,
                                             requests.more[index])
            state = CheckRunState(state.check_run_id, state.completed, state.sequence, index + 1)
            await self._store.put(event.job_id, state)
