"""Job events -> commit statuses at the fake forge: mapping, retries, hangs, restarts, order."""
from __future__ import annotations

import asyncio
import uuid

import asyncpg

from common.broker import MemoryBroker
from common.messages import JobEvent, JobState, Repo
from forge_integration.feedback import status_body
from tests.fakes.forgejo_api import FakeForgejo
from tests.forge.conftest import Harness, make_config, service_with

SHA = "ab" * 20


def job_event(forge: FakeForgejo, job_id: uuid.UUID, sequence: int, state: JobState,
              **fields: object) -> JobEvent:
    repo = Repo(forge="forgejo", owner="gordon", name="hello-world",
                clone_url=f"{forge.url}/gordon/hello-world.git", api_url=forge.api_url)
    return JobEvent(run_id=uuid.UUID(int=1), job_id=job_id, job_key="build", workflow_name="ci",
                    state=state, sequence=sequence, repo=repo, commit_sha=SHA, request_id="d-1",
                    log_url=f"http://solstice.example/jobs/{job_id}", **fields)


async def outbox_reaches(harness: Harness, counts: dict[str, int], timeout: float = 10.0) -> None:
    """Wait until the outbox's rows per state are `counts`; fail with what they are if not."""
    try:
        async with asyncio.timeout(timeout):
            while await harness.service.outbox.counts() != counts:
                await harness.settle()
    except TimeoutError:
        raise AssertionError(f"outbox rows {await harness.service.outbox.counts()}, "
                             f"expected {counts}") from None


def test_state_mapping() -> None:
    repo = Repo(forge="forgejo", owner="o", name="r", clone_url="https://f/o/r.git")
    base = dict(run_id=uuid.uuid4(), job_id=uuid.uuid4(), job_key="test[os=omnios]",
                workflow_name="", sequence=1, repo=repo, commit_sha=SHA, request_id="r",
                log_url="https://ci/jobs/1")
    expect = {JobState.QUEUED: ("pending", "queued"), JobState.RUNNING: ("pending", "running"),
              JobState.SUCCESS: ("success", "passed"), JobState.SKIPPED: ("success", "skipped"),
              JobState.FAILURE: ("failure", "failed at step 'unit tests'"),
              JobState.TIMED_OUT: ("failure", "timed out"),
              JobState.ERROR: ("error", "infrastructure error: zone boot failed"),
              JobState.CANCELLED: ("error", "cancelled")}
    for state, (forge_state, description) in expect.items():
        event = JobEvent(**base, state=state, failing_step="unit tests",  # type: ignore[arg-type]
                         description="zone boot failed" if state is JobState.ERROR else "")
        body = status_body(event)
        assert (body["state"], body["description"]) == (forge_state, description)
        assert body["context"] == "solstice/workflow/test[os=omnios]"
        assert body["target_url"] == "https://ci/jobs/1"
    waiting = status_body(JobEvent(**base, state=JobState.AWAITING_APPROVAL,  # type: ignore[arg-type]
                                   description="waiting for a maintainer: comment /solstice approve"))
    assert waiting == {**waiting, "state": "pending", "description":
                       "waiting for a maintainer: comment /solstice approve to run it"}
    long = JobEvent(**base, state=JobState.ERROR, description="x" * 500)  # type: ignore[arg-type]
    assert len(status_body(long)["description"]) == 140


async def test_statuses_in_order_through_500s_and_a_hang(harness: Harness,
                                                         broker: MemoryBroker) -> None:
    forge = harness.forge
    forge.fail(2, status=500, path_contains="/statuses/")
    forge.fail(1, status=0, delay=3.0, path_contains="/statuses/")  # beyond the 1 s client timeout
    job = uuid.uuid4()
    for seq, state in enumerate([JobState.QUEUED, JobState.RUNNING, JobState.SUCCESS], start=1):
        await broker.publish_event(job_event(forge, job, seq, state))
    await broker.publish_event(job_event(forge, job, 2, JobState.RUNNING))  # a redelivery
    await harness.wait_for(lambda: len(forge.statuses) == 3)
    assert [(s.state, s.description) for s in forge.statuses] == [
        ("pending", "queued"), ("pending", "running"), ("success", "passed")]
    assert {s.context for s in forge.statuses} == {"solstice/ci/build"}
    assert all(s.target_url == f"http://solstice.example/jobs/{job}" and s.sha == SHA
               for s in forge.statuses)
    assert forge.rejected == []
    await outbox_reaches(harness, {"delivered": 3})
    # Events of other forges are acked and left to their integration.
    github = job_event(forge, uuid.uuid4(), 1, JobState.QUEUED)
    await broker.publish_event(github.model_copy(update={"repo": github.repo.model_copy(
        update={"forge": "github"})}))
    await harness.settle()
    assert await harness.service.outbox.counts() == {"delivered": 3}


async def test_a_late_earlier_event_does_not_reorder_the_final_status(harness: Harness,
                                                                      broker: MemoryBroker) -> None:
    forge = harness.forge
    job = uuid.uuid4()
    await broker.publish_event(job_event(forge, job, 3, JobState.FAILURE, failing_step="make"))
    await harness.wait_for(lambda: len(forge.statuses) == 1)
    await broker.publish_event(job_event(forge, job, 2, JobState.RUNNING))
    await harness.settle()
    await harness.service.worker.run_once()
    await outbox_reaches(harness, {"delivered": 1, "superseded": 1})
    # A send that timed out on a busy machine is sent again: the failure may appear twice.
    assert {(s.state, s.description) for s in forge.statuses} == {("failure", "failed at step 'make'")}


async def test_a_late_earlier_event_is_superseded_by_a_later_one_being_tried(
        harness: Harness, broker: MemoryBroker) -> None:
    # The later status is in flight (it may reach the forge even if the answer is lost) when the
    # earlier one arrives: the earlier one is never sent, not even while the later is retried.
    forge = harness.forge
    forge.fail(1, status=500, delay=0.5, path_contains="/statuses/")
    job = uuid.uuid4()
    await broker.publish_event(job_event(forge, job, 3, JobState.FAILURE, failing_step="make"))

    async def in_flight() -> bool:
        return bool(await harness.pool.fetchval(
            "SELECT count(*) FROM forge_outbox WHERE state = 'pending' AND attempts = 1"
            " AND lease_until > now()"))
    while not await in_flight():
        await harness.settle()
    await broker.publish_event(job_event(forge, job, 2, JobState.RUNNING))
    await outbox_reaches(harness, {"delivered": 1, "superseded": 1})
    assert [(s.state, s.description) for s in forge.statuses] == [("failure", "failed at step 'make'")]


async def test_pending_statuses_survive_a_restart(forge: FakeForgejo, pool: asyncpg.Pool,
                                                  broker: MemoryBroker) -> None:
    forge.fail(1000, status=503, path_contains="/statuses/")
    job = uuid.uuid4()
    config = make_config(forge)
    async with service_with(config, forge, pool, broker) as first:
        await broker.publish_event(job_event(forge, job, 1, JobState.QUEUED))
        await broker.publish_event(job_event(forge, job, 2, JobState.SUCCESS))

        async def tried() -> int:
            return await pool.fetchval("SELECT max(attempts) FROM forge_outbox")
        while (await tried() or 0) < 2:
            await first.settle()
    assert forge.statuses == []
    forge.heal()
    async with service_with(config, forge, pool, broker) as second:
        await second.wait_for(lambda: len(forge.statuses) == 2)
        assert [s.state for s in forge.statuses] == ["pending", "success"]
